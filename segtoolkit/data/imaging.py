"""Reading images and the one preprocessing path shared by training, validation and inference.

`read_image` gives uint8 RGB, upright (EXIF orientation applied) whatever the file holds: gray, RGB or
RGBA, 8 or 16 bit (16-bit files scaled by the bit depth of the model's data, `dataset_bit_depth`, stored in
its checkpoint; by each image's own without one). `preprocess_image` letterboxes into the square patch (or,
with stretch=True, resizes the whole image to it, ignoring the aspect ratio) and normalizes; `unletterbox`
takes a label map fitted into the patch back to the image's size, either way (a model's predictions come
back as logits instead, upsampled before any decision: segtoolkit.inference.full_size). A file that cannot be read
is a UserError naming it.

Usage:
    from segtoolkit.data.imaging import read_image, preprocess_image, unletterbox
    tensor, box = preprocess_image(read_image("a.jpg"), patch_size=256)   # float32 3x256x256, Letterbox
    image = read_image("frame.tif", bit_depth=meta["bit_depth"])          # 16-bit files as the model's data
    tensor, box = preprocess_image(image, 256, stretch=is_stretched(meta))  # as a model's meta says
    labels = unletterbox(patch_labels, box)                                # back to the image's size
"""

import sys
import threading
from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np
import torch

from segtoolkit.errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# train.py --normalize: the (mean, std) of [0, 1] pixels an input is standardized with, stored in the checkpoint's
# meta; unit leaves pixels / 255 as they are (a plain training loop's input)
NORMALIZATIONS = {"imagenet": (IMAGENET_MEAN, IMAGENET_STD), "unit": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))}
HIGH_BIT_DEPTHS = (10, 12, 14, 16)  # what cameras and microscopes store in 16-bit files
BIT_DEPTHS = (8,) + HIGH_BIT_DEPTHS  # what train.py --bit-depth accepts
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TIFF_SIGNATURES = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF, both byte orders


REPORTED_BIT_DEPTHS = set()  # bit depths this process has already said it reads 16-bit images as


REPORT_LOCK = threading.Lock()  # images are read from several threads


def decode_file(path, kind="image"):
    """Decode an image or mask file; a UserError naming it if that fails.

    Images are decoded upright: viewers and labelling tools apply the EXIF orientation of phone photos, so
    masks are drawn on the upright image. OpenCV applies it while decoding (it reads the tag from the header,
    no second pass) unless asked for IMREAD_UNCHANGED, so images take ANYCOLOR | ANYDEPTH instead (gray stays
    one channel and 16 bits stay 16 bits; alpha is dropped, as `to_rgb8` would). Masks are decoded as stored.
    """
    return decode_bytes(read_bytes(path, kind), path, kind)


def unreadable_fix(kind):
    return "replace it or remove it from the split" if kind == "image" else "replace it"


def read_bytes(path, kind="image"):
    """The bytes of an image or mask file as a uint8 array; a UserError naming it when it cannot be read."""
    try:
        return np.fromfile(path, dtype=np.uint8)
    except OSError as error:
        raise UserError(f"{kind} {path} cannot be read ({error.strerror or error}); {unreadable_fix(kind)}") from None


def decode_bytes(data, path, kind="image"):
    """decode_file on bytes already read (masks look at their header first: segtoolkit.data.masks)."""
    flags = cv2.IMREAD_ANYCOLOR | cv2.IMREAD_ANYDEPTH if kind == "image" else cv2.IMREAD_UNCHANGED
    decoded = None
    if data.size:
        try:
            decoded = cv2.imdecode(data, flags)
        except cv2.error:  # some decoders assert on damaged headers instead of returning None
            decoded = None
    if decoded is None or decoded.size == 0 or truncated_jpeg(data):
        raise UserError(f"{kind} {path} cannot be read (truncated or not an image); {unreadable_fix(kind)}")
    return decoded


def truncated_jpeg(data):
    """libjpeg pads a cut-off JPEG with grey and only prints a warning: look for the end-of-image marker.

    Scan data cannot hold a start-of-scan marker (0xFF is byte-stuffed there), so a complete file has
    an end marker after its last start-of-scan; bytes after the end marker (camera trailers) are fine.
    """
    if data[:2].tobytes() != b"\xff\xd8":
        return False
    raw = data.tobytes()
    return raw.rfind(b"\xff\xd9") < raw.rfind(b"\xff\xda")


def read_image(path, bit_depth=None):
    """Read an image as uint8 RGB HxWx3, upright, whatever it is on disk: gray, RGB or RGBA, 8 or 16 bit
    (`bit_depth`: how 16-bit files are scaled, see sixteen_to_eight_bits)."""
    return to_rgb8(decode_file(path, "image"), path, bit_depth)


