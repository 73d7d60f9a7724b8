"""Model quality side by side: train.py with default flags against a plain reference loop, scored alike.

For each data set both sides train Unet/resnet18 from random weights with the same batch size, epochs,
square input size and seed, then one function of this benchmark scores both models on the validation
images at their original resolution; train.py's own printout is shown beside it but never compared.

  membrane   ISBI-2012 EM slices (../shared/data/membrane, see its README): slices 0-23 train, 24-29
             validate, 512x512 grey, binary (255 = cell interior). Patch 256, batch 4, 10 epochs.
             Scored by the foreground Dice.
  synthetic  street scenes made by bench.street_scenes from a fixed seed (13) into a temporary folder:
             120 training and 30 validation images, 160-320 px wide in six aspect ratios, 8 classes whose
             place depends on the row (sky, building, vegetation, sidewalk, road, lane_mark, car,
             pedestrian; lane marks and pedestrians under 0.3% of the pixels) and void 255 on class
             borders, given as --ignore-index 255. Patch 128, batch 4, 16 epochs. Scored by the macro Dice
             over the 8 classes.
  photos     mosaics of real photographs made by bench.photo_mosaic from a fixed seed (21): 120 training and
             40 validation images 240x180, each 3-7 regions cut from seven photographs that scikit-image
             ships (brick, grass, gravel, moon, tissue, space, retina; training pieces from the left 60% of
             each photograph, validation pieces from the right 40%), void labelled 7 on class borders, given
             as --ignore-index 7 (CamVid's convention). Patch 128, batch 4, 16 epochs. Macro Dice over the 7.

The sides:
  train.py   `python3 train.py` with only --encoder resnet18 --encoder-weights none, --patch-size,
             --batch-size, --epochs, --seed and the data flags (--data-dir, the split lists, --classes,
             --ignore-index) given: augmentation, --resize (stretch), loss, early stopping, workers are its
             defaults.
             --project, --name and --wandb-mode disabled only say where its files go. Its
             best-checkpoint.pth.tar is scored.
  train.py --crop  the same command plus --crop (issue 14): random patch crops at the images' own resolution,
             validation by sliding window; scored by sliding window over each whole image (detect.py's
             default overlap and weighting), so at full resolution too.
  train.py --resize letterbox  the same command plus --resize letterbox (the default before stretch):
             longest side scaled to the patch, padded; scored through the same letterbox.
  train.py parity  the same command plus PARITY_FLAGS, the flags that describe the reference loop: --augment
             none --normalize unit --weight-decay 0.01 --resize stretch --select last --patience 0
             --clip-grad 0 --use-amp off. With the same seed it starts from the reference's weights and sees its
             batches in the same order (tests/test_parity.py holds its first steps' losses equal); what still differs:
             train.py shrinks images with INTER_AREA where the reference uses cv2.resize's INTER_LINEAR
             ('reference area' is the reference resizing as train.py does).
  train.py --FLAG VALUE ...  any other train.py flags added to the default command: one difference from
             the reference at a time, for ablations (e.g. "train.py --augment upright", the default until
             2026-12-05).
  reference area  the reference below resizing images as train.py's --resize stretch does (INTER_AREA when
             shrinking both sides, else INTER_LINEAR), in training and scoring: on the same seed it should
             score as 'train.py parity' does.
  reference  the plain loop of the membrane README: images resized to the square patch and scaled to
             [0, 1], masks resized with nearest neighbour, no augmentation; AdamW + OneCycleLR (peak 1e-3,
             weight decay 0.01), BCE with logits for one class, cross-entropy with the ignore index for
             several; the last weights are scored. Its initial weights are the first draws after
             torch.manual_seed(seed) and its epoch order train.py's sampler's, so train.py with the same seed
             starts from the same weights and sees the same batches.

Scoring (`evaluate_at_original_size`): each model predicts every validation image at its original size as
val.py and train.py's evaluation do (segtoolkit.inference.full_size): train.py's model through its checkpoint's
FullSizePredictor, the reference's through the same resize it trained on; the logits are upsampled
bilinearly to the image (the letterbox padding cut away first), then thresholded or argmaxed, and one
confusion matrix over all validation pixels, void excluded (segtoolkit.evaluation.metrics), gives each class's Dice
by train.py's rule (segtoolkit.evaluation.metrics.scores): a class absent from the validation masks scores 0 when
predicted (MMSegmentation's rule), and has no Dice (nan) and is left out of the macro mean when not. Times
are wall-clock seconds: train.py's include its
start-up, its per-epoch validation and checkpoint writing, which the reference loop does not do.

Usage:
    python3 -m bench.quality                          # all data sets: about 50 min on a quiet 2-core CPU
    python3 -m bench.quality --only synthetic --seed 1
    python3 -m bench.quality --only membrane --sides "train.py --crop"   # one side
    python3 -m bench.quality --quick                  # tiny (few images, patch 64, 1 epoch), every default side:
                                                      # checks that it all runs (the smoke the test suite runs)
    python3 -m bench.quality --work /tmp/quality      # keep the data and train.py's run folders
    python3 -m bench.quality --seeds 3                # every side on seeds 0, 1, 2: mean, spread, paired difference
    python3 -m bench.quality --only photos --seeds 3 --epochs 6 --sides reference train.py "train.py --augment upright"

Prints one table per data set and seed, then lines `quality DATASET SIDE METRIC VALUE` (METRIC: macro_dice or
foreground_dice, dice_CLASS for each class, seconds). With --seeds N > 1 every side trains on the same N seeds
(--seed, --seed + 1, ...), a summary table per data set gives each side's mean and sample standard deviation over
the seeds and, for each side, the paired difference to the reference (side minus reference on the same seed,
then its mean and standard deviation: the spread of the difference, not of either side), and the machine lines
give the means, with METRIC_std lines for the spreads and `diff_METRIC`, `diff_METRIC_std` lines for the
paired differences.
"""

