"""metrics.py and run_logging.py: a class absent from a split's ground truth scores 0 when it is predicted
(MMSegmentation's rule) and has no Dice when it is not (NaN, left out of the means), and every record of a
run (results.csv, results.png, test_results.json, wandb) takes that NaN."""

import csv
import json
import math

import pytest
import torch

from segtoolkit.evaluation.metrics import ConfusionStats, EarlyStopping
from helpers.servers import wait_until


def one_hot_logits(predicted, classes):
    return torch.nn.functional.one_hot(predicted, classes).permute(0, 3, 1, 2).float()


def test_class_neither_in_the_ground_truth_nor_predicted_is_nan_and_left_out_of_the_means():
    labels = torch.tensor([[[0, 1, 1], [0, 0, 1]]])  # only classes 0 and 1, with --classes 3
    predicted = torch.tensor([[[0, 1, 0], [0, 0, 1]]])
    stats = ConfusionStats(classes=3)
    stats.update(one_hot_logits(predicted, 3), labels, torch.tensor(0.5))
    metrics = stats.compute("val", ["bg", "a", "b"])
    dice_bg, dice_a = 2 * 3 / (2 * 3 + 1), 2 * 2 / (2 * 2 + 1)  # bg: tp 3, fn 0, fp 1; a: tp 2, fn 1, fp 0
    assert metrics["val/dice_bg"] == pytest.approx(dice_bg) and metrics["val/dice_a"] == pytest.approx(dice_a)
    assert math.isnan(metrics["val/dice_b"]) and math.isnan(metrics["val/iou_b"])  # today: 1.0, "perfect"
    assert metrics["val/dice"] == pytest.approx((dice_bg + dice_a) / 2)
    assert metrics["val/iou"] == pytest.approx((3 / 4 + 2 / 3) / 2)


def test_class_predicted_but_absent_from_the_ground_truth_scores_zero_and_lowers_the_mean():
    """Issue 22: it was left out of the mean, so its false positives never lowered it (MMSegmentation counts
    it as IoU 0 and Dice 0)."""
    labels = torch.tensor([[[0, 0], [1, 1]]])
    predicted = torch.tensor([[[2, 0], [1, 1]]])  # class 2 predicted once, never in the ground truth
    stats = ConfusionStats(classes=3)
    stats.update(one_hot_logits(predicted, 3), labels, torch.tensor(0.5))
    metrics = stats.compute("val")
    assert metrics["val/dice_2"] == 0 and metrics["val/iou_2"] == 0  # was NaN
    assert metrics["val/dice_0"] == pytest.approx(2 / 3)  # the miss is a false negative of class 0
    assert metrics["val/dice"] == pytest.approx((2 / 3 + 1 + 0) / 3)  # was (2/3 + 1) / 2
    assert metrics["val/iou"] == pytest.approx((1 / 2 + 1 + 0) / 3)


def test_binary_split_without_foreground_scores_zero_with_false_positives_and_has_no_dice_without():
    stats = ConfusionStats(classes=1)
    logits = torch.full((2, 1, 4, 4), -3.0)
    logits[0, 0, 0, 0] = 3.0  # one false positive
    stats.update(logits, torch.zeros(2, 1, 4, 4), torch.tensor(0.25))
    metrics = stats.compute("val")
    assert metrics["val/dice"] == 0 and metrics["val/iou"] == 0
    assert metrics["val/loss"] == pytest.approx(0.25)
    clean = ConfusionStats(classes=1)
    clean.update(torch.full((2, 1, 4, 4), -3.0), torch.zeros(2, 1, 4, 4), torch.tensor(0.25))
    assert math.isnan(clean.compute("val")["val/dice"]) and math.isnan(clean.compute("val")["val/iou"])


def test_nan_fitness_is_never_an_improvement_and_early_stopping_still_counts():
    stopper = EarlyStopping(patience=2)
    assert stopper(1, 0.5) is False
    assert stopper(2, math.nan) is False
    assert stopper(3, math.nan) is True  # two evaluations without improvement
    assert stopper.state_dict() == {"patience": 2, "best_fitness": 0.5, "best_epoch": 1}
    fresh = EarlyStopping(patience=2)
    assert fresh(1, math.nan) is False and fresh.best_fitness == -math.inf


def test_results_csv_cell_is_empty_for_nan_and_the_plot_is_drawn(tmp_path):
    from segtoolkit.outputs.files import format_value
    from segtoolkit.training.run_log import RunLogger
    assert format_value(math.nan) == "" and format_value(0.5) == "0.5"
    logger = RunLogger(tmp_path, {}, mode="disabled", extra_columns=["val/dice_b"])
    for epoch, dice in ((1, math.nan), (2, 0.75)):
        logger.log({"epoch": epoch, "lr": 1e-3, "train/loss": 0.5, "train/dice": 0.5, "train/iou": 0.4,
                    "val/loss": 0.6, "val/dice": dice, "val/iou": math.nan, "val/dice_b": math.nan})
    with open(tmp_path / "results.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["val/dice"] for row in rows] == ["", "0.75"]
    assert {row["val/iou"] for row in rows} == {""} and {row["val/dice_b"] for row in rows} == {""}
    assert (tmp_path / "results.png").stat().st_size > 1000


def test_metrics_json_writes_null_for_nan():
    from segtoolkit.outputs.files import metrics_json

    def refuse(constant):
        raise AssertionError(f"{constant} is not JSON")
    text = metrics_json({"test/dice": math.nan, "test/iou": 0.5, "test/loss": math.inf})
    assert json.loads(text, parse_constant=refuse) == {"test/dice": None, "test/iou": 0.5, "test/loss": None}


def test_wandb_gets_no_nan(tmp_path):
    from segtoolkit.training.run_log import RunLogger
    from helpers.wandb_records import logged_keys
    logger = RunLogger(tmp_path, {"lr": 1e-3}, mode="offline", name="nan-test")
    logger.log({"epoch": 1, "val/loss": 0.5, "val/dice": math.nan, "val/dice_b": math.nan}, step=1)
    logger.summary({"test/dice": math.nan, "test/loss": 0.4})
    logger.finish()
    # wandb's service may still be writing the run's file when finish() returns on a busy machine (its history
    # was seen empty once, under load): the file is read until both the history and the summary are in it
    def written():
        keys = logged_keys(tmp_path)
        return keys if keys[0] and keys[2] else None
    history, _, summary = wait_until(written, 120, interval=0.5,
                                     what=lambda: f"the offline run file holds only {logged_keys(tmp_path)}")
    assert {"epoch", "val/loss"} <= history and not {"val/dice", "val/dice_b"} & history
    assert "test/loss" in summary and "test/dice" not in summary
