"""Shared fixtures: the repo on sys.path, small synthetic datasets, tiny CPU settings."""

import os
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("WANDB_SILENT", "true")

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
    """A unique run name under <repo>/checkpoints, removed (with any numeric-suffix siblings) afterwards."""
    name = f"pytest-{request.node.name}-{os.getpid()}".replace("[", "-").replace("]", "")
    yield name
    for folder in (REPO / "checkpoints").glob(f"{name}*"):
        shutil.rmtree(folder, ignore_errors=True)