import argparse
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import segmentation_models_pytorch as smp
import torch

from bench.machine import cpu_name
from bench.photo_mosaic import CLASS_NAMES as MOSAIC_CLASSES, VOID as MOSAIC_VOID, write_photo_mosaic
from bench.street_scenes import CLASS_NAMES, VOID, write_street_scenes
from segtoolkit.models.checkpoints import CHECKPOINT_NAMES, load_checkpoint
from segtoolkit.inference.full_size import FullSizePredictor, collect, restore
from segtoolkit.data.imaging import Letterbox, read_image, stretch_to_square
from segtoolkit.data.masks import binary_mask, class_mask, read_mask
from segtoolkit.evaluation.metrics import confusion_matrix, scores
from segtoolkit.models.factory import model_from_checkpoint
from segtoolkit.inference.predictor import TorchPredictor

REPO = Path(__file__).resolve().parents[1]
MEMBRANE = REPO.parent / "shared" / "data" / "membrane"
DATASETS = ("membrane", "synthetic", "photos")
REFERENCE_WEIGHT_DECAY = 1e-2  # the plain loop's AdamW decay (torch's default)
# train.py flags that describe the plain reference loop (its loss, bce or ce, is train.py's default too)
PARITY_FLAGS = ("--augment", "none", "--normalize", "unit", "--weight-decay", f"{REFERENCE_WEIGHT_DECAY:g}",
                "--resize", "stretch", "--select", "last", "--patience", "0", "--clip-grad", "0",
                "--use-amp", "off")
SIDE_FLAGS = {"train.py": (), "reference": None, "train.py --crop": ("--crop",),  # crop: issue 14, crops + sliding
              # window; letterbox: the default before stretch, longest side to the patch and padding
              "train.py --resize letterbox": ("--resize", "letterbox"), "train.py parity": PARITY_FLAGS,
              "reference area": None}
SIDES = tuple(SIDE_FLAGS)
ONE_WORD = {"train.py --crop": "train.py_crop", "train.py --resize letterbox": "train.py_letterbox",
            "train.py parity": "train.py_parity", "reference area": "reference_area"}  # the machine lines' names
DEFAULT_SIDES = SIDES[:3]  # letterbox only on request: on the square membrane slices it is the default side
STREETS_SEED = 13  # the synthetic data never changes with --seed: only the training does
MOSAIC_SEED = 21  # nor the photo mosaics


@dataclass(frozen=True)
class Setting:
    """One data set and the budget both sides train it with."""
    name: str
    description: str
    root: Path
    train: tuple  # image paths relative to root; masks are root/masks/<same file name>
    val: tuple
    classes: int  # 1: binary
    ignore_index: int | None
    class_names: tuple
    patch: int
    batch: int
    epochs: int

    @property
    def metric(self):
        return "foreground_dice" if self.classes == 1 else "macro_dice"


