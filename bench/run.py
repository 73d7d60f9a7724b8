"""Performance benchmarks: ratios, each measured side by side in one run, on the CPU.

Every figure is the ratio of two measurements taken in the same run and alternated round by round
(A B A B ...), each side keeping its best round: a machine that other work slows down slows both, so
the ratio holds where absolute times would not. docs/performance.md says how long a run takes.

  trainer_overhead  UnetTraining images/s (real DataLoader with workers, augmentation on, no evaluation)
                    / its own train_step alone (same model, AdamW, clipping, OneCycleLR and AMP setting) on the
                    same images already in memory as tensors                                  target >= 0.95
  detect_overhead   detect.py end to end on a 640x480 MP4 (decode, preprocess, infer, post-process,
                    overlay, write the MP4) / the forward pass alone on the same frames, letterboxed
                    beforehand                                                                target >= 0.90
  preload_memory    peak RSS growth while a dataset preloads N images with --cache ram / their uint8 pixel bytes
                    at the preloaded size (images and masks); --cache disk (writing the cache) and none, which
                    keep no pixels in the process, measured once and shown beside it          target <= 1.25
  epoch_scaling     training epoch time with 2N images / with N                               target <= 2.1
  onnx_speedup      onnxruntime frame rate / PyTorch eager (as detect.py runs it), Unet/resnet34 at 512,
                    batch 1; each side's convolution GFLOP/s is shown as a share of the CPU's float32
                    matrix-multiply peak                                                      target >= 1.3
  half_speedup      detect.py's PyTorch inference with --half / without, Unet/resnet34 at 512: bfloat16 on a CPU
                    with AVX-512 BF16 or AMX (target >= 1.8), float32 with a warning on any other (target >= 0.95:
                    the fallback costs nothing; bfloat16 forced there is shown beside it, to show why)
  openvino_speedup  OpenVINO (with --half where the CPU has bfloat16) / PyTorch eager float32, Unet/resnet34 at
                    512; OpenVINO float32 and onnxruntime shown beside it. The issue's goal for the fastest
                    runtime: target >= 2.5 on a bfloat16 CPU, >= 1.3 on others
  detect_overhead_fast  detect.py end to end, as detect_overhead, with the runtime that runs the forward pass
                    fastest on this CPU / that runtime's forward pass alone                   target >= 0.95
  shard_scaling     images/s of `torchrun --nproc-per-node 2 detect.py` over a folder of 640x480 images (the
                    cores split: one thread each on 2 cores) / one detect.py with all the threads, Unet/resnet34 at
                    256; each side counted while all its processes segment; one process with half the threads
                    shown beside it                                                            target >= 0.90
  batch_throughput  detect.py over 64 images 640x480 with --batch-size 8 / with --batch-size 1: frames per second,
                    same model (Unet/resnet34 at 256) and threads; --device cuda runs both on the GPU, the figure
                    a GPU user needs (a CPU's cores are busy with one frame already)         target >= 0.95

  tile_overhead, cache_rss_growth, epoch_scaling_crop: full resolution, see bench/fullres.py
  eval_cost         validation scored at each image's own size / scored at the patch, 1024x768 images: see
                    bench/eval_cost.py                                                        target <= 1.25
  streams_latency   the age of the frame each row describes (server sent -> row written), three local streams
                    at 10 FPS: median with one detect.py over the three / with one detect.py per stream; the 95th
                    percentiles shown beside it: see bench/streams_latency.py                 target <= 1.25

A benchmark that raises, or whose process dies, is a row of the table that says FAILED and why (one line), has
no ratio line, and makes the exit code 1.

Usage:
    python3 -m bench.run                                  # all of them: one table, then `ratio NAME VALUE` lines
    python3 -m bench.run --smoke                          # every one, extras too, once at its smallest size: checks
                                                          # that each runs and prints a ratio (the tests run it)
    python3 -m bench.run --only onnx_speedup detect_overhead
    python3 -m bench.run --only batch_throughput --device cuda   # detect.py --batch-size on the GPU
    python3 -m bench.run --rounds 5                       # more alternations: steadier on a busy machine
    python3 -m bench.run --only channels_last             # extra: does channels_last help on this CPU?
    python3 -m bench.run --only onnx_int8                 # extra: export.py --int8 against eager and float32
    python3 -m bench.run --only amp_training              # extra: train.py --use-amp against float32
"""

import argparse
import contextlib
import copy
import io
import json
import multiprocessing
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from bench.machine import cpu_name
from dataset import make_dataset
from make_sample_data import draw_objects, make_background
from segtoolkit.models.checkpoints import save_checkpoint
from segtoolkit.training.config import RunConfig
from segtoolkit.models.factory import build_model, model_meta
from segtoolkit.inference.full_size import FullSizePredictor
from segtoolkit.inference.predictor import TorchPredictor, half_dtype, load_predictor, native_bfloat16
from segtoolkit.data.cache import CACHE_MODES
from segtoolkit.outputs.shards import share
from segtoolkit.training.precision import set_train_mode
from bench.eval_cost import eval_cost  # noqa: F401 - main() runs it by name
from bench.fullres import cache_rss_growth, epoch_scaling_crop, tile_overhead  # noqa: F401 - main() runs them by name
from bench.streams_latency import streams_latency  # noqa: F401 - main() runs it by name
from train import UnetTraining

REPO = Path(__file__).resolve().parents[1]  # the checkout: train.py and detect.py are run from it
BENCHMARKS = ("trainer_overhead", "detect_overhead", "preload_memory", "epoch_scaling", "onnx_speedup", "half_speedup",
              "openvino_speedup", "detect_overhead_fast", "tile_overhead", "cache_rss_growth", "epoch_scaling_crop",
              "eval_cost", "shard_scaling", "batch_throughput", "streams_latency")
