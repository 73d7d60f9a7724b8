"""Evaluation arithmetic: summed smp confusion counts (Dice, IoU, loss) and YOLO-style early stopping.

The counts are summed, never averaged per batch or per process, so a metric is that of the whole split
whether it was computed in one process or sharded over many (torchrun).
"""

import math

import segmentation_models_pytorch as smp
import torch

from segtoolkit import distributed


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
        self.patience, self.best_fitness, self.best_epoch = state["patience"], state["best_fitness"], state["best_epoch"]


class ConfusionStats:
    """Summed smp confusion counts (tp, fp, fn, tn per class) and loss; reducible across processes."""

    def __init__(self, classes, ignore_index=None, device="cpu"):
        self.classes, self.ignore_index = classes, ignore_index
        self.counts = torch.zeros(4, max(classes, 1), dtype=torch.float64, device=device)
        self.loss = torch.zeros(2, dtype=torch.float64, device=device)  # sum of batch losses x images, images

    def update(self, logits, masks, loss):
        logits = logits.detach().float()
        if self.classes == 1:
            # threshold the logits here: smp applies `threshold` to the target too
            stats = smp.metrics.get_stats((logits > 0).long(), masks.long(), mode="binary")
        else:
            stats = smp.metrics.get_stats(logits.argmax(1), masks, mode="multiclass",
                                          num_classes=self.classes, ignore_index=self.ignore_index)
        self.counts += torch.stack([s.to(self.counts.device).sum(0) for s in stats]).to(torch.float64)
        self.loss += torch.stack([loss.detach().double() * len(masks), torch.tensor(len(masks), device=loss.device,
                                                                                     dtype=torch.float64)])

    def compute(self, prefix, class_names=None):
        """{prefix/loss, prefix/dice, prefix/iou} (+ per class for multi-class), summed over all processes.

        A class absent from the split's ground truth (no tp, no fn) has no Dice or IoU: NaN, left out of
        the means (smp's zero_division would score it 1.0 and lift the mean; 0.0 would sink it). A binary
        split without foreground pixels thus has NaN Dice, which never counts as an improvement.
        """
        counts = distributed.all_reduce_sum(self.counts.clone()).cpu()
        loss = distributed.all_reduce_sum(self.loss.clone()).cpu()
        tp, fp, fn, tn = (c.unsqueeze(0) for c in counts)
        present = (tp + fn)[0] > 0
        dice = smp.metrics.f1_score(tp, fp, fn, tn, reduction="none", zero_division=math.nan)[0]
        iou = smp.metrics.iou_score(tp, fp, fn, tn, reduction="none", zero_division=math.nan)[0]
        dice, iou = (torch.where(present, score, math.nan) for score in (dice, iou))
        metrics = {f"{prefix}/loss": float(loss[0] / max(loss[1], 1)),
                   f"{prefix}/dice": float(dice.nanmean()), f"{prefix}/iou": float(iou.nanmean())}
        if self.classes > 1:
            names = class_names or [str(i) for i in range(self.classes)]
            for index, name in enumerate(names):
                metrics[f"{prefix}/dice_{name}"] = float(dice[index])
                metrics[f"{prefix}/iou_{name}"] = float(iou[index])
        return metrics
