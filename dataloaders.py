"""Where detect.py's pictures come from: the two loaders and the Frame record they yield.

`LoadImages` (image and video files) and `LoadStreams` (RTSP/RTMP/HTTP streams and webcams) yield the
same `Frame` for every source (LoadStreams in groups, one frame per stream: see there), preprocessed by
segtoolkit.data.imaging.preprocess_image, the validation path of training (letterboxed, or stretched to the
patch for a model trained with --resize stretch). Source
detection (`detect_source`, `resolve_sources`) lives in sources.py, pure and tested without a camera, and
is re-exported here.

Usage:
    from dataloaders import resolve_sources, iterate_frames
    files, streams = resolve_sources("data/sample/imgs")
    for frame in iterate_frames(files, streams, patch_size=128):
        print(frame.path, frame.index, frame.count, frame.original.shape)
    for batch in iterate_batches(iterate_frames(files, streams, patch_size=128), 8, limit=100):
        print(len(batch))                       # up to 8 Frames of files per list; a stream's one by one
    for group in iterate_groups(files, streams, patch_size=128, batch_size=8):   # detect.py's: one per forward pass
        print([frame.path for frame in group])  # up to 8 frames of files, or the newest frame of each stream
"""

import os
import sys
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from segtoolkit.data.imaging import Letterbox, preprocess_image, read_image
from segtoolkit.data.imaging import IMAGENET_MEAN, IMAGENET_STD
from segtoolkit.errors import UserError
from segtoolkit.inference.pipeline import Prefetcher
from segtoolkit.data.sources import (VIDEO_SUFFIXES, SourceKind, detect_source, mask_credentials, resolve_sources,
                                     safe_name)

__all__ = ["Frame", "LoadImages", "LoadStreams", "iterate_frames", "iterate_batches", "iterate_groups",
           "RTSP_TRANSPORTS", "SourceKind", "detect_source", "resolve_sources", "mask_credentials", "safe_name"]
RTSP_TRANSPORTS = ("auto", "tcp", "udp")
MAX_STREAM_FPS = 240  # FFmpeg reports the RTP clock or a 90k time base for some streams: not a frame rate
FPS_WARMUP = 0.5
FPS_PROBE_SECONDS = 2.5
FPS_PROBE_FRAMES = 40


@dataclass(frozen=True)
class Frame:
    """One picture to segment, the same record for every kind of source.

    path: the source as shown to the user (credentials masked); image: the preprocessed float32 3xPxP
    tensor (None when the frame is segmented whole by sliding window); original: the frame as uint8 RGB HxWx3;
    capture: the cv2.VideoCapture (None for images);
    index: frame number in the source (0-based; for streams, frames received so far, so gaps show frames
    skipped to stay live); count: frames in the source (1 for images, None for streams); letterbox: how
    `image` was fitted into the patch (None without `image`); fps: the source's frame rate (None for images).
    """
    path: str
    image: torch.Tensor | None
    original: np.ndarray
    capture: object
    index: int
    count: int | None
    letterbox: Letterbox | None
    fps: float | None = None

    @property
    def is_image(self):
        return self.capture is None

    @property
    def is_stream(self):
        return self.count is None


# ---------------------------------------------------------------- images and video files


