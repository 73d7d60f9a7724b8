"""Evaluation as a plain function: a model over a loader, returning Loss, Dice and IoU as a dict.

The same function serves train.py's validation and test evaluation (on the unwrapped model, each process
its shard, counts summed over processes) and val.py.

Usage:
    metrics = evaluate(model, loader, classes=1, criterion=make_loss("bce", 1))
    metrics["val/dice"], metrics["val/iou"], metrics["val/loss"]
"""

import contextlib

import torch

from segtoolkit.metrics import ConfusionStats


@torch.inference_mode()
def evaluate(model, batches, *, classes, criterion, device=torch.device("cpu"), ignore_index=None,
             class_names=None, autocast=contextlib.nullcontext, prefix="val"):
    """{prefix/loss, prefix/dice, prefix/iou} (+ per class for several classes) of `model` over `batches`
    of (images, masks). The caller sets model.eval(); under torchrun each process passes its shard and
    every process gets the metrics of the whole split."""
    stats = ConfusionStats(classes, ignore_index, device)
    for images, masks in batches:
        images, masks = images.to(device), masks.to(device)
        with autocast():
            logits = model(images)
        logits = logits.float()
        stats.update(logits, masks, criterion(logits, masks))
    return stats.compute(prefix, class_names if classes > 1 else None)
