"""Where detect.py's results go: results.csv, annotated images and masks, videos, the live window.

Usage:
    from segtoolkit.outputs.detections import ResultWriter, Viewer
    writer = ResultWriter(Path("runs/detect/exp"), class_names=None, save_video=True, increment=True,
                          sources=files)
    writer.check_existing()  # before any work: an existing results.csv must have the same columns
    writer.add(frame, mask, annotated_rgb, inference_ms, largest_polygon_px)   # the first add creates exp, exp2...
    writer.close()   # always: finishes the video files so they play even after Ctrl-C

Output names come from the source names (sources.safe_name: Unicode kept, no path or credentials). Sources
whose stems collide with different extensions keep the extension (odd.avi -> odd.avi.mp4, odd.mp4 ->
odd.mp4.mp4); a name taken in this run or by a file already in the folder gets _2, _3...: nothing is
ever overwritten. results.csv names each row's files (image_file, mask_file, video_file, relative to the
folder; empty when none was written) and, for several classes, each class's pixels (px_<class name>); a
second run into the same --save-dir appends its rows to it.
"""

import contextlib
import csv
import os
import sys
from collections import defaultdict
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np

from segtoolkit.data.imaging import IMAGE_SUFFIXES
from segtoolkit.errors import RunFailure, UserError
from segtoolkit.outputs.files import ends_with_newline, make_run_dir, write_failure, write_mask, write_picture
from segtoolkit.data.classes import class_colours
from segtoolkit.data.sources import VIDEO_SUFFIXES, safe_name

QUIT_KEYS = (ord("q"), ord("Q"), 27)  # 27 = Esc
MIN_WINDOW_SIDE = 480


FILE_COLUMNS = ("image_file", "mask_file", "video_file")


def colliding_stems(sources):
    """Stems (case-folded) shared by sources with different extensions: odd.avi and odd.mp4 are both 'odd'."""
    suffixes = defaultdict(set)
    for source in sources:
        suffixes[safe_name(source).casefold()].add(Path(str(source)).suffix.casefold())
    return {stem for stem, found in suffixes.items() if len(found) > 1}


class Video(NamedTuple):
    writer: cv2.VideoWriter
    size: tuple
    name: str  # relative to save_dir


class NoExports:
    """What ResultWriter writes beside a frame's own files when nothing more is asked: nothing. detect.py's
    --save-json and --save-probs give a segtoolkit.outputs.frame_exports.FrameExports, which has these calls."""
    columns = ()

    def names(self, stem, frame):
        return []

    def open(self, save_dir):
        pass

    def write(self, save_dir, stem, frame, mask, probabilities):
        return {}

    def rollback(self):
        pass

    def close(self):
        pass