DEVICE_BENCHMARKS = ("batch_throughput",)  # the ones --device moves; the others run on the CPU
EXTRAS = ("channels_last", "onnx_int8", "amp_training")
# --smoke: each benchmark's smallest setting (a tiny model, a few images or frames), run for one round; the
# ratios then say nothing, the run says that every benchmark still runs to its ratio
SMOKE = {
    "trainer_overhead": dict(patch=64, batch=2, steps=2),
    "detect_overhead": dict(encoder="resnet18", patch=64, frames=4),
    "preload_memory": dict(count=8, patch=64, size=(96, 128)),
    "epoch_scaling": dict(patch=64, batch=2, count=4),
    "onnx_speedup": dict(encoder="resnet18", patch=64, frames=1),
    "half_speedup": dict(encoder="resnet18", patch=64, frames=1),
    "openvino_speedup": dict(encoder="resnet18", patch=64, frames=1),
    "detect_overhead_fast": dict(encoder="resnet18", patch=64, frames=4),
    "tile_overhead": dict(tile=64, size=(96, 128), batch=2),
    "cache_rss_growth": dict(count=2, patch=64, batch=2, size=(96, 128)),
    "epoch_scaling_crop": dict(patch=64, batch=2, count=4),
    "eval_cost": dict(patch=64, batch=2, count=2, size=(96, 128)),
    "shard_scaling": dict(encoder="resnet18", patch=64, count=8, size=(96, 128), strict=False),
    "batch_throughput": dict(encoder="resnet18", patch=64, count=8, batch=4),
    "streams_latency": dict(patch=64, size=(96, 128), rows=8, skip=2),
    "channels_last": dict(encoder="resnet18", patch=64, batch=2),
    "onnx_int8": dict(encoder="resnet18", patch=64, frames=1),
    "amp_training": dict(patch=64, batch=2, steps=2),
}


@dataclass
class Result:
    name: str
    value: float
    target: str
    measured: str
    setting: str

    @property
    def met(self):
        bound = float(self.target.split()[1])
        return self.value >= bound if self.target.startswith(">=") else self.value <= bound


@dataclass
class Failure:
    """A benchmark that raised, or whose process died: its row of the table says FAILED and why."""
    name: str
    reason: str  # one line


# ---------------------------------------------------------------- data


def write_images(root, count, size=(480, 640), seed=0):
    """`count` synthetic image/mask pairs of `size` (JPEG images, PNG 0/255 masks); returns the pairs."""
    rng = np.random.default_rng(seed)
    (root / "imgs").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    pairs = []
    for index in range(count):
        image = make_background(rng, *size)
        mask = np.zeros(size, np.uint8)
        draw_objects(rng, image, mask, 1)
        image_path, mask_path = root / "imgs" / f"{index:04d}.jpg", root / "masks" / f"{index:04d}.png"
        cv2.imwrite(str(image_path), np.clip(image, 0, 255).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 90])
        cv2.imwrite(str(mask_path), mask * 255)
        pairs.append((image_path, mask_path))
    return pairs


def write_video(path, frames, size=(480, 640), fps=25.0, seed=0):
    """An MP4 (mp4v) of objects drifting across a grainy background."""
    rng = np.random.default_rng(seed)
    scene = make_background(rng, *size)
    draw_objects(rng, scene, np.zeros(size, np.uint8), 1)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (size[1], size[0]))
    for index in range(frames):
        frame = np.roll(scene, 6 * index, axis=1) + rng.normal(0, 4, size=scene.shape)
        writer.write(np.clip(frame, 0, 255).astype(np.uint8))
    writer.release()
    return path


def read_video_rgb(path):
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, bgr = capture.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    capture.release()
    return frames


# ---------------------------------------------------------------- measuring


def alternate(rounds, **measures):
    """Run each measure once per round, in turn; keep each one's best (highest) value."""
    best = {name: -float("inf") for name in measures}
    for _ in range(rounds):
        for name, measure in measures.items():
            best[name] = max(best[name], measure())
    return best


def trainer_epoch_rate(trainer):
    """Images/s of one UnetTraining epoch (no evaluation: eval_step is beyond the run)."""
    images = trainer.steps_per_epoch * trainer.train_loader.batch_size
    with contextlib.redirect_stderr(io.StringIO()):  # the progress bar
        started = time.perf_counter()
        trainer.train_one_epoch()
        return images / (time.perf_counter() - started)


class BareLoop:
    """The reference: the trainer's own step (UnetTraining.train_step: model, AdamW, clipping, OneCycleLR,
    precision and its per-step checks) on a second trainer built the same way, fed batches already in memory
    as tensors: no DataLoader, no augmentation, no progress bar. What UnetTraining adds around its step is
    what the ratio measures."""

    def __init__(self, trainer, images, masks):
        self.trainer, self.images, self.masks = trainer, images, masks

    def epoch_rate(self):
        trainer = self.trainer
        batch_size, steps = trainer.train_loader.batch_size, trainer.steps_per_epoch
        set_train_mode(trainer.model, trainer.config.freeze_bn)
        order = torch.randperm(len(self.images))
        started = time.perf_counter()
        for step in range(steps):
            index = order[step * batch_size:(step + 1) * batch_size]
            trainer.train_step(self.images[index], self.masks[index], trainer.train_stats)
        return steps * batch_size / (time.perf_counter() - started)


