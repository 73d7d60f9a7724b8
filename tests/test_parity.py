"""Parity of train.py with the plain loop (issue 24): with the flags that describe it (bench.quality.PARITY_FLAGS),
train.py starts from the plain loop's initial weights and takes the same first steps, so any difference left in
a quality comparison is one the flags name. train.py runs in-process; its model factory and training step are
wrapped (not replaced) to record the initial weights and each step's loss."""

import cv2
import numpy as np
import pytest
import torch

import train
from bench.quality import PARITY_FLAGS, Setting, reference_model, train_reference
from helpers.paths import RUNS
from segtoolkit.data.imaging import NORMALIZATIONS
from segtoolkit.models.checkpoints import CHECKPOINT_NAMES, load_checkpoint
from segtoolkit.errors import UserError
from segtoolkit.training.config import RunConfig

PATCH, BATCH, STEPS = 64, 2, 3


def write_scenes(root, classes, count=10):
    """`count` 64x64 images whose colour follows their masks (so the loss moves), masks of `classes` labels
    (one class: 0/255) with void 255 on a band for several; the first 8 train, the rest validate."""
    rng = np.random.default_rng(5)
    for folder in ("imgs", "masks"):
        (root / folder).mkdir(parents=True)
    names = []
    for number in range(count):
        labels = np.zeros((PATCH, PATCH), np.uint8)
        for label in range(1, max(classes, 2)):
            top, left = rng.integers(0, PATCH - 24, 2)
            labels[top:top + 24, left:left + 24] = label
        image = (labels[..., None] * 70 + rng.integers(0, 60, (PATCH, PATCH, 3))).astype(np.uint8)
        mask = labels * 255 if classes == 1 else labels
        if classes > 1:
            mask[:, 30:32] = 255  # void
        name = f"scene_{number}.png"
        cv2.imwrite(str(root / "imgs" / name), image)
        cv2.imwrite(str(root / "masks" / name), mask)
        names.append(f"imgs/{name}")
    return names[:8], names[8:]


def train_py_first_steps(root, train_names, val_names, classes, flags, monkeypatch, name):
    """(initial state dict, first STEPS losses, the result's checkpoint) of train.py with `flags`, one epoch of 4
    steps evaluated every 2 (an evaluation between steps must not change them)."""
    for split, names in (("train", train_names), ("val", val_names)):
        (root / f"{split}.txt").write_text("".join(f"{path}\n" for path in names))
    initial, losses = {}, []
    build, step = train.build_model, train.UnetTraining.train_step

    def recording_build(*args, **kwargs):
        model = build(*args, **kwargs)
        initial.update({key: value.clone() for key, value in model.state_dict().items()})
        return model

    def recording_step(self, images, masks, stats):
        loss = step(self, images, masks, stats)
        losses.append(loss.item())
        return loss

    monkeypatch.setattr(train, "build_model", recording_build)
    monkeypatch.setattr(train.UnetTraining, "train_step", recording_step)
    argv = ["--data-dir", str(root), "--train-list", str(root / "train.txt"), "--val-list", str(root / "val.txt"),
            "--encoder", "resnet18", "--encoder-weights", "none", "--patch-size", str(PATCH), "--batch-size",
            str(BATCH), "--epochs", "1", "--seed", "3", "--workers", "0", "--wandb-mode", "disabled",
            "--project", str(RUNS), "--name", name, "--classes", str(classes), "--eval-step", "2", *flags]
    if classes > 1:
        argv += ["--ignore-index", "255"]
    assert train.main(train.parse_args(argv)) == 0
    return initial, losses[:STEPS], load_checkpoint(RUNS / name / CHECKPOINT_NAMES["best"])


def reference_first_steps(root, train_names, val_names, classes):
    setting = Setting("parity", "", root, tuple(train_names), tuple(val_names), classes=classes,
                      ignore_index=255 if classes > 1 else None, class_names=(), patch=PATCH, batch=BATCH, epochs=1)
    losses = []
    train_reference(setting, 3, losses=losses)
    return reference_model(setting, 3).state_dict(), losses[:STEPS]


@pytest.mark.parametrize("classes", [1, 3])
def test_train_py_with_the_parity_flags_starts_and_steps_as_the_plain_loop(classes, tmp_path, monkeypatch,
                                                                           run_name):
    names = write_scenes(tmp_path, classes)
    initial, losses, result = train_py_first_steps(tmp_path, *names, classes, PARITY_FLAGS, monkeypatch, run_name)
    reference_initial, reference_losses = reference_first_steps(tmp_path, *names, classes)
    assert initial.keys() == reference_initial.keys()
    for key, value in reference_initial.items():
        assert torch.equal(initial[key], value), key
    assert len(losses) == STEPS
    # three steps: the first checks input and batch, the next two the optimizer, schedule and BatchNorm
    np.testing.assert_allclose(losses, reference_losses, rtol=0, atol=1e-5)
    # --select last: the result is the last evaluation's weights, at the end of the epoch whatever the scores
    assert result["global_step"] == 4 and result["config"]["select"] == "last"
    # --normalize unit is the checkpoint's mean and std (what detect.py, val.py and export.py read), and a
    # fine-tune from it keeps it unless told otherwise
    assert (tuple(result["meta"]["mean"]), tuple(result["meta"]["std"])) == NORMALIZATIONS["unit"]
    assert RunConfig().fine_tuned(result["meta"], None, given=set()).normalize == "unit"


def test_the_parity_test_sees_a_difference_in_the_input(tmp_path, monkeypatch, run_name):
    """The comparison above can fail: ImageNet normalization instead of the plain loop's pixels / 255 moves the
    first loss far beyond its tolerance."""
    names = write_scenes(tmp_path, 3)
    _, losses, _ = train_py_first_steps(tmp_path, *names, 3, [*PARITY_FLAGS, "--normalize", "imagenet"], monkeypatch,
                                     run_name)
    _, reference_losses = reference_first_steps(tmp_path, *names, 3)
    assert abs(losses[0] - reference_losses[0]) > 1e-3


def test_clip_grad_takes_0_for_no_clipping_and_refuses_a_negative_threshold():
    RunConfig(resize="stretch", clip_grad=0.0).check()
    with pytest.raises(UserError, match=r"^--clip-grad -1 must be 0 \(no clipping\) or a positive number$"):
        RunConfig(resize="stretch", clip_grad=-1.0).check()