class ResultWriter:
    """results.csv (flushed per row), images and masks (unless nosave) and videos (with --save-video), plus
    what `exports` writes (detect.py --save-json, --save-probs).

    Nothing is created before the first frame: a run that never gets one (a stream that cannot be opened)
    leaves no empty folder behind. With `increment`, save_dir names the default run folder and the first
    free one of save_dir, save_dir2... is created then; otherwise save_dir is used as is, and a results.csv
    already there is appended to. `sources` (the files of the run) decides which names keep their extension.
    `colours` (RGB per class) colours the palette masks of several classes; one class writes 0/255 masks.
    A write that fails raises RunFailure after removing that frame's files: each row's files exist.
    `results_name`: results.csv, or a process's part of it under torchrun (segtoolkit.outputs.shards);
    `reusable`: with --resume-run, the files its results.csv names (a file it does not name is a cut-short
    frame's, written again under its name instead of numbered _2).
    """

    def __init__(self, save_dir, class_names=None, save_images=True, save_video=False, increment=False, sources=(),
                 colours=None, exports=None, results_name="results.csv", reusable=None):
        self.save_dir, self.increment, self.results_name = Path(save_dir), increment, results_name
        self.listed = reusable
        self.class_names, self.save_images, self.save_video = class_names, save_images, save_video
        self.colours = (colours or class_colours(len(class_names))) if class_names else None
        self.exports = exports or NoExports()
        self.videos, self.used_stems, self.source_stems = {}, set(), {}
        is_video = [Path(str(source)).suffix.lower() in VIDEO_SUFFIXES for source in sources]
        self.keep_suffix = colliding_stems(source for source, video in zip(sources, is_video)
                                           if (save_video if video else save_images))
        self.csv_file = self.csv = None

    @property
    def opened(self):
        return self.csv_file is not None

    @property
    def header(self):
        # prefixed: a class named foreground or largest_polygon made a second column of that name as <name>_px,
        # and csv.DictReader kept one of the two; no fixed column starts with px_
        classes = [f"px_{name}" for name in (self.class_names or [])[1:]]
        return ["source", "frame", "inference_ms", "batch_size", "largest_polygon_px", "foreground_px", *classes,
                *FILE_COLUMNS, *self.exports.columns]

    def check_existing(self, name=None):
        """True when save_dir holds a results.csv (or `name`) to append to; one with other columns is a UserError
        (call it before any work, so the run stops before anything is written)."""
        path = self.save_dir / (name or self.results_name)
        if self.increment or not path.is_file() or path.stat().st_size == 0:
            return False
        with open(path, newline="", encoding="utf-8", errors="replace") as handle:
            header = next(csv.reader(handle), None)
        if header != self.header:
            raise UserError(f"--save-dir {self.save_dir} holds a results.csv with other columns (another model's "
                            f"classes, an earlier detect.py, or other --save-probs); give another --save-dir")
        return True

    def open(self):
        if self.increment:
            self.save_dir = make_run_dir(self.save_dir)
        else:
            self.save_dir.mkdir(parents=True, exist_ok=True)
        append = self.check_existing()
        path = self.save_dir / self.results_name
        self.csv_file = open(path, "a", newline="", encoding="utf-8")
        self.csv = csv.writer(self.csv_file)
        if not append:
            self.csv.writerow(self.header)
        elif not ends_with_newline(path):  # a row cut off by a crash: start ours on a line of their own
            self.csv_file.write("\r\n")
        self.csv_file.flush()
        self.exports.open(self.save_dir)

    def claim(self, source, names_for):
        """A free stem for a source's output names `names_for(stem)`: its safe name (with its extension where
        stems collide), numbered _2, _3... while the stem is taken in this run or a name exists in save_dir."""
        stem = safe_name(source, keep_suffix=safe_name(source).casefold() in self.keep_suffix)
        candidate, number = stem, 2
        while candidate.casefold() in self.used_stems or any(self.taken(name) for name in names_for(candidate)):
            candidate, number = f"{stem}_{number}", number + 1
        self.used_stems.add(candidate.casefold())  # case-folded: the folder may be copied to a macOS or Windows disk
        return candidate

    def taken(self, name):
        return (self.save_dir / name).exists() and (self.listed is None or name in self.listed)

    def output_names(self, frame, stem):
        """Every file `stem` names for this frame (a video's: for its first frame), relative to save_dir."""
        if frame.is_image:
            own = [image_name(frame, stem), f"masks/{stem}.png"] if self.save_images else []
        else:
            own = [video_name(frame, stem)] if self.save_video else []
        return own + self.exports.names(stem, frame)

    def frame_stem(self, frame):
        """The stem of a frame's file names: claimed for each image, once for a video or stream (its frames
        are numbered after it); None when the frame has no file of its own."""
        if not frame.is_image and frame.path in self.source_stems:
            return self.source_stems[frame.path]
        if not self.output_names(frame, "stem"):
            return None
        stem = self.claim(frame.path, lambda candidate: self.output_names(frame, candidate))
        if not frame.is_image:
            self.source_stems[frame.path] = stem
        return stem

    def add(self, frame, mask, annotated, inference_ms, largest, probabilities=None, batch_size=1):
        """Write one frame's outputs, then its row; `mask` holds class indices at the original size,
        `probabilities` the model's when the exports write them (detect.py --save-probs); inference_ms is the
        time per frame of the forward passes of its batch of batch_size frames (detect.py --batch-size)."""
        try:
            if not self.opened:
                self.open()
            files = self.write_files(frame, mask, annotated, probabilities)
            row = [frame.path, frame.index, f"{inference_ms:.2f}", batch_size, f"{largest:.1f}",
                   int(np.count_nonzero(mask))]
            if self.class_names:
                counts = np.bincount(mask.ravel(), minlength=len(self.class_names))
                row += [int(c) for c in counts[1:len(self.class_names)]]
            try:
                self.csv.writerow(row + list(files.values()))
                self.csv_file.flush()
            except OSError:  # no row: this frame's files must not stay without one
                self.remove(files["image_file"], files["mask_file"])
                self.exports.rollback()
                raise
        except OSError as error:  # full disk, folder removed or made read-only, a file where a folder was
            raise write_failure(error.filename or self.save_dir / self.results_name, error.strerror or error) from None

    def write_files(self, frame, mask, annotated, probabilities):
        """The frame's files, then the exports'; returns results.csv's file columns (names relative to
        save_dir, empty when not written). A failing export removes the frame's image and mask first."""
        files = dict.fromkeys(FILE_COLUMNS + tuple(self.exports.columns), "")
        stem = self.frame_stem(frame)
        if frame.is_image and self.save_images:
            files["image_file"], files["mask_file"] = self.write_image(frame, stem, mask, annotated)
        elif not frame.is_image and self.save_video:
            self.write_video_frame(frame, stem, annotated)
            files["video_file"] = self.videos[frame.path].name
        try:
            files.update(self.exports.write(self.save_dir, stem, frame, mask, probabilities))
        except (OSError, RunFailure):
            self.remove(files["image_file"], files["mask_file"])
            raise
        return files

    def remove(self, *names):
        """Delete files this run wrote (their names were free, so nothing earlier goes)."""
        for name in filter(None, names):
            with contextlib.suppress(OSError):
                (self.save_dir / name).unlink(missing_ok=True)

    def write_image(self, frame, stem, mask, annotated):
        """The annotated image and masks/<stem>.png; returns both names. When either write fails, neither
        file of this frame is left (both names were free, so nothing earlier is removed)."""
        names = (image_name(frame, stem), f"masks/{stem}.png")
        (self.save_dir / "masks").mkdir(exist_ok=True)
        try:
            write_picture(self.save_dir / names[0], cv2.cvtColor(annotated, cv2.COLOR_RGB2BGR))
            write_mask(self.save_dir / names[1], mask, self.colours)
        except RunFailure:
            self.remove(*names)
            raise
        return names

    def write_video_frame(self, frame, stem, annotated):
        height, width = annotated.shape[:2]
        if frame.path not in self.videos:
            self.videos[frame.path] = self.open_video(frame, stem, width, height)
        video = self.videos[frame.path]
        if video.size != (width, height):  # a stream came back at another resolution after a reconnect
            annotated = cv2.resize(annotated, video.size, interpolation=cv2.INTER_AREA)
        video.writer.write(cv2.cvtColor(annotated, cv2.COLOR_RGB2BGR))

    def open_video(self, frame, stem, width, height):
        """An MP4 (mp4v) for even frame sizes; for odd ones MJPEG in .avi by OpenCV's own writer, because
        OpenCV's FFmpeg writer cuts every codec's frames to even sizes (321x241 came back as 320x240)."""
        even = width % 2 == 0 and height % 2 == 0
        name = video_name(frame, stem)
        path, fps = self.save_dir / name, float(frame.fps or 25.0)
        if even:
            writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
        else:
            writer = cv2.VideoWriter(str(path), cv2.CAP_OPENCV_MJPEG, cv2.VideoWriter_fourcc(*"MJPG"), fps,
                                     (width, height))
            writer.set(cv2.VIDEOWRITER_PROP_QUALITY, 95)  # the default 75 smears the thin outlines
        if not writer.isOpened():
            if not os.access(self.save_dir, os.W_OK | os.X_OK):
                raise write_failure(path)
            raise UserError(f"cannot write video {path}: OpenCV has no {'mp4v' if even else 'MJPEG'} encoder here; "
                            f"drop --save-video")
        return Video(writer, (width, height), name)

    def close(self):
        """Finish every video (writes its index, so it plays) and the CSV."""
        for video in self.videos.values():
            video.writer.release()
        self.videos.clear()
        if self.opened:
            # after a failed row its rest may still be buffered; that failure is being reported already
            with contextlib.suppress(OSError):
                self.csv_file.close()
        self.exports.close()