@dataclass
class Result:
    """One side's score on one data set."""
    side: str
    dice: list  # per class, nan for a class neither in the validation masks nor predicted
    headline: float
    seconds: float  # training, wall clock
    eval_seconds: float
    note: str = ""
    seed: int = 0


# ---------------------------------------------------------------- the data sets


def membrane_setting(quick=False, epochs=None):
    """ISBI-2012 membrane as its README splits it (slices 0-23 / 24-29); quick: 4 / 2 slices at patch 64."""
    train, val = (range(0, 4), range(24, 26)) if quick else (range(0, 24), range(24, 30))
    patch, batch, default_epochs = (64, 2, 1) if quick else (256, 4, 10)
    return Setting("membrane", f"ISBI-2012 membrane, {len(train)} train / {len(val)} val slices 512x512, binary",
                   MEMBRANE, tuple(f"imgs/{i}.png" for i in train), tuple(f"imgs/{i}.png" for i in val),
                   classes=1, ignore_index=None, class_names=("background", "foreground"),
                   patch=patch, batch=batch, epochs=epochs or default_epochs)


def synthetic_setting(work, quick=False, epochs=None):
    """Street scenes written into work/streets (120 / 30 images; quick: 8 / 4 at patch 64)."""
    train, val = (8, 4) if quick else (120, 30)
    patch, batch, default_epochs = (64, 2, 1) if quick else (128, 4, 16)
    split = write_street_scenes(Path(work) / "streets", train=train, val=val, seed=STREETS_SEED)
    return Setting("synthetic", f"synthetic street scenes (seed {STREETS_SEED}), {train} train / {val} val images "
                   f"160-320 px wide, {len(CLASS_NAMES)} classes + void {VOID}", Path(work) / "streets",
                   tuple(split["train"]), tuple(split["val"]), classes=len(CLASS_NAMES), ignore_index=VOID,
                   class_names=CLASS_NAMES, patch=patch, batch=batch, epochs=epochs or default_epochs)


def photos_setting(work, quick=False, epochs=None):
    """Mosaics of real photographs written into work/photos by bench.photo_mosaic (120 / 40 images 240x180;
    quick: 8 / 4 at patch 64): 7 classes, void labelled 7 and given as --ignore-index 7 (as CamVid's void 11)."""
    train, val = (8, 4) if quick else (120, 40)
    patch, batch, default_epochs = (64, 2, 1) if quick else (128, 4, 16)
    split = write_photo_mosaic(Path(work) / "photos", train=train, val=val, seed=MOSAIC_SEED)
    return Setting("photos", f"mosaics of real photographs (bench.photo_mosaic, seed {MOSAIC_SEED}), {train} train / "
                   f"{val} val images 240x180, {len(MOSAIC_CLASSES)} classes + void {MOSAIC_VOID}",
                   Path(work) / "photos", tuple(split["train"]), tuple(split["val"]), classes=len(MOSAIC_CLASSES),
                   ignore_index=MOSAIC_VOID, class_names=MOSAIC_CLASSES, patch=patch, batch=batch,
                   epochs=epochs or default_epochs)


def make_setting(name, work, quick=False, epochs=None):
    """The Setting of one of DATASETS."""
    if name == "membrane":
        return membrane_setting(quick, epochs)
    return (synthetic_setting if name == "synthetic" else photos_setting)(work, quick, epochs)


def read_pair(setting, path):
    """(uint8 RGB image, label map) at the file's own size, read by the toolkit's own readers; binary masks
    become 0/1, class masks keep their indices and the ignore index."""
    image_path = setting.root / path
    mask_path = setting.root / "masks" / Path(path).name
    mask = read_mask(mask_path)
    labels = binary_mask(mask, mask_path) if setting.classes == 1 else \
        class_mask(mask, mask_path, setting.classes, setting.ignore_index)
    return read_image(image_path), labels


# ---------------------------------------------------------------- scoring, the same for both sides


def dice_per_class(confusion):
    """Dice of each class from a confusion matrix (rows truth, columns prediction), by train.py's own rule
    (segtoolkit.evaluation.metrics.scores): 0 for a class predicted but never in the truth, nan for one in neither."""
    return [float(dice) for dice in scores(torch.as_tensor(np.asarray(confusion), dtype=torch.float64))[0]]


