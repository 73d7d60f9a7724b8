"""Output folders and files: the run folders of train.py, detect.py and val.py, which never overwrite an earlier
one, and detect.py's and val.py's writes, which fail as one line (RunFailure, exit code 1) naming the file,
leaving no partial file behind.

Usage:
    from segtoolkit.outputs.files import make_run_dir, write_mask
    folder = make_run_dir("runs/detect/exp")           # exp, else exp2, exp3...
    write_mask(folder / "a.png", mask, colours)        # 0/255 for one class, a palette PNG for several
"""

import contextlib
import json
import math
import os
from pathlib import Path

import cv2
import numpy as np

from segtoolkit.errors import RunFailure, UserError
from segtoolkit.data.masks import palette_png

WRITE_FAILED = "disk full, or its folder was removed or made read-only"
MAX_RUNS_PER_NAME = 10_000  # run folders of one --name in one --project: exp, exp2 ... exp10000


def check_save_dir(path, flag="--save-dir", given=None):
    """The folder `path` (for `flag`, whose value was `given`: path by default) must be creatable and writable:
    say so at start, in one line, not with a FileExistsError or NotADirectoryError traceback at the first write."""
    path = Path(path)
    given = path if given is None else given
    existing = next(p for p in (path.absolute(), *path.absolute().parents) if p.exists())
    if not existing.is_dir():
        raise UserError(f"{flag} {given}: {existing} is a file, not a folder; give another {flag}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {given}: {existing} is not writable; give another {flag}")


def check_output_folder(save_dir, project):
    """detect.py's and val.py's output: --save-dir as given, else a new folder inside --project (named
    --name, name2, name3...: an existing file of that name is skipped, so --project is what must be a folder)."""
    if save_dir:
        check_save_dir(save_dir)
    else:
        check_save_dir(project, "--project")


def make_run_dir(path):
    """Create and return the first free one of path, path2, path3... (a file of such a name is skipped too):
    a run never overwrites an earlier one. The one run-folder rule of train.py, detect.py and val.py
    (<--project>/<--name>); mkdir decides, so two runs starting at once never get the same folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for number in range(1, MAX_RUNS_PER_NAME + 1):
        candidate = path if number == 1 else path.with_name(f"{path.name}{number}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
    raise UserError(f"{path.parent} holds {MAX_RUNS_PER_NAME:,} runs named {path.name} ({path.name}, {path.name}2 ... "
                    f"{path.name}{MAX_RUNS_PER_NAME}); give another --name or --project")


def write_failure(path, reason=WRITE_FAILED):
    """The one-line error for a write that failed mid-run (exit code 1): what came before it stays complete."""
    return RunFailure(f"cannot write {path} ({reason}); the outputs before it are complete; free space or give "
                      f"another --save-dir")


def write_picture(path, pixels):
    """cv2.imwrite, which reports a failed write (full disk, folder gone) only by returning False."""
    try:
        written = cv2.imwrite(str(path), pixels)
    except cv2.error:
        written = False
    if not written:
        raise write_failure(path)


def write_new_file(path, fill):
    """Create `path` (an existing file is never overwritten) and let fill(handle) write it; a failed write is
    write_failure, and its partial file is removed."""
    try:
        handle = open(path, "xb")
    except OSError as error:  # FileExistsError too: another program took the name after it was claimed
        raise write_failure(path, error.strerror or error) from None
    try:
        with handle:
            fill(handle)
    except OSError as error:
        with contextlib.suppress(OSError):  # a partial file must not look like an output
            Path(path).unlink()
        raise write_failure(path, error.strerror or error) from None


def write_bytes(path, data):
    """A new file holding `data` (the palette masks' PNG bytes): write_new_file."""
    write_new_file(path, lambda handle: handle.write(data))


def write_mask(path, mask, colours=None):
    """A mask of class indices at `path` (.png): one class (`colours` None) as 0/255, as people expect a binary
    mask to look; several as a palette PNG, the indices kept as pixel values and shown in `colours` (RGB per
    class), or 16-bit gray indices beyond 256 classes, which a palette cannot hold."""
    if colours is None:
        write_picture(path, (mask * 255).astype(np.uint8))
    elif len(colours) > 256:
        write_picture(path, mask.astype(np.uint16))
    else:
        write_bytes(path, palette_png(mask, colours))


def ends_with_newline(path):
    with open(path, "rb") as handle:
        handle.seek(-1, os.SEEK_END)
        return handle.read(1) in (b"\n", b"\r")


def is_nan(value):
    return isinstance(value, float) and math.isnan(value)


def format_value(value):
    """A results.csv cell: floats to 6 significant digits; NaN (no such metric) as an empty cell."""
    if is_nan(value):
        return ""
    return f"{value:.6g}" if isinstance(value, float) else value


def metrics_json(metrics):
    """Metrics as JSON text for test_results.json and val_results.json; NaN and infinity, which JSON lacks,
    become null, also inside nested lists and dicts."""
    return json.dumps(finite_or_null(metrics), indent=2, allow_nan=False)


def finite_or_null(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: finite_or_null(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_null(item) for item in value]
    return value
