"""detect.py --view-img: the window, on a virtual display (Xvfb with a window manager)."""

import re
import subprocess
import threading
import time

import cv2
import numpy as np
import pytest

from helpers.data import LONG_CLIP_FRAMES, video_facts
from helpers.detect_runs import QUIET_ENV, detect_process, read_rows, wait_for_rows
from dataloaders import Frame
from helpers.servers import MjpegServer, wait_until


# ---------------------------------------------------------------- the window, on a virtual display


def find_window(display, title_start):
    """(id, x, y, width, height) of the first top-level window whose name starts with `title_start`, or None."""
    windows = find_windows(display, title_start)
    return windows[0] if windows else None


def find_windows(display, title_start):
    """(id, x, y, width, height) of every window (mapped or not) whose name starts with `title_start`: a test
    that looked only at the first one listed saw it black for 120 s on a busy machine, so each is looked at."""
    tree = subprocess.run(["xwininfo", "-root", "-tree", "-display", display], capture_output=True, text=True).stdout
    found = []
    for line in tree.splitlines():
        match = re.search(r'(0x[0-9a-f]+) "' + re.escape(title_start) +
                          r'[^"]*":.*?(\d+)x(\d+)[+-]\d+[+-]\d+\s+\+(-?\d+)\+(-?\d+)', line)
        if match:
            width, height, x, y = map(int, match.groups()[1:])
            found.append((match.group(1), x, y, width, height))
    return found


def screenshot(display, path):
    subprocess.run(["import", "-display", display, "-window", "root", str(path)], check=True, timeout=60)
    return cv2.imread(str(path))


def window_pixels(display, window_id, path):
    """What X holds of one window (by id), or None when it cannot be read (gone, not mapped yet)."""
    done = subprocess.run(["import", "-display", display, "-window", window_id, str(path)], capture_output=True,
                          timeout=60)
    return cv2.imread(str(path)) if done.returncode == 0 else None


def wait_for_window_showing(display, title_start, path, process, shows, timeout=120):
    """(id, pixels on screen) of the window titled `title_start`... once `shows(pixels)` is true, or of the
    last look when `timeout` s have passed (the caller's assertions then say what is wrong).

    A window is mapped, at its size, before its first paint, and on a busy machine that paint can come
    seconds later (a screenshot then shows the window all black): one screenshot races it. The window is
    looked up again for every screenshot, since it may still be moved or resized."""
    last = []

    def look():
        assert process.poll() is None, (f"detect.py ended while its window was awaited; last look: "
                                        f"{describe(last[1]) if last and last[1] is not None else 'no window'}; "
                                        f"{process.output()[1]}")
        for window_id, x, y, width, height in find_windows(display, title_start):
            # the window's own contents by its id, and its place on the root window: either may lag under load
            for pixels in (window_pixels(display, window_id, path),
                           screenshot(display, path)[y:y + height, x:x + width]):
                if pixels is not None and pixels.size:
                    last[:] = [window_id, pixels]
                    if shows(pixels):
                        return True
        return False
    wait_until(look, timeout, interval=0.5)
    assert last, f"no window {title_start!r} on the display"
    return last


def describe(shown):
    """What a test saw of a window: its size, mean brightness and share of overlay green."""
    return (f"{shown.shape[1]}x{shown.shape[0]} px, mean {shown.mean():.1f}, green {overlay_green(shown).mean():.3f}"
            if shown.size else "an empty screenshot")


def overlay_green(shown):
    """Pixels of a screenshot where the blended mask colour (class 1's green) shows."""
    return (shown[..., 1].astype(int) - shown[..., 2] > 60) & (shown[..., 1] > 150)


def press_key(display, window, key, process, timeout=120):
    """Focus the window and type `key` (XTEST, like a real keyboard) until the process exits.

    A key typed before the window has the focus is lost, so it is typed again every 10 s until `timeout`:
    on a busy machine the frame in hand, closing the outputs and exiting can take a while."""
    env = {**QUIET_ENV, "DISPLAY": display}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            subprocess.run(["xdotool", "windowfocus", "--sync", window], env=env, capture_output=True, timeout=30)
            subprocess.run(["xdotool", "key", key], env=env, capture_output=True, timeout=30)
        except subprocess.TimeoutExpired:  # the window went away meanwhile: the process is ending
            pass
        if wait_until(lambda: process.poll() is not None, 10):
            return
    raise AssertionError(f"detect.py did not react to key {key} within {timeout} s")


