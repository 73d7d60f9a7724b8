"""Model factory and checkpoint format, shared by train.py, detect.py and export.py.

A checkpoint describes itself: the weights of the unwrapped model plus everything needed to rebuild
and feed it (architecture, encoder, classes, input channels, normalization, patch size, class names
and the resolved training arguments). `detect.py` needs nothing else.

Usage:
    from models import build_model, load_checkpoint, model_from_checkpoint
    checkpoint = load_checkpoint("checkpoints/exp/best-checkpoint.pth.tar")
    model = model_from_checkpoint(checkpoint)
"""

import difflib
import glob
import os
import pickle
import re
import secrets
import warnings
from pathlib import Path

import segmentation_models_pytorch as smp
import torch

ARCHITECTURES = {name: cls for name, cls in smp.MODEL_ARCHITECTURES_MAPPING.items()}
ARCHITECTURE_NAMES = [cls.__name__ for cls in ARCHITECTURES.values()]
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CHECKPOINT_FORMAT = "unet-segmentation-toolkit"
CHECKPOINT_VERSION = 1
MODEL_META_KEYS = ("architecture", "encoder", "classes", "in_channels", "mean", "std", "patch_size", "class_names")


class UserError(Exception):
    """A mistake the user can fix; the CLI prints its one-line message and exits with `exit_code`."""

    exit_code = 2  # bad input: a flag, a file or a checkpoint the user gave


class RunFailure(UserError):
    """A run that failed for another reason than its input (training diverged, a DataLoader worker was
    killed, a sample failed to load mid-run): the same one-line message, but exit code 1."""

    exit_code = 1


def closest(name, choices):
    """' (did you mean X?)' for the closest of `choices`, or '' when nothing is close."""
    match = difflib.get_close_matches(name, choices, n=1, cutoff=0.5)
    return f" (did you mean {match[0]}?)" if match else ""


def architecture_class(name):
    """The smp model class for an architecture name, matched case-insensitively."""
    for cls in ARCHITECTURES.values():
        if cls.__name__.lower() == name.lower():
            return cls
    raise UserError(f"--model {name} is not an smp architecture{closest(name, ARCHITECTURE_NAMES)}; "
                    f"choose one of: {', '.join(ARCHITECTURE_NAMES)}")


def check_encoder(name):
    """Refuse an encoder smp does not know, listing the valid names and the closest one."""
    names = smp.encoders.get_encoder_names()
    if name in names or name.startswith("tu-"):
        return
    raise UserError(f"--encoder {name} is not an smp encoder{closest(name, names)}; valid names: "
                    f"{', '.join(sorted(names))} (or any timm model as tu-NAME)")


def build_model(architecture, encoder, classes, in_channels=3, encoder_weights=None):
    """Build an smp model. `encoder_weights` is None, 'imagenet' (or another hub name) or a file path.

    When hub weights cannot be downloaded, one warning is printed and the encoder starts from random
    weights: a run should not die for want of network, but the user must know.
    """
    cls = architecture_class(architecture)
    check_encoder(encoder)
    weights_file = None
    if encoder_weights and Path(encoder_weights).suffix in (".pth", ".pt", ".bin", ".safetensors", ".tar"):
        weights_file, encoder_weights = Path(encoder_weights), None
        if not weights_file.is_file():
            raise UserError(f"--encoder-weights {weights_file}: no such file; give 'imagenet', 'none' or a weights file")
    if encoder_weights:
        try:
            return preferred_layout(cls(encoder_name=encoder, encoder_weights=encoder_weights,
                                        in_channels=in_channels, classes=classes), encoder)
        except (OSError, ConnectionError) as error:  # hub unreachable: offline machine or firewall
            warnings.warn(f"could not download {encoder_weights} weights for encoder {encoder} "
                          f"({type(error).__name__}); training continues from random initialization. "
                          f"Pass --encoder-weights none to skip the download.", stacklevel=2)
    model = cls(encoder_name=encoder, encoder_weights=None, in_channels=in_channels, classes=classes)
    if weights_file:
        load_encoder_weights(model, weights_file)
    return preferred_layout(model, encoder)