@torch.inference_mode()
def evaluate_at_original_size(predict, setting):
    """Per-class Dice of `predict` (uint8 RGB image -> label map of the image's size) over every
    validation pixel at the images' original resolution, pixels labelled the ignore index left out."""
    labels = max(setting.classes, 2)
    confusion = np.zeros((labels, labels), np.int64)
    for path in setting.val:
        image, truth = read_pair(setting, path)
        predicted = predict(image)
        assert predicted.shape == truth.shape, f"prediction {predicted.shape} for {path} of size {truth.shape}"
        confusion += confusion_matrix(torch.from_numpy(predicted).long(), torch.from_numpy(truth), labels,
                                      setting.ignore_index).numpy()
    return dice_per_class(confusion)


def headline(setting, dice):
    """Foreground Dice for a binary set, macro Dice over the classes present otherwise."""
    return dice[1] if setting.classes == 1 else float(np.nanmean(dice))


def linear_resize(image, patch):
    """The reference loop's image resize: cv2.resize to patch x patch with its default, INTER_LINEAR."""
    return cv2.resize(image, (patch, patch))


# how each reference side resizes its images: a plain loop's cv2.resize, or train.py's stretch (INTER_AREA when
# shrinking both sides, INTER_LINEAR otherwise: segtoolkit.data.imaging.stretch_to_square)
REFERENCE_RESIZES = {"reference": linear_resize, "reference area": stretch_to_square}


def reference_predictor(model, patch, resize=linear_resize):
    """Predict as the reference loop trained: resize to patch x patch, [0, 1]; logits back to the image's size
    as every side's are (segtoolkit.inference.full_size: bilinear, then the argmax or threshold)."""
    model.eval()

    def predict(image):
        x = torch.from_numpy(resize(image, patch)).permute(2, 0, 1).float().div(255)
        box = Letterbox(image.shape[0], image.shape[1], patch, patch)  # stretched: nothing to cut
        return collect(restore(model(x[None])[0], box), image.shape[:2])[0]
    return predict


def checkpoint_predictor(path):
    """Predict as val.py and detect.py do: the checkpoint's FullSizePredictor (fitted as its meta says, or by
    sliding window for a crop-trained model, with detect.py's default overlap and weighting)."""
    checkpoint = load_checkpoint(path)
    model = model_from_checkpoint(checkpoint, path).eval()
    return FullSizePredictor.from_meta(TorchPredictor(model, torch.device("cpu")), checkpoint["meta"]).mask


# ---------------------------------------------------------------- the two sides


def load_resized(setting, paths, resize=linear_resize):
    """The reference loop's data: images resized to patch x patch (`resize`) and scaled to [0, 1] (N,3,P,P
    float); masks resized with nearest neighbour (binary: N,1,P,P float; classes: N,P,P int64 with the ignore
    index)."""
    size = (setting.patch, setting.patch)
    pairs = [read_pair(setting, path) for path in paths]
    images = torch.from_numpy(np.stack([resize(image, setting.patch) for image, _ in pairs]))
    masks = torch.from_numpy(np.stack([cv2.resize(labels, size, interpolation=cv2.INTER_NEAREST)
                                       for _, labels in pairs]))
    images = images.permute(0, 3, 1, 2).float().div(255)
    return images, masks.float().unsqueeze(1) if setting.classes == 1 else masks.long()


def reference_model(setting, seed):
    """The plain loop's model: Unet/resnet18, its random weights the first draws after torch.manual_seed(seed),
    as train.py's are (so both start from the same weights)."""
    torch.manual_seed(seed)
    return smp.Unet("resnet18", encoder_weights=None, classes=setting.classes)


def epoch_order(count, seed, epoch):
    """The order of one epoch's samples as train.py's sampler draws it (segtoolkit.data.loaders.ResumableSampler,
    one process): a permutation from a generator seeded with seed + epoch."""
    return torch.randperm(count, generator=torch.Generator().manual_seed(seed + epoch))


