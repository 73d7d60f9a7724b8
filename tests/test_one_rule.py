"""Rules every command shares, each written once: the validation preview shows detect.py's mask for the same
image (segtoolkit.inference.full_size.FullSizePredictor), and train.py, detect.py and val.py allocate their run
folders by one rule with one message (segtoolkit.outputs.files.make_run_dir)."""

import cv2
import numpy as np
import pytest
import torch

import detect
import train
import val
from dataset import make_dataset
from segtoolkit.data.imaging import letterbox
from segtoolkit.data.splits import pair_masks
from segtoolkit.inference.full_size import FullSizePredictor
from segtoolkit.inference.predictor import TorchPredictor
from segtoolkit.models.checkpoints import save_checkpoint
from segtoolkit.models.factory import build_model, model_meta
from segtoolkit.outputs import files
from segtoolkit.training import run_log

PATCH = 64
SIZES = {"wide.png": (50, 110), "tall.png": (130, 70)}  # (height, width): letterboxing pads both ways


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Random non-square images with random binary masks, in imgs/ and masks/."""
    root = tmp_path_factory.mktemp("one-rule")
    rng = np.random.default_rng(7)
    for folder in ("imgs", "masks"):
        (root / folder).mkdir()
    for name, size in SIZES.items():
        cv2.imwrite(str(root / "imgs" / name), rng.integers(0, 255, (*size, 3), dtype=np.uint8))
        cv2.imwrite(str(root / "masks" / name), (rng.random(size) > 0.5).astype(np.uint8) * 255)
    return root


def untrained(path, **meta_options):
    """An untrained Unet/resnet18 saved as a checkpoint: its logits sit near 0, so any difference in how the
    image is fitted flips pixels."""
    torch.manual_seed(0)
    model = build_model("Unet", "resnet18", 1)
    meta = model_meta("Unet", "resnet18", 1, PATCH, **meta_options)
    save_checkpoint(path, model, meta)
    return model, meta


@pytest.mark.parametrize("meta_options, mode", [
    (dict(input_mode="letterbox"), "letterbox"),
    (dict(input_mode="stretch"), "stretch"),
    (dict(input_mode="tile", scale=0.5), "full"),
], ids=["letterbox", "stretch", "tile-scale-0.5"])
def test_preview_shows_the_mask_detect_writes(meta_options, mode, data, tmp_path, monkeypatch, capsys):
    model, meta = untrained(tmp_path / "model.pth.tar", **meta_options)
    code = detect.main(detect.parse_args(["--model", str(tmp_path / "model.pth.tar"), "--source", str(data / "imgs"),
                                          "--save-dir", str(tmp_path / "detect")]))
    assert code == 0, capsys.readouterr().err
    pairs = pair_masks(sorted((data / "imgs").iterdir()), data / "masks")
    dataset = make_dataset(pairs, PATCH, 1, evaluation=True, mode=mode, scale=meta["scale"], cache="none")
    shown = {}
    monkeypatch.setattr(run_log, "prediction_grid", lambda images, masks, predictions, meta: shown.update(
        images=images, masks=masks, predictions=predictions))
    full_size = FullSizePredictor.from_meta(TorchPredictor(model, torch.device("cpu")), meta)
    run_log.preview_grid(full_size, dataset, count=len(pairs), meta=meta)
    for (image_path, _mask_path), prediction in zip(pairs, shown["predictions"]):
        written = cv2.imread(str(tmp_path / "detect" / "masks" / image_path.name), cv2.IMREAD_UNCHANGED)
        assert written.shape == SIZES[image_path.name]
        assert 0.05 < (written > 0).mean() < 0.95  # a mask with edges: a fit that differs would move them
        # the preview shows that mask fitted into its grid cell, as it shows the ground truth
        cell = letterbox((written // 255).astype(np.uint8), PATCH, cv2.INTER_NEAREST)[0]
        assert np.array_equal(prediction, cell), image_path.name


def test_train_detect_and_val_allocate_run_folders_by_one_rule(data, tmp_path, monkeypatch, capsys):
    """Every command's <--project>/<--name> is make_run_dir's: the same limit, the same one-line error."""
    monkeypatch.setattr(files, "MAX_RUNS_PER_NAME", 2)
    project = tmp_path / "project"
    for taken in ("exp", "exp2"):
        (project / taken).mkdir(parents=True)
    untrained(tmp_path / "model.pth.tar")
    message = f"error: {project} holds 2 runs named exp (exp, exp2 ... exp2); give another --name or --project"
    place = ["--project", str(project), "--name", "exp"]
    commands = {
        "train.py": lambda: train.main(train.parse_args([
            "--encoder", "resnet18", "--encoder-weights", "none", "--patch-size", str(PATCH), "--batch-size", "1",
            "--workers", "0", "--wandb-mode", "disabled", "--epochs", "1", "--data-dir", str(data),
            "--search-files", "--val-split", "0.5", *place])),
        "detect.py": lambda: detect.main(detect.parse_args(["--model", str(tmp_path / "model.pth.tar"), "--source",
                                                            str(data / "imgs"), *place])),
        "val.py": lambda: val.main(val.parse_args(["--model", str(tmp_path / "model.pth.tar"), "--data", str(data),
                                                   "--workers", "0", *place])),
    }
    for command, run in commands.items():
        assert run() == 2, command
        assert capsys.readouterr().err.strip().splitlines()[-1] == message, command
    assert sorted(path.name for path in project.iterdir()) == ["exp", "exp2"]  # nothing else was created
    monkeypatch.setattr(files, "MAX_RUNS_PER_NAME", 3)
    assert files.make_run_dir(project / "exp") == project / "exp3"
