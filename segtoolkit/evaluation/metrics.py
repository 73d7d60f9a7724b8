"""Evaluation arithmetic: a summed confusion matrix (Dice, IoU, loss) and YOLO-style early stopping.

The counts are summed, never averaged per batch or per process, so a metric is that of the whole split
whether it was computed in one process or sharded over many (torchrun).
"""

import math

import torch

from segtoolkit import distributed
from segtoolkit.inference.full_size import to_labels
from segtoolkit.data.masks import IGNORE


class EarlyStopping:
    """YOLO-style: stop when fitness (higher is better) has not improved for `patience` evaluations."""

    def __init__(self, patience=10):
        self.patience = patience
        self.best_fitness = -math.inf
        self.best_epoch = 0

    def __call__(self, epoch, fitness):
        """Record one evaluation; return True when training should stop."""
        if fitness > self.best_fitness:
            self.best_fitness, self.best_epoch = fitness, epoch
        return self.patience > 0 and epoch - self.best_epoch >= self.patience

    def state_dict(self):
        return {"patience": self.patience, "best_fitness": self.best_fitness, "best_epoch": self.best_epoch}

    def load_state_dict(self, state):
        self.patience, self.best_fitness = state["patience"], state["best_fitness"]
        self.best_epoch = state["best_epoch"]


class ConfusionStats:
    """A summed confusion matrix (ground truth x prediction, over the pixels that count) and the loss;
    reducible across processes. Dice, IoU and the per-class table all derive from the matrix.

    One class (binary) is counted as background/foreground, and its Dice and IoU are the foreground's.
    Targets equal to IGNORE (padding, transform fill, --ignore-index) are not counted.
    """

    def __init__(self, classes, ignore_index=None, device="cpu"):
        self.classes, self.ignore_index = classes, ignore_index  # a raw --ignore-index is left out too
        self.size = max(classes, 2)
        self.matrix = torch.zeros(self.size, self.size, dtype=torch.float64, device=device)
        self.loss = torch.zeros(2, dtype=torch.float64, device=device)  # sum of batch losses x images, images

    def update(self, logits, masks, loss=None):
        """Count a batch where its logits and masks are (training's, at the patch): logits NxCxHxW, masks
        Nx1xHxW (binary) or NxHxW (classes), IGNORE left out; labels by segtoolkit.inference.full_size.to_labels."""
        self.add(confusion_matrix(to_labels(logits), masks, self.size, self.ignore_index))
        if loss is not None:
            self.add_loss(loss, len(masks))

    def add(self, matrix):
        """Add confusion counts (one image's at its own size: segtoolkit.evaluation.scoring)."""
        self.matrix += matrix.to(self.matrix)

    def add_loss(self, loss, images):
        """Add a batch's mean loss, weighted by its number of images."""
        self.loss += torch.stack([loss.detach().double() * images,
                                  torch.tensor(images, device=loss.device, dtype=torch.float64)]).to(self.loss)

    def reduced(self):
        """(confusion matrix, loss sums) summed over all processes, on the CPU."""
        return (distributed.all_reduce_sum(self.matrix.clone()).cpu(),
                distributed.all_reduce_sum(self.loss.clone()).cpu())

    def compute(self, prefix, class_names=None):
        """{prefix/loss, prefix/dice, prefix/iou} (+ per class for multi-class), summed over all processes.

        A class absent from the split's ground truth but predicted scores Dice 0 and IoU 0: its false
        positives lower the mean (MMSegmentation's rule). A class neither in the ground truth nor predicted
        has no Dice or IoU: NaN, left out of the means (scoring it 1.0 would lift the mean). A binary split
        without foreground pixels thus has Dice 0 when foreground is predicted, NaN when none is, which never
        counts as an improvement.
        """
        matrix, loss = self.reduced()
        dice, iou = scores(matrix)
        if self.classes == 1:
            dice, iou = dice[1:], iou[1:]
        metrics = {f"{prefix}/loss": float(loss[0] / max(loss[1], 1)),
                   f"{prefix}/dice": nanmean(dice), f"{prefix}/iou": nanmean(iou)}
        if self.classes > 1:
            names = class_names or [str(i) for i in range(self.classes)]
            for index, name in enumerate(names):
                metrics[f"{prefix}/dice_{name}"] = float(dice[index])
                metrics[f"{prefix}/iou_{name}"] = float(iou[index])
        return metrics


def confusion_matrix(predicted, masks, size, ignore_index=None):
    """size x size pixel counts (rows: ground truth, columns: prediction) of one image or a batch; targets
    equal to IGNORE or to a raw `ignore_index` are left out."""
    target = masks.reshape(predicted.shape).long()
    counted = target != IGNORE
    if ignore_index is not None:
        counted &= target != ignore_index
    # pixels left out go to one extra bin, dropped: 10x faster than selecting the counted ones (1024x768: 3 ms)
    pairs = torch.where(counted, target * size + predicted, size ** 2)
    return torch.bincount(pairs.reshape(-1), minlength=size ** 2 + 1)[:size ** 2].reshape(size, size)


def scores(matrix):
    """Per-class (Dice, IoU) of a confusion matrix (rows: ground truth, columns: prediction). A class
    predicted but absent from the ground truth scores 0 (tp is 0); NaN for a class in neither, which means
    leave out (MMSegmentation's rule)."""
    tp = matrix.diagonal()
    fp, fn = matrix.sum(0) - tp, matrix.sum(1) - tp
    scored = (tp + fp + fn) > 0  # in the ground truth, or predicted
    dice = torch.where(scored, 2 * tp / (2 * tp + fp + fn).clamp_min(1), math.nan)
    iou = torch.where(scored, tp / (tp + fp + fn).clamp_min(1), math.nan)
    return dice, iou


def nanmean(values):
    return float(values.nanmean()) if bool(torch.isfinite(values).any()) else math.nan