class LoadImages:
    """Image and video files, in order. Unreadable files are skipped with a warning that names them."""

    def __init__(self, files, patch_size, mean=IMAGENET_MEAN, std=IMAGENET_STD, stretch=False, bit_depth=None):
        self.files = [Path(f) for f in files]
        self.patch_size, self.mean, self.std, self.stretch = patch_size, tuple(mean), tuple(std), stretch
        self.bit_depth = bit_depth  # how 16-bit images are scaled: the model's (segtoolkit.data.imaging)
        self.capture = None

    def __iter__(self):
        for path in self.files:
            if path.suffix.lower() in VIDEO_SUFFIXES:
                yield from self.video_frames(path)
            else:
                yield from self.image_frame(path)

    def frame(self, path, original, capture, index, count, fps=None):
        image, box = preprocessed(original, self.patch_size, self.mean, self.std, self.stretch)
        return Frame(str(path), image, original, capture, index, count, box, fps)

    def image_frame(self, path):
        try:
            original = read_image(path, self.bit_depth)
        except UserError as error:  # one bad file should not end a folder run
            warnings.warn(f"skipping {path}: {detection_reason(error, path)}", stacklevel=3)
            return
        yield self.frame(path, original, None, 0, 1)

    def video_frames(self, path):
        self.capture = cv2.VideoCapture(str(path))
        try:
            if not self.capture.isOpened():
                warnings.warn(f"skipping {path}: video cannot be opened (missing codec or not a video)", stacklevel=3)
                return
            count = int(self.capture.get(cv2.CAP_PROP_FRAME_COUNT))
            fps = self.capture.get(cv2.CAP_PROP_FPS)
            fps = fps if 0 < fps <= 1000 else 25.0
            index = 0
            while True:
                ok, bgr = self.capture.read()
                if not ok:
                    break
                yield self.frame(path, to_rgb(bgr), self.capture, index, max(count, index + 1), fps)
                index += 1
            if index == 0:
                warnings.warn(f"skipping {path}: no frame could be decoded", stacklevel=3)
        finally:
            self.close()

    def close(self):
        if self.capture is not None:
            self.capture.release()
            self.capture = None


def detection_reason(error, path):
    """dataset.py's reading error in detection terms: 'image X cannot be read (...); replace it or remove it
    from the split' -> 'cannot be read (...)'. The path is shown already, and a split is a training thing."""
    parts = [part for part in str(error).split("; ") if "split" not in part]
    reason = "; ".join(parts)
    prefix = f"image {path} "
    return reason[len(prefix):] if reason.startswith(prefix) else reason


def preprocessed(original, patch_size, mean, std, stretch=False):
    """(letterboxed or stretched tensor, Letterbox) of a frame, or (None, None) with no patch size:
    sliding-window inference (detect.py's Segmenter) reads frame.original itself."""
    if patch_size is None:
        return None, None
    return preprocess_image(original, patch_size, mean, std, stretch)


def to_rgb(bgr):
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB) if bgr.ndim == 3 else cv2.cvtColor(bgr, cv2.COLOR_GRAY2RGB)


# ---------------------------------------------------------------- streams and webcams