def make_trainer(pairs, work, *, encoder, patch, batch, workers, epochs, use_amp="off", seed=0, crop=False):
    """UnetTraining as train.py builds it (binary, augmentation on), evaluation pushed beyond the run."""
    meta = model_meta("Unet", encoder, 1, patch, input_mode="tile" if crop else "letterbox")
    options = dict(patch_size=patch, classes=1, mean=meta["mean"], std=meta["std"], threads=max(2, workers))
    train_set = make_dataset(pairs, augment=True, mode="crop" if crop else "letterbox", **options)
    val_set = make_dataset(pairs[:batch], mode=FullSizePredictor.from_meta(None, meta).dataset_mode, evaluation=True,
                           **options)
    torch.manual_seed(seed)
    model = build_model("Unet", encoder, 1)
    config = RunConfig(encoder=encoder, patch_size=patch, epochs=epochs, batch_size=batch, workers=workers,
                       use_amp=use_amp, eval_step=10 ** 9, seed=seed, crop=crop)
    return UnetTraining(model, train_set, val_set, config=config, run_dir=work, meta=meta)


# ---------------------------------------------------------------- the five benchmarks


def trainer_overhead(work, rounds, workers, encoder="resnet18", patch=128, batch=8, steps=12, use_amp="off"):
    pairs = write_images(work / "data", batch * steps, seed=1)
    trainer = make_trainer(pairs, work, encoder=encoder, patch=patch, batch=batch, workers=workers,
                           epochs=rounds + 2, use_amp=use_amp)  # beyond the rounds: no final evaluation
    samples = [make_dataset(pairs, patch_size=patch, classes=1).load_sample(i) for i in range(len(pairs))]
    images, masks = torch.stack([s[0] for s in samples]), torch.stack([s[1] for s in samples])
    bare = BareLoop(make_trainer(pairs, work, encoder=encoder, patch=patch, batch=batch, workers=workers,
                                 epochs=rounds + 2, use_amp=use_amp), images, masks)
    trainer_epoch_rate(trainer)  # warm-up: worker start, oneDNN kernels
    bare.epoch_rate()
    best = alternate(rounds, bare=bare.epoch_rate, trainer=lambda: trainer_epoch_rate(trainer))
    return Result("trainer_overhead", best["trainer"] / best["bare"], ">= 0.95",
                  f"UnetTraining {best['trainer']:.1f} img/s, train_step alone {best['bare']:.1f} img/s",
                  f"Unet/{encoder} patch {patch} batch {batch} workers {workers} threads {torch.get_num_threads()} "
                  f"amp {use_amp}")


def epoch_scaling(work, rounds, workers, encoder="resnet18", patch=128, batch=8, count=64, crop=False):
    pairs = write_images(work / "data", 2 * count, seed=2)
    trainers = {name: make_trainer(chosen, work, encoder=encoder, patch=patch, batch=batch, workers=workers,
                                   epochs=rounds + 2, crop=crop)  # beyond the rounds: no final evaluation
                for name, chosen in (("small", pairs[:count]), ("large", pairs))}
    for trainer in trainers.values():
        trainer_epoch_rate(trainer)  # warm-up epoch: workers start
    best = alternate(rounds, **{name: (lambda trainer=trainer: trainer_epoch_rate(trainer))
                                for name, trainer in trainers.items()})
    seconds = {name: trainer.steps_per_epoch * batch / best[name] for name, trainer in trainers.items()}
    return Result("epoch_scaling_crop" if crop else "epoch_scaling", seconds["large"] / seconds["small"], "<= 2.1",
                  f"{2 * count} images {seconds['large']:.1f} s, {count} images {seconds['small']:.1f} s",
                  f"{'--crop ' if crop else ''}Unet/{encoder} patch {patch} batch {batch} workers {workers} "
                  f"threads {torch.get_num_threads()}")


