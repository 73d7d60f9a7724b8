"""bench/run.py and bench/quality.py: the report formats scripts read, every benchmark run once at its smallest
size (the smokes), and the quality benchmark's scoring (no timing here, and no figure of speed or model quality:
only that the numbers exist, are in range and are counted right)."""

import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from bench import run as bench
from helpers.paths import REPO

# one intra-op thread for the smokes' processes: two spinning OpenMP threads on a shared 2-core machine crawl
SMOKE_ENV = dict(os.environ, OMP_NUM_THREADS="1", WANDB_SILENT="true", NO_ALBUMENTATIONS_UPDATE="1")


def fake_benchmarks(monkeypatch, failing=None):
    """Every benchmark returns a made-up Result at once; `failing` raises instead. Returns {name: ratio}."""
    ratios = {}
    for number, name in enumerate(bench.BENCHMARKS):
        result = bench.Result(name, 1.0 + number / 10, ">= 0.9" if number % 2 else "<= 1.25", "a vs b",
                              "Unet/resnet18 patch 64 batch 2 threads 1")

        def measure(work, rounds, workers, result=result):
            if result.name == failing:
                raise RuntimeError("detect.py printed 3 frame lines for 48 frames")
            return result
        monkeypatch.setattr(bench, name, measure)
        ratios[name] = result.value
    return ratios


def test_report_has_a_table_and_one_ratio_line_per_benchmark(monkeypatch, capsys):
    ratios = fake_benchmarks(monkeypatch)
    assert bench.main(bench.parse_args(["--same-process"])) == 0
    out = capsys.readouterr().out
    ratio_lines = [line.split() for line in out.splitlines() if line.startswith("ratio ")]
    assert ratio_lines == [["ratio", name, f"{value:.3f}"] for name, value in ratios.items()]
    assert "setting" in out and "Unet/resnet18 patch 64 batch 2 threads 1" in out and "FAILED" not in out


def test_a_benchmark_that_raises_is_a_failed_row_with_its_reason_and_the_exit_code_is_1(monkeypatch, capsys,
                                                                                        tmp_path):
    ratios = fake_benchmarks(monkeypatch, failing="detect_overhead")
    assert bench.main(bench.parse_args(["--same-process"])) == 1
    captured = capsys.readouterr()
    row = next(line for line in captured.out.splitlines() if line.startswith("detect_overhead "))
    assert row.split()[:4] == ["detect_overhead", "-", "-", "FAILED"]
    assert row.endswith("RuntimeError: detect.py printed 3 frame lines for 48 frames")
    assert "Traceback" in captured.err  # the whole story on stderr, one line in the table
    assert [line.split()[1] for line in captured.out.splitlines() if line.startswith("ratio ")] == \
        [name for name in ratios if name != "detect_overhead"]
    assert "failed: detect_overhead" in captured.out
    # as a benchmark's own process reports it to bench.run: the failure travels in the result file
    result_file = tmp_path / "results.json"
    assert bench.main(bench.parse_args(["--same-process", "--only", "detect_overhead", "trainer_overhead",
                                        "--result-file", str(result_file)])) == 1
    failure, result = bench.read_rows(result_file)
    assert failure == bench.Failure("detect_overhead", "RuntimeError: detect.py printed 3 frame lines for 48 frames")
    assert isinstance(result, bench.Result) and result.value == ratios["trainer_overhead"]


def test_a_benchmark_process_that_ends_without_results_is_a_failure_with_its_last_error_line(tmp_path):
    """An unknown name: its process exits 2 at the argument check, as a crashed one leaves no result file."""
    [failure] = bench.run_in_child("no_such_benchmark", tmp_path, bench.parse_args(["--smoke"]))
    assert failure.name == "no_such_benchmark" and "ended (exit code 2) with no result" in failure.reason
    assert "invalid choice: 'no_such_benchmark'" in failure.reason and "\n" not in failure.reason


