"""The training and validation datasets: `BinaryDataset` (one class: masks 0/1 or 0/255) and `Dataset`
(several classes: masks of class indices).

Both preload every sample at construction as uint8, already scaled so the longest side is the patch size;
`load_sample(i)` letterboxes to patch x patch, augments (training only) and normalizes, through the same
preprocessing as detection (segtoolkit.imaging). Bad files are found here, before any training, and
reported with their path.

Usage:
    from dataset import BinaryDataset
    from segtoolkit.splits import pair_masks, read_split_file
    images = read_split_file("training_dataset.txt", "data/sample")
    train_set = BinaryDataset(pair_masks(images, "data/sample/masks"), patch_size=128, augment=True)
    image, mask = train_set.load_sample(0)   # float32 3xPxP normalized, float32 1xPxP of 0, 1 and IGNORE (-1)
"""

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import torch

from segtoolkit.augment import DEFAULT_AUGMENTATION, load_augmentation
from segtoolkit.errors import UserError
from segtoolkit.imaging import IMAGENET_MEAN, IMAGENET_STD, check_patch_size, fit_longest_side, normalize, \
    pad_to_square, read_image
from segtoolkit.masks import IGNORE, binary_mask, class_mask, read_mask


class SegmentationDataset(torch.utils.data.Dataset):
    """Preloaded (image, mask) pairs; subclasses say how mask values become labels.

    A sample is indexed by `i`, or by `(i, seed)` (what the training sampler yields): the seed makes its
    augmentation the same whatever process loads it and whenever, so runs with the same --seed are equal
    and a resumed run continues the same augmentation stream. Pixels that are not the image's (letterbox
    padding, the fill of a geometric transform) and the --ignore-index label become IGNORE in the target.
    """

    ignore_index = None

    def __init__(self, pairs, patch_size, augment=False, mean=IMAGENET_MEAN, std=IMAGENET_STD, threads=4):
        check_patch_size(patch_size)
        self.pairs = [(Path(image), Path(mask)) for image, mask in pairs]
        self.patch_size = patch_size
        self.mean, self.std = tuple(mean), tuple(std)
        self.transform = as_transform(augment)
        with ThreadPoolExecutor(max(1, threads)) as pool:  # cv2 releases the GIL while decoding
            samples = list(pool.map(self.preload, self.pairs))
        self.images = [image for image, _ in samples]
        self.masks = [mask for _, mask in samples]

    def __len__(self):
        return len(self.pairs)

    def __getitem__(self, key):
        index, seed = key if isinstance(key, tuple) else (key, None)
        return self.load_sample(index, seed)

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

    def load_sample(self, index, seed=None):
        """Letterbox, augment (training only, seeded when `seed` is given) and normalize sample `index`:
        (float32 3xPxP image, target with IGNORE on the pixels that do not count)."""
        image = pad_to_square(self.images[index], self.patch_size)
        mask = pad_to_square(self.masks[index], self.patch_size)
        valid = pad_to_square(np.ones(self.masks[index].shape[:2], np.uint8), self.patch_size)
        if self.transform is not None:
            if seed is not None:
                self.transform.set_random_seed(seed)
            augmented = self.transform(image=image, mask=mask, masks=[valid])
            image, mask, valid = augmented["image"], augmented["mask"], augmented["masks"][0]
        return normalize(image, self.mean, self.std), self.target(mask, valid)

    def target(self, mask, valid):
        """The label tensor of a mask: IGNORE where `valid` is 0 or the mask holds --ignore-index."""
        labels = torch.from_numpy(np.ascontiguousarray(mask)).long()
        ignored = torch.from_numpy(np.ascontiguousarray(valid)) == 0
        if self.ignore_index is not None:
            ignored |= labels == self.ignore_index
        return self.as_target(labels.masked_fill(ignored, IGNORE))

    def as_target(self, labels):
        raise NotImplementedError


def as_transform(augment):
    """--augment as a pipeline: False/None none, True the default preset, a name or file, or a pipeline."""
    if augment is None or augment is False:
        return None
    if augment is True:
        return load_augmentation(DEFAULT_AUGMENTATION)
    return load_augmentation(augment) if isinstance(augment, (str, Path)) else augment


class BinaryDataset(SegmentationDataset):
    """One foreground class: masks stored as 0/1 or 0/255 become float 1xPxP targets of 0, 1 (and IGNORE)."""

    classes = 1

    def convert_mask(self, mask, path):
        return binary_mask(mask, path)

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
        return BinaryDataset(pairs, patch_size, **kwargs)
    return Dataset(pairs, patch_size, classes, ignore_index, **kwargs)
