"""The two kinds of error a command reports in one line, and the exit codes every command uses.

A `UserError` is a mistake the user can fix (a flag, a file, a checkpoint): exit code 2. A `RunFailure` is a
run that failed for another reason than its input (training diverged, a DataLoader worker was killed, an
output could not be written): exit code 1. Both carry a message that names the file or flag and the fix;
`segtoolkit.cli.run_command` prints it as `error: ...` without a traceback.
"""

from pathlib import Path

EXIT_OK = 0
EXIT_RUN_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_STOPPED = 130  # Ctrl-C or SIGTERM, as a shell reports a process killed by SIGINT


class UserError(Exception):
    """A mistake the user can fix; the CLI prints its one-line message and exits with `exit_code`."""

    exit_code = EXIT_BAD_INPUT


class RunFailure(UserError):
    """A run that failed for another reason than its input: the same one-line message, exit code 1."""

    exit_code = EXIT_RUN_FAILED


def file_problem(path):
    """Why a path given where a file belongs cannot be read as one, for the one-line error: a folder is
    named as such (it used to read 'no such file', which sent users looking for a missing file)."""
    return "is a folder, not a file" if Path(path).is_dir() else "no such file"
