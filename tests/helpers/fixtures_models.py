"""Session fixtures: checkpoints made once for every test that reads one."""

import shutil
import subprocess
import sys

import pytest
import torch
from segtoolkit.models.checkpoints import save_checkpoint
from segtoolkit.models.factory import build_model, model_meta

from helpers.data import write_easy_dataset, write_tiny_data
from helpers.detect_runs import QUIET_ENV
from helpers.once import made_once
from helpers.paths import REPO
from helpers.training import TINY, train_in_one_thread


@pytest.fixture(scope="session")
def trained_checkpoint(tmp_path_factory):
    """A binary Unet/resnet18 trained by train.py for 12 short epochs at patch 64 (about 30 s on 1 core), once for
    the run (helpers.once: both xdist workers read the same file)."""
    def train_easy(folder):
        data = write_easy_dataset(folder / "easy", 32, seed=1)
        project = folder / "runs"
        result = subprocess.run(
            [sys.executable, str(REPO / "train.py"), "--data-dir", str(data), "--search-files", "--val-split", "0.25",
             "--encoder", "resnet18", "--encoder-weights", "none", "--patch-size", "64", "--epochs", "12",
             "--batch-size", "4", "--lr", "3e-3", "--wandb-mode", "disabled", "--workers", "0", "--name", "trained",
             "--project", str(project)],
            cwd=REPO, env=QUIET_ENV, capture_output=True, text=True, timeout=900)
        try:
            assert result.returncode == 0, result.stderr[-3000:]
            shutil.copy(project / "trained" / "best-checkpoint.pth.tar", folder / "best-checkpoint.pth.tar")
        finally:
            shutil.rmtree(project, ignore_errors=True)
            shutil.rmtree(data, ignore_errors=True)
    return made_once(tmp_path_factory, "trained_checkpoint", train_easy) / "best-checkpoint.pth.tar"


@pytest.fixture(scope="session")
def two_epoch_run(tmp_path_factory):
    """The folder of a finished 2-epoch TINY run (no early stop) on tiny data of its own (train.txt, val.txt; no
    test split), trained in-process once for the run (helpers.once). Read it or copy from it; a test that resumes or
    fine-tunes from it writes its own run elsewhere (--project)."""
    def train_two_epochs(folder):
        data = write_tiny_data(folder / "data")
        assert train_in_one_thread([*TINY, "--data-dir", data, "--train-list", "train.txt", "--val-list", "val.txt",
                                    "--epochs", "2", "--patience", "0", "--project", folder, "--name", "run"]) == 0
    return made_once(tmp_path_factory, "two_epoch_run", train_two_epochs) / "run"


@pytest.fixture(scope="session")
def multiclass_checkpoint(tmp_path_factory):
    """An untrained 3-class Unet/resnet18 checkpoint (random weights: only the plumbing is tested)."""
    torch.manual_seed(0)
    meta = model_meta("Unet", "resnet18", 3, 64, class_names=["background", "cell", "nucleus"])
    path = tmp_path_factory.mktemp("multiclass") / "multiclass.pth.tar"
    save_checkpoint(path, build_model("Unet", "resnet18", 3), meta)
    return path


@pytest.fixture(scope="session")
def untrained_checkpoint(tmp_path_factory):
    """An untrained binary Unet/resnet18 checkpoint at patch 64 (random weights, seed 0: only the plumbing is
    tested). Read it, never write beside it: every test of the session gets the same file."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("untrained") / "model.pth.tar"
    save_checkpoint(path, build_model("Unet", "resnet18", 1), model_meta("Unet", "resnet18", 1, 64))
    return path