def image_name(frame, stem):
    """The annotated image's name: the source's suffix when it is an image suffix, else .png."""
    suffix = Path(frame.path).suffix.lower()
    return f"{stem}{suffix if suffix in IMAGE_SUFFIXES else '.png'}"


def video_name(frame, stem):
    """A video's name: .mp4 for even frame sizes, .avi (MJPEG) for odd ones (see ResultWriter.open_video)."""
    height, width = frame.original.shape[:2]
    return f"{stem}{'.mp4' if width % 2 == 0 and height % 2 == 0 else '.avi'}"


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
    """OpenCV windows: one per video or stream, one shared by images (which wait for a key).

    On an X server without a window manager (bare Xvfb) a new Qt window sometimes never shows a frame:
    Qt misses the window's first expose and draws nothing until it is mapped again. In a probe on a loaded
    2-core machine 13 of 44 cv2 windows stayed black for 5 s and more on bare Xvfb (unmapping and mapping
    them again, or a new window, showed the frame at once; setting the size again did not), 0 of 21 with
    openbox running. Desktops have a window manager; the tests run one on their Xvfb
    (tests/helpers/fixtures_display.py)."""

    def __init__(self):
        self.windows = set()

    def window(self, frame, size):
        name = "detect.py" if frame.is_image else f"detect.py {frame.path}"
        if name not in self.windows:
            cv2.namedWindow(name, cv2.WINDOW_NORMAL | cv2.WINDOW_KEEPRATIO | cv2.WINDOW_GUI_NORMAL)
            height, width = size
            zoom = max(1.0, MIN_WINDOW_SIDE / max(height, width))
            cv2.resizeWindow(name, round(width * zoom), round(height * zoom))
            self.windows.add(name)
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
