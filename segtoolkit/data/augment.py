"""Training augmentation chosen for the data: a preset, or any albumentations pipeline saved the library's
own way (A.save / A.load, JSON or YAML).

- `none` (the default; `--no-augment` is the same): no augmentation. Over 3 seeds it matched or beat a plain
  training loop on every set measured at 6 and 30 epochs, which `upright` did not (docs/quality.md).
- `upright`: natural images with a sky or a floor (streets, people, products): horizontal flips, mild scale and
  shift, brightness and contrast. Never upside down: up is the strongest cue there.
- `topdown`: microscopy, aerial and satellite tiles, documents scanned any way round: both flips, 90-degree
  rotations, mild scale, shift and rotation, brightness and contrast.

A pipeline file holds augmentation only: the model's normalization (mean and std, stored in its checkpoint)
is applied to every image after it, in training, evaluation and detect.py alike. A file with A.Normalize,
A.ToFloat, A.FromFloat or ToTensorV2, as most albumentations examples have, is refused in one line: its
training images would be normalized twice (nearly constant inputs) while validation and detection images are
normalized once.

Geometric transforms move the mask with the image; the pixels they fill from outside the image, like the
letterbox padding, are left out of the loss and every metric (dataset.py tracks them with a validity mask
that goes through the same pipeline), so a pipeline's fill value never becomes a class.

Usage:
    transform = load_augmentation("upright")                 # or "topdown", "none", "my_pipeline.yaml"
    save_augmentation(transform, run_dir / "augmentation.yaml")
    same = augmentation_from_dict(augmentation_dict(transform))   # what a checkpoint stores
"""

from pathlib import Path

import albumentations as A
import cv2

from segtoolkit.errors import UserError, file_problem

PRESETS = ("upright", "topdown", "none")
DEFAULT_AUGMENTATION = "none"  # the measured choice (docs/quality.md: learning parity)
AUGMENTED = "upright"  # what the dataset API's augment=True means
PIPELINE_SUFFIXES = {".json": "json", ".yaml": "yaml", ".yml": "yaml"}
NORMALIZING = ("Normalize", "ToFloat", "FromFloat", "ToTensorV2")  # the toolkit does these after augmentation


def preset(name):
    """The albumentations pipeline of a preset (None for 'none')."""
    constant = dict(border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=0)
    photometric = A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2, p=0.5)
    if name == "upright":
        return A.Compose([A.HorizontalFlip(p=0.5),
                          A.Affine(scale=(0.9, 1.1), translate_percent=(-0.05, 0.05), p=0.5, **constant),
                          photometric])
    if name == "topdown":
        return A.Compose([A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5), A.RandomRotate90(p=0.5),
                          A.Affine(scale=(0.9, 1.1), translate_percent=(-0.05, 0.05), rotate=(-15, 15), p=0.5,
                                   **constant),
                          photometric])
    return None


def load_augmentation(spec):
    """A preset name or the path of a pipeline file -> an A.Compose, or None for no augmentation."""
    if spec in PRESETS:
        return preset(spec)
    path = Path(spec)
    kind = PIPELINE_SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise UserError(f"--augment {spec}: give a preset ({', '.join(PRESETS)}) or an albumentations pipeline "
                        f"file saved with A.save (.json, .yaml or .yml)")
    if not path.is_file():
        raise UserError(f"--augment {spec}: {file_problem(path)}; give a preset ({', '.join(PRESETS)}) or an "
                        f"albumentations pipeline file saved with A.save")
    try:
        transform = A.load(str(path), data_format=kind)
    except Exception as error:  # noqa: BLE001 - albumentations raises many kinds for a file it cannot read
        reason = (str(error).splitlines() or [type(error).__name__])[0][:200]
        raise UserError(f"--augment {spec} is not an albumentations pipeline A.load can read ({reason}); "
                        f"write it with A.save(pipeline, path, data_format='{kind}')") from None
    check_no_normalization(transform, spec)
    return transform if isinstance(transform, A.BaseCompose) else A.Compose([transform])


def check_no_normalization(transform, spec):
    """Refuse a pipeline that normalizes or converts the image itself (anywhere, nested compositions too):
    the toolkit normalizes with the checkpoint's mean and std after augmenting, so it would happen twice."""
    found = sorted({type(step).__name__ for step in steps(transform)} & set(NORMALIZING))
    if found:
        raise UserError(f"--augment {spec} holds {', '.join(found)}: normalization is the checkpoint's job (every "
                        f"image is normalized with the model's mean and std after augmentation, so training images "
                        f"would be normalized twice); remove {', '.join(found)} from the pipeline")


def steps(transform):
    """Every transform of a pipeline, inside Compose, OneOf, SomeOf and the other compositions too."""
    yield transform
    for child in getattr(transform, "transforms", None) or ():
        yield from steps(child)


def augmentation_dict(transform):
    """The pipeline as plain data (stored in checkpoints: a resume uses exactly the pipeline it began with)."""
    return None if transform is None else A.to_dict(transform)


def augmentation_from_dict(stored):
    return None if stored is None else A.from_dict(stored)


def save_augmentation(transform, path):
    """Write the pipeline a run uses into its folder, in the form --augment reads back."""
    if transform is not None:
        A.save(transform, str(path), data_format=PIPELINE_SUFFIXES[Path(path).suffix.lower()])
