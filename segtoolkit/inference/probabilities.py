"""Per-class probabilities of a prediction, at the frame's original size, for users who threshold or
post-process themselves (detect.py --save-probs).

A model's logits become probabilities by a sigmoid (one class: the foreground's) or a softmax over the
classes (several), computed from the logits at the frame's own size (segtoolkit.inference.full_size: upsampled
bilinearly, the letterbox padding cut away), the ones the mask is decided on, band by band. Stored as:
- several classes: `.npz` (NumPy, deflate-compressed) holding `probabilities`, float16 H x W x C (C = the
  classes, in class order; float16 keeps 3 significant digits), and `class_names`;
- one class: a 16-bit single-channel PNG, probability x 65535 rounded.

Memory: the map at the original size is held until it is written, 2 bytes per pixel and class (an 8000 x
6000 image with 3 classes: 288 MB), besides the image and mask detect.py holds anyway.

Usage:
    probabilities = logits_to_probabilities(logits)             # C x H x W logits -> H x W x C float32
    with open("probs/a.npz", "xb") as handle:
        write_npz(handle, probabilities, ["background", "cell"])   # one class: cv2.imwrite("a.png", encode_png(...))
"""

from typing import NamedTuple

import numpy as np
import torch

STORED_DTYPE = np.float16
PNG_SCALE = 65535  # one class: a probability of 1 is 65535 in the 16-bit PNG


class Prediction(NamedTuple):
    """What detect.py's Segmenter gives for a frame: the mask of class indices at the frame's size and, with
    --save-probs, the float16 probabilities H x W x C at the same size (None without)."""
    mask: np.ndarray
    probabilities: np.ndarray | None = None


def logits_to_probabilities(logits):
    """C x H x W logits (a tensor) -> H x W x C float32 probabilities: sigmoid for one class, softmax else."""
    logits = torch.as_tensor(logits).float()
    probabilities = torch.sigmoid(logits) if logits.shape[0] == 1 else torch.softmax(logits, dim=0)
    return probabilities.permute(1, 2, 0).numpy()


def probability_suffix(classes):
    """.png for a one-class model (16-bit PNG), .npz for several."""
    return ".png" if classes == 1 else ".npz"


def encode_png(probabilities):
    """The 16-bit gray pixels of a one-class map (H x W x 1): probability x 65535, rounded."""
    scaled = probabilities[..., 0].astype(np.float32) * PNG_SCALE + 0.5
    return np.clip(scaled, 0, PNG_SCALE).astype(np.uint16)


def write_npz(handle, probabilities, class_names):
    """A compressed .npz of the map (float16 H x W x C) and the class names, into an open binary file."""
    np.savez_compressed(handle, probabilities=probabilities.astype(STORED_DTYPE, copy=False),
                        class_names=np.array(list(class_names)))
