"""What mask values mean: binary masks (0/1, 0/255, or 0/65535 in 16 bits), class-index masks, palette and
colour masks, and checks of a split's labels.

Masks are read as the labels they hold: a palette PNG (VOC-style, what most labelling tools save) as its
palette indices, which OpenCV would expand to colours; other files as stored, one channel of 8 or 16 bits;
with a --mask-colors table (segtoolkit.data.classes), an RGB mask as the classes of its colours. Multi-class
masks are written back as palette PNGs: the indices stay the pixel values, the palette makes them visible.

Usage:
    from segtoolkit.data.masks import read_mask, binary_mask, class_mask, palette_png
    labels = class_mask(read_mask("masks/a.png"), "masks/a.png", classes=4, ignore_index=255)
    labels = read_mask("masks/b.png", colours=load_mask_colors("colours.csv"), ignore_label=255)
    Path("out.png").write_bytes(palette_png(labels, [(0, 0, 0), (255, 0, 0), (0, 255, 0), (0, 0, 255)]))
"""

import io

import numpy as np
from PIL import Image

from segtoolkit.errors import UserError
from segtoolkit.data.imaging import decode_bytes, read_bytes

IGNORE = -1  # the target of a pixel left out of the loss and every metric: padding, fill, --ignore-index
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PALETTE_COLOUR_TYPE = 3  # IHDR colour type of a PNG whose pixels are palette indices


def read_mask(path, colours=None, ignore_label=None):
    """A mask as a 2-D array of labels: a palette PNG as its indices, another file as stored (8 or 16 bit,
    single channel). With `colours` (a segtoolkit.data.classes.MaskColors), an RGB mask (a palette one as its
    colours) as class indices, its ignore colour as `ignore_label`."""
    data = read_bytes(path, "mask")
    if colours is not None:
        return colours.labels(rgb_pixels(decode_bytes(data, path, "mask"), path), path, ignore_label)
    if is_palette_png(data):
        return palette_indices(data, path)
    mask = decode_bytes(data, path, "mask")
    if mask.ndim == 3:
        if mask.shape[2] >= 3 and not (np.array_equal(mask[..., 0], mask[..., 1])
                                       and np.array_equal(mask[..., 0], mask[..., 2])):
            raise UserError(f"mask {path} is a colour image; save masks as single-channel PNGs of class indices, "
                            f"or give --mask-colors FILE (name,R,G,B per class) to read colours as classes")
        mask = mask[..., 0]
    return mask


def is_palette_png(data):
    """True for the bytes of a PNG whose pixels are palette indices (its IHDR chunk, always first, says so)."""
    return (data.size > 25 and data[:8].tobytes() == PNG_SIGNATURE and data[12:16].tobytes() == b"IHDR"
            and int(data[25]) == PALETTE_COLOUR_TYPE)


def palette_indices(data, path):
    """The palette indices of a palette PNG (Pillow keeps them; 1, 2 and 4-bit indices come unpacked)."""
    try:
        with Image.open(io.BytesIO(data.tobytes()), formats=["PNG"]) as picture:
            indices = np.array(picture)
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError):  # Pillow's damaged-file errors
        raise UserError(f"mask {path} cannot be read (truncated or not an image); replace it") from None
    if indices.ndim != 2 or indices.dtype != np.uint8:
        raise UserError(f"mask {path} cannot be read as palette indices (Pillow gives {indices.dtype} "
                        f"{indices.shape}); save it as an 8-bit palette or single-channel PNG")
    return indices


def rgb_pixels(decoded, path):
    """HxWx3 uint8 RGB of a decoded colour mask (OpenCV's BGR or BGRA; gray as three equal channels)."""
    if decoded.dtype != np.uint8:
        raise UserError(f"mask {path} has {decoded.dtype} pixels; --mask-colors reads 8-bit RGB masks (save them "
                        f"as 8-bit PNGs)")
    if decoded.ndim == 2 or decoded.shape[2] == 1:
        return np.repeat(decoded.reshape(decoded.shape[:2] + (1,)), 3, axis=2)
    return decoded[..., 2::-1]  # BGR(A) -> RGB, alpha dropped


def palette_png(mask, colours):
    """PNG bytes of a class-index mask (values < 256) as a palette image: viewers show `colours` (RGB per
    class), read_mask reads the indices back."""
    picture = Image.frombytes("P", (mask.shape[1], mask.shape[0]), np.ascontiguousarray(mask, np.uint8).tobytes())
    flat = [int(value) for colour in list(colours)[:256] for value in colour]
    picture.putpalette(flat + [0] * (768 - len(flat)))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", compress_level=1)  # the fastest level: masks compress well at any
    return buffer.getvalue()


BINARY_VALUES = ({0, 1}, {0, 255}, {0, 65535})  # 65535: white in a 16-bit PNG, as some labelling tools save


def binary_mask(mask, path):
    """0/1, 0/255 and 0/65535 masks all become {0,1} uint8; anything else is refused with the fix."""
    values = np.unique(mask)
    if any(set(values.tolist()) <= allowed for allowed in BINARY_VALUES):
        return (mask > 0).astype(np.uint8)
    shown = ", ".join(str(v) for v in values[:8]) + (" ..." if values.size > 8 else "")
    raise UserError(f"mask {path} has values {shown}: a binary mask must be 0/1, 0/255 or 0/65535 (soft, resized or "
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
            f"{split} masks (as read{' at the patch size' if training else ''}): {effect}; check the masks and "
            f"--classes {classes}"]
