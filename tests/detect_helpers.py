"""Data, checkpoints and a CLI runner for the detect.py / dataloaders.py tests.

The accuracy test needs a model that learns in seconds on a shared CPU, so its data is easy on
purpose (bright shapes on a dark, noisy background) and its images are far from square, so a wrong
un-letterboxing would shift and stretch the masks and show up as a low IoU.
"""

import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]

from segtoolkit.models.factory import build_model, model_meta
from segtoolkit.models.checkpoints import save_checkpoint
from servers import wait_until

# one thread per process: the machine has two cores shared by everyone's tests
QUIET_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def easy_sample(rng, height, width):
    """(BGR image, 0/255 mask): 1-3 bright ellipses or rectangles on a dark noisy background."""
    image = rng.normal(45, 12, size=(height, width, 3))
    mask = np.zeros((height, width), np.uint8)
    for _ in range(int(rng.integers(1, 4))):
        grey = (int(rng.integers(170, 250)),) * 3
        centre = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        size = int(rng.integers(min(height, width) // 6, min(height, width) // 3))
        if rng.random() < 0.6:
            axes, angle = (size, int(size * rng.uniform(0.5, 1.0))), float(rng.uniform(0, 180))
            cv2.ellipse(image, centre, axes, angle, 0, 360, grey, -1)
            cv2.ellipse(mask, centre, axes, angle, 0, 360, 255, -1)
        else:
            corner = (centre[0] + size, centre[1] + size // 2)
            cv2.rectangle(image, centre, corner, grey, -1)
            cv2.rectangle(mask, centre, corner, 255, -1)
    image = np.clip(image + rng.normal(0, 6, size=image.shape), 0, 255).astype(np.uint8)
    return image, mask


def write_easy_dataset(root, count, seed):
    """`count` pairs in root/imgs and root/masks, alternately wide (about 2:1) and tall (1:2)."""
    rng = np.random.default_rng(seed)
    (root / "imgs").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    for index in range(count):
        short, long = int(rng.integers(72, 100)), int(rng.integers(150, 210))
        height, width = (short, long) if index % 2 == 0 else (long, short)
        image, mask = easy_sample(rng, height, width)
        cv2.imwrite(str(root / "imgs" / f"easy_{index:03d}.png"), image)
        cv2.imwrite(str(root / "masks" / f"easy_{index:03d}.png"), mask)
    return root


def write_video(path, frames, fps=12.0, size=(176, 96)):
    """An MP4 whose frames carry their own number (see mjpeg_server.draw_frame) and two bright blobs."""
    from mjpeg_server import draw_frame
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    for number in range(frames):
        writer.write(draw_frame(number, *size))
    writer.release()
    return path


def video_facts(path):
    """(decodable frames, FPS, width, height) of a video file, read back with OpenCV."""
    capture = cv2.VideoCapture(str(path))
    facts = [capture.get(cv2.CAP_PROP_FPS), int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)),
             int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))]
    frames = 0
    while capture.read()[0]:
        frames += 1
    capture.release()
    return (frames, *facts)