def to_rgb8(image, path="image", bit_depth=None):
    """Convert a decoded OpenCV array (BGR order) to uint8 RGB HxWx3."""
    if image.dtype == np.uint16:
        image = sixteen_to_eight_bits(image, path, bit_depth)
    elif image.dtype != np.uint8:
        raise UserError(f"image {path} has pixel type {image.dtype}; save it as 8- or 16-bit")
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if image.shape[2] == 1:
        return cv2.cvtColor(image[:, :, 0], cv2.COLOR_GRAY2RGB)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    if image.shape[2] == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    raise UserError(f"image {path} has {image.shape[2]} channels; use gray, RGB or RGBA")


def sixteen_to_eight_bits(image, path, bit_depth=None):
    """16-bit pixels to 8 bits: 0..2^bits-1 onto 0..255. `bit_depth` is the data's (train.py decides it once,
    from the training split or --bit-depth, and stores it in the checkpoint), so one raw value reads as one
    8-bit value in every image; values above it read as 255 (said once). Without one (models trained before
    it was stored, data without 16-bit images), the image's own: the smallest of 10, 12, 14 and 16 bits that
    holds its largest value, so 12-bit data is not near-black (4095 -> 16), but 800 reads 199 in a frame
    whose largest value is 900 and 50 in one whose largest is 4000."""
    largest = largest_value(image)
    if bit_depth is None:
        bits = bits_holding(largest)
        if 0 < largest and bits < 16:
            report_bit_depth(bits, largest, path)
    else:
        bits = bit_depth
        if largest >= 1 << bits:
            report_clipping(bits, largest, path)
    return scale_table(bits)[image]


def largest_value(image):
    """The largest colour value of a decoded image (an alpha channel is left out: opaque is 65535)."""
    colour = image[..., :3] if image.ndim == 3 and image.shape[2] == 4 else image
    return int(colour.max()) if colour.size else 0


def bits_holding(largest):
    """The smallest of 10, 12, 14 and 16 bits that holds `largest`."""
    return next(bits for bits in HIGH_BIT_DEPTHS if largest < 1 << bits)


def dataset_bit_depth(paths):
    """The bit depth 16-bit images of a data set are read with (train.py --bit-depth auto: its training
    split): the smallest of 10, 12, 14 and 16 bits that holds the largest value of any of its 16-bit images;
    None when it has none. Only files that can hold 16 bits (a PNG whose header says 16, a TIFF) are decoded."""
    largest = None
    for path in paths:
        if may_hold_16_bits(path):
            image = decode_file(path, "image")
            if image.dtype == np.uint16:
                largest = max(largest or 0, largest_value(image))
    return None if largest is None else bits_holding(largest)


def may_hold_16_bits(path):
    """Whether an image file may decode to 16 bits, from its first bytes: a 16-bit PNG, or any TIFF."""
    with open(path, "rb") as handle:
        head = handle.read(25)
    if head.startswith(PNG_SIGNATURE):
        return len(head) == 25 and head[24] == 16  # the IHDR chunk's bit depth
    return head[:4] in TIFF_SIGNATURES


def check_bit_depth(value, flag="--bit-depth"):
    """--bit-depth as stored: 'auto' or one of BIT_DEPTHS (an int)."""
    if str(value) == "auto":
        return "auto"
    if str(value) not in map(str, BIT_DEPTHS):
        raise UserError(f"{flag} {value}: give auto (from the training split's 16-bit images) or one of "
                        f"{', '.join(map(str, BIT_DEPTHS))}")
    return int(value)


