"""The record of a training run: results.csv, results.png, prediction grids and the wandb run.

Only rank 0 creates a `RunLogger`; other processes get `NullLogger`, which accepts the same calls.

Usage:
    logger = RunLogger(run_dir, config, mode="offline", project="unet-segmentation", name="exp")
    logger.log({"epoch": 1, "lr": 1e-3, "val/dice": 0.9}, step=10)
    logger.finish()
"""

import csv
import netrc
import os
import warnings
from pathlib import Path

import cv2
import numpy as np

from segtoolkit.data.classes import output_colours
from segtoolkit.data.imaging import letterbox, read_image
from segtoolkit.errors import UserError
from segtoolkit.outputs.files import format_value, is_nan
from segtoolkit.outputs.overlay import legend_strip

RESULT_COLUMNS = ["epoch", "lr", "train/loss", "train/dice", "train/iou", "val/loss", "val/dice", "val/iou"]
WANDB_MODES = ("online", "offline", "disabled")
DISPLAY_INTERPOLATIONS = (cv2.INTER_AREA, cv2.INTER_NEAREST, cv2.INTER_NEAREST)  # image, truth, prediction


def wandb_credentials_present():
    """True when wandb could log in without asking: an API key in the environment or ~/.netrc."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://")[-1].split("/")[0]
    try:
        return netrc.netrc().authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def resolve_wandb_mode(mode):
    """'auto' becomes online with credentials, otherwise offline; online without credentials is refused."""
    if mode in (None, "auto"):
        return "online" if wandb_credentials_present() else "offline"
    if mode == "online" and not wandb_credentials_present():
        raise UserError("--wandb-mode online needs wandb credentials (run `wandb login` or set WANDB_API_KEY); "
                        "or use --wandb-mode offline and upload later with `wandb sync`")
    return mode


class NullLogger:
    """What non-zero ranks (and tests) use: every call does nothing."""
    wandb_id = None

    def log(self, metrics, step=None):
        pass

    def log_image(self, key, image, step=None, caption=None):
        pass

    def summary(self, metrics):
        pass

    def finish(self, exit_code=0):
        pass


class RunLogger(NullLogger):
    """Appends metric rows to results.csv, redraws results.png and mirrors everything to wandb."""

    def __init__(self, run_dir, config, mode="offline", project="unet-segmentation", name=None,
                 wandb_id=None, extra_columns=()):
        self.run_dir = Path(run_dir)
        self.csv_path = self.run_dir / "results.csv"
        self.columns = RESULT_COLUMNS + [c for c in extra_columns if c not in RESULT_COLUMNS]
        if not self.csv_path.exists():
            with open(self.csv_path, "w", newline="") as handle:
                csv.writer(handle).writerow(self.columns)
        self.run = None
        if mode != "disabled":
            import wandb
            os.environ.setdefault("WANDB_SILENT", "true")
            settings = wandb.Settings(init_timeout=60, console="off", x_disable_stats=True, silent=True,
                                      disable_git=True, save_code=False)
            try:
                self.run = wandb.init(project=project, name=name, dir=str(self.run_dir), config=config, mode=mode,
                                      id=wandb_id, resume="allow" if wandb_id else None, settings=settings)
            except (wandb.errors.CommError, wandb.errors.AuthenticationError, wandb.errors.UsageError) as error:
                raise UserError(f"wandb could not start an {mode} run ({str(error).splitlines()[0][:160]}); "
                                f"use --wandb-mode offline and upload later with `wandb sync`") from None
        self.wandb_id = self.run.id if self.run else None

    def log(self, metrics, step=None):
        """Log to wandb; rows that carry val/dice also go to results.csv (NaN as an empty cell) and the plot."""
        if self.run is not None:
            self.run.log(without_nan(metrics), step=step)
        if "val/dice" in metrics:
            with open(self.csv_path, "a", newline="") as handle:
                csv.writer(handle).writerow([format_value(metrics.get(c, "")) for c in self.columns])
                handle.flush()
                os.fsync(handle.fileno())
            plot_results(self.csv_path, self.run_dir / "results.png")

    def log_image(self, key, image, step=None, caption=None):
        """An RGB uint8 image to wandb under `key`."""
        if self.run is not None:
            import wandb
            self.run.log({key: wandb.Image(image, caption=caption)}, step=step)

    def summary(self, metrics):
        if self.run is not None:
            self.run.summary.update(without_nan(metrics))

    def finish(self, exit_code=0):
        if self.run is not None:
            self.run.finish(exit_code=exit_code)
            self.run = None


def without_nan(metrics):
    """The metrics wandb should get: a NaN (a class absent from the split) would be charted as a number."""
    return {key: value for key, value in metrics.items() if not is_nan(value)}


def csv_float(text):
    """A results.csv cell as a float; an empty cell (a metric without a value) is NaN, a gap in the plot."""
    return float(text) if text else np.nan


def plot_results(csv_path, png_path):
    """Loss, Dice, IoU and LR curves from results.csv, written next to it."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    with open(csv_path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        return
    epochs = [csv_float(row["epoch"]) for row in rows]
    figure, axes = plt.subplots(1, 4, figsize=(16, 3.5))
    for axis, metric in zip(axes, ("loss", "dice", "iou")):
        for split in ("train", "val"):
            values = [csv_float(row[f"{split}/{metric}"]) for row in rows]
            axis.plot(epochs, values, marker=".", label=split)
        axis.set_title(metric)
        axis.set_xlabel("epoch")
        axis.legend()
    axes[3].plot(epochs, [csv_float(row["lr"]) for row in rows], marker=".")
    axes[3].set_title("learning rate")
    axes[3].set_xlabel("epoch")
    figure.tight_layout()
    temp = png_path.with_suffix(".tmp.png")
    figure.savefig(temp, dpi=80)
    plt.close(figure)
    os.replace(temp, png_path)