def train_reference(setting, seed, lr=1e-3, losses=None, resize=linear_resize):
    """The plain loop: Unet/resnet18 from random weights, AdamW + OneCycleLR, shuffled batches (the last
    incomplete one dropped), no augmentation, BCE with logits (one class) or cross-entropy with the ignore
    index; the last weights. `losses`: a list each step's loss is appended to (tests/test_parity.py); `resize`:
    how images are fitted to the patch."""
    images, masks = load_resized(setting, setting.train, resize)
    model = reference_model(setting, seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=REFERENCE_WEIGHT_DECAY)
    steps = len(images) // setting.batch
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=setting.epochs * steps)
    loss_fn = torch.nn.BCEWithLogitsLoss() if setting.classes == 1 else \
        torch.nn.CrossEntropyLoss(ignore_index=-100 if setting.ignore_index is None else setting.ignore_index)
    model.train()
    for epoch in range(setting.epochs):
        order = epoch_order(len(images), seed, epoch)
        for step in range(steps):
            index = order[step * setting.batch:(step + 1) * setting.batch]
            loss = loss_fn(model(images[index]), masks[index])
            if losses is not None:
                losses.append(loss.item())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
    return model.eval()


def train_py_command(setting, seed, work, extra=()):
    """train.py's command line: defaults everywhere but the model, budget, seed, data and output flags (and
    `extra`, e.g. --crop)."""
    lists = {}
    for split, paths in (("train", setting.train), ("val", setting.val), ("test", ())):  # no test evaluation
        lists[split] = Path(work) / f"{setting.name}-{split}.txt"
        lists[split].write_text("".join(f"{path}\n" for path in paths))
    command = [sys.executable, str(REPO / "train.py"), "--data-dir", str(setting.root),
               "--train-list", str(lists["train"]), "--val-list", str(lists["val"]), "--test-list", str(lists["test"]),
               "--encoder", "resnet18", "--encoder-weights", "none", "--patch-size", str(setting.patch),
               "--batch-size", str(setting.batch), "--epochs", str(setting.epochs), "--seed", str(seed),
               "--project", str(Path(work) / "runs"), "--name", setting.name, "--wandb-mode", "disabled", *extra]
    if setting.classes > 1:
        command += ["--classes", str(setting.classes)]
    if setting.ignore_index is not None:
        command += ["--ignore-index", str(setting.ignore_index)]
    return command


def run_train_py(setting, seed, threads, work, extra=()):
    """Run train.py to the end; returns (checkpoint to score, what train.py itself printed about it)."""
    environment = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
                   "WANDB_SILENT": "true", "NO_ALBUMENTATIONS_UPDATE": "1", "PYTHONUNBUFFERED": "1"}
    output = subprocess.run(train_py_command(setting, seed, work, extra), capture_output=True, text=True, cwd=REPO,
                            env=environment)
    if output.returncode != 0:
        raise SystemExit(f"train.py failed on {setting.name} (exit {output.returncode}):\n{output.stderr[-3000:]}")
    run_dir = Path(re.search(r"^training in (.+)$", output.stdout, re.M).group(1))
    printed = re.search(r"(best|last) val Dice ([0-9.]+)", output.stdout)  # last: --select last
    if printed:
        return run_dir / CHECKPOINT_NAMES["best"], f"train.py printed {printed.group(1)} val Dice {printed.group(2)}"
    return run_dir / CHECKPOINT_NAMES["last"], "train.py wrote no best checkpoint: its last weights are scored"


def measure(setting, side, seed, threads, work):
    """Train one side and score it; a Result with the per-class Dice and the wall times."""
    started = time.perf_counter()
    if side.startswith("train.py"):
        checkpoint, note = run_train_py(setting, seed, threads, work, side_flags(side))
        trained = time.perf_counter()
        predict = checkpoint_predictor(checkpoint)
    else:
        resize = REFERENCE_RESIZES[side]
        predict, note = reference_predictor(train_reference(setting, seed, resize=resize), setting.patch, resize), ""
        trained = time.perf_counter()
    dice = evaluate_at_original_size(predict, setting)
    return Result(side, dice, headline(setting, dice), trained - started, time.perf_counter() - trained, note,
                  seed)


# ---------------------------------------------------------------- report


