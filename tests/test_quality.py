"""Learning quality: augmentation chosen for the data, padding that never counts, seeds that hold, losses and
class weights for imbalance (issue 13)."""

import csv
import os
import re
import subprocess
import sys

import albumentations as A
import cv2
import numpy as np
import pytest
import torch

import train
from helpers.data import write_pair
from helpers.paths import REPO, RUNS
from helpers.training import TINY
from dataset import BinaryDataset, Dataset, make_dataset
from make_sample_data import write_dataset
from segtoolkit.data.augment import augmentation_from_dict, load_augmentation, preset
from segtoolkit.models.checkpoints import load_checkpoint
from segtoolkit.training.config import RunConfig
from segtoolkit.errors import UserError
from segtoolkit.data.loaders import collate
from segtoolkit.evaluation.scoring import evaluate
from segtoolkit.inference.full_size import FullSizePredictor
from segtoolkit.training.losses import (default_loss, make_loss, median_frequency_weights, parse_class_weights,
                                        parse_loss)
from segtoolkit.data.masks import IGNORE
from segtoolkit.models.factory import build_model, model_meta
from segtoolkit.data.splits import pair_masks, read_split_file

ENV = dict(os.environ, OMP_NUM_THREADS="1", WANDB_SILENT="true", NO_ALBUMENTATIONS_UPDATE="1")


# ---------------------------------------------------------------- augmentation chosen for the data


