"""Shared fixtures: small synthetic datasets, tiny CPU settings, run folders in temporary places.

pytest finds the repository's modules and the tests' helpers through pyproject.toml (pythonpath)."""

import os
import shutil
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
os.environ.setdefault("WANDB_SILENT", "true")
# train.py's --project for every run the tests start: the repository's checkpoints/ is the user's
RUNS = Path(tempfile.mkdtemp(prefix="pytest-runs-"))

from make_sample_data import write_dataset  # noqa: E402


@pytest.fixture(autouse=True)
def one_torch_thread():
    """In-process training shares two cores with servers and subprocesses: one thread beats two fighting."""
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """12 binary image/mask pairs (0/255 masks) with split files: 8 train, 2 val, 2 test."""
    root = tmp_path_factory.mktemp("tiny")
    paths = write_dataset(root, 12, seed=1)
    for name, part in (("train.txt", paths[:8]), ("val.txt", paths[8:10]), ("test.txt", paths[10:])):
        (root / name).write_text("".join(f"{p.relative_to(root)}\n" for p in part))
    return root


@pytest.fixture
def run_name(request):
    """A unique run name under RUNS, removed (with any numeric-suffix siblings) afterwards."""
    name = f"pytest-{request.node.name}-{os.getpid()}".replace("[", "-").replace("]", "")
    yield name
    for folder in RUNS.glob(f"{name}*"):
        shutil.rmtree(folder, ignore_errors=True)


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(RUNS, ignore_errors=True)


def write_pair(folder, stem, image, mask):
    """Write an image and its mask as folder/imgs/<stem>.png and folder/masks/<stem>.png; returns the pair."""
    import cv2
    (folder / "imgs").mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(folder / "imgs" / f"{stem}.png"), image)
    cv2.imwrite(str(folder / "masks" / f"{stem}.png"), mask)
    return folder / "imgs" / f"{stem}.png", folder / "masks" / f"{stem}.png"
