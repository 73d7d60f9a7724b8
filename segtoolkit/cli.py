"""What every command shares around its `main`: errors as one line with an exit code, warnings as one line,
Ctrl-C and SIGTERM as a request to stop cleanly, and `--help` that shows each default once.

Usage (the end of train.py, detect.py, export.py, val.py):
    if __name__ == "__main__":
        sys.exit(run_command(main, parse_args()))

    with StopRequest("finishing this frame, then closing outputs") as stop:
        while not stop.is_set(): ...
"""

import argparse
import signal
import sys
import threading
import warnings
from contextlib import contextmanager

from segtoolkit.errors import EXIT_STOPPED, UserError


def run_command(main, args):
    """main(args) -> exit code. A UserError or RunFailure is one line `error: ...` on stderr and its exit
    code (2 or 1); Ctrl-C that reaches here is 130. `args.verbose` lets the traceback through instead."""
    verbose = getattr(args, "verbose", False)
    with one_line_warnings(enabled=not verbose):
        try:
            return main(args)
        except UserError as error:
            if verbose:
                raise
            print(f"error: {error}", file=sys.stderr, flush=True)
            return error.exit_code
        except KeyboardInterrupt:
            if verbose:
                raise
            print("stopped (Ctrl-C)", file=sys.stderr, flush=True)
            return EXIT_STOPPED


@contextmanager
def one_line_warnings(enabled=True):
    """Warnings as `warning: MESSAGE`: Python's default format adds the file, line and source line of the
    toolkit's warn() call, which says nothing to a user and looks like a crash."""
    if not enabled:
        yield
        return
    def format_warning(message, category, filename, lineno, line=None):
        kind = "" if issubclass(category, UserWarning) else f"{category.__name__}: "
        return f"warning: {kind}{' '.join(str(message).split())}\n"

    previous, warnings.formatwarning = warnings.formatwarning, format_warning
    try:
        yield
    finally:
        warnings.formatwarning = previous


class StopRequest:
    """Ctrl-C and SIGTERM set a flag instead of raising: the loop finishes its step or frame, then saves
    or closes its outputs and ends. A second signal while that happens is ignored, so the save completes.
    Handlers are installed only in the main thread (signal's rule) and restored on exit."""

    def __init__(self, what_next):
        self.what_next = what_next
        self.event = threading.Event()
        self.previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self.previous = {sig: signal.signal(sig, self.request) for sig in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc_info):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        return False

    def request(self, signum, _frame=None):
        if not self.event.is_set():
            print(f"\n{signal.Signals(signum).name} received: {self.what_next}", file=sys.stderr, flush=True)
        self.event.set()

    def is_set(self):
        return self.event.is_set()


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keep the docstring's layout; show a default unless the help text already says it (or it is unset)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS) or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


def parse_with_given(parser, argv=None):
    """parser.parse_args(argv), with `given`: the names of the flags typed on the command line (a resume
    refuses those that would change the run; a default is not a choice the user made)."""
    args = parser.parse_args(argv)
    unset = object()
    probe = parser.parse_args(argv, namespace=argparse.Namespace(**{a.dest: unset for a in parser._actions}))
    args.given = {key for key, value in vars(probe).items() if value is not unset}
    return args
