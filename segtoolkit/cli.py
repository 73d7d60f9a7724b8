"""What every command shares around its `main`: errors as one line with an exit code, warnings as one line,
Ctrl-C and SIGTERM as a request to stop cleanly, and a command line parsed the same way everywhere: `--help`
that shows each default once, a mistyped or foreign flag as one line naming ours, `~` expanded in paths.

A command's settings are one frozen dataclass whose fields are made by `setting()`: each field is a flag, its
default and help written once, there; `add_settings` builds the parser's flags from it, and the flags every
command shares (--device, --half, --project, --name; the tile flags in segtoolkit.inference.tiling) are made
by one function each, so they mean the same everywhere.

Usage (the end of train.py, detect.py, export.py, val.py):
    @dataclass(frozen=True, kw_only=True)
    class DetectSettings:
        source: str = setting(help="image, video, folder...", group="Data")    # no default: required
        device: str = device_setting()
    parser = ArgumentParser(description=__doc__)
    add_settings(parser, DetectSettings)
    settings = settings_from(DetectSettings, parser.parse_args(argv))
    if __name__ == "__main__":
        sys.exit(run_command(main, parse_args()))

    with StopRequest("finishing this frame, then closing outputs") as stop:
        while not stop.is_set(): ...
"""

import argparse
import dataclasses
import difflib
import os
import re
import signal
import sys
import threading
import typing
import warnings
from contextlib import contextmanager
from pathlib import Path

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


class Stopped(Exception):
    """Raised by work that a StopRequest cuts short between two of its pieces (a frame segmented by tiles:
    segtoolkit.inference.tiling), so the loop around it can close its outputs and end with EXIT_STOPPED."""


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