@lru_cache(maxsize=None)
def scale_table(bits):
    """Lookup table from 16-bit values to uint8: 0..2^bits-1 onto 0..255, rounded (one gather per image)."""
    top = (1 << bits) - 1
    values = np.minimum(np.arange(1 << 16, dtype=np.uint32), top)
    return ((values * 255 + top // 2) // top).astype(np.uint8)


def report_clipping(bits, largest, path):
    """Say once per process and bit depth that 16-bit values above the data's depth read as 255."""
    with REPORT_LOCK:
        if ("clipped", bits) in REPORTED_BIT_DEPTHS:
            return
        REPORTED_BIT_DEPTHS.add(("clipped", bits))
    top = (1 << bits) - 1
    print(f"warning: 16-bit image {path} holds values up to {largest}, above the {bits}-bit range (0..{top}) the "
          f"model's data was read in: its pixels above {top} read as 255", file=sys.stderr, flush=True)


def report_bit_depth(bits, largest, path):
    """Say once per process and bit depth that 16-bit images are read as fewer bits: it changes brightness."""
    with REPORT_LOCK:
        if bits in REPORTED_BIT_DEPTHS:
            return
        REPORTED_BIT_DEPTHS.add(bits)
    print(f"warning: 16-bit image {path} holds values up to {largest}: it and any other 16-bit image whose "
          f"values fit in {bits} bits are read as {bits}-bit data (0..{(1 << bits) - 1} scaled to 0..255)",
          file=sys.stderr, flush=True)


# ---------------------------------------------------------------- geometry: the one preprocessing path


@dataclass(frozen=True)
class Letterbox:
    """How an image was fitted into the square patch: original size and the scaled size (top-left). A
    stretched image's scaled size is the patch itself: nothing to crop, only a resize back."""
    height: int
    width: int
    scaled_height: int
    scaled_width: int


def fit_longest_side(image, size, interpolation=cv2.INTER_AREA):
    """Resize so the longest side is `size`, keeping the aspect ratio."""
    height, width = image.shape[:2]
    scale = size / max(height, width)
    new_size = (max(1, round(width * scale)), max(1, round(height * scale)))
    if new_size == (width, height):
        return image
    if scale > 1 and interpolation == cv2.INTER_AREA:
        interpolation = cv2.INTER_LINEAR
    return cv2.resize(image, new_size, interpolation=interpolation)


def pad_to_square(image, size, value=0):
    """Pad bottom and right to size x size (the image keeps its top-left corner)."""
    height, width = image.shape[:2]
    return cv2.copyMakeBorder(image, 0, size - height, 0, size - width, cv2.BORDER_CONSTANT, value=value)


def stretch_to_square(image, size, interpolation=cv2.INTER_AREA):
    """Resize to size x size whatever the aspect ratio (input mode 'stretch'): no padding."""
    height, width = image.shape[:2]
    if (height, width) == (size, size):
        return image
    if size > min(height, width) and interpolation == cv2.INTER_AREA:
        interpolation = cv2.INTER_LINEAR  # INTER_AREA enlarging is nearest-like; as fit_longest_side
    return cv2.resize(image, (size, size), interpolation=interpolation)


def scaled(array, scale, interpolation=cv2.INTER_AREA):
    """An image (or, with INTER_NEAREST, a mask) resized by `scale` (--scale: crop-trained models see images
    at their own resolution times it), at least one pixel a side."""
    if scale == 1:
        return array
    height, width = array.shape[:2]
    return cv2.resize(array, (max(1, round(width * scale)), max(1, round(height * scale))),
                      interpolation=interpolation)


def normalization_name(meta):
    """The --normalize name of a model's meta mean and std, or None for a pair that is neither."""
    stored = (tuple(meta.get("mean", IMAGENET_MEAN)), tuple(meta.get("std", IMAGENET_STD)))
    return next((name for name, pair in NORMALIZATIONS.items() if pair == stored), None)


def is_stretched(meta):
    """Whether a model (its checkpoint's or export's meta) was trained on stretched images."""
    return meta.get("input_mode") == "stretch"


def letterbox(image, size, interpolation=cv2.INTER_AREA, stretch=False):
    """Fit an image into size x size: scale the longest side to `size`, pad bottom/right with zeros; or,
    with `stretch`, resize it to size x size ignoring its aspect ratio (the box then has no padding)."""
    if stretch:
        return stretch_to_square(image, size, interpolation), Letterbox(image.shape[0], image.shape[1], size, size)
    scaled = fit_longest_side(image, size, interpolation)
    box = Letterbox(image.shape[0], image.shape[1], scaled.shape[0], scaled.shape[1])
    return pad_to_square(scaled, size), box


def unletterbox(mask, box):
    """Undo `letterbox` on a label map: crop the padding, resize (nearest) to the original size. Predictions
    are not made so (segtoolkit.inference.full_size upsamples their logits, then decides)."""
    mask = mask[:box.scaled_height, :box.scaled_width]
    return cv2.resize(mask, (box.width, box.height), interpolation=cv2.INTER_NEAREST)


def check_patch_size(patch_size):
    if patch_size < 32 or patch_size % 32:
        raise UserError(f"--patch-size {patch_size} is not a positive multiple of 32, which smp models need; "
                        f"try {max(32, 32 * round(patch_size / 32))}")


def normalize(image, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """uint8 HxWxC RGB -> float32 CxHxW tensor, scaled to [0,1] then standardized."""
    # NumPy, one channel at a time into the CxHxW result, as (x - 255 mean) / (255 std): single-threaded
    # and faster than the torch version at patch sizes (0.12 vs 0.19 ms at 256), and safe to run in a
    # reader thread (a torch op there starts a second OpenMP team that spins against the model's threads).
    # A division, not a product with 1 / (255 std): mean 0 and std 1 (--normalize unit) then give pixels / 255
    # bit for bit as a plain loop's `x.float() / 255` does; AdamW's first steps turn a one-ulp difference in the
    # inputs into 2e-3 in the third step's loss (tests/test_parity.py)
    image = np.asarray(image)
    out = np.empty((image.shape[2],) + image.shape[:2], np.float32)
    for channel, (channel_mean, channel_std) in enumerate(zip(mean, std)):
        np.subtract(image[..., channel], np.float32(channel_mean * 255), out=out[channel], dtype=np.float32)
        out[channel] /= np.float32(channel_std * 255)
    return torch.from_numpy(out)


def preprocess_image(image, patch_size, mean=IMAGENET_MEAN, std=IMAGENET_STD, stretch=False):
    """The validation/inference path for one RGB uint8 image: letterbox (stretch: resize to the square
    patch, for models whose meta says input_mode 'stretch') and normalize.

    Returns (float32 3xPxP tensor, Letterbox). detect.py calls exactly this.
    """
    padded, box = letterbox(image, patch_size, stretch=stretch)
    return normalize(padded, mean, std), box
