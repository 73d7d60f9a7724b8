"""The training and validation datasets: `BinaryDataset` (one class: masks 0/1 or 0/255) and `Dataset`
(several classes: masks of class indices).

Three ways to see the images (`mode`):
- `letterbox` (default): each sample is stored with its longest side at the patch size and letterboxed to
  patch x patch, the preprocessing detection uses for letterbox-trained models (segtoolkit.data.imaging);
- `stretch` (train.py --resize stretch): each sample is resized to patch x patch whatever its aspect ratio
  (mask with nearest neighbour): no padding, every pixel the image's;
- `crop` (train.py --crop): stored at the image's own resolution (times --scale), and a random patch x patch
  crop is taken each time, padded when the image is smaller;
- `full`: whole images at their own resolution (times --scale), for sliding-window evaluation of
  crop-trained models.
Evaluation datasets (`evaluation=True`, always for `full`) give segtoolkit.evaluation.scoring.EvalSample records, the
model's input and its target where the model works (for the loss) and the labels at the image's own size (for
Dice and IoU): their store keeps each mask at its original size, uint8 as read, beside the image as the mode
fits it. Samples are decoded once and kept as --cache says (segtoolkit.data.cache: ram, disk, none); every file is
read and checked when the dataset is built, and a bad one is reported with its path.

Usage:
    from dataset import BinaryDataset
    from segtoolkit.data.splits import pair_masks, read_split_file
    images = read_split_file("training_dataset.txt", "data/sample")
    train_set = BinaryDataset(pair_masks(images, "data/sample/masks"), patch_size=128, augment=True)
    image, mask = train_set.load_sample(0)   # float32 3xPxP normalized, float32 1xPxP of 0, 1 and IGNORE (-1)
    sample = BinaryDataset(pairs, 128, evaluation=True).load_sample(0)   # EvalSample: image, target, mask, box
"""

from pathlib import Path

import cv2
import numpy as np
import torch

from segtoolkit.data.augment import AUGMENTED, load_augmentation
from segtoolkit.errors import UserError
from segtoolkit.data.loaders import EvalSample
from segtoolkit.data.imaging import (IMAGENET_MEAN, IMAGENET_STD, Letterbox, check_patch_size, fit_longest_side,
                                normalize, pad_to_square, read_image, scaled, stretch_to_square)
from segtoolkit.data.masks import IGNORE, binary_mask, class_mask, read_mask
from segtoolkit.data.cache import build_store

MODES = ("letterbox", "stretch", "crop", "full")
WHOLE_IMAGE_MODES = ("letterbox", "stretch")  # a sample is the whole image, fitted into the patch


