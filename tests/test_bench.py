"""bench/run.py and bench/quality.py: the report formats scripts read, and the quality benchmark's scoring (no timing
here, and no figure of model quality: only that the numbers exist, are in range and are counted right)."""

import numpy as np
import pytest

from bench import run as bench


def test_report_has_a_table_and_one_ratio_line_per_benchmark(monkeypatch, capsys):
    for number, name in enumerate(bench.BENCHMARKS):
        result = bench.Result(name, 1.0 + number / 10, ">= 0.9" if number % 2 else "<= 1.25", "a vs b",
                              "Unet/resnet18 patch 64 batch 2 threads 1")
        monkeypatch.setattr(bench, name, lambda work, rounds, workers, result=result: result)
    assert bench.main(bench.parse_args(["--same-process"])) == 0
    out = capsys.readouterr().out
    ratio_lines = [line.split() for line in out.splitlines() if line.startswith("ratio ")]
    assert ratio_lines == [["ratio", name, f"{1.0 + number / 10:.3f}"] for number, name in enumerate(bench.BENCHMARKS)]
    assert "setting" in out and "Unet/resnet18 patch 64 batch 2 threads 1" in out


@pytest.mark.parametrize("target, value, met", [(">= 0.95", 0.96, True), (">= 0.95", 0.94, False),
                                                ("<= 1.25", 1.1, True), ("<= 2.1", 2.2, False)])
def test_target_direction(target, value, met):
    assert bench.Result("x", value, target, "", "").met is met


# ---------------------------------------------------------------- bench/quality.py: model quality side by side


def test_quality_quick_run_prints_a_table_and_scores_in_0_1_for_every_side(capsys, tmp_path):
    """The whole path at a tiny size (8 / 4 street scenes, patch 64, 1 epoch): train.py in its own process,
    the reference loop here, both scored by the benchmark. The figures themselves are not tested."""
    from bench import quality
    assert quality.main(quality.parse_args(["--quick", "--only", "synthetic", "--threads", "1",
                                            "--work", str(tmp_path)])) == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.startswith("synthetic: "))
    assert "patch 64, batch 2, 1 epochs, seed 0" in header
    assert "train.py - reference" in out and "note: train.py printed best val Dice" in out
    values = {}
    for line in out.splitlines():
        if line.startswith("quality "):
            _, dataset, side, metric, value = line.split()
            values[dataset, side, metric] = float(value)
    for side in ("train.py", "reference", "train.py_crop"):  # the machine lines' one-word names of the sides
        assert 0 <= values["synthetic", side, "macro_dice"] <= 1
        assert values["synthetic", side, "seconds"] > 0
        for name in quality.CLASS_NAMES:  # nan: the class is absent from the 4 validation masks
            dice = values["synthetic", side, f"dice_{name}"]
            assert dice != dice or 0 <= dice <= 1
    assert len(values) == 3 * (len(quality.CLASS_NAMES) + 2)
    assert "train.py --crop - reference" in out
    assert (tmp_path / "runs" / "synthetic" / "best-checkpoint.pth.tar").is_file()


def oracle(setting, spoil_void_with=None):
    """A predictor that returns the validation masks in order (void pixels replaced by a class if asked)."""
    from bench import quality
    truths = iter([quality.read_pair(setting, path)[1] for path in setting.val])

    def predict(image):
        truth = next(truths)
        assert truth.shape == image.shape[:2]
        if spoil_void_with is None:
            return truth
        return np.where(truth == setting.ignore_index, spoil_void_with, truth).astype(np.uint8)
    return predict


def test_scoring_counts_every_class_and_never_the_void(tmp_path):
    from bench import quality
    setting = quality.synthetic_setting(tmp_path, quick=True)
    perfect = quality.evaluate_at_original_size(oracle(setting, spoil_void_with=0), setting)
    assert all(dice == 1.0 or dice != dice for dice in perfect)
    assert quality.headline(setting, perfect) == 1.0
    constant = quality.evaluate_at_original_size(lambda image: np.full(image.shape[:2], 4, np.uint8), setting)
    assert 0 < constant[4] < 1 and all(dice == 0 or dice != dice for index, dice in enumerate(constant) if index != 4)


def test_membrane_scoring_reads_binary_masks_at_their_own_size():
    from bench import membrane_dice, quality
    setting = quality.membrane_setting(quick=True)
    assert membrane_dice.parse_args([]).only == "membrane" and setting.metric == "foreground_dice"
    dice = quality.evaluate_at_original_size(oracle(setting), setting)
    assert dice == [1.0, 1.0]
    inverted = quality.evaluate_at_original_size(lambda image: np.zeros(image.shape[:2], np.uint8), setting)
    assert inverted[1] == 0.0 and 0 < inverted[0] < 1


def test_dice_per_class_from_a_confusion_matrix():
    from bench.quality import dice_per_class
    confusion = np.array([[8, 2, 0], [1, 3, 0], [0, 0, 0]])  # rows truth, columns prediction; class 2 absent
    dice = dice_per_class(confusion)
    assert dice[0] == pytest.approx(16 / 19) and dice[1] == pytest.approx(6 / 9) and dice[2] != dice[2]
    predicted_only = np.array([[8, 2, 1], [1, 3, 0], [0, 0, 0]])  # class 2 predicted once, never in the truth
    assert dice_per_class(predicted_only)[2] == 0  # train.py's rule (segtoolkit.metrics.scores)
