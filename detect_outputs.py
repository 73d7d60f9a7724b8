"""Where detect.py's results go: results.csv, annotated images and masks, MP4 videos, the live window.

Usage:
    from detect_outputs import ResultWriter, Viewer
    writer = ResultWriter(Path("runs/detect/exp"), class_names=None, save_video=True, increment=True)
    writer.add(frame, mask, annotated_rgb, inference_ms, largest_polygon_px)   # the first add creates exp, exp2...
    writer.close()   # always: finishes the MP4 files so they play even after Ctrl-C
"""

import csv
import os
import sys
from pathlib import Path

import cv2
import numpy as np

from sources import safe_name
from segtoolkit.errors import UserError

QUIT_KEYS = (ord("q"), ord("Q"), 27)  # 27 = Esc
MIN_WINDOW_SIDE = 480


def increment_path(path):
    """path, or path2, path3... the first that does not exist, so a run never overwrites an earlier one."""
    path = Path(path)
    if not path.exists():
        return path
    for number in range(2, 100000):
        candidate = path.with_name(f"{path.name}{number}")
        if not candidate.exists():
            return candidate
    raise UserError(f"{path.parent} holds too many runs named {path.name}; give --save-dir")


def check_save_dir(path):
    """The output folder must be creatable and writable: say so at start, not when the first frame arrives."""
    path = Path(path)
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise UserError(f"--save-dir {path}: {existing} is a file, not a folder; give another --save-dir")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"--save-dir {path}: {existing} is not writable; give another --save-dir")


def make_run_dir(path):
    """Create and return the first free one of path, path2, path3... (another run may take a name meanwhile)."""
    while True:
        candidate = increment_path(path)
        try:
            candidate.mkdir(parents=True)
            return candidate
        except FileExistsError:
            continue


class ResultWriter:
    """results.csv (flushed per row), images and masks (unless nosave) and MP4s (with --save-video).

    Nothing is created before the first frame: a run that never gets one (a stream that cannot be opened)
    leaves no empty folder behind. With `increment`, save_dir names the default run folder and the first
    free one of save_dir, save_dir2... is created then; otherwise save_dir is used as is.
    """

    def __init__(self, save_dir, class_names=None, save_images=True, save_video=False, increment=False):
        self.save_dir, self.increment = Path(save_dir), increment
        self.class_names, self.save_images, self.save_video = class_names, save_images, save_video
        self.videos, self.used_stems = {}, set()
        self.csv_file = self.csv = None

    @property
    def opened(self):
        return self.csv_file is not None

    def open(self):
        if self.increment:
            self.save_dir = make_run_dir(self.save_dir)
        else:
            self.save_dir.mkdir(parents=True, exist_ok=True)
        self.csv_file = open(self.save_dir / "results.csv", "w", newline="", encoding="utf-8")
        self.csv = csv.writer(self.csv_file)
        header = ["source", "frame", "inference_ms", "largest_polygon_px", "foreground_px"]
        header += [f"{name}_px" for name in (self.class_names or [])[1:]]
        self.csv.writerow(header)
        self.csv_file.flush()

    def unique_name(self, source, suffix):
        """A file name inside save_dir from the source name, sanitized; its stem is never reused in this run
        (a.png and a.jpg would otherwise share masks/a.png)."""
        stem, number = safe_name(source), 2
        unique = stem
        while unique in self.used_stems:
            unique, number = f"{stem}_{number}", number + 1
        self.used_stems.add(unique)
        return f"{unique}{suffix}"

    def add(self, frame, mask, annotated, inference_ms, largest):
        """Write one frame's outputs; `mask` holds class indices at the original size."""
        if not self.opened:
            self.open()
        if frame.is_image and self.save_images:
            self.write_image(frame, mask, annotated)
        elif not frame.is_image and self.save_video:
            self.write_video_frame(frame, annotated)
        row = [frame.path, frame.index, f"{inference_ms:.2f}", f"{largest:.1f}", int(np.count_nonzero(mask))]
        if self.class_names:
            counts = np.bincount(mask.ravel(), minlength=len(self.class_names))
            row += [int(c) for c in counts[1:len(self.class_names)]]
        self.csv.writerow(row)
        self.csv_file.flush()

    def write_image(self, frame, mask, annotated):
        suffix = Path(frame.path).suffix.lower()
        name = self.unique_name(frame.path, suffix if suffix in (".png", ".jpg", ".jpeg", ".bmp", ".tif",
                                                                 ".tiff", ".webp") else ".png")
        (self.save_dir / "masks").mkdir(exist_ok=True)
        stored = mask * 255 if self.class_names is None else mask
        cv2.imwrite(str(self.save_dir / name), cv2.cvtColor(annotated, cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(self.save_dir / "masks" / f"{Path(name).stem}.png"), stored.astype(np.uint8))

    def write_video_frame(self, frame, annotated):
        height, width = annotated.shape[:2]
        if frame.path not in self.videos:
            path = self.save_dir / self.unique_name(frame.path, ".mp4")
            writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), float(frame.fps or 25.0),
                                     (width, height))
            if not writer.isOpened():
                raise UserError(f"cannot write video {path}: OpenCV has no mp4v encoder here; drop --save-video")
            self.videos[frame.path] = (writer, (width, height))
        writer, size = self.videos[frame.path]
        if size != (width, height):  # a stream came back at another resolution after a reconnect
            annotated = cv2.resize(annotated, size, interpolation=cv2.INTER_AREA)
        writer.write(cv2.cvtColor(annotated, cv2.COLOR_RGB2BGR))

    def close(self):
        """Finish every MP4 (writes its index, so it plays) and the CSV."""
        for writer, _ in self.videos.values():
            writer.release()
        self.videos.clear()
        if self.opened:
            self.csv_file.close()