def table(setting, results, seed, threads):
    """One data set's results: a header with the setting, one row per side, the difference, the notes."""
    header = (f"{setting.name}: {setting.description}; Unet/resnet18 random init, patch {setting.patch}, "
              f"batch {setting.batch}, {setting.epochs} epochs, seed {seed}, {threads} threads")
    columns = ["side", setting.metric, *setting.class_names, "train s", "eval s"]
    rows = [[r.side, f"{r.headline:.4f}", *(f"{d:.4f}" for d in r.dice), f"{r.seconds:.0f}", f"{r.eval_seconds:.0f}"]
            for r in results]
    for first in results:
        second = next((r for r in results if r.side == "reference"), None)
        if second is not None and first is not second:
            rows.append([f"{first.side} - {second.side}", f"{first.headline - second.headline:+.4f}",
                         *(f"{a - b:+.4f}" for a, b in zip(first.dice, second.dice)), "", ""])
    return "\n".join([aligned(header, columns, rows)] + [f"  note: {r.note}" for r in results if r.note])


def aligned(header, columns, rows):
    """A header line, then the column names and rows as left-aligned columns, indented two spaces."""
    widths = [max(len(row[i]) for row in [columns, *rows]) for i in range(len(columns))]
    return "\n".join([header] + ["  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip()
                                 for row in [columns, *rows]])


def mean_std(values):
    """Mean and sample standard deviation (ddof 1; 0 for one value), NaN-aware (a class with no Dice on a seed)."""
    values = np.asarray(values, dtype=float)
    kept = values[~np.isnan(values)]
    if kept.size == 0:
        return float("nan"), float("nan")
    return float(kept.mean()), float(kept.std(ddof=1)) if kept.size > 1 else 0.0


def summarise(setting, runs):
    """Mean +- std over seeds for each side, and the paired difference to the reference. `runs`: one list of
    Results (same sides, same order) per seed. Returns (table text, machine lines)."""
    sides = [r.side for r in runs[0]]
    by_side = {side: [next(r for r in results if r.side == side) for results in runs] for side in sides}
    columns = ["side", f"{setting.metric} mean +- std", *setting.class_names, "train s"]
    rows, lines = [], []
    for side, results in by_side.items():
        mean, std = mean_std([r.headline for r in results])
        per_class = [mean_std([r.dice[i] for r in results]) for i in range(len(setting.class_names))]
        seconds = mean_std([r.seconds for r in results])[0]
        rows.append([side, f"{mean:.4f} +- {std:.4f}", *(f"{m:.4f}" for m, _ in per_class), f"{seconds:.0f}"])
        prefix = f"quality {setting.name} {one_word(side)}"
        lines += [f"{prefix} {setting.metric} {mean:.4f}", f"{prefix} {setting.metric}_std {std:.4f}"]
        lines += [f"{prefix} dice_{name} {m:.4f}" for name, (m, _) in zip(setting.class_names, per_class)]
        lines.append(f"{prefix} seconds {seconds:.1f}")
    reference = by_side.get("reference")
    for side, results in by_side.items():
        if reference is None or side == "reference":
            continue
        mean, std = mean_std([a.headline - b.headline for a, b in zip(results, reference)])
        per_class = [mean_std([a.dice[i] - b.dice[i] for a, b in zip(results, reference)])[0]
                     for i in range(len(setting.class_names))]
        rows.append([f"{side} - reference (paired)", f"{mean:+.4f} +- {std:.4f}", *(f"{m:+.4f}" for m in per_class),
                     ""])
        prefix = f"quality {setting.name} {one_word(side)}"
        lines += [f"{prefix} diff_{setting.metric} {mean:+.4f}", f"{prefix} diff_{setting.metric}_std {std:.4f}"]
    seeds = ", ".join(str(seed) for seed in sorted({r.seed for results in runs for r in results}))
    header = (f"{setting.name} over seeds {seeds} (mean +- sample std; per-class columns are means): "
              f"Unet/resnet18 random init, patch {setting.patch}, batch {setting.batch}, {setting.epochs} epochs")
    return aligned(header, columns, rows), lines


def one_word(side):
    """A side's name as one word for the machine lines: train.py_crop, train.py_augment_none..."""
    return ONE_WORD.get(side) or side.replace(" --", "_").replace(" ", "_")


def side_flags(side):
    """train.py's extra flags for a side: a named side's, or those written after 'train.py ' (an ablation)."""
    return SIDE_FLAGS[side] if side in SIDE_FLAGS else tuple(shlex.split(side)[1:])


