"""val.py: a trained model evaluated without training. On a run's test split it reproduces the
test_results.json train.py wrote (the same dataset, loop, confusion counts and loss); every way to give the
data; what it writes; its one-line errors.

Two tiny runs are trained once for the module (Unet/resnet18, patch 64, one epoch, --search-files with a
test split): a binary one and a 4-class one with --ignore-index 255, --loss ce+dice and --class-weights
auto, so that val.py must take the ignore index, the loss and the weights from the checkpoint."""

import csv
import json
import warnings
import math
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import detect
import export
import val
from helpers.paths import REPO
from helpers.training import SEARCH, train_tiny
from make_sample_data import write_dataset
from segtoolkit.models.checkpoints import load_checkpoint
from segtoolkit.data.masks import read_mask
from segtoolkit.outputs.val_report import class_rows, class_table, row_normalized



@pytest.fixture(scope="module")
def binary_run(tmp_path_factory):
    """(run folder, data folder) of a binary run: 12 images, 6 train, 3 val, 3 test."""
    data_dir = tmp_path_factory.mktemp("val-binary") / "my_data"
    write_dataset(data_dir, 12, seed=1)
    return train_tiny(data_dir, f"pytest-val-binary-{os.getpid()}"), data_dir


@pytest.fixture(scope="module")
def multi_run(tmp_path_factory):
    """(run folder, data folder) of a 4-class letterboxed run whose masks hold a void label 255 in every image
    (letterboxed, so that the padding is there to be left out)."""
    data_dir = tmp_path_factory.mktemp("val-multi") / "my_data"
    for path in write_dataset(data_dir, 12, seed=2, classes=4):
        mask_path = data_dir / "masks" / path.name
        mask = cv2.imread(str(mask_path), cv2.IMREAD_UNCHANGED)
        mask[: mask.shape[0] // 4, : mask.shape[1] // 3] = 255  # void: counted nowhere
        cv2.imwrite(str(mask_path), mask)
    run_dir = train_tiny(data_dir, f"pytest-val-multi-{os.getpid()}", "--classes", "4", "--ignore-index", "255",
                         "--loss", "ce+dice", "--class-weights", "auto", "--resize", "letterbox")
    return run_dir, data_dir


@pytest.fixture(scope="module")
def stretch_run(tmp_path_factory):
    """(run folder, data folder) of a binary run trained with --resize stretch on non-square images."""
    data_dir = tmp_path_factory.mktemp("val-stretch") / "my_data"
    write_dataset(data_dir, 12, seed=4)
    return train_tiny(data_dir, f"pytest-val-stretch-{os.getpid()}", "--resize", "stretch"), data_dir


@pytest.fixture(scope="module")
def onnx_model(binary_run):
    checkpoint = binary_run[0] / "best-checkpoint.pth.tar"
    assert export.main(export.parse_args(["--model", str(checkpoint)])) == 0
    return checkpoint.with_suffix("").with_suffix(".onnx")


def run_val(capsys, project, *flags):
    """val.py in this process: (exit code, stdout, stderr, the run folder or None)."""
    before = set(Path(project).glob("*")) if Path(project).exists() else set()
    code = val.main(val.parse_args([*map(str, flags), "--workers", "0", "--project", str(project)]))
    captured = capsys.readouterr()
    made = sorted(set(Path(project).glob("*")) - before) if Path(project).exists() else []
    return code, captured.out, captured.err, made[0] if made else None


def results(folder):
    return json.loads((folder / "val_results.json").read_text())


def assert_reproduces(test_results, got, prefix="test", tolerance=1e-6):
    """Every key of test_results.json, renamed to `prefix`, in val_results.json to `tolerance` (null: null)."""
    assert test_results, test_results
    for key, expected in test_results.items():
        value = got[key.replace("test/", f"{prefix}/", 1)]
        if expected is None:
            assert value is None, key
        else:
            assert value == pytest.approx(expected, abs=tolerance), key


def stored_test_results(run_dir):
    return json.loads((run_dir / "test_results.json").read_text())


# ---------------------------------------------------------------- reproducing train.py's test evaluation


def test_checkpoint_reproduces_test_results_json(binary_run, tmp_path, capsys):
    run_dir, _ = binary_run
    code, out, err, folder = run_val(capsys, tmp_path, "--model", run_dir / "best-checkpoint.pth.tar")
    assert code == 0, err
    got = results(folder)
    assert_reproduces(stored_test_results(run_dir), got)
    checkpoint = load_checkpoint(run_dir / "best-checkpoint.pth.tar")
    assert got["split"] == "test" and got["images"] == len(checkpoint["data"]["test"]) == 3
    assert got["settings"] == {"patch_size": 64, "classes": 1, "ignore_index": None, "loss": "bce",
                               "class_weights": None, "batch_size": 2, "conf_thres": None}
    assert [row["name"] for row in got["per_class"]] == ["background", "foreground"]
    assert got["per_class"][1]["dice"] == pytest.approx(got["test/dice"])
    assert sum(row["pixels"] for row in got["per_class"]) == np.sum(got["confusion_matrix"])
    lines = out.splitlines()
    assert lines[0].startswith("evaluating ") and "the test split of the checkpoint's run: 3 images" in lines[0]
    table = lines[lines.index(next(line for line in lines if line.startswith("class"))):]
    assert table[1].startswith("background") and table[2].startswith("foreground")
    assert table[3].startswith("foreground (train.py's)") and f"{got['test/dice']:.4f}" in table[3]
    assert lines[-1].endswith(f"results in {folder}: val_results.json, confusion_matrix.png, per_image.csv")
    assert "val: 100%" in err  # tqdm's progress over the batches


def test_stretch_trained_checkpoint_reproduces_test_results_json(stretch_run, tmp_path, capsys):
    """A --resize stretch model is evaluated on stretched images, as train.py tested it, and scored at each
    image's own size, where its masks are written."""
    run_dir, _ = stretch_run
    checkpoint = load_checkpoint(run_dir / "best-checkpoint.pth.tar")
    assert checkpoint["meta"]["input_mode"] == "stretch" and checkpoint["config"]["resize"] == "stretch"
    code, out, err, folder = run_val(capsys, tmp_path, "--model", run_dir / "best-checkpoint.pth.tar",
                                     "--save-masks")
    assert code == 0, err
    got = results(folder)
    assert_reproduces(stored_test_results(run_dir), got)
    sizes = [cv2.imread(image).shape[:2] for image, _ in checkpoint["data"]["test"]]
    # every pixel of each image at its own size counts: not 3 x 64 x 64 of the stretched patches
    assert got["images"] == 3 and sum(row["pixels"] for row in got["per_class"]) == sum(h * w for h, w in sizes)
    for (image, _), (height, width) in zip(checkpoint["data"]["test"], sizes):
        assert height != width and 64 not in (height, width)
        assert cv2.imread(str(folder / "masks" / Path(image).name), cv2.IMREAD_UNCHANGED).shape == (height, width)


def test_multiclass_with_ignore_index_reproduces_test_results_json(multi_run, tmp_path, capsys):
    run_dir, data_dir = multi_run
    model = run_dir / "best-checkpoint.pth.tar"
    code, out, err, folder = run_val(capsys, tmp_path, "--model", model)
    assert code == 0, err
    got = results(folder)
    expected = stored_test_results(run_dir)
    assert "test/dice_class_3" in expected  # the per-class keys are compared too
    assert_reproduces(expected, got)
    checkpoint = load_checkpoint(model)
    assert got["settings"]["ignore_index"] == 255 and got["settings"]["loss"] == "ce+dice"
    assert got["settings"]["class_weights"] == checkpoint["class_weights"] is not None
    # the void label counts nowhere (nor the letterbox padding, cut away): the matrix holds exactly the other
    # pixels of the original masks, each at its image's own size
    masks = [cv2.imread(mask, cv2.IMREAD_UNCHANGED) for _, mask in checkpoint["data"]["test"]]
    counted = sum(int((mask != 255).sum()) for mask in masks)
    assert np.sum(got["confusion_matrix"]) == counted < sum(mask.size for mask in masks)
    assert len(got["confusion_matrix"]) == 4 and [row["name"] for row in got["per_class"]] == [
        f"class_{index}" for index in range(4)]
    # the same flag given explicitly changes nothing
    code, _, err, again = run_val(capsys, tmp_path, "--model", model, "--ignore-index", "255")
    assert code == 0, err
    assert results(again)["confusion_matrix"] == got["confusion_matrix"]


def test_onnx_export_agrees_with_test_results_json(binary_run, onnx_model, tmp_path, capsys):
    """ONNX Runtime sums its convolutions in another order than PyTorch, so its logits differ by ~1e-5: the
    loss (a mean of their BCE) moves by about as much, and a pixel changes class only when its logit is
    within ~1e-5 of the decision boundary. So: the confusion matrix may differ by two flipped pixels of the
    ~60,000 counted at the images' own sizes (4 counts), which moves Dice and IoU by less than 1e-3 here
    (thousands of foreground pixels), far below any difference between two trained models; the loss to 1e-4.
    The ONNX file stores no
    run, so the data (train.py's --search-files split) and the run's batch size are given."""
    run_dir, data_dir = binary_run
    code, _, err, folder = run_val(capsys, tmp_path, "--model", onnx_model, "--data-dir", data_dir, *SEARCH,
                                   "--batch-size", "2")
    assert code == 0, err
    got = results(folder)
    assert got["model"] == str(onnx_model) and got["split"] == "test"
    code, _, err, reference = run_val(capsys, tmp_path, "--model", run_dir / "best-checkpoint.pth.tar")
    assert code == 0, err
    pytorch = np.array(results(reference)["confusion_matrix"])
    assert pytorch[1].sum() > 1000 and np.abs(np.array(got["confusion_matrix"]) - pytorch).sum() <= 4
    expected = stored_test_results(run_dir)
    assert got["test/loss"] == pytest.approx(expected["test/loss"], abs=1e-4)
    for key in ("test/dice", "test/iou"):
        assert got[key] == pytest.approx(expected[key], abs=1e-3), key


# ---------------------------------------------------------------- every way to give the data


def copy_pairs(pairs, folder):
    """A folder holding imgs/ and masks/ with copies of these pairs."""
    for image, mask in pairs:
        for source, kind in ((image, "imgs"), (mask, "masks")):
            (folder / kind).mkdir(parents=True, exist_ok=True)
            shutil.copy(source, folder / kind / Path(source).name)
    return folder


@pytest.mark.parametrize("form", ["split file beside its images", "split file with --data-dir",
                                  "imgs and masks folder", "search-files"])
def test_every_data_form_gives_the_test_results_of_the_same_images(form, binary_run, tmp_path, capsys):
    run_dir, data_dir = binary_run
    model = run_dir / "best-checkpoint.pth.tar"
    test_pairs = load_checkpoint(model)["data"]["test"]
    names = "".join(f"imgs/{Path(image).name}\n" for image, _ in test_pairs)
    prefix = "val"
    if form == "split file beside its images":
        (data_dir / "holdout.txt").write_text(names)
        flags = ["--data", data_dir / "holdout.txt"]
    elif form == "split file with --data-dir":
        (tmp_path / "lists").mkdir()
        (tmp_path / "lists" / "holdout.txt").write_text(names)
        flags = ["--data", tmp_path / "lists" / "holdout.txt", "--data-dir", data_dir]
    elif form == "imgs and masks folder":
        flags = ["--data", copy_pairs(test_pairs, tmp_path / "holdout")]
    else:
        flags, prefix = ["--data-dir", data_dir, *SEARCH, "--split", "test"], "test"
    code, _, err, folder = run_val(capsys, tmp_path / "runs", "--model", model, *flags)
    assert code == 0, err
    got = results(folder)
    assert_reproduces(stored_test_results(run_dir), got, prefix=prefix)
    with open(folder / "per_image.csv", newline="") as handle:
        images = sorted(Path(row["image"]).name for row in csv.DictReader(handle))
    assert images == sorted(Path(image).name for image, _ in test_pairs)


def test_search_files_draws_train_py_split_and_split_chooses_the_part(binary_run, tmp_path, capsys):
    run_dir, data_dir = binary_run
    stored = load_checkpoint(run_dir / "best-checkpoint.pth.tar")["data"]
    for split in ("train", "val", "test"):
        code, _, err, folder = run_val(capsys, tmp_path, "--model", run_dir / "best-checkpoint.pth.tar",
                                       "--data-dir", data_dir, *SEARCH, "--split", split)
        assert code == 0, err
        with open(folder / "per_image.csv", newline="") as handle:
            images = {row["image"] for row in csv.DictReader(handle)}
        assert images == {image for image, _ in stored[split]}, split
        assert results(folder)["split"] == split and f"{split}/dice" in results(folder)
    # the checkpoint's own val split, without data flags, is the same as --search-files --split val
    code, _, err, folder = run_val(capsys, tmp_path, "--model", run_dir / "best-checkpoint.pth.tar", "--split", "val")
    assert code == 0, err
    with open(folder / "per_image.csv", newline="") as handle:
        assert {row["image"] for row in csv.DictReader(handle)} == {image for image, _ in stored["val"]}


# ---------------------------------------------------------------- what it writes


def test_outputs_confusion_matrix_per_image_csv(multi_run, tmp_path, capsys):
    run_dir, _ = multi_run
    code, _, err, folder = run_val(capsys, tmp_path, "--model", run_dir / "best-checkpoint.pth.tar",
                                   "--split", "train")
    assert code == 0, err
    got = results(folder)
    shares = row_normalized(torch.tensor(got["confusion_matrix"]))
    present = torch.tensor([row["pixels"] > 0 for row in got["per_class"]])
    assert present.any()
    assert torch.allclose(shares[present].sum(1), torch.ones(int(present.sum()), dtype=torch.float64))
    assert torch.isnan(shares[~present]).all()
    picture = cv2.imread(str(folder / "confusion_matrix.png"))
    assert picture is not None and min(picture.shape[:2]) > 300
    with open(folder / "per_image.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == got["images"] == 6
    assert list(rows[0]) == ["image", "mask", "dice", "iou", *(f"dice_class_{i}" for i in range(4)), "wrong_px"]
    dice = [float(row["dice"]) if row["dice"] else math.nan for row in rows]
    scored = [value for value in dice if not math.isnan(value)]
    assert scored == sorted(scored) and dice[:len(scored)] == scored  # worst first, images without a Dice last
    for row in rows:  # each image's Dice: the mean over the classes in its ground truth or predicted in it
        per_class = [float(row[f"dice_class_{i}"]) for i in range(4) if row[f"dice_class_{i}"]]
        assert float(row["dice"]) == pytest.approx(sum(per_class) / len(per_class), abs=1e-5)


def test_table_shows_absent_classes_as_dash_left_out_of_the_mean():
    matrix = torch.tensor([[5.0, 1, 0], [2, 4, 0], [0, 0, 0]])  # class 2 never in the ground truth
    rows = class_rows(matrix, ["road", "car", "person"])
    assert math.isnan(rows[2]["dice"]) and rows[2]["pixels"] == 0
    metrics = {"val/dice": (rows[0]["dice"] + rows[1]["dice"]) / 2, "val/iou": 0.5}
    lines = class_table(rows, metrics, "val", classes=3)
    assert lines[3].split() == ["person", "-", "-", "0"]
    assert lines[4].startswith("mean (2 of 3 classes)") and f"{metrics['val/dice']:.4f}" in lines[4]


@pytest.mark.parametrize("kind", ["binary", "multi"])
def test_saved_masks_are_at_original_size_and_equal_detect_py_masks(kind, binary_run, multi_run, tmp_path,
                                                                    capsys):
    """Batch 1, as detect.py runs; both with their default flags: for several classes the plain argmax that
    the metrics count (detect.py's default used to be 0.5, which sent unsure pixels to class 0)."""
    run_dir, _ = binary_run if kind == "binary" else multi_run
    model = run_dir / "best-checkpoint.pth.tar"
    code, _, err, folder = run_val(capsys, tmp_path / "val", "--model", model, "--save-masks", "--batch-size", "1",
                                   "--device", "cpu")
    assert code == 0, err
    pairs = load_checkpoint(model)["data"]["test"]
    sources = tmp_path / "sources.txt"
    sources.write_text("".join(f"{image}\n" for image, _ in pairs))
    code = detect.main(detect.parse_args(["--model", str(model), "--source", str(sources), "--device", "cpu",
                                          "--project", str(tmp_path / "detect")]))
    capsys.readouterr()
    assert code == 0
    assert sorted(path.name for path in (folder / "masks").iterdir()) == sorted(Path(i).name for i, _ in pairs)
    for image, mask in pairs:
        # read_mask: several classes are palette PNGs, which cv2.imread would expand to colours
        ours = read_mask(folder / "masks" / Path(image).name)
        theirs = read_mask(tmp_path / "detect" / "exp" / "masks" / Path(image).name)
        assert ours.shape == cv2.imread(mask, cv2.IMREAD_UNCHANGED).shape  # the image's own size
        assert set(np.unique(ours)) <= ({0, 255} if kind == "binary" else {0, 1, 2, 3})
        assert np.array_equal(ours, theirs), image


# ---------------------------------------------------------------- one figure: each image at its own size

FULL_SIZE_KINDS = {"stretch": (1, []), "letterbox": (3, ["--resize", "letterbox", "--classes", "3"]),
                   "crop": (1, ["--crop", "--scale", "0.5"])}


@pytest.fixture(scope="module")
def full_size_runs(tmp_path_factory):
    """kind -> (run folder, classes): a tiny run of each way a model sees images (the default stretch, a
    3-class letterbox, --crop at --scale 0.5), trained on first use. Batch 1, the batch detect.py infers in
    (another batch size sums convolutions in another order, and a logit near the boundary would flip a
    pixel). The images are 96-160 x 128-208, never square nor the patch's 64: scored at the patch, the
    figures would differ."""
    trained = {}

    def run(kind):
        if kind not in trained:
            classes, flags = FULL_SIZE_KINDS[kind]
            data_dir = tmp_path_factory.mktemp(f"val-full-size-{kind}") / "my_data"
            write_dataset(data_dir, 12, seed=6, classes=classes)
            run_dir = train_tiny(data_dir, f"pytest-val-full-size-{kind}-{os.getpid()}", "--batch-size", "1", *flags)
            trained[kind] = run_dir, classes
        return trained[kind]
    return run


def detect_masks(capsys, model, pairs, folder, *flags):
    """detect.py (default flags but `flags`) on the images of `pairs`: {image path: mask as written}."""
    sources = folder.parent / f"{folder.name}-sources.txt"
    sources.write_text("".join(f"{image}\n" for image, _ in pairs))
    code = detect.main(detect.parse_args(["--model", str(model), "--source", str(sources), "--save-dir", str(folder),
                                          *map(str, flags)]))
    assert code == 0, capsys.readouterr().err[-2000:]
    capsys.readouterr()
    return {image: read_mask(folder / "masks" / Path(image).name) for image, _ in pairs}


@pytest.mark.parametrize("kind", list(FULL_SIZE_KINDS))
def test_test_results_dice_is_the_dice_of_detect_py_masks_against_the_original_masks(kind, full_size_runs, tmp_path,
                                                                                    capsys):
    """What train.py reports is what a user gets: test_results.json's Dice equals the Dice of detect.py's
    masks (default flags) against the original masks, every pixel of each image at its own size."""
    run_dir, classes = full_size_runs(kind)
    model = run_dir / "best-checkpoint.pth.tar"
    pairs = load_checkpoint(model)["data"]["test"]
    predicted = detect_masks(capsys, model, pairs, tmp_path / "detect")
    size = max(classes, 2)
    confusion = np.zeros((size, size), np.int64)
    for image, mask_path in pairs:
        truth = read_mask(mask_path)
        assert truth.shape != (64, 64) and truth.shape[0] != truth.shape[1]
        if classes == 1:
            truth, labels = (truth > 0).astype(np.int64), (predicted[image] > 0).astype(np.int64)
        else:
            labels = predicted[image].astype(np.int64)
        assert labels.shape == truth.shape
        confusion += np.bincount((truth * size + labels).ravel(), minlength=size * size).reshape(size, size)
    tp = np.diag(confusion)
    dice = 2 * tp / (confusion.sum(0) + confusion.sum(1))
    assert (confusion.sum(1) > 0).all()  # every class is in the test masks: no absent-class rule involved
    expected = dice[1] if classes == 1 else dice.mean()
    assert stored_test_results(run_dir)["test/dice"] == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("kind", list(FULL_SIZE_KINDS))
def test_val_save_masks_are_detect_py_masks_pixel_for_pixel_with_default_flags(kind, full_size_runs, tmp_path,
                                                                               capsys):
    """One rule from logits to a mask in both, with nothing given: logits upsampled, then thresholded (one
    class) or argmaxed (several: detect.py's default is the argmax the metrics count); for --scale 0.5 --crop,
    upsampled from the scaled image before deciding (detect.py used to decide at the scaled size and resize
    the mask)."""
    run_dir, classes = full_size_runs(kind)
    model = run_dir / "best-checkpoint.pth.tar"
    code, _, err, folder = run_val(capsys, tmp_path / "val", "--model", model, "--save-masks")
    assert code == 0, err
    pairs = load_checkpoint(model)["data"]["test"]
    theirs = detect_masks(capsys, model, pairs, tmp_path / "detect")
    for image, mask in pairs:
        ours = read_mask(folder / "masks" / Path(image).name)
        assert ours.shape == cv2.imread(mask, cv2.IMREAD_UNCHANGED).shape  # the image's own size
        assert np.array_equal(ours, theirs[image]), image
    if classes > 1:
        assert len(np.unique(np.concatenate([mask.ravel() for mask in theirs.values()]))) > 1


def test_an_explicit_conf_thres_is_the_same_rule_in_val_and_detect(full_size_runs, tmp_path, capsys):
    """Several classes: --conf-thres given sends pixels whose top probability is below it to class 0, in
    detect.py's masks and in val.py's masks and metrics alike."""
    run_dir, classes = full_size_runs("letterbox")
    model = run_dir / "best-checkpoint.pth.tar"
    code, _, err, plain = run_val(capsys, tmp_path / "plain", "--model", model)
    assert code == 0, err
    code, _, err, sure = run_val(capsys, tmp_path / "sure", "--model", model, "--conf-thres", "0.9", "--save-masks")
    assert code == 0, err
    pairs = load_checkpoint(model)["data"]["test"]
    theirs = detect_masks(capsys, model, pairs, tmp_path / "detect", "--conf-thres", "0.9")
    for image, _ in pairs:
        assert np.array_equal(read_mask(sure / "masks" / Path(image).name), theirs[image]), image
    background = [np.array(results(folder)["confusion_matrix"])[:, 0].sum() for folder in (plain, sure)]
    assert background[1] > background[0]  # a one-epoch model is rarely 90% sure: more pixels are class 0


def test_default_folders_never_overwrite_and_save_dir_is_used_as_is(binary_run, tmp_path, capsys):
    model = binary_run[0] / "best-checkpoint.pth.tar"
    folders = [run_val(capsys, tmp_path, "--model", model)[3] for _ in range(2)]
    assert [folder.name for folder in folders] == ["exp", "exp2"]
    code, out, err, _ = run_val(capsys, tmp_path, "--model", model, "--save-dir", tmp_path / "mine")
    assert code == 0, err
    assert (tmp_path / "mine" / "val_results.json").is_file() and f"results in {tmp_path / 'mine'}:" in out
    before = (tmp_path / "mine" / "val_results.json").read_bytes()
    code, out, err, _ = run_val(capsys, tmp_path, "--model", model, "--save-dir", tmp_path / "mine")
    assert code == 2 and out == ""
    assert err == (f"error: --save-dir {tmp_path / 'mine'} holds the results of an earlier val.py run "
                   f"(val_results.json); give another --save-dir, or leave it out for runs/val/exp, exp2...\n")
    assert (tmp_path / "mine" / "val_results.json").read_bytes() == before


def test_ctrl_c_stops_after_the_batch_exit_130_and_writes_no_results(binary_run, tmp_path, capsys, monkeypatch):
    open_model = val.open_model

    def interrupted_after_first_batch(model, device, *rest):
        meta, predictor, checkpoint = open_model(model, device, *rest)

        def predict(batch):
            os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C sends; StopRequest turns it into a flag
            return predictor(batch)

        return meta, predict, checkpoint

    monkeypatch.setattr(val, "open_model", interrupted_after_first_batch)
    code, out, err, folder = run_val(capsys, tmp_path, "--model", binary_run[0] / "best-checkpoint.pth.tar",
                                     "--batch-size", "1")
    assert code == 130
    assert "SIGINT received: stopping after this batch; no results are written" in err
    assert out.splitlines()[-1] == "stopped: no results written" and folder is None


# ---------------------------------------------------------------- one-line errors


def error_cases(run_dir, data_dir, onnx_model, tmp_path):
    """(flags, the whole expected stderr) of each bad input."""
    model = run_dir / "best-checkpoint.pth.tar"
    (tmp_path / "gone.txt").write_text("imgs/sample_000.png\nimgs/nope.png\n")
    holdout = copy_pairs([[data_dir / "imgs" / "sample_000.png", data_dir / "masks" / "sample_000.png"]],
                         tmp_path / "holdout")
    shutil.copy(data_dir / "imgs" / "sample_001.png", holdout / "imgs")
    no_test = load_checkpoint(model)
    no_test["data"]["test"] = []
    torch.save(no_test, tmp_path / "no-test.pth.tar")
    return [
        (["--model", tmp_path / "nope.pth.tar"], f"checkpoint {tmp_path / 'nope.pth.tar'}: no such file"),
        (["--model", tmp_path / "nope.onnx", "--data", holdout], f"--model {tmp_path / 'nope.onnx'}: no such file"),
        (["--model", onnx_model], f"--model {onnx_model} is an exported model, which lists no data files (a train.py "
                                  f"checkpoint does); give --data FILE (a split file) or DIR (holding imgs/ and "
                                  f"masks/), or --data-dir DIR --search-files"),
        (["--model", model, "--data", tmp_path / "gone.txt"],
         f"split file {tmp_path / 'gone.txt'} names 2 file(s) that do not exist: {tmp_path / 'imgs/sample_000.png'}, "
         f"{tmp_path / 'imgs/nope.png'}; check --data-dir or fix the list"),
        (["--model", model, "--data", tmp_path / "gone.txt", "--data-dir", data_dir],
         f"split file {tmp_path / 'gone.txt'} names 1 file(s) that do not exist: {data_dir / 'imgs/nope.png'}; "
         f"check --data-dir or fix the list"),
        (["--model", model, "--data", holdout],
         f"no mask in {holdout / 'masks'} for 1 image(s): {holdout / 'imgs/sample_001.png'}; add masks with the same "
         f"file stem"),
        (["--model", model, "--data", tmp_path / "missing"],
         f"--data {tmp_path / 'missing'}: no such file or folder; give a split file (one image per line) or a folder "
         f"holding imgs/ and masks/"),
        (["--model", tmp_path / "no-test.pth.tar", "--split", "test"],
         f"--split test: the run of {tmp_path / 'no-test.pth.tar'} has no test split (it was trained without one); "
         f"give --split val, or --data"),
        (["--model", model, "--data", holdout, "--split", "test"],
         f"--split goes with a checkpoint's split or --search-files, but --data {holdout} is evaluated whole; "
         f"drop --split"),
        (["--model", model, "--data-dir", data_dir, "--search-files", "--split", "test"],
         f"--search-files in {data_dir} gives no test images with --val-split 0.2 --test-split 0.0; give the "
         f"fractions the run was trained with, or another --split"),
        (["--model", model, "--search-files"], "--search-files needs --data-dir DIR, the folder holding imgs/ and "
                                               "masks/ that train.py split"),
        (["--model", model, "--test-split", "0.25"], "--test-split needs --search-files (train.py's random split of "
                                                     "--data-dir), or give --data FILE, a split file whose entries "
                                                     "are relative to --data-dir"),
        (["--model", model, "--ignore-index", "0"], "--ignore-index 0 is one of the model's classes 0..0; use a value "
                                                    "outside them, e.g. 255"),
        (["--model", model, "--loss", "ce"], "--loss ce: cross-entropy is for several classes; one class uses bce "
                                             "(e.g. bce+dice)"),
        (["--model", model, "--batch-size", "0"], "--batch-size 0 must be at least 1"),
        (["--model", model, "--conf-thres", "1.5"], "--conf-thres 1.5 must be a probability in [0, 1]"),
        (["--model", model, "--name", "a/b"], "--name 'a/b': a run name is one folder name (no '/', '\\', '..', or "
                                              "surrounding spaces); give for example --name a-b"),
    ]


def test_bad_input_is_one_line_exit_2_and_writes_nothing(binary_run, onnx_model, tmp_path, capsys):
    run_dir, data_dir = binary_run
    for flags, message in error_cases(run_dir, data_dir, onnx_model, tmp_path):
        code, out, err, folder = run_val(capsys, tmp_path / "runs", *flags)
        assert (code, err) == (2, f"error: {message}\n"), flags
        assert out == "" and folder is None, flags


def test_checkpoint_whose_files_are_gone_names_them(binary_run, tmp_path, capsys):
    run_dir, _ = binary_run
    checkpoint = load_checkpoint(run_dir / "best-checkpoint.pth.tar")
    moved = tmp_path / "moved.png"
    image = Path(checkpoint["data"]["test"][0][0])
    shutil.move(image, moved)
    try:
        code, out, err, _ = run_val(capsys, tmp_path, "--model", run_dir / "best-checkpoint.pth.tar")
    finally:
        shutil.move(moved, image)
    assert code == 2
    assert err == (f"error: --model {run_dir / 'best-checkpoint.pth.tar'}: 1 of the files of its test split are gone "
                   f"(first: {image}); put them back where they were, or give --data\n")


def test_the_real_command_prints_one_line_and_exits_2(onnx_model, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", NO_ALBUMENTATIONS_UPDATE="1")
    result = subprocess.run([sys.executable, str(REPO / "val.py"), "--model", str(onnx_model), "--project",
                             str(tmp_path)], capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith(f"error: --model {onnx_model} is an exported model, which lists no data files")
    assert result.stderr.count("\n") == 1 and not list(tmp_path.iterdir())


def test_the_repository_split_files_go_with_the_bundled_sample():
    """As in train.py: test_dataset.txt at the root lists data/sample's images (imgs/sample_068.png...)."""
    data = val.data_from_path(REPO / "test_dataset.txt", None, "imgs", "masks")
    assert data.pairs and all(Path(image).parent == REPO / "data" / "sample" / "imgs" for image, _ in data.pairs)
    assert all(Path(mask).parent == REPO / "data" / "sample" / "masks" for _, mask in data.pairs)
    assert data.prefix == "val" and data.description == (f"split file {REPO / 'test_dataset.txt'} (entries in "
                                                          f"{REPO / 'data' / 'sample'})")


def test_unknown_split_name_is_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit) as stopped:
        val.parse_args(["--model", "m.pth.tar", "--split", "testing"])
    assert stopped.value.code == 2
    assert "argument --split: invalid choice: 'testing' (choose from 'train', 'val', 'test')" in capsys.readouterr().err


# ---------------------------------------------------------------- the README's examples


def readme_val_commands():
    section = (REPO / "README.md").read_text().split("## Evaluating a model: val.py", 1)[1].split("\n## ", 1)[0]
    return [line.split("#", 1)[0].strip() for line in section.splitlines() if line.startswith("python3 val.py")]


def test_every_readme_val_command_runs_as_written(binary_run, onnx_model, tmp_path, capsys, monkeypatch):
    """In a folder holding the run as checkpoints/exp/ and the user's my_data/ (with a test.txt), each line runs
    as written, only sent to a temporary --project with --workers 0."""
    run_dir, data_dir = binary_run
    (tmp_path / "checkpoints" / "exp").mkdir(parents=True)
    for source in (run_dir / "best-checkpoint.pth.tar", onnx_model):
        shutil.copy(source, tmp_path / "checkpoints" / "exp")
    shutil.copytree(data_dir, tmp_path / "my_data", ignore=shutil.ignore_patterns("*.txt"))
    (tmp_path / "my_data" / "test.txt").write_text("imgs/sample_000.png\nimgs/sample_001.png\n")
    monkeypatch.chdir(tmp_path)
    commands = readme_val_commands()
    assert len(commands) >= 4
    for command in commands:
        code, _, err, folder = run_val(capsys, tmp_path / "runs", *command.split()[2:])
        assert code == 0, (command, err)
        assert (folder / "val_results.json").is_file(), command


@pytest.mark.parametrize("native", [False, True])
def test_half_follows_the_cpu_as_detect_does(binary_run, tmp_path, capsys, monkeypatch, native):
    """val.py --half: on a CPU without native bfloat16 one warning line and exactly the float32 figures; with
    it (forced here, whatever this CPU is) bfloat16, whose figures stay close to float32's."""
    from segtoolkit.inference import predictor as predict
    monkeypatch.setattr(predict, "native_bfloat16", lambda: native)
    checkpoint = binary_run[0] / "best-checkpoint.pth.tar"
    code, _, err, float32 = run_val(capsys, tmp_path, "--model", checkpoint)
    assert code == 0, err
    with warnings.catch_warnings(record=True) as caught:  # pytest records warnings instead of printing them
        warnings.simplefilter("always")
        code, _, err, half = run_val(capsys, tmp_path, "--model", checkpoint, "--half")
    assert code == 0, err
    said = [str(w.message) for w in caught if "--half" in str(w.message)]
    assert len(said) == (0 if native else 1) and all("this CPU has no native bfloat16" in m for m in said), said
    full, reduced = results(float32), results(half)
    if native:
        assert reduced["test/loss"] != full["test/loss"]  # it really ran in bfloat16
        assert reduced["test/dice"] == pytest.approx(full["test/dice"], abs=0.02)
    else:
        assert reduced["confusion_matrix"] == full["confusion_matrix"] and reduced["test/dice"] == full["test/dice"]