def preferred_layout(model, encoder):
    """channels_last where it was measured to help. On the CPU it trained 1.02-1.26x and inferred
    0.99-1.4x as fast for Unet, Unet++, FPN, Linknet, MAnet, PAN, DeepLabV3(+) and UPerNet with resnet,
    efficientnet, mobilenet and mit encoders (bench/run.py --only channels_last, README: Performance), but
    Segformer inferred up to 5x slower (its MLP decoder), so Segformer, DPT and the unmeasured timm (tu-)
    encoders keep the default layout. Only the layout changes: weights, state dicts and results stay the same."""
    if type(model).__name__ in ("Segformer", "DPT") or encoder.startswith("tu-"):
        return model
    return model.to(memory_format=torch.channels_last)


def load_encoder_weights(model, path):
    """Load a local encoder state dict (plain, or a full model's with an 'encoder.' prefix)."""
    state = torch_load(path, "--encoder-weights")
    state = state.get("model", state) if isinstance(state, dict) else state
    if not (isinstance(state, dict) and state and all(isinstance(key, str) for key in state)):
        raise UserError(f"--encoder-weights {path} holds no state dict (a dict of named tensors); "
                        f"give 'imagenet', 'none' or a file saved with torch.save(model.state_dict())")
    if any(key.startswith("encoder.") for key in state):
        state = {key[len("encoder."):]: value for key, value in state.items() if key.startswith("encoder.")}
    own = model.encoder.state_dict()
    missing, unexpected = set(own) - set(state), set(state) - set(own)
    model.encoder.load_state_dict(state, strict=False)  # smp encoders return None here, hence the sets above
    if len(missing) == len(own):
        raise UserError(f"--encoder-weights {path}: none of its tensors match encoder {type(model.encoder).__name__}")
    if missing or unexpected:
        warnings.warn(f"--encoder-weights {path}: {len(missing)} missing and {len(unexpected)} unexpected keys")


def unwrap(model):
    """The bare model inside DistributedDataParallel / torch.compile wrappers."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


def model_meta(architecture, encoder, classes, patch_size, in_channels=3, class_names=None,
               mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """The self-description stored in every checkpoint (and in exported ONNX files)."""
    names = class_names or (["background", "foreground"] if classes == 1 else [f"class_{i}" for i in range(classes)])
    return {"architecture": architecture_class(architecture).__name__, "encoder": encoder, "classes": classes,
            "in_channels": in_channels, "mean": list(mean), "std": list(std), "patch_size": patch_size,
            "class_names": list(names)}


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
        return data
    if isinstance(data, dict) and data and all(isinstance(value, torch.Tensor) for value in data.values()):
        return {"model": data}
    raise UserError(f"checkpoint {path} was not written by this toolkit (no '{CHECKPOINT_FORMAT}' header "
                    f"and not a plain state dict); train one with train.py")


def check_checkpoint_file(path, what):
    """Say what a file given as a checkpoint is when it is plainly something else, and what to give instead."""
    instead = "give a .pth.tar file written by train.py (checkpoint.pth.tar or best-checkpoint.pth.tar)"
    if path.is_dir():
        found = [name for name in ("checkpoint.pth.tar", "best-checkpoint.pth.tar") if (path / name).is_file()]
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


def model_from_checkpoint(checkpoint, path="checkpoint"):
    """Rebuild the model described by a checkpoint and load its weights (no download)."""
    if "meta" not in checkpoint:
        raise UserError(f"{path} holds weights only, with no architecture; it can fine-tune with "
                        f"train.py --load-model but detect.py needs a checkpoint written by train.py")
    meta = checkpoint["meta"]
    model = build_model(meta["architecture"], meta["encoder"], meta["classes"], meta["in_channels"])
    model.load_state_dict(checkpoint["model"])
    return model