class StreamReader(threading.Thread):
    """Reads one stream as fast as it delivers and keeps only the newest frame.

    A dropped stream is reopened with exponential backoff; after `timeout` seconds without a frame the
    reader gives up (`finished`). It releases its capture itself, so no other thread touches it mid-read.
    """

    def __init__(self, source, timeout, transport, condition, stop_events):
        super().__init__(daemon=True, name=f"stream {mask_credentials(source)}")
        self.source, self.name_shown = source, mask_credentials(source)
        self.timeout, self.transport = timeout, transport
        self.condition, self.stop_events = condition, stop_events  # the loader's own, then the caller's
        self.capture, self.frame, self.sequence = None, None, -1
        self.fps, self.finished, self.used_transport = None, False, None

    # opening ------------------------------------------------------------
    def open_capture(self, budget):
        """One attempt to open the stream (each RTSP transport in turn for 'auto'); None when it fails."""
        wait_ms = int(max(1.0, min(budget, 10.0)) * 1000)
        if self.source.isdigit():
            capture = cv2.VideoCapture(int(self.source))
            return capture if capture.isOpened() else None
        is_rtsp = self.source.lower().startswith(("rtsp://", "rtsps://"))
        transports = (("tcp", "udp") if self.transport == "auto" else (self.transport,)) if is_rtsp else (None,)
        for transport in transports:
            with FFMPEG_OPTIONS_LOCK:  # the options are a process-wide environment variable read at open
                saved = os.environ.get("OPENCV_FFMPEG_CAPTURE_OPTIONS")
                if transport:
                    os.environ["OPENCV_FFMPEG_CAPTURE_OPTIONS"] = ffmpeg_options(saved, transport)
                try:
                    capture = cv2.VideoCapture(self.source, cv2.CAP_FFMPEG, [
                        cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, wait_ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, wait_ms])
                finally:
                    restore_env("OPENCV_FFMPEG_CAPTURE_OPTIONS", saved)
            if capture.isOpened():
                self.used_transport = transport
                return capture
            capture.release()
        return None

    def connect(self, deadline, first=False):
        """Open with backoff (0.5, 1, 2, 4 s...) until `deadline`; True when a frame was read."""
        delay = 0.5
        while not self.stopping():
            capture = self.open_capture(deadline - time.monotonic())
            if capture is not None:
                ok, bgr = capture.read()
                if ok:
                    self.capture = capture
                    if first:
                        reported = capture.get(cv2.CAP_PROP_FPS)
                        self.fps = reported if 0 < reported <= MAX_STREAM_FPS else None
                    self.store(bgr)
                    return True
                capture.release()
            if time.monotonic() + delay > deadline:
                return False
            self.stop_events[0].wait(delay)
            delay = min(delay * 2, 4.0)
        return False

    def stopping(self):
        return any(event.is_set() for event in self.stop_events)

    # reading ------------------------------------------------------------
    def store(self, bgr):
        with self.condition:
            self.frame = bgr
            self.sequence += 1
            self.condition.notify_all()

    def run(self):
        try:
            last_frame = time.monotonic()
            while not self.stopping():
                ok, bgr = self.capture.read()
                if ok:
                    last_frame = time.monotonic()
                    self.store(bgr)
                    continue
                if self.stopping():
                    break
                self.capture.release()
                print(f"stream {self.name_shown}: no frame, reconnecting for up to "
                      f"{self.timeout:g} s (--stream-timeout)", file=sys.stderr, flush=True)
                if not self.connect(last_frame + self.timeout):
                    if not self.stopping():
                        print(f"stream {self.name_shown}: no frame for {self.timeout:g} s, giving up",
                              file=sys.stderr, flush=True)
                    break
                print(f"stream {self.name_shown}: reconnected after {time.monotonic() - last_frame:.1f} s",
                      file=sys.stderr, flush=True)
                last_frame = time.monotonic()
        finally:
            if self.capture is not None:
                self.capture.release()
            with self.condition:
                self.finished = True
                self.condition.notify_all()

    def measure_fps(self):
        """Frames per second from arrival times, for streams that do not report a (true) frame rate.

        Frames arriving in the first FPS_WARMUP seconds are ignored: right after opening, FFmpeg hands
        over what it buffered while connecting in one burst.
        """
        start = time.monotonic()
        arrivals, seen = [], self.sequence
        with self.condition:
            while time.monotonic() - start < FPS_PROBE_SECONDS and len(arrivals) < FPS_PROBE_FRAMES:
                self.condition.wait(0.1)
                if self.finished:
                    break
                if self.sequence != seen:
                    seen = self.sequence
                    if time.monotonic() - start > FPS_WARMUP:
                        arrivals.append((time.monotonic(), seen))
        if len(arrivals) < 3:
            return 25.0
        (first_time, first), (last_time, last) = arrivals[0], arrivals[-1]
        return (last - first) / (last_time - first_time)


FFMPEG_OPTIONS_LOCK = threading.Lock()


def ffmpeg_options(existing, transport):
    """OPENCV_FFMPEG_CAPTURE_OPTIONS ('key;value|key;value') with rtsp_transport set, other options kept."""
    kept = [item for item in (existing or "").split("|") if item and not item.startswith("rtsp_transport;")]
    return "|".join(kept + [f"rtsp_transport;{transport}"])


def restore_env(key, value):
    if value is None:
        os.environ.pop(key, None)
    else:
        os.environ[key] = value


