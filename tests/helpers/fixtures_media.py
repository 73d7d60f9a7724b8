"""Session fixtures: images and videos that tests read and never change, written once."""

import pytest

from helpers.data import LONG_CLIP_FRAMES, write_easy_dataset, write_video
from helpers.once import made_once


@pytest.fixture(scope="session")
def easy_held_out(tmp_path_factory):
    """Images the model never saw, with their ground truth masks."""
    return write_easy_dataset(tmp_path_factory.mktemp("held_out"), 8, seed=2)


@pytest.fixture(scope="session")
def clip(tmp_path_factory):
    """20 frames, 176x96, 12 FPS."""
    return write_video(tmp_path_factory.mktemp("clip") / "clip.mp4", 20)


@pytest.fixture(scope="session")
def long_clip(tmp_path_factory):
    """3600 frames: long enough to interrupt or quit in the middle. detect.py reads a file as fast as it can
    (300 frames took 26-35 s on a busy CPU, at 74-107 ms a frame, and a quiet one is several times faster),
    while the test acts only after polls, screenshots and key presses. Written once for the run (helpers.once)."""
    return made_once(tmp_path_factory, "long_clip",
                     lambda folder: write_video(folder / "long clip.mp4", LONG_CLIP_FRAMES)) / "long clip.mp4"
