"""Datasets, split files and the one preprocessing path shared by training, validation and detection.

`BinaryDataset` (one class: masks 0/1 or 0/255) and `Dataset` (several classes: masks of class
indices) preload every sample at construction as uint8, already scaled so the longest side is the
patch size; `load_sample(i)` letterboxes to patch x patch, augments (training only) and normalizes.
Bad files are found here, before any training, and reported with their path.

Usage:
    from dataset import BinaryDataset, read_split_file
    images = read_split_file("training_dataset.txt", "data/sample")
    train_set = BinaryDataset(pair_masks(images, "data/sample/masks"), patch_size=128, augment=True)
    image, mask = train_set.load_sample(0)   # float32 3xPxP normalized, float32 1xPxP in {0,1}
"""

import collections
import math
import os
import random
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import torch

from models import IMAGENET_MEAN, IMAGENET_STD, UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
SPLIT_FILES = ("training_dataset.txt", "validation_dataset.txt", "test_dataset.txt")
HIGH_BIT_DEPTHS = (10, 12, 14, 16)  # what cameras and microscopes store in 16-bit files
REPORTED_BIT_DEPTHS = set()  # bit depths this process has already said it reads 16-bit images as
REPORT_LOCK = threading.Lock()  # images are read from several threads


# ---------------------------------------------------------------- reading files


def decode_file(path, kind="image"):
    """Decode an image or mask file; a UserError naming it if that fails.

    Images are decoded upright: viewers and labelling tools apply the EXIF orientation of phone photos, so
    masks are drawn on the upright image. OpenCV applies it while decoding (it reads the tag from the header,
    no second pass) unless asked for IMREAD_UNCHANGED, so images take ANYCOLOR | ANYDEPTH instead (gray stays
    one channel and 16 bits stay 16 bits; alpha is dropped, as `to_rgb8` would). Masks are decoded as stored.
    """
    fix = "replace it or remove it from the split" if kind == "image" else "replace it"
    flags = cv2.IMREAD_ANYCOLOR | cv2.IMREAD_ANYDEPTH if kind == "image" else cv2.IMREAD_UNCHANGED
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as error:
        raise UserError(f"{kind} {path} cannot be read ({error.strerror or error}); {fix}") from None
    decoded = None
    if data.size:
        try:
            decoded = cv2.imdecode(data, flags)
        except cv2.error:  # some decoders assert on damaged headers instead of returning None
            decoded = None
    if decoded is None or decoded.size == 0 or truncated_jpeg(data):
        raise UserError(f"{kind} {path} cannot be read (truncated or not an image); {fix}")
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


def read_image(path):
    """Read an image as uint8 RGB HxWx3, upright, whatever it is on disk: gray, RGB or RGBA, 8 or 16 bit."""
    return to_rgb8(decode_file(path, "image"), path)


def to_rgb8(image, path="image"):
    """Convert a decoded OpenCV array (BGR order) to uint8 RGB HxWx3."""
    if image.dtype == np.uint16:
        image = sixteen_to_eight_bits(image, path)
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


def sixteen_to_eight_bits(image, path):
    """16-bit pixels to 8 bits, scaled by the image's bit depth: the smallest of 10, 12, 14 and 16 bits that
    holds its largest value. 12-bit data scaled as 16-bit would be near-black (4095 -> 16)."""
    colour = image[..., :3] if image.ndim == 3 and image.shape[2] == 4 else image  # opaque alpha is 65535
    largest = int(colour.max()) if colour.size else 0
    bits = next(bits for bits in HIGH_BIT_DEPTHS if largest < 1 << bits)
    if 0 < largest and bits < 16:
        report_bit_depth(bits, largest, path)
    return scale_table(bits)[image]