# ---------------------------------------------------------------- the live window


def check_display():
    """--view-img needs an X display on Linux: fail at start with the fix, not with a Qt abort later."""
    if not sys.platform.startswith("linux"):
        return
    display = os.environ.get("DISPLAY", "")
    if not display:
        raise UserError("--view-img needs a display, but DISPLAY is not set (no desktop session, or ssh without "
                        "-X); run from a desktop, use ssh -X, or drop --view-img and look at the saved results")
    host, _, number = display.rpartition(":")
    if host in ("", "unix") and not Path(f"/tmp/.X11-unix/X{number.split('.')[0]}").exists():
        raise UserError(f"--view-img: DISPLAY={display} but no X server listens there; start one or fix DISPLAY")


class Viewer:
    """OpenCV windows: one per video or stream, one shared by images (which wait for a key)."""

    def __init__(self):
        self.windows = set()

    def window(self, frame, size):
        name = "detect.py" if frame.is_image else f"detect.py {frame.path}"
        if name not in self.windows:
            cv2.namedWindow(name, cv2.WINDOW_NORMAL | cv2.WINDOW_KEEPRATIO | cv2.WINDOW_GUI_NORMAL)
            self.windows.add(name)
            height, width = size
            zoom = max(1.0, MIN_WINDOW_SIDE / max(height, width))
            cv2.resizeWindow(name, round(width * zoom), round(height * zoom))
        return name

    def show(self, frame, annotated, stop_event):
        """Show a frame; False when the user quits (q, Esc or closing the window)."""
        name = self.window(frame, annotated.shape[:2])
        cv2.imshow(name, cv2.cvtColor(annotated, cv2.COLOR_RGB2BGR))
        if frame.is_image:
            cv2.setWindowTitle(name, f"detect.py {frame.path} (any key: next, q: quit)")
        while True:
            key = cv2.waitKey(100 if frame.is_image else 1)
            key = key & 0xFF if key != -1 else -1
            if key in QUIT_KEYS or cv2.getWindowProperty(name, cv2.WND_PROP_VISIBLE) < 1:
                return False
            if not frame.is_image or key != -1 or stop_event.is_set():
                return True

    def close(self):
        cv2.destroyAllWindows()
        cv2.waitKey(1)