def read_rows(save_dir):
    """results.csv as a list of dicts."""
    import csv
    with open(Path(save_dir) / "results.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def detect_command(*args):
    return [sys.executable, str(REPO / "detect.py"), *map(str, args)]


def run_detect(*args, env=None, timeout=600):
    """Run detect.py as a user would; returns the CompletedProcess (text stdout/stderr).

    The timeout only catches a hang: on a CPU shared three or four ways, importing torch alone takes 20-40 s."""
    return subprocess.run(detect_command(*args), cwd=REPO, env=env or QUIET_ENV, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="session")
def easy_held_out(tmp_path_factory):
    """Images the model never saw, with their ground truth masks."""
    return write_easy_dataset(tmp_path_factory.mktemp("held_out"), 8, seed=2)


@pytest.fixture(scope="session")
def trained_checkpoint(tmp_path_factory):
    """A binary Unet/resnet18 trained by train.py for 12 short epochs at patch 64 (about 30 s on 1 core)."""
    data = write_easy_dataset(tmp_path_factory.mktemp("easy"), 32, seed=1)
    project = tmp_path_factory.mktemp("runs")
    result = subprocess.run(
        [sys.executable, str(REPO / "train.py"), "--data-dir", str(data), "--search-files", "--val-split", "0.25",
         "--encoder", "resnet18", "--encoder-weights", "none", "--patch-size", "64", "--epochs", "12",
         "--batch-size", "4", "--lr", "3e-3", "--wandb-mode", "disabled", "--workers", "0", "--name", "trained",
         "--project", str(project)],
        cwd=REPO, env=QUIET_ENV, capture_output=True, text=True, timeout=900)
    run_dirs = sorted(project.glob("trained*"))
    try:
        assert result.returncode == 0, result.stderr[-3000:]
        checkpoint = tmp_path_factory.mktemp("checkpoint") / "best-checkpoint.pth.tar"
        shutil.copy(run_dirs[0] / "best-checkpoint.pth.tar", checkpoint)
    finally:
        for folder in run_dirs:
            shutil.rmtree(folder, ignore_errors=True)
    return checkpoint


@pytest.fixture(scope="session")
def multiclass_checkpoint(tmp_path_factory):
    """An untrained 3-class Unet/resnet18 checkpoint (random weights: only the plumbing is tested)."""
    import torch
    torch.manual_seed(0)
    meta = model_meta("Unet", "resnet18", 3, 64, class_names=["background", "cell", "nucleus"])
    path = tmp_path_factory.mktemp("multiclass") / "multiclass.pth.tar"
    save_checkpoint(path, build_model("Unet", "resnet18", 3), meta)
    return path


class DetectProcess(subprocess.Popen):
    """detect.py in the background, its stdout and stderr written to files instead of pipes.

    A pipe nobody reads fills up after some hundred per-frame lines and then blocks detect.py mid-run; a
    file never does, and the test can read what was printed so far (`output()`) to wait for a message.
    communicate() waits for the end and returns (stdout, stderr) as text, like Popen's.
    """

    def __init__(self, command, folder, **options):
        self.folder = Path(folder)
        with open(self.folder / "stdout", "w") as out, open(self.folder / "stderr", "w") as err:
            super().__init__(command, stdout=out, stderr=err, **options)

    def output(self):
        """(stdout, stderr) printed so far."""
        return tuple((self.folder / name).read_text(errors="replace") for name in ("stdout", "stderr"))

    def communicate(self, input=None, timeout=None):  # noqa: A002 (Popen's name)
        self.wait(timeout)
        return self.output()


@contextlib.contextmanager
def detect_process(*args, env=None):
    """detect.py running in the background (a DetectProcess); killed and reaped if the test leaves early."""
    folder = tempfile.mkdtemp(prefix="detect-process-")
    process = DetectProcess(detect_command(*args), folder, cwd=REPO, env=env or QUIET_ENV)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        shutil.rmtree(folder, ignore_errors=True)


def wait_for_rows(process, save_dir, count, timeout=300):
    """Wait until the running detect.py has written `count` rows to results.csv.

    Fails at once, with its stderr, if detect.py ended first; the bound covers its start on a busy machine
    (importing torch, loading the model, connecting to a stream)."""
    csv_path = Path(save_dir) / "results.csv"

    def enough():
        if csv_path.exists() and len(read_rows(save_dir)) >= count:
            return True
        assert process.poll() is None, f"detect.py ended (exit code {process.returncode}) before writing {count} " \
                                       f"rows: {process.output()[1][-3000:]}"
        return False
    wait_until(enough, timeout, what=lambda: f"{count} rows in {csv_path}; detect.py's stderr so far: "
                                             f"{process.output()[1][-3000:]}")


def wait_for_stderr(process, pattern, timeout=120):
    """Wait until the running detect.py has printed a line matching `pattern` (a regex) on stderr."""
    def printed():
        if re.search(pattern, process.output()[1]):
            return True
        assert process.poll() is None, f"detect.py ended (exit code {process.returncode}) before printing " \
                                       f"{pattern!r}: {process.output()[1][-3000:]}"
        return False
    wait_until(printed, timeout, what=lambda: f"{pattern!r} on detect.py's stderr; so far: "
                                              f"{process.output()[1][-3000:]}")


class FakeCamera:
    """Stands in for cv2.VideoCapture(index): plays a real video file at its frame rate, like a camera.

    With `frames=False` it opens but never delivers a frame (a camera another program holds, or broken).
    After the file's last frame, read() fails as when a camera is unplugged.
    """

    def __init__(self, video, frames=True):
        self.video, self.frames = cv2.VideoCapture(str(video)), frames
        self.fps = self.video.get(cv2.CAP_PROP_FPS)
        self.next_time, self.released, self.reads = None, False, 0

    def isOpened(self):  # noqa: N802 (cv2's name)
        return not self.released

    def read(self):
        self.reads += 1
        if self.released or not self.frames:
            time.sleep(0.05)
            return False, None
        now = time.monotonic()
        self.next_time = max(self.next_time or now, now - 1 / self.fps)
        time.sleep(max(0.0, self.next_time - now))
        self.next_time += 1 / self.fps
        return self.video.read()

    def get(self, prop):
        return self.fps if prop == cv2.CAP_PROP_FPS else self.video.get(prop)

    def release(self):
        self.released = True
        self.video.release()


class CameraCv2:
    """The cv2 module as dataloaders sees it in a test: VideoCapture(<int>) opens `open_camera(index)`,
    everything else is the real cv2. Every camera opened is kept in `cameras`."""

    def __init__(self, open_camera):
        self.open_camera, self.cameras = open_camera, []

    def VideoCapture(self, source, *args):  # noqa: N802 (cv2's name)
        if not isinstance(source, int):
            return cv2.VideoCapture(source, *args)
        camera = self.open_camera(source)
        self.cameras.append(camera)
        return camera

    def __getattr__(self, name):
        return getattr(cv2, name)


@pytest.fixture
def fake_webcam(monkeypatch, tmp_path):
    """Install a camera at index 0 for dataloaders: fake_webcam(open_camera) with open_camera(index) -> capture.
    A fake /dev/video0 lets the real check_webcam pass. Returns the CameraCv2 (its `cameras`)."""
    import dataloaders
    from segtoolkit.data import sources
    devices = tmp_path / "dev"
    devices.mkdir()
    (devices / "video0").touch()
    real_check = sources.check_webcam
    monkeypatch.setattr(sources, "check_webcam", lambda index: real_check(index, device_dir=devices))

    def install(open_camera):
        camera_cv2 = CameraCv2(open_camera)
        monkeypatch.setattr(dataloaders, "cv2", camera_cv2)
        return camera_cv2

    return install