class SegmentationDataset(torch.utils.data.Dataset):
    """(image, mask) pairs; subclasses say how mask values become labels.

    A sample is indexed by `i`, or by `(i, seed)` (what the training sampler yields): the seed makes its crop
    and augmentation the same whatever process loads it and whenever, so runs with the same --seed are equal
    and a resumed run continues the same stream. Pixels that are not the image's (letterbox padding, the fill
    of a geometric transform) and the --ignore-index label become IGNORE in the target.
    """

    ignore_index = None

    def __init__(self, pairs, patch_size, augment=False, mean=IMAGENET_MEAN, std=IMAGENET_STD, threads=4,
                 mode="letterbox", scale=1.0, cache="ram", cache_dir=None, mask_colors=None, bit_depth=None,
                 evaluation=False):
        check_patch_size(patch_size)
        if mode not in MODES or (evaluation and mode == "crop"):
            raise ValueError(f"mode {mode} is not one of {MODES}, or is 'crop' with evaluation=True")
        if not 0 < scale <= 1 or (scale != 1 and mode in WHOLE_IMAGE_MODES):
            raise UserError(f"--scale {scale} must be in (0, 1] and goes with --crop")
        self.pairs = [(Path(image), Path(mask)) for image, mask in pairs]
        self.patch_size, self.mode, self.scale = patch_size, mode, scale
        self.evaluation = evaluation or mode == "full"  # masks kept at each image's own size
        self.mean, self.std = tuple(mean), tuple(std)
        self.transform = as_transform(augment)
        self.mask_colors = mask_colors  # segtoolkit.data.classes.MaskColors: RGB masks read as class indices
        self.bit_depth = bit_depth  # how 16-bit images are scaled (segtoolkit.data.imaging; None: each by its own)
        fitted = f"{mode}-{patch_size}" if mode in WHOLE_IMAGE_MODES else f"scale-{scale}"
        key = f"{fitted}{'-original-masks' if self.evaluation else ''}-{getattr(self, 'classes', 1)}-" \
              f"{self.ignore_index}" + (f"-{mask_colors.key}" if mask_colors else "") \
              + (f"-{bit_depth}bit" if bit_depth else "")
        self.store = build_store(cache, self.prepare, self.pairs, key=key, cache_dir=cache_dir, threads=threads)

    def __len__(self):
        return len(self.pairs)

    def __getitem__(self, key):
        index, seed = key if isinstance(key, tuple) else (key, None)
        return self.load_sample(index, seed)

    @property
    def images(self):
        """The stored uint8 images, read on demand (a sequence: dataset.images[i])."""
        return StoreView(self.store, 0)

    @property
    def masks(self):
        """The stored label masks, read on demand."""
        return StoreView(self.store, 1)

    @property
    def label_counts(self):
        """{label: pixels} over every mask as stored (training letterbox, stretch: at the patch size; evaluation:
        at each image's own size), padding excluded."""
        return self.store.label_counts

    def read_mask(self, path):
        """The labels stored in a mask file (palette indices, or the classes of its colours with --mask-colors)."""
        return read_mask(path, self.mask_colors, self.ignore_index)

    def convert_mask(self, mask, path):
        raise NotImplementedError

    def prepare(self, pair):
        """Read, check and size one pair: uint8 image and label mask at the resolution the mode trains at (an
        evaluation dataset's mask at the image's own)."""
        image_path, mask_path = pair
        image, mask = read_image(image_path, self.bit_depth), self.read_mask(mask_path)
        if image.shape[:2] != mask.shape[:2]:
            raise UserError(f"mask {mask_path} is {mask.shape[1]}x{mask.shape[0]} but image {image_path} is "
                            f"{image.shape[1]}x{image.shape[0]}; masks must match their image's size")
        mask = self.convert_mask(mask, mask_path)
        return self.fitted(image), mask if self.evaluation else self.fitted(mask, cv2.INTER_NEAREST)

    def fitted(self, array, interpolation=cv2.INTER_AREA):
        """An image (or mask, INTER_NEAREST) as the mode sees it: longest side at the patch size (letterbox,
        unpadded), the patch's square (stretch), or times --scale (crop, full)."""
        if self.mode == "letterbox":
            return fit_longest_side(array, self.patch_size, interpolation)
        if self.mode == "stretch":
            return stretch_to_square(array, self.patch_size, interpolation)
        return scaled(array, self.scale, interpolation)

    def load_sample(self, index, seed=None):
        """Letterbox (stretch, or crop), augment (training only, seeded when `seed` is given) and normalize sample
        `index`: (float32 3xPxP image, target with IGNORE on the pixels that do not count)."""
        if self.evaluation:
            return self.evaluation_sample(index)
        image, mask = self.store.get(index)
        if self.mode in WHOLE_IMAGE_MODES:  # stretched samples are patch x patch already: nothing is padded
            image, mask, valid = self.letterboxed(image, mask)
        else:
            image, mask, valid = self.cropped(image, mask, seed)
        if self.transform is not None:
            if seed is not None:
                self.transform.set_random_seed(seed)
            augmented = self.transform(image=image, mask=mask, masks=[valid])
            image, mask, valid = augmented["image"], augmented["mask"], augmented["masks"][0]
        return normalize(image, self.mean, self.std), self.target(mask, valid)

    def letterboxed(self, image, mask):
        valid = np.ones(mask.shape[:2], np.uint8)
        return tuple(pad_to_square(array, self.patch_size) for array in (image, mask, valid))

    def cropped(self, image, mask, seed):
        """A random patch x patch window (its place from `seed`), the part outside the image invalid."""
        rng = np.random.default_rng(seed)
        height, width = mask.shape[:2]
        top = int(rng.integers(0, max(height - self.patch_size, 0) + 1))
        left = int(rng.integers(0, max(width - self.patch_size, 0) + 1))
        window = (slice(top, top + self.patch_size), slice(left, left + self.patch_size))
        image, mask = image[window], mask[window]
        valid = np.ones(mask.shape[:2], np.uint8)  # made at the window's size (not the image's: 8000x6000 is 48 MB)
        return tuple(pad_to_square(array, self.patch_size) for array in (image, mask, valid))

    def evaluation_sample(self, index):
        """An EvalSample: whole-image modes, the normalized patch, its target (the training one, for the loss)
        and the Letterbox; `full`, the uint8 image at the stored scale and its target at that scale (the
        sliding window's); and both, the labels at the image's own size."""
        image, mask = self.store.get(index)
        at_model = self.fitted(mask, cv2.INTER_NEAREST)  # (the mask itself at scale 1: no copy)
        if self.mode == "full":
            return EvalSample(torch.from_numpy(np.ascontiguousarray(image)), self.target(at_model),
                              self.original_labels(mask), None)
        box = Letterbox(mask.shape[0], mask.shape[1], image.shape[0], image.shape[1])
        image, at_model, valid = self.letterboxed(image, at_model)
        return EvalSample(normalize(image, self.mean, self.std), self.target(at_model, valid),
                          self.original_labels(mask), box)

    def original_labels(self, mask):
        """The labels of a mask at the image's own size, for counting only: int16 (int32 for 16-bit masks),
        half the bytes of a float target to pass from a DataLoader worker; IGNORE at --ignore-index."""
        labels = torch.from_numpy(mask.astype(np.int16 if mask.dtype == np.uint8 else np.int32))
        return labels.masked_fill_(labels == self.ignore_index, IGNORE) if self.ignore_index is not None else labels

    def target(self, mask, valid=None):
        """The label tensor of a mask: IGNORE where `valid` is 0 (None: every pixel is valid) or the mask holds
        --ignore-index."""
        labels = torch.from_numpy(np.ascontiguousarray(mask)).long()
        ignored = torch.from_numpy(np.ascontiguousarray(valid)) == 0 if valid is not None else \
            torch.zeros(labels.shape, dtype=torch.bool)
        if self.ignore_index is not None:
            ignored |= labels == self.ignore_index
        return self.as_target(labels.masked_fill(ignored, IGNORE))

    def as_target(self, labels):
        raise NotImplementedError