@lru_cache(maxsize=None)
def scale_table(bits):
    """Lookup table from 16-bit values to uint8: 0..2^bits-1 onto 0..255, rounded (one gather per image)."""
    top = (1 << bits) - 1
    values = np.minimum(np.arange(1 << 16, dtype=np.uint32), top)
    return ((values * 255 + top // 2) // top).astype(np.uint8)


def report_bit_depth(bits, largest, path):
    """Say once per process and bit depth that 16-bit images are read as fewer bits: it changes brightness."""
    with REPORT_LOCK:
        if bits in REPORTED_BIT_DEPTHS:
            return
        REPORTED_BIT_DEPTHS.add(bits)
    print(f"warning: 16-bit image {path} holds values up to {largest}: it and any other 16-bit image whose "
          f"values fit in {bits} bits are read as {bits}-bit data (0..{(1 << bits) - 1} scaled to 0..255)",
          file=sys.stderr, flush=True)


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


# ---------------------------------------------------------------- geometry: the one preprocessing path


@dataclass(frozen=True)
class Letterbox:
    """How an image was fitted into the square patch: original size and the scaled size (top-left)."""
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


def letterbox(image, size, interpolation=cv2.INTER_AREA):
    """Fit an image into size x size: scale the longest side to `size`, pad bottom/right with zeros."""
    scaled = fit_longest_side(image, size, interpolation)
    box = Letterbox(image.shape[0], image.shape[1], scaled.shape[0], scaled.shape[1])
    return pad_to_square(scaled, size), box


def unletterbox(mask, box):
    """Undo `letterbox` on a predicted mask: crop the padding, resize (nearest) to the original size."""
    mask = mask[:box.scaled_height, :box.scaled_width]
    return cv2.resize(mask, (box.width, box.height), interpolation=cv2.INTER_NEAREST)


def check_patch_size(patch_size):
    if patch_size < 32 or patch_size % 32:
        raise UserError(f"--patch-size {patch_size} is not a positive multiple of 32, which smp models need; "
                        f"try {max(32, 32 * round(patch_size / 32))}")


def normalize(image, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """uint8 HxWxC RGB -> float32 CxHxW tensor, scaled to [0,1] then standardized."""
    # NumPy, one channel at a time into the CxHxW result, as (x - 255 mean) * 1/(255 std): single-threaded
    # and faster than the torch version at patch sizes (0.12 vs 0.19 ms at 256), and safe to run in a
    # reader thread (a torch op there starts a second OpenMP team that spins against the model's threads)
    image = np.asarray(image)
    out = np.empty((image.shape[2],) + image.shape[:2], np.float32)
    for channel, (channel_mean, channel_std) in enumerate(zip(mean, std)):
        np.subtract(image[..., channel], np.float32(channel_mean * 255), out=out[channel], dtype=np.float32)
        out[channel] *= np.float32(1 / (channel_std * 255))
    return torch.from_numpy(out)


def preprocess_image(image, patch_size, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """The validation/inference path for one RGB uint8 image: letterbox and normalize.

    Returns (float32 3xPxP tensor, Letterbox). detect.py calls exactly this.
    """
    padded, box = letterbox(image, patch_size)
    return normalize(padded, mean, std), box


# ---------------------------------------------------------------- split files and pairing


def resolve_image_path(line, data_dir, img_dir="imgs"):
    """A split-file entry: absolute, relative to the data dir, or a bare name inside the image folder."""
    path = Path(line)
    if path.is_absolute():
        return path
    candidate = Path(data_dir) / path
    if is_file(candidate) or len(path.parts) > 1:
        return candidate
    return Path(data_dir) / img_dir / path


def is_file(path):
    """Path.is_file, but False (not an exception) for names the OS refuses, e.g. longer than NAME_MAX."""
    try:
        return Path(path).is_file()
    except (OSError, ValueError):
        return False


def is_broken_link(path):
    """A symbolic link whose target does not exist (Path.is_file says False, as for a missing file)."""
    try:
        return Path(path).is_symlink() and not Path(path).exists()
    except (OSError, ValueError):
        return False


def shown_link(path, name=None):
    """'name -> target' of a link, as an error shows it."""
    return f"{shorten(name or str(path))} -> {shorten(os.readlink(path))}"


def listed(names, limit=10):
    """The first `limit` names, comma-separated, and how many more."""
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def shorten(text, width=160):
    """A name as shown in an error: a line of garbage in a split file must not flood or garble the terminal."""
    text = "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)
    return text if len(text) <= width else f"{text[:width - 20]}...{text[-17:]}"


BYTE_ORDER_MARKS = ((b"\xff\xfe\x00\x00", "UTF-32 LE"), (b"\x00\x00\xfe\xff", "UTF-32 BE"),
                    (b"\xff\xfe", "UTF-16 LE"), (b"\xfe\xff", "UTF-16 BE"))


def wide_encoding(data):
    """'UTF-16 LE' and the like when `data` is UTF-16/32 text: a byte order mark, or (as some tools write
    it without one) text with a NUL in every other byte; None otherwise, also for UTF-8 with a stray NUL."""
    for mark, name in BYTE_ORDER_MARKS:
        if data.startswith(mark):
            return name
    even, odd = data[0::2].count(0), data[1::2].count(0)
    if max(even, odd) * 2 < max(len(data) // 2, 1) or min(even, odd) * 10 > max(even, odd):
        return None
    return "UTF-16 LE" if odd > even else "UTF-16 BE"


def read_list_text(path, label):
    """The text of a split file or source list, `label` naming it in errors. UTF-8 with the byte order mark
    Windows editors write is read too (the mark would otherwise stick to the first entry); UTF-16 would
    decode as garbage names, so it is refused with the fix."""
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise UserError(f"{label} cannot be read ({error.strerror or error}); check its permissions") from None
    encoding = wide_encoding(data)
    if encoding:
        raise UserError(f"{label} is saved as {encoding}; save it as UTF-8 (in Notepad: Save as, Encoding UTF-8)")
    return data.decode("utf-8-sig", errors="replace")


def read_split_file(path, data_dir, img_dir="imgs"):
    """Image paths listed in a split file; blank lines and '#' comments ignored; missing files listed."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"split file {path} does not exist; create it (one image path per line) "
                        f"or use --search-files to split imgs/ and masks/ automatically")
    images = []
    for raw in read_list_text(path, f"split file {path}").splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            images.append(resolve_image_path(line, data_dir, img_dir))
    absent = [image for image in images if not is_file(image)]
    broken = [shown_link(image) for image in absent if is_broken_link(image)]
    missing = [shorten(str(image)) for image in absent if not is_broken_link(image)]
    parts = [f"{len(names)} {what}: {listed(names)}" for names, what in (
        (missing, "file(s) that do not exist"), (broken, "broken link(s) (the file they point to does not exist)"))
        if names]
    if parts:
        raise UserError(f"split file {path} names {' and '.join(parts)}; check --data-dir or fix the list")
    return images


def index_by_stem(folder):
    """{stem: path} of the image files in a folder; non-image files are an error naming them."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"folder {folder} does not exist; check --data-dir, --img-dir and --mask-dir")
    entries = sorted(path for path in folder.iterdir() if not path.name.startswith("."))
    broken = [path for path in entries if is_broken_link(path)]
    if broken:  # is_file() is False for them: they would be dropped without a word
        raise UserError(f"folder {folder} holds {len(broken)} broken link(s) (the file they point to does not "
                        f"exist): {listed([shown_link(path, path.name) for path in broken])}; fix or remove them")
    files = [path for path in entries if path.is_file()]
    others = [path.name for path in files if path.suffix.lower() not in IMAGE_SUFFIXES]
    if others:
        raise UserError(f"folder {folder} holds non-image files: {', '.join(others[:10])}; move them out "
                        f"(images must end in {', '.join(IMAGE_SUFFIXES)})")
    index = {}
    for path in files:
        if path.stem in index:
            raise UserError(f"folder {folder} has two files with stem '{path.stem}': {index[path.stem].name} "
                            f"and {path.name}; keep one")
        index[path.stem] = path
    return index


def pair_masks(images, mask_dir):
    """[(image, mask)] pairing each image with the mask of the same stem; all orphans listed at once."""
    masks = index_by_stem(mask_dir)
    missing = [str(image) for image in images if Path(image).stem not in masks]
    if missing:
        raise UserError(f"no mask in {mask_dir} for {len(missing)} image(s): {', '.join(missing[:10])}"
                        f"{' ...' if len(missing) > 10 else ''}; add masks with the same file stem")
    return [(Path(image), masks[Path(image).stem]) for image in images]


def search_files(data_dir, img_dir="imgs", mask_dir="masks", val_split=0.2, test_split=0.0, seed=0):
    """Pair imgs/ and masks/ by stem and split them into (train, val, test) lists of pairs."""
    images = index_by_stem(Path(data_dir) / img_dir)
    masks = index_by_stem(Path(data_dir) / mask_dir)
    no_mask = sorted(set(images) - set(masks))
    no_image = sorted(set(masks) - set(images))
    if no_mask or no_image:
        parts = []
        if no_mask:
            parts.append(f"images without a mask: {', '.join(images[s].name for s in no_mask[:20])}")
        if no_image:
            parts.append(f"masks without an image: {', '.join(masks[s].name for s in no_image[:20])}")
        raise UserError(f"--search-files in {data_dir}: {'; '.join(parts)}; add or remove them so every "
                        f"image has a mask with the same stem")
    for flag, value in (("--val-split", val_split), ("--test-split", test_split)):
        if not 0 <= value < 1:
            raise UserError(f"{flag} {value} must be a fraction in [0, 1)")
    pairs = [(images[stem], masks[stem]) for stem in sorted(images)]
    random.Random(seed).shuffle(pairs)
    n_val, n_test = math.ceil(len(pairs) * val_split), math.floor(len(pairs) * test_split)
    return pairs[n_val + n_test:], pairs[:n_val], pairs[n_val:n_val + n_test]


# ---------------------------------------------------------------- datasets


def train_augmentation():
    """Geometric and photometric augmentation applied to the letterboxed patch (training only)."""
    return A.Compose([
        A.HorizontalFlip(p=0.5),
        A.VerticalFlip(p=0.5),
        A.Affine(scale=(0.85, 1.15), translate_percent=(-0.05, 0.05), rotate=(-15, 15), p=0.5,
                 border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=0),
        A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2, p=0.5),
    ])


class SegmentationDataset(torch.utils.data.Dataset):
    """Preloaded (image, mask) pairs; subclasses say how mask values become labels."""

    def __init__(self, pairs, patch_size, augment=False, mean=IMAGENET_MEAN, std=IMAGENET_STD, threads=4):
        check_patch_size(patch_size)
        self.pairs = [(Path(image), Path(mask)) for image, mask in pairs]
        self.patch_size = patch_size
        self.mean, self.std = tuple(mean), tuple(std)
        self.transform = train_augmentation() if augment else None
        with ThreadPoolExecutor(max(1, threads)) as pool:  # cv2 releases the GIL while decoding
            samples = list(pool.map(self.preload, self.pairs))
        self.images = [image for image, _ in samples]
        self.masks = [mask for _, mask in samples]

    def __len__(self):
        return len(self.pairs)

    def __getitem__(self, index):
        return self.load_sample(index)

    def convert_mask(self, mask, path):
        raise NotImplementedError

    def preload(self, pair):
        """Read, check and shrink one pair to uint8 arrays with the longest side = patch size."""
        image_path, mask_path = pair
        image, mask = read_image(image_path), read_mask(mask_path)
        if image.shape[:2] != mask.shape[:2]:
            raise UserError(f"mask {mask_path} is {mask.shape[1]}x{mask.shape[0]} but image {image_path} is "
                            f"{image.shape[1]}x{image.shape[0]}; masks must match their image's size")
        mask = self.convert_mask(mask, mask_path)
        return (fit_longest_side(image, self.patch_size),
                fit_longest_side(mask, self.patch_size, cv2.INTER_NEAREST))

    def load_sample(self, index):
        """Letterbox, augment (training only) and normalize sample `index`."""
        image = pad_to_square(self.images[index], self.patch_size)
        mask = pad_to_square(self.masks[index], self.patch_size)
        if self.transform is not None:
            augmented = self.transform(image=image, mask=mask)
            image, mask = augmented["image"], augmented["mask"]
        return normalize(image, self.mean, self.std), self.mask_tensor(mask)

    def mask_tensor(self, mask):
        raise NotImplementedError


class BinaryDataset(SegmentationDataset):
    """One foreground class: masks stored as 0/1 or 0/255 become float {0,1} 1xPxP tensors."""

    classes = 1

    def convert_mask(self, mask, path):
        return binary_mask(mask, path)

    def mask_tensor(self, mask):
        return torch.from_numpy(np.ascontiguousarray(mask)).unsqueeze(0).float()


class Dataset(SegmentationDataset):
    """Several classes: masks are single-channel class indices; returns int64 PxP tensors."""

    def __init__(self, pairs, patch_size, classes, ignore_index=None, **kwargs):
        if classes < 2:
            raise UserError(f"Dataset needs --classes >= 2 (got {classes}); use BinaryDataset for one class")
        self.classes, self.ignore_index = classes, ignore_index
        super().__init__(pairs, patch_size, **kwargs)

    def convert_mask(self, mask, path):
        return class_mask(mask, path, self.classes, self.ignore_index)

    def mask_tensor(self, mask):
        return torch.from_numpy(np.ascontiguousarray(mask)).long()


def make_dataset(pairs, patch_size, classes, ignore_index=None, **kwargs):
    """BinaryDataset for one class, Dataset for several."""
    if classes < 1:
        raise UserError(f"--classes {classes} must be at least 1 (1 = binary foreground/background)")
    if classes == 1:
        return BinaryDataset(pairs, patch_size, **kwargs)
    return Dataset(pairs, patch_size, classes, ignore_index, **kwargs)


# ---------------------------------------------------------------- what the labels hold, for start-of-run warnings


def class_pixel_counts(dataset):
    """{label value: pixels} over a dataset's preloaded masks, as trained on: binary 0/255 already 0/1, shrunk
    to the patch size (a few-pixel object can vanish there), without the padding; the ignore index counts too."""
    counts = collections.Counter()
    for mask in dataset.masks:
        if mask.dtype in (np.uint8, np.uint16):  # bincount: 20x faster than np.unique on a 512x512 mask
            per_value = np.bincount(mask.ravel())
            values = np.flatnonzero(per_value)
            counts.update(dict(zip(values.tolist(), per_value[values].tolist())))
        else:
            values, per_value = np.unique(mask, return_counts=True)
            counts.update(dict(zip(values.tolist(), per_value.tolist())))
    return dict(counts)


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