# flags other segmentation and detection tools use, and what this toolkit calls them: (train.py's hint, the
# other commands' hint); None where the command has no such thing
FOREIGN_FLAGS = {
    "--imgsz": ("the input size is --patch-size (a multiple of 32)",) * 2,
    "--img-size": ("the input size is --patch-size (a multiple of 32)",) * 2,
    "--img": ("the input size is --patch-size (a multiple of 32)",) * 2,  # YOLOv5's; argparse would take --img-dir
    "--weights": ("the checkpoint to start from is --load-model FILE (--model is the architecture)",
                  "the model file is --model FILE"),
    "--resume": ("a run resumes with --load-model checkpoints/<run>/checkpoint.pth.tar", None),
    "--cfg": ("the architecture is --model (Unet, FPN...) and the encoder --encoder",
              "the model file is --model FILE; it describes itself"),
}
NUMBER_ERROR = re.compile(r"argument (\S+): invalid (int|float) value: '(.*)'$")


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser with the toolkit's rules: a mistake is one line `error: ...` and exit code 2 (not
    the whole usage), naming our flag for one another tool uses (--imgsz is --patch-size) or the closest
    one; `--epochs 1.5` says it takes a whole number; a value starting with `~` (a path the shell left
    unexpanded, as in `--data-dir=~/x`) is expanded to the home folder, for every flag in one place."""

    def __init__(self, **options):
        options.setdefault("formatter_class", HelpFormatter)
        super().__init__(**options)

    def parse_args(self, args=None, namespace=None):
        ours = {option for action in self._actions for option in action.option_strings}
        for token in sys.argv[1:] if args is None else args:  # before argparse, which would first say that a
            flag = token.split("=", 1)[0]  # required flag is missing, or take --img for --img-dir
            if flag.startswith("--") and flag not in ours and (flag in FOREIGN_FLAGS or not any(
                    option.startswith(flag) for option in ours)):
                self.error(self.unknown([flag]))
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            self.error(self.unknown(extras))
        return parsed

    def parse_known_args(self, args=None, namespace=None):
        parsed, extras = super().parse_known_args(args, namespace)
        for action in self._actions:
            value = getattr(parsed, action.dest, None)
            if action.option_strings and isinstance(value, (str, Path)):
                setattr(parsed, action.dest, expand_home(value))
            elif action.option_strings and isinstance(value, tuple):  # OneOrMore's several values
                setattr(parsed, action.dest, tuple(map(expand_home, value)))
        return parsed, extras

    def unknown(self, extras):
        """The one-line message for arguments no flag takes: the first unknown flag and what to give instead."""
        flag = next((extra.split("=", 1)[0] for extra in extras if extra.startswith("-")), None)
        if flag is None:
            return f"unexpected argument {extras[0]!r}: every option is --name VALUE; see {self.prog} --help"
        ours = {option for action in self._actions for option in action.option_strings}
        trains = "--load-model" in ours
        hint = FOREIGN_FLAGS.get(flag, (None, None))[0 if trains else 1]
        if hint is None:
            close = difflib.get_close_matches(flag, sorted(ours), n=1, cutoff=0.6)
            hint = f"did you mean {close[0]}?" if close else f"see {self.prog} --help"
        return f"{flag} is not an option of {self.prog}; {hint}"

    def error(self, message):
        number = NUMBER_ERROR.match(message)
        if number:
            flag, kind, value = number.groups()
            message = f"{flag} {value} must be a {'whole number' if kind == 'int' else 'number'}"
        print(f"error: {' '.join(message.split())}", file=sys.stderr, flush=True)
        sys.exit(2)


class OneOrMore(argparse.Action):
    """nargs="+" that keeps one value as it is and gives several as a tuple: `--source a.mp4` stays the string
    every caller knows, `--source rtsp://a rtsp://b` is ('rtsp://a', 'rtsp://b')."""

    def __init__(self, option_strings, dest, **options):
        super().__init__(option_strings, dest, nargs="+", **options)

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values[0] if len(values) == 1 else tuple(values))


def expand_home(value):
    """A path typed with a leading ~ (or ~user) as the home folder, as the shell would have: Path or str kept."""
    if not str(value).startswith("~"):
        return value
    return type(value)(os.path.expanduser(str(value)))


def parse_with_given(parser, argv=None):
    """parser.parse_args(argv), with `given`: the names of the flags typed on the command line (a resume
    refuses those that would change the run; a default is not a choice the user made)."""
    args = parser.parse_args(argv)
    unset = object()
    probe = parser.parse_args(argv, namespace=argparse.Namespace(**{a.dest: unset for a in parser._actions}))
    args.given = {key for key, value in vars(probe).items() if value is not unset}
    return args


# ---------------------------------------------------------------- settings: one dataclass per command


def setting(default=dataclasses.MISSING, *, help, group, flag=None, **options):
    """A field of a command's settings dataclass that is also its flag: --field-name (or `flag`) in the --help
    group `group`, with this default (none: a required flag) and help; `options` go to add_argument (choices,
    metavar). The flag's type is the field's (int, float or Path; str otherwise); a bool is an on switch, or an
    on/off pair (--pin-memory / --no-pin-memory) when it defaults to True."""
    return dataclasses.field(default=default, metadata={"help": help, "group": group, "flag": flag,
                                                        "options": options})


def add_settings(parser, settings_class):
    """The parser's flags, one per setting() field of settings_class, in field order under their groups;
    returns the groups by title (for a flag that is not a setting, such as train.py's --no-augment)."""
    groups = {}
    for item in dataclasses.fields(settings_class):
        if "group" not in item.metadata:
            continue
        if item.metadata["group"] not in groups:
            groups[item.metadata["group"]] = parser.add_argument_group(item.metadata["group"])
        options = dict(item.metadata["options"])
        if item.default is dataclasses.MISSING:
            options["required"] = True
        else:
            options["default"] = item.default
        if item.type is bool:
            options["action"] = argparse.BooleanOptionalAction if item.default else "store_true"
        else:
            options.setdefault("type", flag_type(item.type))
        flag = item.metadata["flag"] or flag_name(item.name)
        groups[item.metadata["group"]].add_argument(flag, dest=item.name, help=item.metadata["help"], **options)
    return groups


def settings_parser(settings_class, description):
    """A command's parser: ArgumentParser with add_settings' flags (detect.py, val.py, export.py)."""
    parser = ArgumentParser(description=description)
    add_settings(parser, settings_class)
    return parser


def flag_type(annotation):
    """int, float or Path for a field annotated so (or `X | None`); None (argparse's str) for anything else."""
    kind = next(kind for kind in typing.get_args(annotation) or (annotation,) if kind is not type(None))
    return kind if kind in (int, float, Path) else None


def flag_name(field_name):
    return "--" + field_name.replace("_", "-")


def settings_from(settings_class, args):
    """The settings of a parsed command line: every field taken from the namespace of add_settings' flags."""
    return settings_class(**{item.name: getattr(args, item.name) for item in dataclasses.fields(settings_class)})


# the flags every command that has them shares: one definition each, the same meaning everywhere
def device_setting():
    return setting("auto", group="Runtime", help="auto (cuda if available, else cpu), cpu, cuda, cuda:1 (a model "
                   "from export.py: .onnx lets onnxruntime decide, .xml runs OpenVINO on the CPU)")


def half_setting():
    return setting(False, group="Runtime", help="half precision: float16 on CUDA, bfloat16 on CPUs with AVX-512 "
                   "BF16 or AMX (.pth.tar and .xml); on other CPUs, and for .onnx, a warning and float32")


def verbose_setting(also=""):
    return setting(False, group="Runtime", help=f"full tracebacks for errors{also}, and Python warnings with their "
                   f"source line")


def model_file_setting():
    return setting(group="Model", help="checkpoint from train.py (.pth.tar), or from export.py an .onnx file "
                   "(onnxruntime) or an .xml with its .bin (OpenVINO)")


def project_setting(default, group):
    return setting(default, group=group, help="folder of the run folders, relative to the current folder")


def save_dir_setting(also):
    return setting(None, group="Output", help=f"output folder, used as is instead of --project/--name{also}")


def name_setting(group):
    return setting("exp", group=group, help="run folder name: <project>/<name>, then <name>2, <name>3... if taken")