def test_view_img_shows_live_video_and_q_quits(trained_checkpoint, long_clip, xvfb_display, tmp_path):
    env = {**QUIET_ENV, "DISPLAY": xvfb_display}
    with detect_process("--model", trained_checkpoint, "--source", long_clip, "--view-img", "--save-dir", tmp_path,
                        env=env) as process:
        window = wait_until(lambda: find_window(xvfb_display, "detect.py ") or process.poll() is not None, 300)
        assert window and process.poll() is None, f"no detect.py window on the display: {process.output()}"
        wait_for_rows(process, tmp_path, 10)
        window_id, shown = wait_for_window_showing(
            xvfb_display, "detect.py ", tmp_path / "screen.png", process,
            lambda shown: shown.shape[1] >= 400 and shown.mean() > 20 and overlay_green(shown).mean() > 0.02)
        assert shown.shape[1] >= 400 and shown.mean() > 20  # enlarged from 176x96, and not black
        assert overlay_green(shown).mean() > 0.02  # the blended mask colour is on screen
        press_key(xvfb_display, window_id, "q", process)
        stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr
    assert "(quit)" in stdout and len(read_rows(tmp_path)) < LONG_CLIP_FRAMES


def test_view_img_on_a_live_stream_and_q_quits(trained_checkpoint, mjpeg_server, xvfb_display, tmp_path):
    """--view-img on the HTTP MJPEG stream: the window shows the overlay while the stream runs; q ends the run
    with exit code 0 and every output complete."""
    env = {**QUIET_ENV, "DISPLAY": xvfb_display}
    with detect_process("--model", trained_checkpoint, "--source", mjpeg_server.url, "--view-img", "--save-video",
                        "--save-dir", tmp_path, "--stream-timeout", "10", env=env) as process:
        window = wait_until(lambda: find_window(xvfb_display, f"detect.py {mjpeg_server.url}")
                            or process.poll() is not None, 300)
        assert window and process.poll() is None, f"no detect.py window on the display: {process.output()}"
        wait_for_rows(process, tmp_path, 10)
        window_id, shown = wait_for_window_showing(
            xvfb_display, f"detect.py {mjpeg_server.url}", tmp_path / "screen.png", process,
            lambda shown: shown.shape[1] >= 400 and shown.mean() > 20 and overlay_green(shown).mean() > 0.02)
        assert process.poll() is None  # the stream is still running
        assert shown.shape[1] >= 400 and shown.mean() > 20  # enlarged from 192x128, and not black
        assert overlay_green(shown).mean() > 0.02  # the blended mask colour is on screen
        press_key(xvfb_display, window_id, "q", process)
        stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr
    assert "(quit)" in stdout.splitlines()[-1]
    rows = read_rows(tmp_path)
    assert len(rows) >= 10 and all(None not in r.values() and r["foreground_px"] != "" for r in rows)
    assert f"{len(rows)} frame(s)" in stdout.splitlines()[-1]
    frames, fps, width, height = video_facts(tmp_path / f"127.0.0.1_{mjpeg_server.port}_stream.mjpg.mp4")
    assert (frames, width, height) == (len(rows), 192, 128) and fps == pytest.approx(10, rel=0.2)  # playable, whole


