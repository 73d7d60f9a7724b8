"""Full-resolution benchmarks, run by bench/run.py (python3 -m bench.run --only tile_overhead ...):

  tile_overhead       sliding-window inference of a 1024x768 image (tiles 256, overlap 0.25, batch 4,
                      Gaussian blending) / (number of tiles x one tile's forward time, batched the same way)
                                                                                              target <= 1.05
  cache_rss_growth    peak RSS of a short --crop --cache disk training on 4x the images / on 1x (each in a
                      fresh process; --cache ram shown beside it)                             target <= 1.10
  epoch_scaling_crop  --crop training epoch with 2N images / with N                           target <= 2.1
"""

import multiprocessing
import re
import time
from pathlib import Path

import numpy as np
import torch


def tile_overhead(work, rounds, workers, encoder="resnet18", tile=256, size=(768, 1024), batch=4):
    from bench.run import Result, alternate
    from segtoolkit.models.factory import build_model
    from segtoolkit.inference.full_size import FullSizePredictor
    from segtoolkit.inference.predictor import TorchPredictor
    from segtoolkit.inference.tiling import tile_starts
    torch.manual_seed(0)
    predictor = TorchPredictor(build_model("Unet", encoder, 2), torch.device("cpu"))
    image = np.random.default_rng(0).integers(0, 255, (*size, 3), dtype=np.uint8)
    full_size = FullSizePredictor(predictor, tile, resize="tile", overlap=0.25, tile_batch=batch)
    stride = full_size.tiler.stride
    count = len(tile_starts(size[0], tile, stride)) * len(tile_starts(size[1], tile, stride))
    inputs = torch.randn(batch, 3, tile, tile)

    def tiled():
        started = time.perf_counter()
        full_size.mask(image)
        return 1 / (time.perf_counter() - started)

    def tiles():
        started = time.perf_counter()
        for _ in range(-(-count // batch)):  # the same number of batched forward passes
            predictor(inputs)
        return 1 / (time.perf_counter() - started)

    tiled(), tiles()  # warm-up: oneDNN kernels
    best = alternate(rounds, tiled=tiled, tiles=tiles)
    return Result("tile_overhead", best["tiles"] / best["tiled"], "<= 1.05",
                  f"{size[1]}x{size[0]} tiled {1000 / best['tiled']:.0f} ms, {count} tiles alone "
                  f"{1000 / best['tiles']:.0f} ms",
                  f"Unet/{encoder} tile {tile} overlap 0.25 batch {batch} threads {torch.get_num_threads()}")


def training_probe(pairs, cache, cache_dir, patch, batch):
    """In a fresh process: peak RSS (bytes) of building a --crop dataset and training one epoch on it."""
    from segtoolkit.training.config import RunConfig
    from segtoolkit.models.factory import build_model, model_meta
    from dataset import make_dataset
    from train import UnetTraining
    options = dict(patch_size=patch, classes=1, cache=cache, cache_dir=cache_dir, threads=2)
    train_set = make_dataset(pairs, augment=True, mode="crop", **options)
    val_set = make_dataset(pairs[:1], mode="full", **options)
    config = RunConfig(encoder="resnet18", patch_size=patch, crop=True, cache=cache, epochs=2, batch_size=batch,
                       workers=0, eval_step=10 ** 9)
    trainer = UnetTraining(build_model("Unet", "resnet18", 1), train_set, val_set, config=config,
                           run_dir=cache_dir, meta=model_meta("Unet", "resnet18", 1, patch, input_mode="tile"))
    trainer.train_one_epoch()
    text = Path("/proc/self/status").read_text()
    return int(re.search(r"^VmHWM:\s+(\d+) kB", text, re.M).group(1)) * 1024


def cache_rss_growth(work, rounds, workers, count=48, patch=128, batch=8, size=(480, 640)):
    from bench.run import Result, write_images
    pairs = write_images(work / "data", 4 * count, size=size, seed=5)
    peaks = {}
    for cache in ("disk", "ram"):
        for images in (count, 4 * count):
            runs = []
            for _ in range(max(1, rounds - 1)):  # memory is not noise: the worst round counts
                with multiprocessing.get_context("spawn").Pool(1) as pool:
                    runs.append(pool.apply(training_probe, (pairs[:images], cache, work / f"cache-{cache}", patch,
                                                            batch)))
            peaks[cache, images] = max(runs)
    ratio = {cache: peaks[cache, 4 * count] / peaks[cache, count] for cache in ("disk", "ram")}
    mib = {key: value / 2 ** 20 for key, value in peaks.items()}
    return Result("cache_rss_growth", ratio["disk"], "<= 1.10",
                  f"--cache disk {mib['disk', 4 * count]:.0f} vs {mib['disk', count]:.0f} MiB; --cache ram "
                  f"{mib['ram', 4 * count]:.0f} vs {mib['ram', count]:.0f} MiB ({ratio['ram']:.2f})",
                  f"--crop patch {patch} batch {batch}, {4 * count} vs {count} images {size[1]}x{size[0]}, "
                  f"1 epoch, Unet/resnet18")


def epoch_scaling_crop(work, rounds, workers, **sizes):
    from bench.run import epoch_scaling
    return epoch_scaling(work, rounds, workers, crop=True, **sizes)
