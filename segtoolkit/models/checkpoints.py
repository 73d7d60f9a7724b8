"""The checkpoint format: written atomically, loaded without running code, describing its own model.

A checkpoint holds the weights of the unwrapped model plus everything needed to rebuild and feed it
(architecture, encoder, classes, input channels, normalization, patch size, class names: `meta`), the
run's configuration and, for a training checkpoint, the state a resume needs. `detect.py` needs nothing else.

Usage:
    from segtoolkit.models.checkpoints import load_checkpoint, save_checkpoint
    checkpoint = load_checkpoint("checkpoints/exp/best-checkpoint.pth.tar")
    model = segtoolkit.models.factory.model_from_checkpoint(checkpoint)
    save_checkpoint("weights.pth.tar", model, checkpoint["meta"])
"""

import glob
import os
import pickle
import re
import secrets
from pathlib import Path

import torch

from segtoolkit.errors import UserError
from segtoolkit.distributed import unwrap

CHECKPOINT_FORMAT = "unet-segmentation-toolkit"


CHECKPOINT_VERSION = 1

# what train.py writes in its run folder: 'last' (every evaluation and at the end: what a resume continues) and
# 'best' (the weights of the best evaluation, without the optimizer state)
CHECKPOINT_NAMES = {"last": "checkpoint.pth.tar", "best": "best-checkpoint.pth.tar"}


MODEL_META_KEYS = ("architecture", "encoder", "classes", "in_channels", "mean", "std", "patch_size", "class_names")
# absent from older files: these defaults (mask_colors: the --mask-colors table, segtoolkit.data.classes;
# bit_depth: how 16-bit images are scaled, segtoolkit.data.imaging; None: each image by its own largest value)
OPTIONAL_META_KEYS = {"input_mode": "letterbox", "scale": 1.0, "mask_colors": None, "bit_depth": None}


def with_meta_defaults(meta):
    """`meta` with OPTIONAL_META_KEYS' defaults for the keys an older checkpoint or export lacks."""
    return {**OPTIONAL_META_KEYS, **meta} if isinstance(meta, dict) else meta


def save_checkpoint(path, model, meta, config=None, **state):
    """Write a checkpoint atomically: a temp file in the same folder, fsync, then rename over `path`.

    A reader (or a crash at any moment) sees either the previous complete file or the new one.
    """
    payload = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "meta": dict(meta),
               "config": dict(config or {}), "model": unwrap(model).state_dict(), **state}
    path = Path(path)
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):  # left by a writer that was killed
        stale.unlink(missing_ok=True)
    descriptor, temp_name = create_temp_file(path)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            torch.save(payload, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def create_temp_file(path):
    """(descriptor, name) of a new hidden file beside `path`, with the mode any new file gets (0666 less the
    umask, applied by the kernel). tempfile.mkstemp makes 0600 files, and reading the umask means setting it
    process-wide, a race with wandb's and the loaders' threads creating files meanwhile."""
    for _ in range(100):
        name = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            return os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), str(name)
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name beside {path}")


def load_checkpoint(path, what="checkpoint"):
    """Load a checkpoint with weights_only=True, so a crafted pickle cannot run code.

    Returns our checkpoint dict, or {'model': state_dict} for a file holding weights only.
    Raises UserError with a one-line message for anything that is not a loadable checkpoint.
    """
    path = Path(path)
    check_checkpoint_file(path, what)
    data = torch_load(path)
    if isinstance(data, dict) and data.get("format") == CHECKPOINT_FORMAT:
        missing = [key for key in ("version", "meta", "model") if key not in data]
        if missing or not isinstance(data["version"], int) or data["version"] > CHECKPOINT_VERSION:
            problem = f"no {', '.join(missing)}" if missing else f"format version {data['version']}"
            raise UserError(f"checkpoint {path} is a {CHECKPOINT_FORMAT} file this version cannot read ({problem}); "
                            f"update the toolkit or use a checkpoint written by this train.py")
        return {**data, "meta": with_meta_defaults(data["meta"])}
    if isinstance(data, dict) and data and all(isinstance(value, torch.Tensor) for value in data.values()):
        return {"model": data}
    raise UserError(f"checkpoint {path} was not written by this toolkit (no '{CHECKPOINT_FORMAT}' header "
                    f"and not a plain state dict); train one with train.py")


def check_checkpoint_file(path, what):
    """Say what a file given as a checkpoint is when it is plainly something else, and what to give instead."""
    instead = f"give a .pth.tar file written by train.py ({' or '.join(CHECKPOINT_NAMES.values())})"
    if path.is_dir():
        found = [name for name in CHECKPOINT_NAMES.values() if (path / name).is_file()]
        hint = f", for example {path / found[0]}" if found else ""
        raise UserError(f"{what} {path} is a folder; {instead}{hint}")
    if not path.is_file():
        raise UserError(f"checkpoint {path}: no such file")
    if path.suffix.lower() == ".onnx":
        raise UserError(f"{what} {path} is an ONNX export, which cannot be trained or resumed; give the "
                        f".pth.tar checkpoint it was exported from")
    with open(path, "rb") as handle:
        head = handle.read(512)
    if head and b"\0" not in head and not head.startswith((b"PK", b"\x80")):
        try:
            head.decode("utf-8")
        except UnicodeDecodeError:
            return
        raise UserError(f"{what} {path} is a text file, not a PyTorch checkpoint; {instead}")


def torch_load(path, what="checkpoint"):
    """torch.load(weights_only=True): a pickle that would build other objects (and so could run code)
    is refused, and a damaged file becomes a one-line UserError instead of a parser traceback."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        unsafe = re.search(r"GLOBAL ([\w.]+)", str(error))  # the pickle imports a callable: it could run code
        if unsafe:
            raise UserError(f"{what} {path} refused: it would call {unsafe.group(1)} when loaded, so it could run "
                            f"code; only tensors and plain data are accepted. Only load checkpoints you trust, "
                            f"saved by train.py") from None
        raise UserError(f"{what} {path} is truncated or not a PyTorch checkpoint (the pickle stream is damaged); "
                        f"use a complete file written by train.py") from None
    except Exception as error:  # noqa: BLE001 - a damaged file can fail anywhere in torch's zip and pickle readers
        reason = (str(error).splitlines() or [type(error).__name__])[0].split(". ")[0][:120]
        raise UserError(f"{what} {path} is truncated or not a PyTorch checkpoint ({reason}); "
                        f"use a complete file written by train.py") from None