def side_name(text):
    """--sides: a named side, or 'train.py FLAG...' for train.py with extra flags."""
    if text in SIDE_FLAGS or (text.startswith("train.py --") and shlex.split(text)[0] == "train.py"):
        return text
    raise argparse.ArgumentTypeError(f"{text!r}: choose one of {', '.join(repr(side) for side in SIDES)}, or "
                                     "'train.py --FLAG VALUE ...' for train.py with extra flags")


def machine_lines(setting, results):
    """`quality DATASET SIDE METRIC VALUE` lines: the headline, each class's Dice, the training seconds."""
    lines = []
    for r in results:
        prefix = f"quality {setting.name} {one_word(r.side)}"
        lines.append(f"{prefix} {setting.metric} {r.headline:.4f}")
        lines += [f"{prefix} dice_{name} {d:.4f}" for name, d in zip(setting.class_names, r.dice)]
        lines.append(f"{prefix} seconds {r.seconds:.1f}")
    return lines


def machine(threads):
    load = " ".join(f"{value:.1f}" for value in os.getloadavg())
    return f"{cpu_name()}, {os.cpu_count()} CPUs, load {load}; torch {torch.__version__}, {threads} threads"


def seed_count(text):
    """--seeds: a whole number of 1 or more."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seeds: give 1 or more, e.g. --seeds 3")
    return int(text)


def make_parser(description, choose_dataset=True):
    """The benchmark's options (bench.membrane_dice builds the same without --only)."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    if choose_dataset:
        parser.add_argument("--only", choices=DATASETS, default=None, help="run one data set (default: all three)")
    parser.add_argument("--sides", nargs="+", type=side_name, default=list(DEFAULT_SIDES), metavar="SIDE",
                        help="which sides to train (default: the first three; 'train.py --crop' is issue 14's crop "
                             "training with sliding-window evaluation, scored at full resolution too; 'train.py "
                             "--resize letterbox' trains and scores on letterboxed images, the default before "
                             "stretch; 'train.py parity' is train.py with the flags that describe the reference; "
                             "'reference area' the reference resizing images as train.py does; 'train.py --FLAG "
                             "VALUE ...' is train.py with those flags added, for ablations; named sides: "
                             f"{', '.join(SIDES)})")
    parser.add_argument("--epochs", type=int, default=None,
                        help="epochs for both sides (default: membrane 10, synthetic 16; quick 1)")
    parser.add_argument("--seed", type=int, default=0,
                        help="training seed of both sides: weights and shuffling (the synthetic data stays the same)")
    parser.add_argument("--seeds", type=seed_count, default=1,
                        help="train every side on this many seeds (--seed, --seed + 1, ...) and report each side's "
                             "mean and standard deviation and its paired difference to the reference (default: 1)")
    parser.add_argument("--quick", action="store_true", help="a few images, patch 64, 1 epoch: checks the report only")
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1),
                        help="torch threads of each side (OMP_NUM_THREADS for train.py) (default: up to 2)")
    parser.add_argument("--work", type=Path, default=None,
                        help="keep the synthetic data, the split lists and train.py's run folders here "
                             "(default: a temporary folder, removed at the end)")
    return parser


def parse_args(argv=None):
    return make_parser(__doc__).parse_args(argv)


def main(args):
    torch.set_num_threads(args.threads)
    print(f"machine: {machine(args.threads)}", flush=True)
    names = [args.only] if args.only else list(DATASETS)
    lines, started = [], time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-quality-") as temp:
        work = Path(args.work or temp)
        work.mkdir(parents=True, exist_ok=True)
        for name in names:
            setting = make_setting(name, work, args.quick, args.epochs)
            runs = []
            for seed in range(args.seed, args.seed + args.seeds):
                results = []
                for side in args.sides:
                    results.append(measure(setting, side, seed, args.threads, work))
                    print(f"{name} {side} seed {seed}: {setting.metric} {results[-1].headline:.4f} "
                          f"({results[-1].seconds:.0f} s training)", flush=True)
                print(f"\n{table(setting, results, seed, args.threads)}\n", flush=True)
                runs.append(results)
            if args.seeds == 1:
                lines += machine_lines(setting, runs[0])
            else:
                text, summary_lines = summarise(setting, runs)
                print(f"{text}\n", flush=True)
                lines += summary_lines
    print(f"machine after {time.perf_counter() - started:.0f} s: {machine(args.threads)}")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(parse_args()))
