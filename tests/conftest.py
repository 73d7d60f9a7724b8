"""Shared fixtures: small synthetic datasets, tiny CPU settings, run folders in temporary places; the fixture
modules in tests/helpers (checkpoints, live sources, the X display) are registered below, once for the session.
Plain helpers (TINY, REPO, RUNS, detect.py runners...) are imported from tests/helpers by the tests that use them.

pytest finds the repository's modules and the tests' helpers through pyproject.toml (pythonpath).

Markers (pyproject.toml): `slow` for tests of a minute or more; `servers` for tests that start a stream server
or an X display, given here to every test that uses one of those fixtures. The fast subset is
`python3 -m pytest -q tests -m "not slow and not servers"`.
"""

import os
import shutil

import pytest

from helpers.data import write_tiny_data
from helpers.paths import RUNS

pytest_plugins = ["helpers.fixtures_media", "helpers.fixtures_models", "helpers.fixtures_sources",
                  "helpers.fixtures_display"]
os.environ.setdefault("WANDB_SILENT", "true")

# what a `servers` test uses: a server process for its stream, or Xvfb and a window manager for its windows
SERVER_FIXTURES = {"mjpeg_server", "https_mjpeg_server", "rtsp_server", "rtsp_udp_only_server", "rtmp_server",
                   "xvfb_display"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if SERVER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.servers)


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """In-process training shares two cores with servers and subprocesses: one thread beats two fighting. For the
    whole session, so that module and session fixtures that train (test_export's checkpoint) run on one thread too:
    on two threads beside other work, that fixture took 152 s instead of 31 s."""
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """12 binary image/mask pairs (0/255 masks) with split files: 8 train, 2 val, 2 test."""
    return write_tiny_data(tmp_path_factory.mktemp("tiny"))


@pytest.fixture
def run_name(request):
    """A unique run name under RUNS, removed (with any numeric-suffix siblings) afterwards."""
    name = f"pytest-{request.node.name}-{os.getpid()}".replace("[", "-").replace("]", "")
    yield name
    for folder in RUNS.glob(f"{name}*"):
        shutil.rmtree(folder, ignore_errors=True)


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(RUNS, ignore_errors=True)