class StoreView:
    """dataset.images / dataset.masks: the store's arrays by index, without loading them all."""

    def __init__(self, store, part):
        self.store, self.part = store, part

    def __len__(self):
        return len(self.store.pairs)

    def __getitem__(self, index):
        return self.store.get(index)[self.part]

    def __iter__(self):
        return (self[index] for index in range(len(self)))


def as_transform(augment):
    """--augment as a pipeline: False/None none, True the `upright` preset, a name or file, or a pipeline."""
    if augment is None or augment is False:
        return None
    if augment is True:
        return load_augmentation(AUGMENTED)
    return load_augmentation(augment) if isinstance(augment, (str, Path)) else augment


class BinaryDataset(SegmentationDataset):
    """One foreground class: masks stored as 0/1 or 0/255 become float 1xPxP targets of 0, 1 (and IGNORE).
    With a two-colour --mask-colors table, colour masks are read as 0/1 and its ignore colour as
    `ignore_index`, left out like padding."""

    classes = 1

    def __init__(self, pairs, patch_size, ignore_index=None, **kwargs):
        self.ignore_index = ignore_index
        super().__init__(pairs, patch_size, **kwargs)

    def convert_mask(self, mask, path):
        # colours were mapped to 0, 1 and the ignore index already; 0/255 checks would refuse that index
        return mask if self.mask_colors is not None else binary_mask(mask, path)

    def as_target(self, labels):
        return labels.unsqueeze(0).float()


class Dataset(SegmentationDataset):
    """Several classes: masks are single-channel class indices; targets are int64 PxP (IGNORE included)."""

    def __init__(self, pairs, patch_size, classes, ignore_index=None, **kwargs):
        if classes < 2:
            raise UserError(f"Dataset needs --classes >= 2 (got {classes}); use BinaryDataset for one class")
        self.classes, self.ignore_index = classes, ignore_index
        super().__init__(pairs, patch_size, **kwargs)

    def convert_mask(self, mask, path):
        return class_mask(mask, path, self.classes, self.ignore_index)

    def as_target(self, labels):
        return labels


def make_dataset(pairs, patch_size, classes, ignore_index=None, **kwargs):
    """BinaryDataset for one class, Dataset for several."""
    if classes < 1:
        raise UserError(f"--classes {classes} must be at least 1 (1 = binary foreground/background)")
    if classes == 1:
        return BinaryDataset(pairs, patch_size, ignore_index, **kwargs)
    return Dataset(pairs, patch_size, classes, ignore_index, **kwargs)
