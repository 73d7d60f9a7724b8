"""Evaluation as a plain function: a model over a split, returning Loss, Dice and IoU as a dict, every image
scored at its own size.

Dice and IoU count the pixels of each image's original mask against the model's logits brought back to that
size (segtoolkit.inference.full_size: upsampled bilinearly, the letterbox padding cut away first, then thresholded or
argmaxed), whether the model saw the image fitted into its patch (stretch, letterbox) or by sliding window
(crop-trained models, at their --scale): the figures detect.py's masks give against the original masks. The
loss is computed where the model works, as training's is: on the batch of patches for whole-image models,
on each image at the model's --scale for crop-trained ones; it is never a full-size figure.

The same loop serves train.py's validation and test evaluation (on the unwrapped model, each process its
shard, counts summed over processes) and val.py, which also sees each image's mask and confusion counts
(per-image scores, saved masks) through `on_image`. Evaluation datasets (dataset.py, evaluation=True or
mode 'full') give segtoolkit.data.loaders.EvalSample records: the model's input, the target where the model
works (for the loss) and the mask at the image's own size; its `collate` makes batches of them.

Usage:
    full_size = FullSizePredictor.from_meta(predictor, meta)
    loader = DataLoader(dataset, batch_size=8, collate_fn=collate)
    metrics = evaluate(full_size, loader, classes=1, criterion=make_loss("bce", 1))
    metrics["val/dice"], metrics["val/iou"], metrics["val/loss"]

    stats = accumulate(full_size, loader, ConfusionStats(classes=1), criterion=criterion, on_image=save_mask)
    metrics, matrix = stats.compute("test"), stats.reduced()[0]
"""


import torch

from segtoolkit.inference.full_size import collect
from segtoolkit.evaluation.metrics import ConfusionStats, confusion_matrix


@torch.inference_mode()
def accumulate(full_size, batches, stats, *, criterion=None, device=torch.device("cpu"), on_image=None):
    """Count every EvalBatch into `stats` (a ConfusionStats) at each image's size, with the loss (none when
    `criterion` is None: then a sliding-window image never has its logits whole, only a band at a time).
    `on_image(mask, matrix)` sees each image's predicted mask (uint8 HxW at its size) and confusion counts,
    in order. `full_size`: a FullSizePredictor. Returns `stats`."""
    for batch in batches:
        if full_size.tiled:
            score_tiled(full_size, batch, stats, criterion, device, on_image)
            continue
        logits, blocks = full_size.fitted_blocks(batch.images, batch.boxes)
        if criterion is not None:
            stats.add_loss(criterion(logits.to(device), batch.targets.to(device)), len(logits))
        for image_blocks, mask in zip(blocks, batch.masks):
            score(full_size, image_blocks, mask, stats, on_image)
    return stats


def score_tiled(full_size, batch, stats, criterion, device, on_image):
    """A batch of images by sliding window, their tiles through the model together; the loss of each image
    on its logits at the model's scale, filled as rows finish."""
    images = [image.numpy() for image in batch.images]
    seen = [ModelRows(image.shape[:2]) for image in images] if criterion is not None else None
    blocks = full_size.tile_blocks(images, [tuple(mask.shape[-2:]) for mask in batch.masks], seen)
    for number, (image_blocks, mask) in enumerate(zip(blocks, batch.masks)):
        score(full_size, image_blocks, mask, stats, on_image)
        if seen is not None:
            stats.add_loss(criterion(seen[number].logits[None].to(device), batch.targets[number][None].to(device)), 1)


def score(full_size, blocks, mask, stats, on_image=None):
    """Count one image's full-size logit blocks against its mask, band by band."""
    size = tuple(mask.shape[-2:])
    mask, counts = mask.reshape(size), torch.zeros(stats.size, stats.size, dtype=torch.int64)

    def count(start, stop, labels):
        counts.add_(confusion_matrix(labels, mask[start:stop], stats.size, stats.ignore_index))

    predicted, _ = collect(blocks, size, full_size.conf_thres, seen=count)
    stats.add(counts)
    if on_image is not None:
        on_image(predicted, counts)


class ModelRows:
    """The logits of a sliding-window image at the model's scale, written as its rows finish (the loss's)."""

    def __init__(self, size):
        self.size, self.logits = size, None

    def __call__(self, start, stop, logits):
        if self.logits is None:
            self.logits = torch.empty(logits.shape[0], *self.size)
        self.logits[:, start:stop] = logits


def evaluate(full_size, batches, *, classes, criterion, device=torch.device("cpu"), ignore_index=None,
             class_names=None, prefix="val"):
    """{prefix/loss, prefix/dice, prefix/iou} (+ per class for several classes) of `full_size` (a
    FullSizePredictor) over EvalBatches. The caller sets model.eval(); under torchrun each process passes its
    shard and every process gets the metrics of the whole split."""
    stats = accumulate(full_size, batches, ConfusionStats(classes, ignore_index, device), criterion=criterion,
                       device=device)
    return stats.compute(prefix, class_names if classes > 1 else None)


@torch.inference_mode()
def run_batch(model, batch, device):
    """float32 logits of `model` for one batch, on the CPU (the form predictors give)."""
    return model(batch.to(device)).float().cpu()
