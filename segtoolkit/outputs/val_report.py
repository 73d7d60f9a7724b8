"""What val.py writes and prints: the run folder, val_results.json's per-class rows, confusion_matrix.png,
per_image.csv, masks/ and the per-class table on the console.

Everything is derived from confusion matrices counted by segtoolkit.evaluation.scoring (rows: ground truth, columns:
prediction; the pixels train.py counts, at each image's own size, without the ignore index), so the table,
the JSON file, the plot and the metrics of train.py never disagree.

Usage:
    folder = RunFolder(None, Path("runs/val"), "exp")          # created on first use: exp, exp2, ...
    rows = class_rows(matrix, ["background", "foreground"])
    print("\n".join(class_table(rows, metrics, "test", classes=1)))
    plot_confusion_matrix(matrix, ["background", "foreground"], folder.path / "confusion_matrix.png", "test split")
    per_image = PerImageScores(pairs, classes=1, class_names=["background", "foreground"])
    per_image.add(matrix)                                      # an image's confusion counts, in the split's order
    per_image.write_csv(folder.path / "per_image.csv")         # worst first
"""

import csv
import math
import textwrap
from pathlib import Path

import numpy as np
import torch

from segtoolkit.outputs.files import check_output_folder, format_value, make_run_dir, write_failure, write_mask
from segtoolkit.errors import UserError
from segtoolkit.evaluation.metrics import nanmean, scores
from segtoolkit.data.sources import safe_name

RESULTS_FILE = "val_results.json"


class RunFolder:
    """Where a val.py run writes: --save-dir as is, or the first free one of project/name, name2, name3...
    It is created on first use, so a run that fails before its first output leaves nothing behind."""

    def __init__(self, save_dir, project, name):
        self.given = Path(save_dir) if save_dir else None
        self.planned = self.given or Path(project) / name
        self.created = None
        check_output_folder(self.given, project)
        if self.given and (self.given / RESULTS_FILE).exists():  # never overwrite an earlier evaluation
            raise UserError(f"--save-dir {self.given} holds the results of an earlier val.py run ({RESULTS_FILE}); "
                            f"give another --save-dir, or leave it out for runs/val/exp, exp2...")

    @property
    def path(self):
        if self.created is None:
            try:
                if self.given:
                    self.given.mkdir(parents=True, exist_ok=True)
                    self.created = self.given
                else:
                    self.created = make_run_dir(self.planned)
            except OSError as error:
                raise write_failure(error.filename or self.planned, error.strerror or error) from None
        return self.created


def write_text(path, text):
    """A text file, or the one-line RunFailure (exit code 1) when the disk refuses it."""
    try:
        Path(path).write_text(text, encoding="utf-8")
    except OSError as error:
        raise write_failure(path, error.strerror or error) from None


# ---------------------------------------------------------------- the split as a whole


def class_rows(matrix, class_names):
    """One dict per class: Dice and IoU (0 for a class predicted but absent from the ground truth, NaN for a
    class in neither: segtoolkit.evaluation.metrics.scores), its ground-truth
    pixels and predicted pixels. One class (binary) has two rows: background and foreground."""
    matrix = torch.as_tensor(matrix, dtype=torch.float64)
    dice, iou = scores(matrix)
    truth, predicted = matrix.sum(1), matrix.sum(0)
    return [{"class": index, "name": name, "dice": float(dice[index]), "iou": float(iou[index]),
             "pixels": int(truth[index]), "predicted_pixels": int(predicted[index])}
            for index, name in enumerate(class_names)]


def class_table(rows, metrics, prefix, classes):
    """The console table: class, Dice, IoU, ground-truth pixels; '-' for a class neither in the ground truth
    nor predicted, which the mean leaves out (segtoolkit.evaluation.metrics). Its last line is train.py's figure: the
    foreground's for one class, the mean over the classes scored for several."""
    width = max(len("class"), *(len(row["name"]) for row in rows), 24)
    lines = [f"{'class':<{width}}  {'Dice':>7}  {'IoU':>7}  {'gt pixels':>12}"]
    lines += [f"{row['name']:<{width}}  {score(row['dice'])}  {score(row['iou'])}  {row['pixels']:>12,}"
              for row in rows]
    if classes == 1:
        label = "foreground (train.py's)"
    else:
        present = sum(not math.isnan(row["dice"]) for row in rows)
        label = f"mean ({present} of {len(rows)} classes)"
    lines.append(f"{label:<{width}}  {score(metrics[f'{prefix}/dice'])}  {score(metrics[f'{prefix}/iou'])}")
    return lines


def score(value):
    return f"{'-':>7}" if math.isnan(value) else f"{value:7.4f}"


def row_normalized(matrix):
    """Each ground-truth row divided by its sum (the share of a class's pixels predicted as each class);
    a class absent from the ground truth has a row of NaN."""
    matrix = torch.as_tensor(matrix, dtype=torch.float64)
    totals = matrix.sum(1, keepdim=True)
    return torch.where(totals > 0, matrix / totals.clamp_min(1), math.nan)


