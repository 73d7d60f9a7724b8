"""The model factory: any smp architecture on any smp encoder, in the memory layout that runs fastest.

Usage:
    from segtoolkit.models.factory import build_model, model_meta
    model = build_model("Unet", "resnet18", classes=1, encoder_weights=None)
    meta = model_meta("Unet", "resnet18", classes=1, patch_size=256)   # what a checkpoint stores about it
"""

import difflib
import warnings
from pathlib import Path

import segmentation_models_pytorch as smp
import torch

from segtoolkit.models.checkpoints import torch_load
from segtoolkit.data.classes import default_class_names
from segtoolkit.errors import UserError, file_problem
from segtoolkit.data.imaging import IMAGENET_MEAN, IMAGENET_STD

ARCHITECTURES = {name: cls for name, cls in smp.MODEL_ARCHITECTURES_MAPPING.items()}


ARCHITECTURE_NAMES = [cls.__name__ for cls in ARCHITECTURES.values()]


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
            raise UserError(f"--encoder-weights {weights_file}: {file_problem(weights_file)}; give 'imagenet', 'none' "
                            f"or a weights file")
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
    """channels_last where it was measured to help (docs/performance.md; python3 -m bench.run --only
    channels_last): the CNN architectures train and infer faster on the CPU in it, but Segformer (its MLP
    decoder) infers much slower, so Segformer, DPT and the unmeasured timm (tu-) encoders keep the default
    layout. Only the layout changes: weights, state dicts and results stay the same."""
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
        warnings.warn(f"--encoder-weights {path}: {len(missing)} missing and {len(unexpected)} unexpected keys",
                      stacklevel=2)




def model_meta(architecture, encoder, classes, patch_size, in_channels=3, class_names=None,
               mean=IMAGENET_MEAN, std=IMAGENET_STD, input_mode="letterbox", scale=1.0, mask_colors=None,
               bit_depth=None):
    """The self-description stored in every checkpoint (and in exported ONNX files). `input_mode` says how
    the model saw its images: 'letterbox' (whole images fitted into the patch), 'stretch' (whole images
    resized to the patch, aspect ratio ignored: every consumer stretches them the same way) or 'tile' (crops
    at the image's own resolution times `scale`: detect.py and val.py then segment by sliding window).
    `mask_colors` is the --mask-colors table (MaskColors.to_meta), so val.py reads the masks and detect.py
    colours its outputs as training did; None without one. `bit_depth` is the bit depth 16-bit images of
    its data are scaled by (segtoolkit.data.imaging.dataset_bit_depth), so every consumer maps one raw value to one
    8-bit value as training did; None: each 16-bit image by its own largest value."""
    names = class_names or default_class_names(classes)
    return {"architecture": architecture_class(architecture).__name__, "encoder": encoder, "classes": classes,
            "in_channels": in_channels, "mean": list(mean), "std": list(std), "patch_size": patch_size,
            "class_names": list(names), "input_mode": input_mode, "scale": scale, "mask_colors": mask_colors,
            "bit_depth": bit_depth}


def model_from_checkpoint(checkpoint, path="checkpoint"):
    """Rebuild the model described by a checkpoint and load its weights (no download)."""
    if "meta" not in checkpoint:
        raise UserError(f"{path} holds weights only, with no architecture; it can fine-tune with "
                        f"train.py --load-model but detect.py needs a checkpoint written by train.py")
    meta = checkpoint["meta"]
    model = build_model(meta["architecture"], meta["encoder"], meta["classes"], meta["in_channels"])
    model.load_state_dict(checkpoint["model"])
    return model


def load_matching_weights(model, state, path):
    """Start from another model's weights: tensors of matching name and shape are loaded, the rest reported."""
    own = model.state_dict()
    usable = {key: value for key, value in state.items() if key in own and own[key].shape == value.shape}
    if not usable:
        raise UserError(f"--load-model {path}: no tensor matches a {type(model).__name__} with this encoder; "
                        f"check --model and --encoder")
    model.load_state_dict(usable, strict=False)
    skipped = len(own) - len(usable)
    return f"{len(usable)} tensors loaded" + (f", {skipped} left at initialization (different shape or missing)"
                                              if skipped else "")
