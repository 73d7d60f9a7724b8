"""What scoring every image at its own size costs: train.py's validation of a set of 1024x768 images at full
size / the same validation scored at the patch size, as it was before (issue 22).

  eval_cost   full size: train.py's evaluate (segtoolkit.evaluation.scoring) over an evaluation dataset, each image's
              logits upsampled bilinearly to 1024x768 and counted against its original mask, band by band;
              patch size: the same model, loss and loader over a training-style dataset, counted at the
              patch (ConfusionStats.update). One class; both sides include the forward pass, the loss and
              the DataLoader, run alternately, each keeping its best round             target <= 1.25

Usage:
    python3 -m bench.eval_cost                     # 16 images 1024x768, Unet/resnet18, patch 256, batch 8
    python3 -m bench.eval_cost --rounds 5 --workers 0

Prints the measurement, then a line `ratio eval_cost VALUE` (time at full size / time at the patch size).
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from bench.machine import cpu_name
from dataset import make_dataset
from segtoolkit.data.loaders import collate
from segtoolkit.evaluation.scoring import evaluate, run_batch
from segtoolkit.inference.full_size import FullSizePredictor
from segtoolkit.training.losses import default_loss, make_loss
from segtoolkit.evaluation.metrics import ConfusionStats
from segtoolkit.models.factory import build_model, model_meta


def patch_size_metrics(model, loader, classes, criterion):
    """The evaluation as it was: logits and targets at the patch, counted there."""
    stats = ConfusionStats(classes)
    with torch.inference_mode():
        for images, targets in loader:
            logits = run_batch(model, images, torch.device("cpu"))
            stats.update(logits, targets, criterion(logits, targets))
    return stats.compute("val")


def eval_cost(work, rounds, workers, encoder="resnet18", patch=256, batch=8, count=16, size=(768, 1024)):
    from bench.run import Result, alternate, write_images
    classes = 1
    pairs = write_images(Path(work) / "data", count, size=size, seed=7)
    options = dict(patch_size=patch, classes=classes, mode="stretch", threads=max(2, workers))
    loaders = {"full": DataLoader(make_dataset(pairs, evaluation=True, **options), batch, num_workers=workers,
                                  collate_fn=collate, persistent_workers=workers > 0),
               "patch": DataLoader(make_dataset(pairs, **options), batch, num_workers=workers,
                                   persistent_workers=workers > 0)}
    torch.manual_seed(0)
    model = build_model("Unet", encoder, classes).eval()
    meta = model_meta("Unet", encoder, classes, patch, input_mode="stretch")
    criterion = make_loss(default_loss(classes), classes)
    full_size = FullSizePredictor.from_meta(lambda images: run_batch(model, images, torch.device("cpu")), meta)
    dice = {}

    def timed(name, measure):
        def rate():
            started = time.perf_counter()
            dice[name] = measure()["val/dice"]
            return 1 / (time.perf_counter() - started)
        return rate

    sides = {"full": timed("full", lambda: evaluate(full_size, loaders["full"], classes=classes,
                                                    criterion=criterion)),
             "patch": timed("patch", lambda: patch_size_metrics(model, loaders["patch"], classes, criterion))}
    for rate in sides.values():
        rate()  # warm-up: workers, oneDNN kernels
    best = alternate(rounds, **sides)
    return Result("eval_cost", best["patch"] / best["full"], "<= 1.25",
                  f"full size {1000 / best['full']:.0f} ms, patch size {1000 / best['patch']:.0f} ms for {count} "
                  f"images (Dice of the untrained model {dice['full']:.4f} vs {dice['patch']:.4f})",
                  f"Unet/{encoder} stretch patch {patch} batch {batch} classes {classes} workers {workers} "
                  f"threads {torch.get_num_threads()}, {count} images {size[1]}x{size[0]}")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="alternations; each side keeps its best")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers, as train.py --workers")
    return parser.parse_args(argv)


def main(args):
    print(f"machine: {cpu_name()}, torch {torch.__version__} ({torch.get_num_threads()} threads)", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-eval-cost-") as work:
        result = eval_cost(work, args.rounds, args.workers)
    print(f"{result.name}: {result.value:.3f} (target {result.target}, {'met' if result.met else 'NOT met'}): "
          f"{result.measured}; {result.setting}")
    print(f"ratio {result.name} {result.value:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(parse_args()))