@pytest.mark.slow
def test_smoke_every_benchmark_runs_at_its_smallest_size_and_prints_its_ratio(tmp_path):
    """python3 -m bench.run --smoke as a user runs it: every benchmark and extra in its own process, once, tiny."""
    done = subprocess.run([sys.executable, "-m", "bench.run", "--smoke"], cwd=REPO, env=SMOKE_ENV,
                          capture_output=True, text=True, timeout=3600)
    report = f"{done.stdout}\n{done.stderr[-4000:]}"
    assert "FAILED" not in done.stdout and done.returncode == 0, report
    expected = set(bench.BENCHMARKS + bench.EXTRAS) - {"channels_last"} | {"channels_last_inference",
                                                                         "channels_last_training"}
    ratios = {line.split()[1]: float(line.split()[2]) for line in done.stdout.splitlines() if line.startswith("ratio ")}
    assert set(ratios) == expected, report
    assert all(value > 0 for value in ratios.values()), report


@pytest.mark.parametrize("target, value, met", [(">= 0.95", 0.96, True), (">= 0.95", 0.94, False),
                                                ("<= 1.25", 1.1, True), ("<= 2.1", 2.2, False)])
def test_target_direction(target, value, met):
    assert bench.Result("x", value, target, "", "").met is met


# ---------------------------------------------------------------- bench/quality.py: model quality side by side


@pytest.mark.slow
def test_quality_smoke_every_data_set_prints_a_table_and_scores_in_0_1_for_every_side(tmp_path):
    """python3 -m bench.quality --quick, as a user runs it: the three data sets (4 / 2 membrane slices, 8 / 4 street
    scenes, 8 / 4 photo mosaics), patch 64, 1 epoch, seed 0, every default side: train.py in its own process, the
    reference loop in the benchmark's, all scored by the benchmark. The figures themselves are not tested."""
    from bench import quality
    done = subprocess.run([sys.executable, "-m", "bench.quality", "--quick", "--threads", "1", "--work", str(tmp_path)],
                          cwd=REPO, env=SMOKE_ENV, capture_output=True, text=True, timeout=3600)
    assert done.returncode == 0, done.stderr[-4000:]
    out = done.stdout
    for dataset in quality.DATASETS:
        header = next(line for line in out.splitlines() if line.startswith(f"{dataset}: "))
        assert "patch 64, batch 2, 1 epochs, seed 0" in header
    sets = len(quality.DATASETS)
    assert out.count("train.py - reference") == sets and out.count("train.py --crop - reference") == sets
    assert out.count("note: train.py printed best val Dice") == 2 * sets
    values = {}
    for line in out.splitlines():
        if line.startswith("quality "):
            _, dataset, side, metric, value = line.split()
            values[dataset, side, metric] = float(value)
    names = {"membrane": ("background", "foreground"), "synthetic": quality.CLASS_NAMES,
             "photos": quality.MOSAIC_CLASSES}
    for dataset, metric in (("membrane", "foreground_dice"), ("synthetic", "macro_dice"), ("photos", "macro_dice")):
        for side in ("train.py", "reference", "train.py_crop"):  # the machine lines' one-word names of the sides
            assert 0 <= values[dataset, side, metric] <= 1
            assert values[dataset, side, "seconds"] > 0
            for name in names[dataset]:  # nan: the class is absent from the validation masks
                dice = values[dataset, side, f"dice_{name}"]
                assert dice != dice or 0 <= dice <= 1
    assert len(values) == sum(3 * (len(classes) + 2) for classes in names.values())
    for dataset in quality.DATASETS:
        assert (tmp_path / "runs" / dataset / "best-checkpoint.pth.tar").is_file()