def plot_confusion_matrix(matrix, class_names, path, title):
    """confusion_matrix.png: row-normalized, class names on both axes, the percentage in each cell ('-' on
    the row of a class absent from the ground truth)."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    shares = row_normalized(matrix).numpy()
    count = len(class_names)
    side = min(3.5 + 0.6 * count, 30)
    figure = Figure(figsize=(side + 1.5, side))
    axes = figure.add_subplot()
    image = axes.imshow(np.nan_to_num(shares, nan=0.0), cmap="Blues", vmin=0, vmax=1)
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04, label="share of the ground-truth class's pixels")
    rotate = max(map(len, class_names)) > 4
    axes.set_xticks(range(count), class_names, rotation=45 if rotate else 0, ha="right" if rotate else "center")
    axes.set_yticks(range(count), class_names)
    axes.set_xlabel("predicted")
    axes.set_ylabel("ground truth")
    axes.set_title(textwrap.fill(title, width=round(12 * side)), fontsize=9)
    size = max(5, 10 - count // 3)
    for row in range(count):
        for column in range(count):
            share = shares[row, column]
            text = "-" if math.isnan(share) else f"{100 * share:.1f}%"
            axes.text(column, row, text, ha="center", va="center", fontsize=size,
                      color="white" if share > 0.6 else "black")
    try:
        figure.savefig(path, dpi=120, bbox_inches="tight")
    except OSError as error:
        raise write_failure(path, error.strerror or error) from None


# ---------------------------------------------------------------- image by image


class PerImageScores:
    """Dice and IoU of each image from its own confusion matrix, over the pixels the split's metrics count:
    the mean over the classes in that image's ground truth or predicted in it (one class: the foreground's;
    segtoolkit.evaluation.metrics.scores), NaN when there is none. `wrong_px` counts its pixels predicted as another
    class, so an image without foreground still shows its false positives."""

    def __init__(self, pairs, classes, class_names):
        self.pairs, self.classes, self.class_names = pairs, classes, class_names
        self.rows = []

    def add(self, matrix):
        """The next image's confusion counts (segtoolkit.evaluation.scoring), in the split's order."""
        matrix = torch.as_tensor(matrix, dtype=torch.float64)
        dice, iou = scores(matrix)
        counted = slice(1, None) if self.classes == 1 else slice(None)
        image, mask = self.pairs[len(self.rows)]
        row = {"image": str(image), "mask": str(mask), "dice": nanmean(dice[counted]), "iou": nanmean(iou[counted])}
        if self.classes > 1:
            row.update({f"dice_{name}": float(value) for name, value in zip(self.class_names, dice)})
        row["wrong_px"] = int(matrix.sum() - matrix.trace())
        self.rows.append(row)

    def worst_first(self):
        """Lowest Dice first; images without a Dice (no ground-truth class present) last, most wrong first."""
        return sorted(self.rows, key=lambda row: (math.isnan(row["dice"]), 0.0 if math.isnan(row["dice"])
                                                  else row["dice"], -row["wrong_px"]))

    def write_csv(self, path):
        rows = self.worst_first()
        try:
            with open(path, "w", newline="", encoding="utf-8") as handle:
                writer = csv.writer(handle)
                writer.writerow(rows[0].keys() if rows else ["image", "mask", "dice", "iou", "wrong_px"])
                writer.writerows([format_value(value) for value in row.values()] for row in rows)
        except OSError as error:
            raise write_failure(path, error.strerror or error) from None


class MaskWriter:
    """masks/<image name>.png at each image's original size, as detect.py names and stores them (0/255 for
    one class, palette PNGs of class indices in `colours` for several); a name already taken gets _2, _3...
    The labels are the ones the metrics counted (segtoolkit.inference.full_size.to_labels at the image's size)."""

    def __init__(self, folder, pairs, classes, colours=None, names=None):
        self.folder, self.pairs, self.names = folder, pairs, names  # names: plan()'s, decided once for all
        self.colours = colours if classes > 1 else None
        self.written, self.used = 0, set()

    def add(self, mask):
        """The next image's predicted labels (HxW at its size), in the split's order."""
        path = Path(self.names[self.written]) if self.names else self.claim(self.pairs[self.written][0])
        write_mask(path, mask, self.colours)
        self.written += 1

    def plan(self):
        """Every image's mask path, as add() would claim them one by one (val.py under torchrun)."""
        return [str(self.claim(image)) for image, _ in self.pairs]

    def claim(self, image):
        folder = self.folder.path / "masks"
        try:
            folder.mkdir(exist_ok=True)
        except OSError as error:
            raise write_failure(folder, error.strerror or error) from None
        stem = candidate = safe_name(image)
        number = 2
        while candidate.casefold() in self.used or (folder / f"{candidate}.png").exists():
            candidate, number = f"{stem}_{number}", number + 1
        self.used.add(candidate.casefold())
        return folder / f"{candidate}.png"