class LoadStreams:
    """Live sources (RTSP, RTMP, HTTP, webcams): one reader thread each, newest frame only, all connected at once
    (a stream not opened within `timeout` is a UserError, as alone).

    Iteration yields groups, one per forward pass: a list of Frames, the newest unseen frame of every
    stream that has one, in source order (never a frame twice; a stream with nothing new is left out of
    the group, so one that dropped and is reconnecting, or has ended, never holds the others up). It
    waits only while no stream has a new frame, and ends when every stream has ended or `stop_event` is
    set. No window handling here.
    """

    def __init__(self, sources, patch_size, mean=IMAGENET_MEAN, std=IMAGENET_STD, timeout=30.0,
                 rtsp_transport="auto", stop_event=None, stretch=False):
        if rtsp_transport not in RTSP_TRANSPORTS:
            raise UserError(f"--rtsp-transport {rtsp_transport}: choose one of {', '.join(RTSP_TRANSPORTS)}")
        if not timeout > 0:
            raise UserError(f"--stream-timeout {timeout}: must be a positive number of seconds")
        self.patch_size, self.mean, self.std, self.stretch = patch_size, tuple(mean), tuple(std), stretch
        self.condition = threading.Condition()
        self.closing = threading.Event()
        self.stop_event = stop_event or threading.Event()
        self.readers = [StreamReader(str(source), timeout, rtsp_transport, self.condition,
                                     (self.closing, self.stop_event)) for source in sources]
        try:
            self.start_readers(timeout)
        except BaseException:
            self.close()
            raise
        self.consumed = [-1] * len(self.readers)

    def start_readers(self, timeout):
        """Connect every stream at once, so many cameras start in the time of the slowest (each measures its frame
        rate for seconds) rather than of all in turn. When one fails the others stop trying, and the first
        failure in source order is raised."""
        failures = [None] * len(self.readers)

        def start(i):
            try:
                self.start_reader(self.readers[i], timeout)
            except BaseException as error:  # raised below, in the caller's thread
                failures[i] = error
                self.closing.set()
        starters = [threading.Thread(target=start, args=(i,), daemon=True, name=f"connect {reader.name_shown}")
                    for i, reader in enumerate(self.readers)]
        for starter in starters:
            starter.start()
        for starter in starters:
            starter.join()
        failure = next((error for error in failures if error is not None), None)
        if failure is not None:
            raise failure

    def start_reader(self, reader, timeout):
        started = time.monotonic()
        if not reader.connect(started + timeout, first=True):
            if reader.stopping():
                return
            if reader.source.isdigit():
                raise UserError(f"webcam {reader.source}: could not read a frame within {timeout:g} s "
                                f"(--stream-timeout); check that it works and that no other program uses it")
            transport = f" over {reader.transport.upper()}" if reader.transport != "auto" else ""
            raise UserError(f"stream {reader.name_shown}: could not read a frame{transport} within "
                            f"{timeout:g} s (--stream-timeout); check the address, that the server is "
                            f"running{', and --rtsp-transport' if reader.source.lower().startswith('rtsp') else ''}")
        reader.start()
        reported, measured = reader.fps, reader.measure_fps()
        # FFmpeg makes up 25 FPS for formats without timing (MJPEG over HTTP): trust a reported rate only
        # when the frames really arrive at about that rate
        if reported and abs(reported - measured) <= 0.25 * measured:
            how = "reported"
        else:
            reader.fps = round(measured, 2)
            how = f"measured; the stream reports {reported:g}" if reported else "measured"
        height, width = reader.frame.shape[:2]
        over = f" over {reader.used_transport.upper()}" if reader.used_transport else ""
        print(f"stream {reader.name_shown}: connected{over} in {time.monotonic() - started:.1f} s, "
              f"{width}x{height} at {reader.fps:.1f} FPS ({how})", file=sys.stderr, flush=True)

    def __iter__(self):
        return self

    def __next__(self):
        """The next group: a list of Frames, one per stream with a frame not yielded yet."""
        with self.condition:
            while not (self.stop_event.is_set() or self.closing.is_set()):
                taken = newest_unseen(self.readers, self.consumed)
                if taken:
                    break
                if all(reader.finished for reader in self.readers):
                    raise StopIteration
                self.condition.wait(0.2)
            else:
                raise StopIteration
        return [self.frame(*picked) for picked in taken]  # decoded and fitted outside the lock: readers go on

    def frame(self, reader, bgr, index, capture):
        original = to_rgb(bgr)
        image, box = preprocessed(original, self.patch_size, self.mean, self.std, self.stretch)
        return Frame(reader.name_shown, image, original, capture, index, None, box, reader.fps)

    def close(self):
        """Stop the readers; each releases its own capture (waits at most one read timeout)."""
        self.closing.set()
        for reader in self.readers:
            if reader.is_alive():
                reader.join(timeout=12)
            elif reader.capture is not None:
                reader.capture.release()


