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
    image, mask = train_set.load_sample(0)   # float32 3xPxP normalized, float32 1xPxP in {0,1}
"""

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import torch

from segtoolkit.augment import train_augmentation
from segtoolkit.errors import UserError
from segtoolkit.imaging import IMAGENET_MEAN, IMAGENET_STD, check_patch_size, fit_longest_side, normalize, \
    pad_to_square, read_image
from segtoolkit.masks import binary_mask, class_mask, read_mask


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
