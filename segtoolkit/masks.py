"""What mask values mean: binary masks (0/1 or 0/255), class-index masks, and checks of a split's labels.

Usage:
    from segtoolkit.masks import read_mask, binary_mask, class_mask
    labels = class_mask(read_mask("masks/a.png"), "masks/a.png", classes=4, ignore_index=255)
"""

import numpy as np

from segtoolkit.errors import UserError

IGNORE = -1  # the target of a pixel left out of the loss and every metric: padding, fill, --ignore-index
from segtoolkit.imaging import decode_file


def read_mask(path):
    """Read a mask as a 2-D array of its stored values (8 or 16 bit, single channel)."""
    mask = decode_file(path, "mask")
    if mask.ndim == 3:
        if mask.shape[2] >= 3 and not (np.array_equal(mask[..., 0], mask[..., 1])
                                       and np.array_equal(mask[..., 0], mask[..., 2])):
            raise UserError(f"mask {path} is a colour image; save masks as single-channel PNGs of class indices")
        mask = mask[..., 0]
    return mask


def binary_mask(mask, path):
    """0/1 or 0/255 masks both become {0,1} uint8; anything else is refused with the fix."""
    values = np.unique(mask)
    if set(values.tolist()) <= {0, 1} or set(values.tolist()) <= {0, 255}:
        return (mask > 0).astype(np.uint8)
    shown = ", ".join(str(v) for v in values[:8]) + (" ..." if values.size > 8 else "")
    raise UserError(f"mask {path} has values {shown}: a binary mask must be 0/1 or 0/255 (soft, resized or "
                    f"JPEG masks: threshold them and save as PNG), or use --classes N for class indices")


def class_mask(mask, path, classes, ignore_index=None):
    """Class-index masks: every value must be a class (0..classes-1) or the ignore index."""
    values = np.unique(mask).tolist()
    bad = [v for v in values if v != ignore_index and not (float(v).is_integer() and 0 <= v < classes)]
    if bad:
        raise UserError(f"mask {path} has value {bad[0]:g}, which is neither a class (0..{classes - 1}) nor "
                        f"--ignore-index ({ignore_index}); fix the mask or the --classes/--ignore-index flags")
    return mask.astype(label_dtype(min(values), max(values)))


def label_dtype(low, high):
    """The smallest integer type OpenCV can resize and warp that holds labels low..high (no wrap-around)."""
    for dtype in (np.uint8, np.uint16, np.int16):
        if np.iinfo(dtype).min <= low and high <= np.iinfo(dtype).max:
            return dtype
    return np.int32


def class_pixel_counts(dataset):
    """{label value: pixels} over a dataset's masks, as trained on: binary 0/255 already 0/1, at the size the
    dataset stores them (letterbox: the patch size, where a few-pixel object can vanish), without padding;
    the ignore index counts too. Counted once, when the dataset is built."""
    return dict(dataset.label_counts)


def label_warnings(counts, classes, ignore_index=None, class_names=None, split="training"):
    """One-line warnings about a split's labels (`class_pixel_counts`), empty when all is well: an
    --ignore-index that leaves no foreground (0/255 binary masks taken as classes), or classes never seen."""
    labels = max(classes, 2)  # binary masks hold background and foreground
    names = class_names or (["background", "foreground"] if classes == 1 else [f"class_{i}" for i in range(labels)])
    training = split == "training"
    foreground = sum(counts.get(label, 0) for label in range(1, labels))
    if classes > 1 and ignore_index is not None and counts.get(ignore_index) and not foreground:
        fix = ("masks of 0 and 255 are binary masks: train them with --classes 1 (without --ignore-index)"
               if ignore_index == 255 else "check the masks and --ignore-index")
        return [f"--ignore-index {ignore_index} removes every foreground pixel: the {split} masks hold only 0 and "
                f"{ignore_index}, so {'the model learns' if training else 'Dice measures'} background alone; {fix}"]
    absent = [str(label) if names[label] == f"class_{label}" else f"{label} ({names[label]})"
              for label in range(labels) if not counts.get(label)]
    if not absent:
        return []
    one = len(absent) == 1
    effect = f"the model cannot learn {'it' if one else 'them'}" if training else \
        f"{'its' if one else 'their'} Dice stays empty, left out of the mean"
    return [f"{'class' if one else 'classes'} {', '.join(absent)} never {'appears' if one else 'appear'} in the "
            f"{split} masks (as read at the patch size): {effect}; check the masks and --classes {classes}"]