def newest_unseen(readers, consumed):
    """The grouping rule of LoadStreams: (reader, frame, sequence, capture) of each reader holding a frame newer
    than the one last taken from it (`consumed`, its sequence per reader, updated here), in reader order. Called
    under the readers' lock, so a frame and its sequence number are read together."""
    taken = []
    for i, reader in enumerate(readers):
        if reader.sequence > consumed[i]:
            consumed[i] = reader.sequence
            taken.append((reader, reader.frame, reader.sequence, reader.capture))
    return taken


def iterate_frames(files, streams, patch_size, mean=IMAGENET_MEAN, std=IMAGENET_STD, stream_timeout=30.0,
                   rtsp_transport="auto", stop_event=None, prefetch=0, stretch=False, bit_depth=None):
    """Every Frame of the files, then of the streams; closing the generator releases every capture.
    stretch: resize frames to the patch ignoring their aspect ratio (a model trained with --resize stretch);
    bit_depth: how 16-bit image files are scaled (the model's meta; None: each by its own largest value).

    prefetch > 0 decodes and letterboxes up to that many file frames ahead in a thread, while the caller
    works on the current one (streams are never read ahead: their reader keeps only the newest frame).
    """
    images = LoadImages(files, patch_size, mean, std, stretch, bit_depth)
    ahead = Prefetcher(images, prefetch) if prefetch > 0 and files else None
    try:
        for frame in ahead or images:
            if stop_event is not None and stop_event.is_set():
                return
            yield frame
    finally:
        if ahead is not None:
            ahead.close()  # first: the thread may still be reading from images' capture
        images.close()
    for group in iterate_stream_groups(streams, patch_size, mean, std, stream_timeout, rtsp_transport, stop_event,
                                       stretch):
        yield from group


def iterate_groups(files, streams, patch_size, mean=IMAGENET_MEAN, std=IMAGENET_STD, stream_timeout=30.0,
                   rtsp_transport="auto", stop_event=None, prefetch=0, stretch=False, bit_depth=None, batch_size=1,
                   limit=None, skip=None):
    """What detect.py runs one forward pass over: lists of Frames. The files' frames `batch_size` at a time
    (iterate_batches: `limit` frames at most; frames for which `skip(frame)` is true left out, as --resume-run
    leaves the ones done), then the streams' groups (LoadStreams: the newest unseen frame of every stream that
    has one). The other arguments are iterate_frames'; closing the generator releases every capture."""
    frames = iterate_frames(files, [], patch_size, mean, std, stop_event=stop_event, prefetch=prefetch,
                            stretch=stretch, bit_depth=bit_depth)
    try:
        yield from iterate_batches((frame for frame in frames if not (skip and skip(frame))), batch_size, limit)
    finally:
        frames.close()
    yield from iterate_stream_groups(streams, patch_size, mean, std, stream_timeout, rtsp_transport, stop_event,
                                     stretch)


def iterate_stream_groups(streams, patch_size, mean, std, stream_timeout, rtsp_transport, stop_event, stretch):
    """LoadStreams' groups over `streams` (none without streams, or once stopped); closing releases the captures."""
    if not streams or (stop_event is not None and stop_event.is_set()):
        return
    live = LoadStreams(streams, patch_size, mean, std, stream_timeout, rtsp_transport, stop_event, stretch)
    try:
        yield from live
    finally:
        live.close()


def iterate_batches(frames, size, limit=None):
    """Lists of up to `size` consecutive Frames of `frames` (iterate_frames'), in order and `limit` (None: no
    limit) frames at most in all, so --max-frames is exact whatever the size. File frames (images, video
    frames) are grouped, also across files; a live stream's frame comes alone, as it arrives, since waiting
    for more would make it older. Closing the frames is the caller's."""
    batch, given = [], 0
    for frame in frames:
        if frame.is_stream and batch:
            yield batch
            given, batch = given + len(batch), []
        batch.append(frame)
        if frame.is_stream or len(batch) == size or given + len(batch) == limit:
            yield batch
            given, batch = given + len(batch), []
            if given == limit:
                return  # no frame read past the limit
    if batch:
        yield batch
