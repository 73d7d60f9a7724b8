"""The reliability tests' data: a pristine 6-pair data set per module, a fresh copy per test to damage, and short
run names (a run folder per test under RUNS, removed afterwards)."""

import shutil
from pathlib import Path

import pytest

from helpers.paths import RUNS
from helpers.train_runs import unique_name
from make_sample_data import write_dataset


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """6 binary pairs: train.txt 4, val.txt 2, test.txt empty (an empty test split is allowed)."""
    root = tmp_path_factory.mktemp("reliability") / "data"
    paths = write_dataset(root, 6, seed=3)
    (root / "train.txt").write_text("".join(f"imgs/{p.name}\n" for p in paths[:4]))
    (root / "val.txt").write_text("".join(f"imgs/{p.name}\n" for p in paths[4:]))
    (root / "test.txt").write_text("# no test images\n")
    return root


@pytest.fixture
def data(pristine, tmp_path):
    """A fresh copy of the dataset for a test to damage."""
    return Path(shutil.copytree(pristine, tmp_path / "data"))


@pytest.fixture
def run_name(request):
    name = unique_name(request.node.name.split("[")[0][5:30])
    yield name
    for folder in RUNS.glob(f"{name}*"):
        shutil.rmtree(folder, ignore_errors=True)

