"""detect.py run as a user runs it: a subprocess in the foreground or the background, and its results.csv."""

import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import detect
from helpers.paths import REPO
from helpers.servers import wait_until

# one thread per process: the machine has two cores shared by everyone's tests
QUIET_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def read_rows(save_dir):
    """results.csv as a list of dicts."""
    import csv
    with open(Path(save_dir) / "results.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def cli(capsys, *args):
    """detect.py's main() in this process (saves the interpreter start): (exit code, stdout, stderr)."""
    code = detect.main(detect.parse_args([str(arg) for arg in args]))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def detect_command(*args):
    return [sys.executable, str(REPO / "detect.py"), *map(str, args)]


def run_detect(*args, env=None, timeout=600):
    """Run detect.py as a user would; returns the CompletedProcess (text stdout/stderr).

    The timeout only catches a hang: on a CPU shared three or four ways, importing torch alone takes 20-40 s."""
    return subprocess.run(detect_command(*args), cwd=REPO, env=env or QUIET_ENV, capture_output=True, text=True,
                          timeout=timeout)


class DetectProcess(subprocess.Popen):
    """detect.py in the background, its stdout and stderr written to files instead of pipes.

    A pipe nobody reads fills up after some hundred per-frame lines and then blocks detect.py mid-run; a
    file never does, and the test can read what was printed so far (`output()`) to wait for a message.
    communicate() waits for the end and returns (stdout, stderr) as text, like Popen's.
    """

    def __init__(self, command, folder, **options):
        self.folder = Path(folder)
        with open(self.folder / "stdout", "w") as out, open(self.folder / "stderr", "w") as err:
            super().__init__(command, stdout=out, stderr=err, **options)

    def output(self):
        """(stdout, stderr) printed so far."""
        return tuple((self.folder / name).read_text(errors="replace") for name in ("stdout", "stderr"))

    def communicate(self, input=None, timeout=None):  # noqa: A002 (Popen's name)
        self.wait(timeout)
        return self.output()


@contextlib.contextmanager
def detect_process(*args, env=None):
    """detect.py running in the background (a DetectProcess); killed and reaped if the test leaves early."""
    folder = tempfile.mkdtemp(prefix="detect-process-")
    process = DetectProcess(detect_command(*args), folder, cwd=REPO, env=env or QUIET_ENV)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        shutil.rmtree(folder, ignore_errors=True)


def wait_for_rows(process, save_dir, count, timeout=300):
    """Wait until the running detect.py has written `count` rows to results.csv.

    Fails at once, with its stderr, if detect.py ended first; the bound covers its start on a busy machine
    (importing torch, loading the model, connecting to a stream)."""
    csv_path = Path(save_dir) / "results.csv"

    def enough():
        if csv_path.exists() and len(read_rows(save_dir)) >= count:
            return True
        assert process.poll() is None, f"detect.py ended (exit code {process.returncode}) before writing {count} " \
                                       f"rows: {process.output()[1][-3000:]}"
        return False
    wait_until(enough, timeout, what=lambda: f"{count} rows in {csv_path}; detect.py's stderr so far: "
                                             f"{process.output()[1][-3000:]}")


def wait_for_stderr(process, pattern, timeout=120):
    """Wait until the running detect.py has printed a line matching `pattern` (a regex) on stderr."""
    def printed():
        if re.search(pattern, process.output()[1]):
            return True
        assert process.poll() is None, f"detect.py ended (exit code {process.returncode}) before printing " \
                                       f"{pattern!r}: {process.output()[1][-3000:]}"
        return False
    wait_until(printed, timeout, what=lambda: f"{pattern!r} on detect.py's stderr; so far: "
                                              f"{process.output()[1][-3000:]}")