def test_view_img_on_two_streams_has_a_window_each(trained_checkpoint, mjpeg_server, xvfb_display, tmp_path):
    """Two MJPEG streams in one run (one forward pass over the newest frame of each): a window named after each
    stream shows its overlay; q in one ends the run, every output complete."""
    second = MjpegServer(tmp_path, width=160, height=96).start()
    env = {**QUIET_ENV, "DISPLAY": xvfb_display}
    out = tmp_path / "out"
    try:
        with detect_process("--model", trained_checkpoint, "--source", mjpeg_server.url, second.url, "--view-img",
                            "--save-video", "--save-dir", out, "--stream-timeout", "10", env=env) as process:
            wait_for_rows(process, out, 10)
            for url in (mjpeg_server.url, second.url):
                window_id, shown = wait_for_window_showing(
                    xvfb_display, f"detect.py {url}", tmp_path / "screen.png", process,
                    lambda shown: shown.shape[1] >= 400 and shown.mean() > 20 and overlay_green(shown).mean() > 0.02)
                assert shown.shape[1] >= 400 and overlay_green(shown).mean() > 0.02, (url, describe(shown))
            assert process.poll() is None  # both streams still running
            press_key(xvfb_display, window_id, "q", process)
            stdout, stderr = process.communicate(timeout=60)
    finally:
        second.close()
    assert process.returncode == 0, stderr
    assert "(quit)" in stdout.splitlines()[-1]
    rows = read_rows(out)
    for url, video, size in ((mjpeg_server.url, f"127.0.0.1_{mjpeg_server.port}_stream.mjpg.mp4", (192, 128)),
                             (second.url, f"127.0.0.1_{second.port}_stream.mjpg.mp4", (160, 96))):
        own = [row for row in rows if row["source"] == url]
        frames, _, width, height = video_facts(out / video)
        assert own and (frames, (width, height)) == (len(own), size)


def test_an_image_window_is_enlarged_and_waits_for_its_key(monkeypatch):
    """cv2's window calls recorded, no display: a small image gets a window 480 px on its long side, and
    show() returns only once a key comes (q would quit)."""
    from segtoolkit.outputs import detections as detect_outputs
    calls, keys = [], iter([-1] * 6 + [ord("n")])
    fake = {"namedWindow": lambda *a: calls.append("namedWindow"),
            "resizeWindow": lambda name, width, height: calls.append(("resizeWindow", width, height)),
            "imshow": lambda name, image: calls.append(("imshow", image.shape)),
            "setWindowTitle": lambda *a: None, "getWindowProperty": lambda *a: 1.0,
            "waitKey": lambda delay: next(keys)}
    for name, function in fake.items():
        monkeypatch.setattr(detect_outputs.cv2, name, function)
    frame = Frame("a.png", None, np.zeros((30, 40, 3), np.uint8), None, 0, 1, None)
    viewer = detect_outputs.Viewer()
    assert viewer.show(frame, np.zeros((30, 40, 3), np.uint8), threading.Event()) is True
    assert calls == ["namedWindow", ("resizeWindow", 480, 360), ("imshow", (30, 40, 3))]
    assert next(keys, None) is None  # the key ended the wait
    keys = iter([ord("q")])
    assert viewer.show(frame, np.zeros((30, 40, 3), np.uint8), threading.Event()) is False  # q quits
    assert calls.count("namedWindow") == 1  # one window for every image


def test_view_img_image_waits_for_a_key(trained_checkpoint, easy_held_out, xvfb_display, tmp_path):
    env = {**QUIET_ENV, "DISPLAY": xvfb_display}
    image = easy_held_out / "imgs" / "easy_004.png"
    with detect_process("--model", trained_checkpoint, "--source", image, "--view-img", "--save-dir", tmp_path,
                        env=env) as process:
        window = wait_until(lambda: find_window(xvfb_display, "detect.py ") or process.poll() is not None, 300)
        assert window and process.poll() is None, f"no detect.py window on the display: {process.output()}"
        time.sleep(1.5)
        assert process.poll() is None, "the window closed without a key press"

        def difference_to_saved(shown):
            saved = cv2.imread(str(tmp_path / "easy_004.png"))
            saved = cv2.resize(saved, (shown.shape[1], shown.shape[0]), interpolation=cv2.INTER_AREA)
            return np.abs(shown.astype(int) - saved).mean()
        window_id, shown = wait_for_window_showing(xvfb_display, "detect.py ", tmp_path / "screen.png", process,
                                                   lambda shown: difference_to_saved(shown) < 25)
        assert difference_to_saved(shown) < 25  # the window shows the annotated image
        press_key(xvfb_display, window_id, "space", process)
        process.communicate(timeout=60)
    assert process.returncode == 0