def test_quality_ablation_sides_are_train_py_with_extra_flags():
    """'train.py --FLAG VALUE ...' sides add their flags to train.py's default command; the machine lines name them
    in one word; anything else is refused in one line."""
    from bench import quality
    assert quality.side_flags("train.py --augment none") == ("--augment", "none")
    assert quality.side_flags("train.py --crop") == ("--crop",) and quality.side_flags("train.py") == ()
    assert quality.one_word("train.py --weight-decay 0.001") == "train.py_weight-decay_0.001"
    assert quality.one_word("train.py --resize letterbox") == "train.py_letterbox"
    done = subprocess.run([sys.executable, "-m", "bench.quality", "--sides", "train --augment none"],
                          capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 2 and "'train.py --FLAG VALUE ...'" in done.stderr and "Traceback" not in done.stderr


def test_photo_mosaic_is_real_photographs_split_by_side_with_void_borders(tmp_path):
    """bench.photo_mosaic: the same seed gives the same files; every mask holds only the 7 classes and void 7, void
    a thin share of the pixels; training and validation pieces come from disjoint columns of each photograph."""
    from bench import photo_mosaic
    split = photo_mosaic.write_photo_mosaic(tmp_path / "a", train=3, val=2, seed=5)
    again = photo_mosaic.write_photo_mosaic(tmp_path / "b", train=3, val=2, seed=5)
    assert len(split["train"]) == 3 and len(split["val"]) == 2 and split == again
    void = []
    for path in split["train"] + split["val"]:
        image = cv2.imread(str(tmp_path / "a" / path))
        assert image.shape == (photo_mosaic.HEIGHT, photo_mosaic.WIDTH, 3)
        assert (image == cv2.imread(str(tmp_path / "b" / path))).all()
        mask = cv2.imread(str(tmp_path / "a" / "masks" / path.split("/")[-1]), cv2.IMREAD_UNCHANGED)
        assert set(np.unique(mask)) <= set(range(photo_mosaic.VOID + 1))
        void.append((mask == photo_mosaic.VOID).mean())
    assert 0.01 < np.mean(void) < 0.3  # void is a thin band on borders, not the image
    photo = np.arange(100)[None, :, None].repeat(4, axis=0).repeat(3, axis=2)
    train_part, val_part = photo_mosaic.part(photo, True), photo_mosaic.part(photo, False)
    assert train_part.max() < val_part.min() and train_part.shape[1] + val_part.shape[1] == 100


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
    assert dice_per_class(predicted_only)[2] == 0  # train.py's rule (segtoolkit.evaluation.metrics.scores)


def test_quality_seeds_summary_gives_mean_spread_and_the_paired_difference(tmp_path):
    """--seeds N: each side's mean and sample std over the seeds, and side minus reference paired by seed (its
    spread is the difference's, smaller than either side's when the seeds move both alike)."""
    from bench import quality
    setting = quality.synthetic_setting(tmp_path, quick=True)
    classes = len(setting.class_names)
    runs = [[quality.Result("train.py", [a] * classes, a, 10.0, 1.0, seed=seed),
             quality.Result("reference", [b] * classes, b, 8.0, 1.0, seed=seed)]
            for seed, (a, b) in enumerate([(0.50, 0.40), (0.70, 0.61), (0.60, 0.49)])]
    text, lines = quality.summarise(setting, runs)
    values = {tuple(line.split()[2:4]): float(line.split()[4]) for line in lines}
    assert values[("train.py", "macro_dice")] == pytest.approx(0.6, abs=1e-4)
    assert values[("train.py", "macro_dice_std")] == pytest.approx(0.1, abs=1e-4)
    assert values[("reference", "macro_dice")] == pytest.approx(0.5, abs=1e-4)
    assert values[("train.py", "diff_macro_dice")] == pytest.approx(0.1, abs=1e-4)
    assert values[("train.py", "diff_macro_dice_std")] == pytest.approx(0.01, abs=1e-4)
    assert ("reference", "diff_macro_dice") not in values
    assert "seeds 0, 1, 2" in text and "train.py - reference (paired)" in text and "+0.1000 +- 0.0100" in text


def test_quality_refuses_zero_seeds():
    done = subprocess.run([sys.executable, "-m", "bench.quality", "--seeds", "0"], capture_output=True, text=True,
                          cwd=REPO)
    assert done.returncode == 2 and "--seeds" in done.stderr and "Traceback" not in done.stderr