def log_preview(path, logger, draw, step, count):
    """The validation preview of `count` images (image | ground truth | prediction) to `path` and wandb.
    Losing a preview is not worth losing a run: a failure while drawing, writing or logging it is a warning
    naming what failed."""
    grid = preview_step(f"drawing the first {count} validation images", draw)
    if grid is not None:
        preview_step(f"writing {path}", write_rgb_image, path, grid)
        preview_step("logging it to wandb", logger.log_image, "val/predictions", grid, step=step,
                     caption="image | ground truth | prediction")


def preview_step(what, function, *args, **kwargs):
    """function(*args, **kwargs), or None with a warning naming `what` when it fails."""
    try:
        return function(*args, **kwargs)
    except Exception as error:  # noqa: BLE001 - any failure of the preview, whatever its kind
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        reason = f"{type(error).__name__}: {lines[-1]}" if lines else type(error).__name__
        warnings.warn(f"validation preview: {what} failed ({reason}); training continues", stacklevel=2)
        return None


def write_rgb_image(path, image):
    """An RGB uint8 array to an image file; OSError when OpenCV could not write it (it only returns False)."""
    if not cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
        raise OSError(f"OpenCV could not write {path}")


def preview_grid(full_size, dataset, *, count, meta):
    """The RGB preview grid of the first `count` samples of an evaluation dataset: each image, its ground
    truth and the prediction, the three fitted into the patch size for display. The prediction is
    `full_size.mask` of the image as read from its file: detect.py's mask for it, at the image's own size (the
    one the metrics count). `full_size`: a FullSizePredictor of the model in eval mode."""
    rows = ([], [], [])
    for index in range(count):
        truth = dataset.load_sample(index).mask  # the labels at the image's own size
        image = read_image(dataset.pairs[index][0], dataset.bit_depth)
        prediction = full_size.mask(image)
        truth = np.maximum(truth.reshape(prediction.shape).numpy(), 0).astype(prediction.dtype)  # IGNORE shown as 0
        for collected, array, interpolation in zip(rows, (image, truth, prediction), DISPLAY_INTERPOLATIONS):
            collected.append(letterbox(array, meta["patch_size"], interpolation)[0])  # a grid cell, for display
    return prediction_grid(*rows, meta)


def prediction_grid(images, masks, predictions, meta):
    """Rows of (image | ground truth | prediction) as one RGB uint8 array, above a legend naming the colour
    of each of the model's classes (meta: a checkpoint's), in detect.py's colours (data.classes.output_colours)."""
    palette = np.asarray(output_colours(meta), np.uint8)
    rows = []
    for image, mask, prediction in zip(images, masks, predictions):
        rows.append(np.concatenate([image, palette[mask], palette[prediction]], axis=1))
    grid = np.concatenate(rows, axis=0)
    return np.concatenate([grid, legend_strip(grid.shape[1], meta["class_names"], palette)], axis=0)