def top_bottom_image(size=64):
    """Bright top half, dark bottom half: an upright scene's strongest cue."""
    image = np.zeros((size, size, 3), np.uint8)
    image[: size // 2] = 200
    return image


def test_upright_never_turns_a_scene_upside_down_and_topdown_does():
    image, mask = top_bottom_image(), np.ones((64, 64), np.uint8)
    flipped = {}
    for name in ("upright", "topdown"):
        transform = preset(name)
        upside_down = 0
        for seed in range(200):
            transform.set_random_seed(seed)
            out = transform(image=image, mask=mask)["image"].astype(float)
            upside_down += out[:16].mean() < out[-16:].mean()
        flipped[name] = upside_down
    assert flipped["upright"] == 0
    assert flipped["topdown"] > 40  # vertical flips and 90-degree turns


def test_augment_file_round_trips_and_bad_files_are_one_line(tmp_path):
    pipeline = A.Compose([A.VerticalFlip(p=1.0)])
    for suffix, kind in ((".yaml", "yaml"), (".json", "json")):
        A.save(pipeline, str(tmp_path / f"p{suffix}"), data_format=kind)
        loaded = load_augmentation(str(tmp_path / f"p{suffix}"))
        assert np.array_equal(loaded(image=top_bottom_image())["image"], top_bottom_image()[::-1])
    (tmp_path / "bad.yaml").write_text("this: is: not yaml: [")
    for spec, message in ((tmp_path / "bad.yaml", r"is not an albumentations pipeline A\.load can read"),
                          (tmp_path / "missing.yaml", r"no such file; give a preset \(upright, topdown, none\)"),
                          ("sideways", r"give a preset \(upright, topdown, none\) or an albumentations pipeline")):
        with pytest.raises(UserError, match=message):
            load_augmentation(str(spec))
    assert load_augmentation("none") is None


def test_run_writes_and_stores_the_pipeline_it_used_and_no_augment_is_none(tmp_path, run_name, capsys):
    data = tmp_path / "data"
    write_dataset(data, 6, seed=4)
    pipeline = tmp_path / "mine.yaml"
    A.save(A.Compose([A.HorizontalFlip(p=0.5), A.RandomRotate90(p=0.5)]), str(pipeline), data_format="yaml")
    flags = [*TINY, "--data-dir", data, "--search-files", "--val-split", "0.34", "--epochs", "1", "--workers", "0"]
    code = train.main(train.parse_args([*map(str, flags), "--augment", str(pipeline), "--name", run_name]))
    assert code == 0, capsys.readouterr().err[-2000:]
    run_dir = RUNS / run_name
    written = load_augmentation(str(run_dir / "augmentation.yaml"))
    assert [type(t).__name__ for t in written.transforms] == ["HorizontalFlip", "RandomRotate90"]
    checkpoint = load_checkpoint(run_dir / "checkpoint.pth.tar")
    stored = augmentation_from_dict(checkpoint["augmentation"])
    assert [type(t).__name__ for t in stored.transforms] == ["HorizontalFlip", "RandomRotate90"]
    assert checkpoint["config"]["augment"] == str(pipeline)
    code = train.main(train.parse_args([*map(str, flags), "--no-augment", "--name", f"{run_name}-none"]))
    assert code == 0
    checkpoint = load_checkpoint(RUNS / f"{run_name}-none" / "checkpoint.pth.tar")
    assert checkpoint["config"]["augment"] == "none" and checkpoint["augmentation"] is None
    assert not (RUNS / f"{run_name}-none" / "augmentation.yaml").exists()
    capsys.readouterr()
    code = train.main(train.parse_args([*map(str, flags), "--no-augment", "--augment", "topdown"]))
    assert code == 2 and "--no-augment and --augment topdown contradict each other" in capsys.readouterr().err


# ---------------------------------------------------------------- padding never counts


def test_letterbox_padding_and_transform_fill_are_ignored(tmp_path):
    pair = write_pair(tmp_path, "wide", np.full((32, 64, 3), 90, np.uint8), np.full((32, 64), 255, np.uint8))
    binary = BinaryDataset([pair], 64)
    _, target = binary.load_sample(0)
    assert (target[0, :32] == 1).all() and (target[0, 32:] == IGNORE).all()
    classes = write_pair(tmp_path / "c", "wide", np.full((32, 64, 3), 90, np.uint8), np.zeros((32, 64), np.uint8))
    shifted = A.Compose([A.Affine(translate_px={"x": 16, "y": 0}, p=1.0, border_mode=cv2.BORDER_CONSTANT,
                                  fill=0, fill_mask=0)])
    dataset = Dataset([classes], 64, classes=3, augment=shifted)
    _, labels = dataset.load_sample(0, seed=0)
    assert (labels[:32, :16] == IGNORE).all()  # filled by the shift: not class 0, although its fill is 0
    assert (labels[:32, 16:] == 0).all() and (labels[32:] == IGNORE).all()


class PredictsFromPixels(torch.nn.Module):
    """A stand-in model, right on every image pixel and wrong on the padding: class 1 where the image is
    bright, else class 0, and class 1 on black (zero-padded) pixels."""

    def forward(self, images):
        bright = images[:, 0] > 0
        black = images[:, 0] < -2
        one = (bright | black).float() * 8 - 4
        return torch.stack([-one, one], 1)


@pytest.mark.parametrize("patch", [32, 64])
def test_the_same_image_letterboxed_into_any_patch_gives_the_same_metrics(tmp_path, patch):
    image = np.full((32, 64, 3), 30, np.uint8)
    image[:, 32:] = 220
    mask = np.zeros((32, 64), np.uint8)
    mask[:, 32:] = 1
    pair = write_pair(tmp_path, "half", image, mask)
    dataset = Dataset([pair], patch, classes=2, evaluation=True)  # scored at the image's own 32x64
    full_size = FullSizePredictor(PredictsFromPixels(), patch, resize="letterbox")
    metrics = evaluate(full_size, [collate([dataset[0]])], classes=2, criterion=make_loss("ce", 2),
                       class_names=["dark", "bright"])
    assert metrics["val/dice"] == pytest.approx(1.0) and metrics["val/dice_dark"] == pytest.approx(1.0)
    assert metrics["val/loss"] == pytest.approx(float(torch.nn.functional.softplus(torch.tensor(-8.0))), rel=1e-4)


# ---------------------------------------------------------------- seeds that hold


def results_of(run_dir):
    return (run_dir / "results.csv").read_text()


@pytest.mark.slow
@pytest.mark.parametrize("workers", ["0", "2"])
def test_same_seed_same_data_same_results(workers, tiny_data, run_name):
    """albumentations 2 ignores global seeds: before, --seed did not make two runs equal."""
    flags = [sys.executable, str(REPO / "train.py"), *map(str, TINY), "--data-dir", str(tiny_data), "--train-list",
             str(tiny_data / "train.txt"), "--val-list", str(tiny_data / "val.txt"), "--epochs", "2", "--workers",
             workers, "--seed", "7", "--augment", "topdown"]
    for number in range(2):
        result = subprocess.run(flags + ["--name", f"{run_name}-{number}"], capture_output=True, text=True,
                                timeout=600, cwd=REPO, env=ENV)
        assert result.returncode == 0, result.stderr[-3000:]
    assert results_of(RUNS / f"{run_name}-0") == results_of(RUNS / f"{run_name}-1")
    assert len(list(csv.DictReader(open(RUNS / f"{run_name}-0" / "results.csv")))) == 2


def small_trainer(root, run_dir, epochs):
    def pairs(name):
        return pair_masks(read_split_file(root / name, root), root / "masks")
    torch.manual_seed(0)
    config = RunConfig(encoder="resnet18", patch_size=64, epochs=epochs, batch_size=2, workers=0, augment="topdown")
    transform = load_augmentation("topdown")
    return train.UnetTraining(build_model("Unet", "resnet18", 1), make_dataset(pairs("train.txt"), 64, 1,
                                                                                augment=transform),
                              make_dataset(pairs("val.txt"), 64, 1, evaluation=True), config=config, run_dir=run_dir,
                              meta=model_meta("Unet", "resnet18", 1, 64))


def test_a_resumed_run_continues_the_same_augmentation_stream(tiny_data, tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    straight = small_trainer(tiny_data, tmp_path / "a", 2)
    straight.fit()
    first = small_trainer(tiny_data, tmp_path / "b", 2)
    first.train_one_epoch()
    first.save("last")
    second = small_trainer(tiny_data, tmp_path / "b", 2)
    second.load_state(load_checkpoint(tmp_path / "b" / "checkpoint.pth.tar"))
    second.fit()
    for (name, a), b in zip(straight.model.state_dict().items(), second.model.state_dict().values()):
        assert torch.equal(a, b), name


# ---------------------------------------------------------------- losses and class weights


@pytest.mark.parametrize("classes, specs", [(1, ["bce", "dice", "jaccard", "focal", "lovasz", "tversky:0.3,0.7",
                                                 "bce+dice"]),
                                            (3, ["ce", "dice", "jaccard", "focal", "lovasz", "tversky:0.3,0.7",
                                                 "ce+dice"])])
def test_every_loss_leaves_ignored_pixels_out(classes, specs):
    torch.manual_seed(0)
    target = torch.randint(0, max(classes, 2), (2, 8, 8))
    target[:, :3] = IGNORE
    target = target.unsqueeze(1).float() if classes == 1 else target
    for spec in specs:
        logits = torch.randn(2, classes, 8, 8, requires_grad=True)
        unweighted = "lovasz" in spec or (classes == 1 and "bce" not in spec)
        weights = None if unweighted else [0.5] + [2.0] * max(classes - 1, 1)
        loss = make_loss(spec, classes, weights)(logits, target)
        loss.backward()
        assert torch.isfinite(loss), spec
        assert logits.grad[:, :, :3].abs().max() == 0, spec  # no gradient from pixels that do not count
        assert logits.grad[:, :, 3:].abs().max() > 0, spec


def test_loss_and_class_weight_flags_are_checked():
    for spec, classes, message in (("ce", 1, "cross-entropy is for several classes"),
                                   ("bce+dice", 3, "bce is for one class"),
                                   ("dice+soft", 3, "'soft' is not a loss")):
        with pytest.raises(UserError, match=message):
            make_loss(spec, classes)
    with pytest.raises(UserError, match="has no effect with --loss lovasz"):
        make_loss("lovasz", 3, [1, 1, 1])
    with pytest.raises(UserError, match=r"give 3 non-negative numbers"):
        parse_class_weights("1,2", 3)
    with pytest.raises(UserError, match=r"give 'auto' or one number per class"):
        parse_class_weights("a,b,c", 3)
    assert parse_class_weights("0.5,2", 1) == [0.5, 2.0] and parse_class_weights("AUTO", 3) == "auto"


@pytest.mark.parametrize("classes", [1, 3])
def test_tversky_takes_its_weights_and_differs_from_dice(classes):
    """Issue 22: --loss tversky was smp's alpha = beta = 0.5, exactly --loss dice."""
    torch.manual_seed(0)
    target = torch.randint(0, max(classes, 2), (2, 8, 8)) * (torch.rand(2, 8, 8) < 0.3)  # mostly background
    target = target.unsqueeze(1).float() if classes == 1 else target
    logits = torch.randn(2, classes, 8, 8)  # predicts foreground far more often than it is: false positives
    dice = make_loss("dice", classes)(logits, target)
    assert make_loss("tversky:0.5,0.5", classes)(logits, target) == pytest.approx(float(dice))  # why no default
    missing_more = make_loss("tversky:0.3,0.7", classes)(logits, target)
    assert abs(float(missing_more) - float(dice)) > 1e-3
    assert float(make_loss("tversky:0.7,0.3", classes)(logits, target)) != pytest.approx(float(missing_more))
    term = make_loss(f"{default_loss(classes)}+tversky:0.3,0.7", classes).losses[1]
    assert (term.alpha, term.beta) == (0.3, 0.7)
    assert parse_loss(" CE + Tversky:0.25,1.5 ", 3) == [("ce", ()), ("tversky", (0.25, 1.5))]


def test_tversky_weights_are_checked_and_old_runs_read_as_they_trained(capsys):
    fix = r"give tversky:ALPHA,BETA, the weights of false positives and false negatives, e\.g\. tversky:0\.3,0\.7"
    for spec, message in (("tversky", fix), ("tversky:0.3", fix), ("tversky:a,b", fix), ("tversky:0.3,0.7,1", fix),
                          ("tversky:-0.1,0.7", "ALPHA and BETA must be numbers of 0 or more, not both 0"),
                          ("tversky:0,0", "not both 0"), ("tversky:nan,1", "numbers of 0 or more"),
                          ("dice:0.3,0.7", r"dice takes no parameters; drop ':0\.3,0\.7'")):
        with pytest.raises(UserError, match=rf"^--loss {re.escape(spec)}: .*{message}"):
            parse_loss(spec, 3)
    code = train.main(train.parse_args(["--loss", "bce+tversky", "--wandb-mode", "disabled"]))
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: --loss bce+tversky: give tversky:ALPHA,BETA")
    # stored with the run as given; a bare tversky stored by an older run trained with smp's 0.5,0.5
    assert RunConfig.from_dict(RunConfig(loss="bce+tversky:0.3,0.7").to_dict()).loss == "bce+tversky:0.3,0.7"
    assert RunConfig.from_dict({"loss": "ce+tversky"}).loss == "ce+tversky:0.5,0.5"
    assert RunConfig.from_dict({"loss": None}).loss is None


def test_median_frequency_weights():
    # frequencies 0.6, 0.3, 0.1: median 0.3
    assert median_frequency_weights({0: 600, 1: 300, 2: 100, 255: 50}, 3) == [0.5, 1.0, 3.0]
    assert median_frequency_weights({0: 600, 1: 300}, 3) == [0.75, 1.5, 1.0]  # an absent class: 1


def test_multiclass_run_with_a_summed_loss_and_auto_weights(tmp_path, run_name, capsys):
    data = tmp_path / "data"
    write_dataset(data, 8, seed=2, classes=3)
    code = train.main(train.parse_args([*map(str, TINY), "--data-dir", str(data), "--search-files", "--val-split",
                                        "0.25", "--classes", "3", "--epochs", "1", "--workers", "0", "--loss",
                                        "ce+dice", "--class-weights", "auto", "--name", run_name]))
    out, err = capsys.readouterr()
    assert code == 0, err[-2000:]
    line = next(line for line in out.splitlines() if line.startswith("class weights"))
    assert line.startswith("class weights (median frequency over the training masks): class_0 ")
    checkpoint = load_checkpoint(RUNS / run_name / "checkpoint.pth.tar")
    assert checkpoint["config"]["loss"] == "ce+dice" and checkpoint["config"]["class_weights"] == "auto"
    assert len(checkpoint["class_weights"]) == 3 and "loss ce+dice with class weights" in out
