"""Evaluation as a plain function: a model over a split, returning Loss, Dice and IoU as a dict; letterboxed
batches (evaluate) or whole images by sliding window (evaluate_tiled, for models trained on crops).

The same loop serves train.py's validation and test evaluation (on the unwrapped model, each process
its shard, counts summed over processes) and val.py, which also looks at each batch's logits (per-image
scores, masks) through `on_batch`.

Usage:
    metrics = evaluate(model, loader, classes=1, criterion=make_loss("bce", 1))
    metrics["val/dice"], metrics["val/iou"], metrics["val/loss"]

    stats = accumulate(predictor, loader, ConfusionStats(classes=1), criterion=criterion, on_batch=save_masks)
    metrics, matrix = stats.compute("test"), stats.reduced()[0]
"""

import contextlib

import torch

from segtoolkit.metrics import ConfusionStats
from segtoolkit.tiling import Tiler


@torch.inference_mode()
def accumulate(model, batches, stats, *, criterion, device=torch.device("cpu"), autocast=contextlib.nullcontext,
               on_batch=None):
    """Count every batch of (images, masks) into `stats` (a ConfusionStats) with its loss; `on_batch(logits,
    masks)` sees each batch's float32 logits and targets after it is counted. Returns `stats`."""
    for images, masks in batches:
        images, masks = images.to(device), masks.to(device)
        with autocast():
            logits = model(images)
        logits = logits.float()
        stats.update(logits, masks, criterion(logits, masks))
        if on_batch is not None:
            on_batch(logits, masks)
    return stats


def evaluate(model, batches, *, classes, criterion, device=torch.device("cpu"), ignore_index=None,
             class_names=None, autocast=contextlib.nullcontext, prefix="val"):
    """{prefix/loss, prefix/dice, prefix/iou} (+ per class for several classes) of `model` over `batches`
    of (images, masks). The caller sets model.eval(); under torchrun each process passes its shard and
    every process gets the metrics of the whole split."""
    stats = accumulate(model, batches, ConfusionStats(classes, ignore_index, device), criterion=criterion,
                       device=device, autocast=autocast)
    return stats.compute(prefix, class_names if classes > 1 else None)


@torch.inference_mode()
def evaluate_tiled(model, dataset, indices, *, tile, overlap=0.25, tile_batch=4, weighting="gaussian", classes,
                   criterion, device=torch.device("cpu"), class_names=None, autocast=contextlib.nullcontext,
                   prefix="val"):
    """The same metrics over whole images at full resolution (dataset.full_sample), each segmented by sliding
    window (segtoolkit.tiling), for models trained on crops. `indices`: this process's shard of the split."""
    stats = ConfusionStats(classes, device=device)
    tiler = Tiler(lambda batch: run_batch(model, batch, device, autocast), tile, overlap, tile_batch, weighting,
                  dataset.mean, dataset.std)
    for index in indices:
        image, target = dataset.full_sample(index)
        logits = tiler.logits(image)
        if tuple(logits.shape[1:]) != tuple(target.shape[-2:]):  # --scale: back to the mask's own size
            logits = torch.nn.functional.interpolate(logits[None], size=tuple(target.shape[-2:]),
                                                     mode="bilinear", align_corners=False)[0]
        logits, target = logits[None].to(device), target[None].to(device)
        stats.update(logits, target, criterion(logits, target))
    return stats.compute(prefix, class_names if classes > 1 else None)


@torch.inference_mode()
def run_batch(model, batch, device, autocast):
    """float32 logits of `model` for one batch, on the CPU (the form predictors give)."""
    with autocast():
        return model(batch.to(device)).float().cpu()