def preload_probe(pairs, patch, threads, cache, cache_dir):
    """In a fresh process: (peak RSS growth while the dataset is built with --cache `cache`, uint8 pixel bytes of
    its samples as stored)."""
    import gc

    from dataset import BinaryDataset

    def status(key):
        text = Path("/proc/self/status").read_text()
        return int(re.search(rf"^{key}:\s+(\d+) kB", text, re.M).group(1)) * 1024

    gc.collect()
    before = status("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # resets the peak (VmHWM) to the current RSS
    data = BinaryDataset(pairs, patch, threads=threads, cache=cache, cache_dir=cache_dir)
    peak = status("VmHWM")
    # one read of each sample (with --cache none a read decodes it again)
    return peak - before, sum(sum(array.nbytes for array in data.store.get(index)) for index in range(len(data)))


def preload_memory(work, rounds, workers, count=512, patch=256, size=(480, 640)):
    pairs = write_images(work / "data", count, size=size, seed=3)
    threads = max(2, workers)  # what train.py gives the preload
    growth = {cache: 0 for cache in CACHE_MODES}
    for round_ in range(rounds):  # a fresh process each time: a reused one would refill the memory it freed
        for cache in CACHE_MODES if round_ == 0 else ("ram",):  # the ratio's every round, those beside it once
            with multiprocessing.get_context("spawn").Pool(1) as pool:
                grown, pixels = pool.apply(preload_probe, (pairs, patch, threads, cache, work / "cache"))
            growth[cache] = max(growth[cache], grown)  # memory is not noise: report the worst round
    mib = {cache: grown / 2 ** 20 for cache, grown in growth.items()}
    return Result("preload_memory", growth["ram"] / pixels, "<= 1.25",
                  f"--cache ram: peak RSS +{mib['ram']:.1f} MiB for {pixels / 2 ** 20:.1f} MiB of uint8 pixels; "
                  f"--cache disk (writing it) +{mib['disk']:.1f} MiB, none +{mib['none']:.1f} MiB",
                  f"{count} images {size[1]}x{size[0]} -> patch {patch} (RGB + mask), {threads} preload threads")


def detect_rate(work, model_file, video, frames, *flags, first=1):
    """detect.py as a user runs it, timed at each per-frame line it prints: from the first frame's line (the first
    forward pass done, with its one-off set-up: oneDNN kernels, allocator, as the forward pass's warm-up leaves
    out) to the last one, over the frames after that pass (`first`: its frames, the --batch-size)."""
    errors = work / "detect-stderr.txt"
    with open(errors, "w") as stderr:
        process = subprocess.Popen([sys.executable, str(REPO / "detect.py"), "--model", str(model_file), "--source",
                                    str(video), "--save-video", "--save-dir", str(work / "detect"), *flags],
                                   cwd=REPO, stdout=subprocess.PIPE, stderr=stderr, text=True)
        stamps = [time.perf_counter() for line in process.stdout if line.startswith(("video ", "image "))]
    if process.wait() != 0 or len(stamps) != frames:
        raise RuntimeError(f"detect.py printed {len(stamps)} frame lines for {frames} frames, exit "
                           f"{process.returncode}: {errors.read_text()[-2000:]}")
    return (len(stamps) - first) / (stamps[-1] - stamps[0])


FRAME_LINE = re.compile(r"image \d+/\d+ (\S+) \d+x\d+:")  # detect.py's line for an image: its path


def sharded_rate(work, model_file, images, processes, threads, strict=True):
    """Images/s of detect.py over `images` in `processes` torchrun processes of `threads` threads each (one: a plain
    python3 detect.py), from its per-frame lines, stamped as they come: the frames finished while every process
    segments (from the last process's first frame to the first process's last), so neither the start of torch in
    each process nor the wait for the slower one counts. `strict=False` (--smoke, a few tiny images done before the
    other process starts): the rate over the whole span instead of failing."""
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"] if processes > 1 else []
    files = sorted(images.iterdir())
    rank_of = {str(path): rank for rank in range(processes) for path in share(files, rank, processes)}
    stamps = [[] for _ in range(processes)]
    errors = work / "detect-stderr.txt"
    with open(errors, "w") as stderr:
        process = subprocess.Popen([sys.executable, *launcher, str(REPO / "detect.py"), "--model", str(model_file),
                                    "--source", str(images), "--save-dir", str(work / f"detect-{processes}")],
                                   cwd=REPO, stdout=subprocess.PIPE, stderr=stderr, text=True,
                                   env={**os.environ, "OMP_NUM_THREADS": str(threads)})
        for line in process.stdout:  # torchrun runs python -u: two processes' lines may share one
            for path in FRAME_LINE.findall(line):
                stamps[rank_of[path]].append(time.perf_counter())
    shutil.rmtree(work / f"detect-{processes}", ignore_errors=True)
    if process.wait() != 0 or sum(map(len, stamps)) != len(files):
        raise RuntimeError(f"detect.py in {processes} process(es) printed {sum(map(len, stamps))} frame lines for "
                           f"{len(files)} images, exit {process.returncode}: {errors.read_text()[-2000:]}")
    start, end = max(times[0] for times in stamps), min(times[-1] for times in stamps)
    done = sum(start < stamp <= end for times in stamps for stamp in times)
    if done < len(files) // (2 * processes):
        if not strict:
            return (len(files) - 1) / (max(times[-1] for times in stamps) - min(times[0] for times in stamps))
        raise RuntimeError(f"the {processes} processes segmented side by side for {done} frames only (one started "
                           f"after the other had nearly finished); give more images")
    return done / (end - start)


def shard_scaling(work, rounds, workers, encoder="resnet34", patch=256, count=64, size=(480, 640), strict=True):
    write_images(work, count, size)
    torch.manual_seed(0)
    checkpoint = work / "model.pth.tar"
    save_checkpoint(checkpoint, build_model("Unet", encoder, 1), model_meta("Unet", encoder, 1, patch))
    cores = 2 * max(1, len(os.sched_getaffinity(0)) // 2)  # torchrun's processes get cores // 2 threads each
    # beside it, one process of one thread: on a busy machine the 2 threads of one process wait for each other (an
    # OpenMP barrier per layer), which no figure of sharding should be read without
    best = alternate(rounds, one=lambda: sharded_rate(work, checkpoint, work / "imgs", 1, cores, strict),
                     two=lambda: sharded_rate(work, checkpoint, work / "imgs", 2, 1, strict),
                     single=lambda: sharded_rate(work, checkpoint, work / "imgs", 1, cores // 2, strict))
    return Result("shard_scaling", best["two"] / best["one"], ">= 0.90",
                  f"torchrun 2 processes {best['two']:.2f} images/s, one process {best['one']:.2f} images/s (with "
                  f"{cores // 2} thread(s): {best['single']:.2f})",
                  f"Unet/{encoder} patch {patch}, {count} images {size[1]}x{size[0]}, {cores // 2} thread(s) each "
                  f"against {cores} in one process, gloo")


def frames_rate(predictor, tensors):
    """A measure: frames/s of `predictor` over `tensors`, one at a time, as detect.py feeds them."""
    def measure():
        started = time.perf_counter()
        for tensor in tensors:
            predictor(tensor)
        return len(tensors) / (time.perf_counter() - started)

    return measure


def detect_overhead(work, rounds, workers, encoder="resnet34", patch=256, frames=48):
    video = write_video(work / "clip.mp4", frames)
    meta = model_meta("Unet", encoder, 1, patch)
    torch.manual_seed(0)
    model = build_model("Unet", encoder, 1)
    checkpoint = work / "model.pth.tar"
    save_checkpoint(checkpoint, model, meta)
    tensors = model_inputs(meta, video)
    forward_rate = frames_rate(TorchPredictor(model, torch.device("cpu")), tensors)
    forward_rate()  # warm-up
    best = alternate(rounds, forward=forward_rate, detect=lambda: detect_rate(work, checkpoint, video, len(tensors)))
    return Result("detect_overhead", best["detect"] / best["forward"], ">= 0.90",
                  f"detect.py {best['detect']:.2f} FPS, forward alone {best['forward']:.2f} FPS",
                  f"Unet/{encoder} patch {patch} batch 1, {len(tensors)} frames 640x480 -> MP4, PyTorch, "
                  f"threads {torch.get_num_threads()}")


def batch_throughput(work, rounds, workers, encoder="resnet34", patch=256, count=64, batch=8, device="cpu"):
    """detect.py over `count` 640x480 images with --batch-size `batch` against 1, on `device`: end to end (reading,
    the forward passes, writing images, masks and results.csv), each run in a fresh process (a run's folder
    removed before the next), both with the same model file, threads and device."""
    write_images(work / "data", count, seed=4)
    torch.manual_seed(0)
    checkpoint = work / "model.pth.tar"
    save_checkpoint(checkpoint, build_model("Unet", encoder, 1), model_meta("Unet", encoder, 1, patch))

    def rate(size):
        shutil.rmtree(work / "detect", ignore_errors=True)
        return detect_rate(work, checkpoint, work / "data" / "imgs", count, "--batch-size", str(size), "--device",
                           device, first=size)

    best = alternate(rounds, batched=lambda: rate(batch), single=lambda: rate(1))
    return Result("batch_throughput", best["batched"] / best["single"], ">= 0.95",
                  f"--batch-size {batch} {best['batched']:.2f} FPS, --batch-size 1 {best['single']:.2f} FPS",
                  f"Unet/{encoder} patch {patch}, {count} images 640x480, device {device}, "
                  f"threads {torch.get_num_threads()}")


def model_inputs(meta, video):
    """The 1x3xPxP inputs detect.py feeds the model for each frame of `video`, fitted as the model's meta says
    (segtoolkit.inference.full_size: one per frame for these whole-image models)."""
    fit = FullSizePredictor.from_meta(None, meta)
    return [tensor[None] for rgb in read_video_rgb(video) for tensor in fit.inputs(rgb)]


def model_files(work, encoder, patch):
    """A random-weight Unet at `patch` written as a checkpoint, an ONNX file and an OpenVINO model, as
    train.py and export.py write them: (model, meta, {runtime: file})."""
    from segtoolkit.export.onnx import export_onnx
    from segtoolkit.inference.openvino_runtime import convert_onnx

    meta = model_meta("Unet", encoder, 1, patch)
    torch.manual_seed(0)
    model = build_model("Unet", encoder, 1).eval()
    save_checkpoint(work / "model.pth.tar", model, meta)
    export_onnx(model, meta, work / "model.onnx")
    convert_onnx(work / "model.onnx", work / "model.xml", meta)
    return model, meta, {"PyTorch": work / "model.pth.tar", "onnxruntime": work / "model.onnx",
                         "OpenVINO": work / "model.xml"}


def runtimes(files, half):
    """{name: (predictor, detect.py flags)} for every runtime detect.py can run these files with; with `half`
    also the --half runs that differ from float32 on this CPU (bfloat16 where it is native)."""
    cpu = torch.device("cpu")
    found = {name: (load_predictor(path, cpu)[1], ()) for name, path in files.items()}
    if half and native_bfloat16():
        for name in ("PyTorch", "OpenVINO"):
            found[f"{name} --half"] = (load_predictor(files[name], cpu, half=True)[1], ("--half",))
    return found


def detect_overhead_fast(work, rounds, workers, encoder="resnet34", patch=256, frames=48):
    """detect_overhead with the runtime whose forward pass is fastest here (picked by one alternated round over
    every runtime and, where the CPU has native bfloat16, --half): the pipeline must keep up with it."""
    video = write_video(work / "clip.mp4", frames)
    _, meta, files = model_files(work, encoder, patch)
    tensors = model_inputs(meta, video)
    candidates = runtimes(files, half=True)
    measures = {name: frames_rate(predictor, tensors[:8]) for name, (predictor, _) in candidates.items()}
    for measure in measures.values():
        measure()  # warm-up
    picked = alternate(min(rounds, 2), **measures)
    fastest = max(picked, key=picked.get)
    predictor, flags = candidates[fastest]
    model_file = files[fastest.split()[0]]
    best = alternate(rounds, forward=frames_rate(predictor, tensors),
                     detect=lambda: detect_rate(work, model_file, video, len(tensors), *flags))
    others = ", ".join(f"{name} {rate:.2f}" for name, rate in picked.items() if name != fastest)
    return Result("detect_overhead_fast", best["detect"] / best["forward"], ">= 0.95",
                  f"detect.py {best['detect']:.2f} FPS, forward alone {best['forward']:.2f} FPS with {fastest} "
                  f"(the fastest forward pass here; {others} FPS)",
                  f"Unet/{encoder} patch {patch} batch 1, {len(tensors)} frames 640x480 -> MP4, {fastest}, "
                  f"threads {torch.get_num_threads()}")


def conv_flops(model, batch):
    """Floating-point operations of every convolution in one forward pass of `batch` (2 per multiply-add)."""
    total = [0]

    def count(module, _inputs, output):
        total[0] += 2 * output.numel() * module.kernel_size[0] * module.kernel_size[1] * module.in_channels \
            // module.groups

    hooks = [module.register_forward_hook(count) for module in model.modules()
             if isinstance(module, torch.nn.Conv2d)]
    with torch.inference_mode():
        model(batch)
    for hook in hooks:
        hook.remove()
    return total[0]


def matmul_peak(size=1024, repeats=8):
    """A measure returning the GFLOP/s of onnxruntime's float32 matrix multiply (MatMul) at `size`, with the
    threads its sessions use: the most this CPU does in float32 in practice, to put the two frame rates
    beside. The session is built once; each call times `repeats` products and keeps the fastest."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from segtoolkit.inference.onnx_runtime import session_options

    square = [size, size]
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "matmul",
                              [helper.make_tensor_value_info(name, TensorProto.FLOAT, square) for name in "ab"],
                              [helper.make_tensor_value_info("c", TensorProto.FLOAT, square)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    session = ort.InferenceSession(model.SerializeToString(), session_options(), providers=["CPUExecutionProvider"])
    feeds = {name: np.random.default_rng(0).standard_normal(square, dtype=np.float32) for name in "ab"}
    session.run(None, feeds)  # warm-up

    def measure():
        fastest = float("inf")
        for _ in range(repeats):
            started = time.perf_counter()
            session.run(None, feeds)
            fastest = min(fastest, time.perf_counter() - started)
        return 2 * size ** 3 / fastest / 1e9

    return measure


def onnx_speedup(work, rounds, workers, encoder="resnet34", patch=512, frames=3):
    """Also reports each side's convolution GFLOP/s against the CPU's float32 matrix-multiply peak: a side
    near that peak cannot get much faster in float32, only by doing fewer operations."""
    from segtoolkit.export.onnx import export_onnx
    from segtoolkit.inference.onnx_runtime import load_onnx

    meta = model_meta("Unet", encoder, 1, patch)
    torch.manual_seed(0)
    model = build_model("Unet", encoder, 1).eval()
    export_onnx(model, meta, work / "model.onnx")
    _, predict = load_onnx(work / "model.onnx")
    predictor = TorchPredictor(model, torch.device("cpu"))  # channels_last, as build_model makes it
    nchw = TorchPredictor(copy.deepcopy(model).to(memory_format=torch.contiguous_format), torch.device("cpu"))
    batch = torch.randn(1, 3, patch, patch)
    array = batch.numpy()
    gflops = conv_flops(model, batch) / 1e9

    def rate(run):
        started = time.perf_counter()
        for _ in range(frames):
            run()
        return frames / (time.perf_counter() - started)

    rate(lambda: predictor(batch)), rate(lambda: nchw(batch)), rate(lambda: predict(array))  # warm-up
    best = alternate(rounds, torch=lambda: rate(lambda: predictor(batch)), onnx=lambda: rate(lambda: predict(array)),
                     nchw=lambda: rate(lambda: nchw(batch)), peak=matmul_peak())
    share = {side: gflops * best[side] / best["peak"] for side in ("onnx", "torch")}
    return Result("onnx_speedup", best["onnx"] / best["torch"], ">= 1.3",
                  f"onnxruntime {best['onnx']:.2f} FPS, PyTorch eager {best['torch']:.2f} FPS (channels_last; "
                  f"{best['nchw']:.2f} FPS in NCHW: x{best['onnx'] / best['nchw']:.2f}); {gflops:.1f} GFLOP of "
                  f"convolutions a frame: onnxruntime {share['onnx']:.0%}, eager {share['torch']:.0%} of this CPU's "
                  f"float32 matmul peak {best['peak']:.0f} GFLOP/s",
                  f"Unet/{encoder} patch {patch} batch 1, torch threads {torch.get_num_threads()}, onnxruntime "
                  f"threads default (one per core), no spinning")


def onnx_int8(work, rounds, workers, encoder="resnet34", patch=512, frames=3):
    """Extra: export.py --int8 (calibrated QDQ) against PyTorch eager and the float32 ONNX file, as
    onnx_speedup. Calibrated on 4 random batches: the speed does not depend on the ranges found."""
    from segtoolkit.export.onnx import export_onnx
    from segtoolkit.inference.onnx_runtime import INPUT_NAME, load_onnx
    from segtoolkit.export.int8 import quantize_int8

    meta = model_meta("Unet", encoder, 1, patch)
    torch.manual_seed(0)
    model = build_model("Unet", encoder, 1).eval()
    export_onnx(model, meta, work / "model.onnx")
    batches = [torch.randn(1, 3, patch, patch).numpy() for _ in range(4)]
    quantize_int8(work / "model.onnx", work / "model-int8.onnx", batches, INPUT_NAME)
    _, float32 = load_onnx(work / "model.onnx")
    _, int8 = load_onnx(work / "model-int8.onnx")
    predictor = TorchPredictor(model, torch.device("cpu"))
    batch = torch.randn(1, 3, patch, patch)
    array = batch.numpy()

    def rate(run):
        started = time.perf_counter()
        for _ in range(frames):
            run()
        return frames / (time.perf_counter() - started)

    rate(lambda: predictor(batch)), rate(lambda: float32(array)), rate(lambda: int8(array))  # warm-up
    best = alternate(rounds, torch=lambda: rate(lambda: predictor(batch)), float32=lambda: rate(lambda: float32(array)),
                     int8=lambda: rate(lambda: int8(array)))
    return Result("onnx_int8", best["int8"] / best["torch"], ">= 1.3",
                  f"int8 onnxruntime {best['int8']:.2f} FPS, float32 {best['float32']:.2f} FPS "
                  f"(x{best['int8'] / best['float32']:.2f}), PyTorch eager {best['torch']:.2f} FPS",
                  f"Unet/{encoder} patch {patch} batch 1, uint8 activations, int8 weights per channel")


def repeat_rate(run, frames):
    """A measure: frames/s of calling `run` `frames` times."""
    def measure():
        started = time.perf_counter()
        for _ in range(frames):
            run()
        return frames / (time.perf_counter() - started)

    return measure


def half_speedup(work, rounds, workers, encoder="resnet34", patch=512, frames=3):
    """load_predictor(half=True), as detect.py --half runs a checkpoint, against float32 eager. Where the CPU has
    no native bfloat16 that is float32 (with its warning), and bfloat16 forced is measured beside it on one
    frame a round: the reason for the fallback."""
    torch.manual_seed(0)
    model = build_model("Unet", encoder, 1).eval()
    cpu = torch.device("cpu")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dtype = half_dtype(cpu, True)
    batch = torch.randn(1, 3, patch, patch)
    eager = TorchPredictor(copy.deepcopy(model), cpu)
    half = TorchPredictor(copy.deepcopy(model), cpu, dtype)
    measures = {"float32": repeat_rate(lambda: eager(batch), frames), "half": repeat_rate(lambda: half(batch), frames)}
    if dtype == torch.float32:
        forced = TorchPredictor(copy.deepcopy(model), cpu, torch.bfloat16)
        measures["forced"] = repeat_rate(lambda: forced(batch), 1)
    for measure in measures.values():
        measure()  # warm-up
    best = alternate(rounds, **measures)
    native = bool(native_bfloat16())
    how = "bfloat16" if native else f"float32 ({'warned' if caught else 'NOT warned'}; bfloat16 forced: " \
        f"{best['forced']:.3f} FPS, x{best['forced'] / best['float32']:.2f})"
    return Result("half_speedup", best["half"] / best["float32"], ">= 1.8" if native else ">= 0.95",
                  f"--half ran {how} {best['half']:.2f} FPS, float32 eager {best['float32']:.2f} FPS",
                  f"Unet/{encoder} patch {patch} batch 1, PyTorch, threads {torch.get_num_threads()}")


def openvino_speedup(work, rounds, workers, encoder="resnet34", patch=512, frames=3):
    """OpenVINO as detect.py runs an export.py --format openvino file (with --half too where the CPU has
    native bfloat16) against PyTorch eager float32; onnxruntime and each side's share of the CPU's float32
    matrix-multiply peak beside it, as onnx_speedup."""
    _, _, files = model_files(work, encoder, patch)
    found = runtimes(files, half=True)
    batch = torch.randn(1, 3, patch, patch)
    gflops = conv_flops(found["PyTorch"][0].model, batch) / 1e9
    measures = {name: repeat_rate(lambda predictor=predictor: predictor(batch), frames)
                for name, (predictor, _) in found.items() if not name.startswith("PyTorch --")}
    for measure in measures.values():
        measure()  # warm-up
    best = alternate(rounds, **measures, peak=matmul_peak())
    openvino = max((name for name in best if name.startswith("OpenVINO")), key=best.get)
    share = {name: gflops * best[name] / best["peak"] for name in ("OpenVINO", "onnxruntime", "PyTorch")}
    others = ", ".join(f"{name} {best[name]:.2f} FPS (x{best[name] / best['PyTorch']:.2f})"
                       for name in measures if name not in (openvino, "PyTorch"))
    return Result("openvino_speedup", best[openvino] / best["PyTorch"], ">= 2.5" if "--half" in openvino else ">= 1.3",
                  f"{openvino} {best[openvino]:.2f} FPS, PyTorch eager float32 {best['PyTorch']:.2f} FPS; {others}; "
                  f"float32 convolutions {gflops:.1f} GFLOP a frame: OpenVINO {share['OpenVINO']:.0%}, onnxruntime "
                  f"{share['onnxruntime']:.0%}, eager {share['PyTorch']:.0%} of the float32 matmul peak "
                  f"{best['peak']:.0f} GFLOP/s",
                  f"Unet/{encoder} patch {patch} batch 1, torch threads {torch.get_num_threads()}, OpenVINO latency "
                  f"hint, onnxruntime one thread per core")


def amp_training(work, rounds, workers, encoder="resnet18", patch=128, batch=8, steps=4):
    """Extra: train.py --use-amp (bfloat16 autocast on the CPU) against float32, UnetTraining images/s."""
    pairs = write_images(work / "data", batch * steps, seed=4)
    trainers = {amp: make_trainer(pairs, work, encoder=encoder, patch=patch, batch=batch, workers=workers,
                                  epochs=rounds + 2, use_amp="on" if amp else "off") for amp in (False, True)}
    for trainer in trainers.values():
        trainer_epoch_rate(trainer)  # warm-up: worker start, oneDNN kernels
    best = alternate(rounds, float32=lambda: trainer_epoch_rate(trainers[False]),
                     amp=lambda: trainer_epoch_rate(trainers[True]))
    return Result("amp_training", best["amp"] / best["float32"], ">= 1.0",
                  f"--use-amp {best['amp']:.2f} img/s, float32 {best['float32']:.2f} img/s",
                  f"Unet/{encoder} patch {patch} batch {batch} workers {workers} threads {torch.get_num_threads()}, "
                  f"bfloat16 autocast, {'native' if native_bfloat16() else 'no native'} bfloat16")


def channels_last(work, rounds, workers, encoder="resnet34", patch=256, batch=8):
    """Extra: channels_last against the default layout for inference (detect) and a training step."""
    torch.manual_seed(0)
    model = build_model("Unet", encoder, 1)
    images = torch.randn(batch, 3, patch, patch)
    masks = (torch.rand(batch, 1, patch, patch) > 0.5).float()

    def infer_rate(layout):
        net, x = model.eval().to(memory_format=layout), images[:1].contiguous(memory_format=layout)
        with torch.inference_mode():
            started = time.perf_counter()
            for _ in range(4):
                net(x)
        return 4 / (time.perf_counter() - started)

    def train_rate(layout):
        net, x = model.train().to(memory_format=layout), images.contiguous(memory_format=layout)
        optimizer = torch.optim.AdamW(net.parameters())
        started = time.perf_counter()
        for _ in range(2):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(net(x), masks)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return 2 * batch / (time.perf_counter() - started)

    cl, cf = torch.channels_last, torch.contiguous_format
    infer_rate(cl), infer_rate(cf), train_rate(cl), train_rate(cf)  # warm-up
    best = alternate(rounds, infer_cl=lambda: infer_rate(cl), infer_cf=lambda: infer_rate(cf),
                     train_cl=lambda: train_rate(cl), train_cf=lambda: train_rate(cf))
    setting = f"Unet/{encoder} patch {patch}, threads {torch.get_num_threads()}"
    return [Result("channels_last_inference", best["infer_cl"] / best["infer_cf"], ">= 1.0",
                   f"{best['infer_cl']:.2f} vs {best['infer_cf']:.2f} FPS", setting + " batch 1"),
            Result("channels_last_training", best["train_cl"] / best["train_cf"], ">= 1.0",
                   f"{best['train_cl']:.1f} vs {best['train_cf']:.1f} img/s", setting + f" batch {batch}")]


# ---------------------------------------------------------------- report


def machine():
    load = " ".join(f"{value:.1f}" for value in os.getloadavg())
    import onnxruntime
    import openvino
    return (f"{cpu_name()}, {os.cpu_count()} CPUs, load {load}; torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), onnxruntime {onnxruntime.__version__}, openvino "
            f"{openvino.__version__.split('-')[0]}, CUDA "
            f"{'yes' if torch.cuda.is_available() else 'no'}")


def table(rows):
    """The report: one row per Result (ratio, target, met) or Failure (FAILED and why)."""
    cells = [("benchmark", "ratio", "target", "met", "measured", "setting")]
    cells += [(r.name, f"{r.value:.3f}", r.target, "yes" if r.met else "NO", r.measured, r.setting)
              if isinstance(r, Result) else (r.name, "-", "-", "FAILED", r.reason, "") for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]) - 1)]
    return "\n".join(("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1]).rstrip()
                     for row in cells)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS + EXTRAS,
                        help="run these benchmarks only (default: all but the extras; with --smoke all of them)")
    parser.add_argument("--rounds", type=int, help="alternations per ratio; each side keeps its best (default: 3, "
                                                   "with --smoke 1)")
    parser.add_argument("--smoke", action="store_true",
                        help="each benchmark at its smallest size (a tiny model, a few images), one round: checks that "
                             "every one runs to its ratio; the ratios mean nothing at these sizes")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers, as train.py --workers")
    parser.add_argument("--device", help=f"device of {', '.join(DEVICE_BENCHMARKS)} (detect.py --device: cuda, cuda:1; "
                                         f"default cpu); the others run on the CPU")
    parser.add_argument("--same-process", action="store_true",
                        help="run every benchmark in this process (default: each in a process of its own, so that "
                             "one's runtimes and threads, OpenVINO's say, cannot slow or crash the next's)")
    parser.add_argument("--result-file", type=Path, help=argparse.SUPPRESS)  # a child's results, as JSON
    args = parser.parse_args(argv)
    args.only = args.only or list(BENCHMARKS + EXTRAS if args.smoke else BENCHMARKS)
    args.rounds = args.rounds if args.rounds is not None else 1 if args.smoke else 3
    return args


def run_here(name, work, args):
    """One benchmark in this process: its Results, or a Failure (the traceback goes to stderr) when it raises."""
    try:
        device = {"device": args.device} if args.device and name in DEVICE_BENCHMARKS else {}
        outcome = globals()[name](work, args.rounds, args.workers, **(SMOKE[name] if args.smoke else {}), **device)
    except Exception as error:  # one benchmark's failure is a row of the report, not the end of the run
        traceback.print_exc()
        return [Failure(name, one_line(f"{type(error).__name__}: {error}"))]
    return outcome if isinstance(outcome, list) else [outcome]


def run_in_child(name, work, args):
    """One benchmark in a new Python process; its rows come back through a JSON file. A process that dies
    before writing it (a crash, a signal) is a Failure with its exit status and its last line on stderr."""
    result_file = work / "results.json"
    command = [sys.executable, "-m", "bench.run", "--only", name, "--rounds", str(args.rounds), "--workers",
               str(args.workers), "--same-process", "--result-file", str(result_file)] + ["--smoke"] * args.smoke \
        + (["--device", args.device] if args.device else [])
    done = subprocess.run(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    sys.stderr.write(done.stderr)
    if result_file.exists():
        return read_rows(result_file)
    status = f"killed by {signal.Signals(-done.returncode).name}" if done.returncode < 0 else \
        f"exit code {done.returncode}"
    last = next((line for line in reversed(done.stderr.splitlines()) if line.strip()), "nothing on stderr")
    return [Failure(name, one_line(f"its process ended ({status}) with no result: {last}"))]


def read_rows(result_file):
    """The Results and Failures a benchmark's process wrote (main with --result-file)."""
    rows = json.loads(result_file.read_text())
    return [Failure(**fields) if "reason" in fields else Result(**fields) for fields in rows]


def one_line(text):
    """A failure's reason as the table shows it: whitespace collapsed, cut at 200 characters."""
    return textwrap.shorten(text, width=200, placeholder=" ...")


def main(args):
    print(f"machine: {machine()}", flush=True)
    if args.smoke:
        print("smoke: every benchmark once at its smallest size; the ratios below say nothing about speed", flush=True)
    rows, started = [], time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-") as temp:
        for name in args.only:
            work = Path(temp) / name
            work.mkdir()
            began = time.perf_counter()
            for row in (run_here if args.same_process else run_in_child)(name, work, args):
                rows.append(row)
                outcome = f"{row.value:.3f} ({row.measured}" if isinstance(row, Result) else f"FAILED ({row.reason}"
                print(f"{row.name}: {outcome}; {time.perf_counter() - began:.0f} s)", flush=True)
    failed = [row.name for row in rows if isinstance(row, Failure)]
    if args.result_file:
        args.result_file.write_text(json.dumps([vars(row) for row in rows]))
        return 1 if failed else 0
    print(f"\n{table(rows)}\n\nmachine after {time.perf_counter() - started:.0f} s: {machine()}")
    for row in rows:
        if isinstance(row, Result):
            print(f"ratio {row.name} {row.value:.3f}")
    if failed:
        print(f"failed: {' '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    from bench import run  # by its name: bench/fullres.py builds bench.run.Result, not __main__.Result
    sys.exit(run.main(run.parse_args()))
