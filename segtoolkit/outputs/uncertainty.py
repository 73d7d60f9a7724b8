"""What to label next (detect.py --rank-uncertain K): the K images or frames the model is least sure of,
copied with their predicted masks into to_label/ and listed, most uncertain first, in to_label.csv.

The score is the mean over the image's pixels of 1 - (p1 - p2), p1 and p2 the probabilities of the two most
likely classes (one class: the foreground's p and 1 - p): 0 where every pixel is sure, 1 where every pixel
is a tie. The margin rather than the entropy, because the margin is about the decision a labeller corrects
(which of two classes a pixel is), reads the same for 2 classes or 20 (entropy grows with log C and counts
the spread over classes nobody would pick), and for one class both rank images the same.

Frames of one video or stream are often near duplicates: of frames closer than --rank-gap frames to each
other, only the most uncertain is kept (a new frame replaces the kept ones it is close to when it is more
uncertain than all of them, else it is passed over). Images never compete that way.

to_label/ holds imgs/ (the source image file as it is; a video frame as PNG) and masks/ (the prediction as
detect.py writes masks: 0/255 for one class, palette PNGs of class indices for several), the layout
train.py --search-files reads once the masks are corrected. to_label.csv: rank, source, frame, uncertainty,
image_file, mask_file.

Usage:
    ranking = UncertainFrames(count=10, gap=30, colours=None)
    ranking.add(frame, mask, probabilities)       # probabilities HxWxC at the mask's size
    ranking.write(save_dir)
"""

import csv
import shutil
from pathlib import Path

import cv2
import numpy as np

from segtoolkit.errors import UserError
from segtoolkit.outputs.files import write_mask
from segtoolkit.data.sources import safe_name

FOLDER, LIST_FILE = "to_label", "to_label.csv"


def margin_uncertainty(probabilities):
    """Mean over the pixels of 1 - (top probability - second), of HxWxC probabilities (C = 1: p and 1 - p)."""
    probabilities = np.asarray(probabilities, np.float32)
    if probabilities.shape[2] == 1:
        margin = np.abs(2 * probabilities[..., 0] - 1)
    else:
        two = np.partition(probabilities, -2, axis=2)[..., -2:]
        margin = two[..., 1] - two[..., 0]
    return float(np.mean(1 - margin))


def check_ranking(count, gap, save_dir):
    """--rank-uncertain and --rank-gap, and no earlier ranking in the folder (it would be mixed with this)."""
    if count is None:
        return
    if count < 1:
        raise UserError(f"--rank-uncertain {count} must be at least 1 (the images or frames to pick)")
    if gap < 0:
        raise UserError(f"--rank-gap {gap} must be 0 or more")
    if save_dir is not None and (Path(save_dir) / LIST_FILE).exists():
        raise UserError(f"--save-dir {save_dir} holds a {LIST_FILE} of an earlier run; give another --save-dir")


class UncertainFrames:
    """The `count` most uncertain frames so far (at most one of frames closer than `gap` in one source)."""

    def __init__(self, count, gap=30, colours=None):
        self.count, self.gap, self.colours = count, gap, colours
        self.kept = []  # (score, order, frame path, frame index, is image, RGB or None, mask)
        self.seen = 0

    def add(self, frame, mask, probabilities):
        score = margin_uncertainty(probabilities)
        self.seen += 1
        close = [entry for entry in self.kept if not frame.is_image and entry[2] == frame.path
                 and abs(entry[3] - frame.index) < self.gap]
        if any(entry[0] >= score for entry in close):
            return score
        original = None if frame.is_image else frame.original.copy()
        self.kept = [entry for entry in self.kept if not any(entry is other for other in close)]
        self.kept.append((score, self.seen, frame.path, frame.index, frame.is_image, original, mask.copy()))
        self.kept.sort(key=lambda entry: (-entry[0], entry[1]))
        del self.kept[self.count:]
        return score

    def write(self, save_dir):
        """to_label/imgs, to_label/masks and to_label.csv, most uncertain first."""
        save_dir = Path(save_dir)
        for part in ("imgs", "masks"):
            (save_dir / FOLDER / part).mkdir(parents=True, exist_ok=True)
        rows, used = [], set()
        for rank, (score, _, path, index, is_image, original, mask) in enumerate(self.kept, 1):
            stem = safe_name(path) + ("" if is_image else f"_{index:06d}")
            while stem.casefold() in used or (save_dir / FOLDER / "masks" / f"{stem}.png").exists():
                stem += "_"
            used.add(stem.casefold())
            suffix = Path(path).suffix.lower() if is_image else ".png"
            image_file, mask_file = f"{FOLDER}/imgs/{stem}{suffix}", f"{FOLDER}/masks/{stem}.png"
            if is_image:
                shutil.copyfile(path, save_dir / image_file)
            else:
                cv2.imwrite(str(save_dir / image_file), cv2.cvtColor(original, cv2.COLOR_RGB2BGR))
            write_mask(save_dir / mask_file, mask, self.colours)
            rows.append([rank, path, index, f"{score:.6f}", image_file, mask_file])
        with open(save_dir / LIST_FILE, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["rank", "source", "frame", "uncertainty", "image_file", "mask_file"])
            writer.writerows(rows)
