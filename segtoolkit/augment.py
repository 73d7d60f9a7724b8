"""Training augmentation (albumentations), applied to the letterboxed patch and its mask alike."""

import albumentations as A
import cv2


def train_augmentation():
    """Geometric and photometric augmentation applied to the letterboxed patch (training only)."""
    return A.Compose([
        A.HorizontalFlip(p=0.5),
        A.VerticalFlip(p=0.5),
        A.Affine(scale=(0.85, 1.15), translate_percent=(-0.05, 0.05), rotate=(-15, 15), p=0.5,
                 border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=0),
        A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2, p=0.5),
    ])
