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
        if logits.shape[-2:] != masks.shape[-2:]:  # a --scale model's full-resolution masks: logits follow
            logits = torch.nn.functional.interpolate(logits, size=tuple(masks.shape[-2:]), mode="bilinear",
                                                     align_corners=False)
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


def evaluate_tiled(model, dataset, indices, *, tile, overlap=0.25, tile_batch=4, weighting="gaussian", classes,
                   criterion, device=torch.device("cpu"), class_names=None, autocast=contextlib.nullcontext,
                   prefix="val"):
    """evaluate() over whole images at full resolution (a dataset in 'full' mode), each segmented by sliding
    window, for models trained on crops. `indices`: this process's shard of the split."""
    tiled = TiledModel(Tiler(lambda batch: run_batch(model, batch, device, autocast), tile, overlap, tile_batch,
                             weighting, dataset.mean, dataset.std))
    batches = (tuple(part[None] for part in dataset[index]) for index in indices)
    return evaluate(tiled, batches, classes=classes, criterion=criterion, class_names=class_names, prefix=prefix)


class TiledModel:
    """A batch of whole uint8 RGB images (N x H x W x 3) -> float32 logits N x C x H x W by sliding window:
    what accumulate() calls a model, for models trained on crops."""

    def __init__(self, tiler):
        self.tiler = tiler

    @torch.inference_mode()
    def __call__(self, images):
        return torch.stack([self.tiler.logits(image.cpu().numpy()) for image in images])


@torch.inference_mode()
def run_batch(model, batch, device, autocast):
    """float32 logits of `model` for one batch, on the CPU (the form predictors give)."""
    with autocast():
        return model(batch.to(device)).float().cpu()
