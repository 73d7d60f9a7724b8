"""Source detection (pure), LoadImages on every file kind, LoadStreams against real RTSP and HTTP servers."""

import re
import ssl
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import dataloaders
from dataloaders import Frame, LoadImages, LoadStreams, ffmpeg_options, iterate_frames, newest_unseen
from helpers.cameras import FakeCamera
from helpers.data import write_video
from helpers.mjpeg_server import frame_number
from segtoolkit.errors import UserError
from helpers.servers import MjpegServer, free_port, wait_until
from segtoolkit.data.sources import (SourceKind, check_webcam, detect_source, mask_credentials, resolve_sources,
                                     safe_name)


@pytest.fixture
def media(tmp_path):
    """A folder with images of every kind (gray, 16-bit, RGBA, JPEG, non-square), a video and a note."""
    folder = tmp_path / "media"
    folder.mkdir()
    rng = np.random.default_rng(0)
    cv2.imwrite(str(folder / "a_colour.png"), rng.integers(0, 255, (90, 200, 3), dtype=np.uint8))
    cv2.imwrite(str(folder / "b_gray.png"), rng.integers(0, 255, (150, 70), dtype=np.uint8))
    cv2.imwrite(str(folder / "c_16bit.png"), rng.integers(0, 65535, (64, 96), dtype=np.uint16))
    cv2.imwrite(str(folder / "d_rgba.png"), rng.integers(0, 255, (40, 50, 4), dtype=np.uint8))
    cv2.imwrite(str(folder / "e_photo.JPG"), rng.integers(0, 255, (120, 160, 3), dtype=np.uint8))
    write_video(folder / "f_clip.mp4", 6)
    (folder / "notes.md").write_text("not a picture")
    return folder


# ---------------------------------------------------------------- detect_source / resolve_sources


def test_detect_source_kinds(media, tmp_path):
    (tmp_path / "list.txt").write_text("media/a_colour.png\n")
    assert detect_source(media / "a_colour.png") == SourceKind.IMAGE
    assert detect_source(str(media / "e_photo.JPG")) == SourceKind.IMAGE
    assert detect_source(media / "f_clip.mp4") == SourceKind.VIDEO
    assert detect_source(media) == SourceKind.FOLDER
    assert detect_source(f"{media}/*.png") == SourceKind.GLOB
    assert detect_source(tmp_path / "list.txt") == SourceKind.LIST
    assert detect_source("rtsp://user:pw@10.0.0.5:554/live") == SourceKind.RTSP
    assert detect_source("RTSP://cam/live") == SourceKind.RTSP
    assert detect_source("rtmp://server/app/key") == SourceKind.RTMP
    assert detect_source("http://127.0.0.1:8080/video.mjpg") == SourceKind.HTTP
    assert detect_source("https://example.com/live.m3u8") == SourceKind.HTTP
    assert detect_source("0") == SourceKind.WEBCAM
    assert detect_source(" 2 ") == SourceKind.WEBCAM
    assert SourceKind.WEBCAM.is_stream and SourceKind.HTTP.is_stream and not SourceKind.FOLDER.is_stream


@pytest.mark.parametrize("source, message", [
    ("missing.png", "no such file or folder"),
    ("media/notes.md", "neither an image"),
    ("ftp://host/video.mp4", "unsupported scheme"),
])
def test_detect_source_errors_are_clear(media, tmp_path, monkeypatch, source, message):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match=message):
        detect_source(source)


def test_resolve_folder_glob_and_list(media, tmp_path):
    files, streams = resolve_sources(media)
    assert [f.name for f in files] == ["a_colour.png", "b_gray.png", "c_16bit.png", "d_rgba.png", "e_photo.JPG",
                                       "f_clip.mp4"] and streams == []
    files, _ = resolve_sources(str(tmp_path / "**" / "*.png"))
    assert [f.name for f in files] == ["a_colour.png", "b_gray.png", "c_16bit.png", "d_rgba.png"]
    listing = tmp_path / "sources.txt"
    listing.write_text(f"# comment\nmedia/a_colour.png\n\n{media / 'f_clip.mp4'}\nrtsp://u:p@cam/live\nmedia/*.JPG\n")
    files, streams = resolve_sources(listing)
    assert [f.name for f in files] == ["a_colour.png", "f_clip.mp4", "e_photo.JPG"]
    assert streams == ["rtsp://u:p@cam/live"]


def test_several_sources_are_expanded_in_turn_and_a_stream_given_twice_is_refused(media, tmp_path):
    """--source given several values (detect.py keeps one value a string, several a tuple)."""
    import detect
    assert detect.parse_args(["--model", "m.pth.tar", "--source", "a.png"]).source == "a.png"
    assert detect.parse_args(["--model", "m", "--source", "a.png", "rtsp://cam/1"]).source == ("a.png", "rtsp://cam/1")
    files, streams = resolve_sources([str(media / "f_clip.mp4"), "rtsp://u:p@cam1/live", str(media / "a_colour.png")])
    assert [f.name for f in files] == ["f_clip.mp4", "a_colour.png"] and streams == ["rtsp://u:p@cam1/live"]
    listing = tmp_path / "cams.txt"
    listing.write_text("http://cam2.local/video.mjpg\nrtsp://cam3/live\n")
    assert resolve_sources(("rtsp://cam1/live", listing)) == ([], ["rtsp://cam1/live", "http://cam2.local/video.mjpg",
                                                                  "rtsp://cam3/live"])
    with pytest.raises(UserError, match=r"the stream rtsp://admin:\*\*\*@cam1/live is given twice"):
        resolve_sources(["rtsp://admin:one@cam1/live", "rtsp://admin:two@cam1/live"])  # one name: rows, video, window
    with pytest.raises(UserError, match="the stream rtsp://cam3/live is given twice"):
        resolve_sources(["rtsp://cam3/live", listing])


def test_resolve_reports_every_problem_before_any_work(media, tmp_path):
    listing = tmp_path / "sources.txt"
    listing.write_text("media/a_colour.png\nmedia/gone.png\nmedia/*.tif\n")
    with pytest.raises(UserError, match=r"2 bad line\(s\).*gone.png.*\*\.tif"):
        resolve_sources(listing)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="holds no images"):
        resolve_sources(empty)
    with pytest.raises(UserError, match="holds no images"):
        resolve_sources(str(tmp_path / "*.bmp"))


def test_existing_paths_are_literal_only_missing_ones_are_globs(tmp_path):
    """'img[1].png' names that file when it exists, even with img1.png (which the glob matches) beside it;
    a folder named 'shots [2024]' is a folder, and a glob inside it treats the folder's name literally."""
    pixels = np.zeros((8, 8, 3), np.uint8)
    for name in ("img[1].png", "img1.png", "shots [2024]/a.png", "shots [2024]/b.png", "shots 2/c.png"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        cv2.imwrite(str(tmp_path / name), pixels)
    literal = tmp_path / "img[1].png"
    assert detect_source(literal) == SourceKind.IMAGE
    assert resolve_sources(str(literal)) == ([literal], [])
    folder = tmp_path / "shots [2024]"
    assert detect_source(folder) == SourceKind.FOLDER
    assert [f.name for f in resolve_sources(str(folder))[0]] == ["a.png", "b.png"]
    assert [f.name for f in resolve_sources(f"{folder}/*.png")[0]] == ["a.png", "b.png"]
    assert [f.name for f in resolve_sources(str(tmp_path / "img[0-9].png"))[0]] == ["img1.png"]  # not a path: a glob
    listing = tmp_path / "list.txt"
    listing.write_text("img[1].png\nshots [2024]\n")
    assert resolve_sources(listing)[0] == [literal, folder / "a.png", folder / "b.png"]


def test_webcam_needs_its_device(tmp_path):
    with pytest.raises(UserError, match=r"video0 does not exist.*no camera is connected"):
        check_webcam(0, device_dir=tmp_path)
    (tmp_path / "video0").touch()
    check_webcam(0, device_dir=tmp_path)
    with pytest.raises(UserError, match=r"video1 does not exist.*cameras present: video0"):
        check_webcam(1, device_dir=tmp_path)
    if not Path("/dev/video0").exists():
        with pytest.raises(UserError, match="/dev/video0 does not exist"):
            resolve_sources("0")


@pytest.mark.parametrize("source, shown", [
    ("rtsp://admin:s3cret@10.0.0.5:554/live", "rtsp://admin:***@10.0.0.5:554/live"),
    ("rtsp://token@cam/live", "rtsp://***@cam/live"),
    ("http://cam/video.cgi?user=admin&pwd=s3cret&res=hd", "http://cam/video.cgi?user=admin&pwd=***&res=hd"),
    ("https://host/live?token=abc", "https://host/live?token=***"),
    ("rtsp://cam.local/live", "rtsp://cam.local/live"),
    ("data/imgs/a.png", "data/imgs/a.png"),
])
def test_mask_credentials(source, shown):
    assert mask_credentials(source) == shown


@pytest.mark.parametrize("source, name", [
    ("rtsp://admin:s3cret@10.0.0.5:554/live/ch1", "10.0.0.5_554_live_ch1"),
    ("data/imgs/sample 01.png", "sample 01"),
    ("data/imgs/日本.png", "日本"),
    ("data/imgs/café ñ (2).JPG", "café ñ (2)"),
    ("data/imgs/img[1].png", "img[1]"),
    ("data/a\x1b[2Jb\nc.png", "a_[2Jb_c"),
    ("data/a\\b:c*d?.png", "a_b_c_d_"),
    ("../../etc/passwd", "passwd"),
    ("..", "source"),
    ("data/.hidden.png", "hidden"),
    ("data/...x.png", "x"),
    ("3", "webcam3"),
])
def test_safe_name_has_no_path_or_secret(source, name):
    """Unicode, spaces and brackets stay; only separators, control characters and the characters Windows
    refuses (<>:"|?*) become '_'; never '..' nor a leading dot (a hidden file)."""
    assert safe_name(source) == name


def test_safe_name_keeps_the_suffix_when_asked_and_fits_a_file_name():
    assert safe_name("clips/odd.avi", keep_suffix=True) == "odd.avi"
    assert safe_name("rtsp://u:p@cam/live", keep_suffix=True) == "cam_live"
    long_name = safe_name("日本" * 200 + ".png")
    assert long_name.startswith("日本") and len(long_name.encode()) <= 150  # room for '_2' and suffixes: <= 255


def test_ffmpeg_options_keep_the_users_and_set_the_transport():
    assert ffmpeg_options(None, "tcp") == "rtsp_transport;tcp"
    assert ffmpeg_options("stimeout;5000000|rtsp_transport;tcp", "udp") == "stimeout;5000000|rtsp_transport;udp"


# ---------------------------------------------------------------- LoadImages


def test_load_images_yields_one_record_per_frame(media, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    files, _ = resolve_sources(media)
    with pytest.warns(UserWarning, match="skipping .*broken.png"):
        frames = list(LoadImages([broken] + files, patch_size=64))
    assert all(isinstance(f, Frame) for f in frames)
    images, video = frames[:5], frames[5:]
    assert [f.original.shape for f in images] == [(90, 200, 3), (150, 70, 3), (64, 96, 3), (40, 50, 3), (120, 160, 3)]
    for frame in frames:
        assert frame.image.shape == (3, 64, 64) and frame.image.dtype == torch.float32
        assert frame.original.dtype == np.uint8
        box = frame.letterbox
        assert (box.height, box.width) == frame.original.shape[:2] and max(box.scaled_height, box.scaled_width) == 64
    assert all(f.is_image and f.capture is None and (f.index, f.count) == (0, 1) for f in images)
    assert [f.index for f in video] == list(range(6)) and {f.count for f in video} == {6}
    assert all(not f.is_image and not f.is_stream and f.fps == pytest.approx(12.0) for f in video)
    assert frame_number(video[4].original) == 4  # decoded in order, as RGB


def test_iterate_frames_releases_video_when_closed_early(media):
    frames = iterate_frames([media / "f_clip.mp4"], [], patch_size=64)
    first = next(frames)
    assert first.capture.isOpened()
    frames.close()
    assert not first.capture.isOpened()


# ---------------------------------------------------------------- LoadStreams against real servers


def wait_for_newer_frames(loader, frame, count=2, timeout=60):
    """Be a consumer slower than the stream: return once `count` frames newer than `frame` have reached its
    reader. A fixed sleep would assume the stream's pace, which a busy machine does not keep."""
    reader = next(r for r in loader.readers if r.name_shown == frame.path)
    wait_until(lambda: reader.sequence >= frame.index + count or reader.finished, timeout,
               what=lambda: f"{count} frames after frame {frame.index} of {frame.path} (reader at {reader.sequence})")


def test_http_stream_newest_frame_only(mjpeg_server):
    """A slow consumer gets the newest frame each time: never a frame twice, no lag building up."""
    caller_stop = threading.Event()
    loader = LoadStreams([mjpeg_server.url], patch_size=64, timeout=10, stop_event=caller_stop)
    try:
        numbers, frames = [], []
        for [frame] in loader:  # one stream: groups of one frame
            numbers.append(frame_number(frame.original))
            frames.append(frame)
            wait_for_newer_frames(loader, frame)  # slower than the 10 FPS stream
            if len(numbers) == 6:
                break
    finally:
        loader.close()
    assert all(b > a for a, b in zip(numbers, numbers[1:])), numbers
    assert max(b - a for a, b in zip(numbers, numbers[1:])) >= 2, f"frames were queued, not dropped: {numbers}"
    assert all(b.index > a.index for a, b in zip(frames, frames[1:]))
    frame = frames[-1]
    assert frame.is_stream and frame.count is None and frame.original.shape == (128, 192, 3)
    assert frame.fps == pytest.approx(10, rel=0.2)  # FFmpeg reports 25 for MJPEG: measured instead
    assert not frame.capture.isOpened()  # released by close()
    assert not caller_stop.is_set()  # closing is not a stop request from the caller


def test_https_stream_with_self_signed_certificate(https_mjpeg_server):
    """https:// MJPEG from a server that speaks only TLS, with a certificate no authority signed (as IP
    cameras ship): read like http://, newest frame only. OpenCV's FFmpeg does not verify the peer by default."""
    served = ssl.get_server_certificate(("127.0.0.1", https_mjpeg_server.port))
    ours = https_mjpeg_server.certificate[0].read_text()
    assert ssl.PEM_cert_to_DER_cert(served) == ssl.PEM_cert_to_DER_cert(ours)  # really TLS, with that certificate
    loader = LoadStreams([https_mjpeg_server.url], patch_size=64, timeout=10)
    try:
        frames = []
        for [frame] in loader:
            frames.append(frame)
            wait_for_newer_frames(loader, frame)  # slower than the 10 FPS stream
            if len(frames) == 5:
                break
    finally:
        loader.close()
    numbers = [frame_number(f.original) for f in frames]
    assert all(b > a for a, b in zip(numbers, numbers[1:])), numbers
    assert max(b - a for a, b in zip(numbers, numbers[1:])) >= 2, f"frames were queued, not dropped: {numbers}"
    assert [f.original.shape for f in frames] == [(128, 192, 3)] * 5 and all(f.is_stream for f in frames)
    assert frames[0].path == https_mjpeg_server.url and frames[0].fps == pytest.approx(10, rel=0.2)
    assert not frames[0].capture.isOpened()


def test_rtsp_stream_over_tcp(rtsp_server):
    loader = LoadStreams([rtsp_server.url], patch_size=64, timeout=10)
    try:
        frames = [frame for _ in range(3) for frame in next(loader)]
    finally:
        loader.close()
    assert loader.readers[0].used_transport == "tcp"
    assert [f.original.shape for f in frames] == [(120, 160, 3)] * 3
    assert frames[0].fps == pytest.approx(10, rel=0.25)
    assert len({f.index for f in frames}) == 3


def test_rtmp_stream_newest_frame_only(rtmp_server):
    """RTMP through FFmpeg (a real RTMP server on loopback): the frames in order, never one twice, at their size."""
    loader = LoadStreams([rtmp_server.url], patch_size=64, timeout=20)
    try:
        frames = []
        for [frame] in loader:
            frames.append(frame)
            wait_for_newer_frames(loader, frame)  # slower than the 10 FPS stream
            if len(frames) == 5:
                break
    finally:
        loader.close()
    numbers = [frame_number(f.original) for f in frames]
    assert all(b > a for a, b in zip(numbers, numbers[1:])), numbers
    assert max(b - a for a, b in zip(numbers, numbers[1:])) >= 2, f"frames were queued, not dropped: {numbers}"
    assert [f.original.shape for f in frames] == [(96, 176, 3)] * 5 and all(f.is_stream for f in frames)
    assert frames[0].fps == pytest.approx(10, rel=0.2) and frames[0].path == rtmp_server.url
    assert loader.readers[0].used_transport is None  # the RTSP transport choice is not applied to RTMP
    assert not frames[0].capture.isOpened()


def test_webcam_newest_frame_only(fake_webcam, tmp_path):
    """A webcam index goes through the same reader thread: cv2.VideoCapture(0) here plays a clip at 12 FPS."""
    camera = fake_webcam(lambda index: FakeCamera(write_video(tmp_path / "camera.mp4", 120)))
    loader = LoadStreams(["0"], patch_size=64, timeout=5)
    try:
        frames = []
        for [frame] in loader:
            frames.append(frame)
            wait_for_newer_frames(loader, frame)  # slower than the camera
            if len(frames) == 5:
                break
    finally:
        loader.close()
    numbers = [frame_number(f.original) for f in frames]
    assert all(b > a for a, b in zip(numbers, numbers[1:])), numbers
    assert max(b - a for a, b in zip(numbers, numbers[1:])) >= 2, f"frames were queued, not dropped: {numbers}"
    assert [f.index for f in frames] == numbers  # index: frames the camera delivered so far
    assert [f.original.shape for f in frames] == [(96, 176, 3)] * 5 and frames[0].fps == pytest.approx(12.0)
    assert frames[0].path == "0" and frames[0].is_stream and frames[0].capture is camera.cameras[0]
    assert len(camera.cameras) == 1 and not camera.cameras[0].isOpened()  # released by close()


def test_rtsp_falls_back_to_udp(rtsp_udp_only_server, capfd):
    loader = LoadStreams([rtsp_udp_only_server.url], patch_size=64, timeout=10)
    try:
        [frame] = next(loader)
    finally:
        loader.close()
    assert loader.readers[0].used_transport == "udp" and frame.original.shape == (120, 160, 3)
    assert "connected over UDP" in capfd.readouterr().err
    started = time.monotonic()
    with pytest.raises(UserError, match=r"over TCP within 2 s.*--rtsp-transport"):
        LoadStreams([rtsp_udp_only_server.url], patch_size=64, timeout=2, rtsp_transport="tcp")
    assert time.monotonic() - started < 20  # bounded by the timeout, not by FFmpeg's 30 s default


def test_unreachable_stream_is_a_clear_error_within_timeout():
    started = time.monotonic()
    with pytest.raises(UserError, match=r"stream http://127.0.0.1:\d+/x: could not read a frame within 2 s"):
        LoadStreams([f"http://127.0.0.1:{free_port()}/x"], patch_size=64, timeout=2)
    assert time.monotonic() - started < 15


def test_one_unreachable_stream_among_several_is_the_error_and_the_others_are_closed(mjpeg_server, rtsp_server):
    """Streams connect at once; one that cannot be opened is the error (as alone), the others stop and release."""
    unreachable = f"http://127.0.0.1:{free_port()}/x"
    created = []
    real_reader = dataloaders.StreamReader

    def recording_reader(*args):
        created.append(real_reader(*args))
        return created[-1]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(dataloaders, "StreamReader", recording_reader)
        with pytest.raises(UserError, match=rf"stream {re.escape(unreachable)}: could not read a frame within 2 s"):
            LoadStreams([mjpeg_server.url, unreachable, rtsp_server.url], patch_size=64, timeout=2)
    assert len(created) == 3 and not any(reader.is_alive() for reader in created)
    assert all(reader.capture is None or not reader.capture.isOpened() for reader in created)


def test_stream_reconnects_after_server_restart_then_ends(mjpeg_server, tmp_path, capfd):
    """The server is down from the stop until the reader has seen the drop; its replacement is booted
    beforehand, so coming back takes no longer than binding the port (a Python start importing cv2 could
    outlast the reader's retries, at 0.5, 1.5 and 3.5 s within the 6 s, on a busy machine)."""
    printed = []

    def printed_so_far():
        printed.append(capfd.readouterr().err)
        return "".join(printed)
    loader = LoadStreams([mjpeg_server.url], patch_size=64, timeout=6)
    restarted = MjpegServer(tmp_path, port=mjpeg_server.port, start_number=5000)
    try:
        before = frame_number(next(loader)[0].original)
        restarted.prepare()
        mjpeg_server.stop()
        wait_until(lambda: "no frame, reconnecting" in printed_so_far(), 60,
                   what=lambda: f"the reader to see the stream drop; stderr: {printed_so_far()[-2000:]}")
        restarted.start()
        try:
            after = []
            for [frame] in loader:  # frames left over from before the drop come first, then the new server's
                after.append(frame_number(frame.original))
                if after[-1] >= 5000:
                    break
        finally:
            restarted.close()
        started = time.monotonic()
        rest = list(loader)  # the server never comes back: the loader ends by itself
        ended = time.monotonic() - started
    finally:
        loader.close()
        restarted.close()
    assert before < 5000 <= after[-1]
    assert ended < 6 + 10 and len(rest) < 20
    assert not loader.readers[0].is_alive()


def test_two_streams_come_in_groups(rtsp_server, mjpeg_server):
    """A .txt list may hold several streams: each has its reader, and each group holds the newest unseen frame of
    every stream that has one, in source order."""
    loader = LoadStreams([rtsp_server.url, mjpeg_server.url], patch_size=64, timeout=10)
    try:
        groups = []
        for group in loader:
            groups.append(group)
            # slower than both 10 FPS streams, so each has a new frame every time
            wait_until(lambda: all(r.sequence > seen for r, seen in zip(loader.readers, loader.consumed)), 60,
                       what=lambda: f"a new frame from each stream (readers at "
                                    f"{[r.sequence for r in loader.readers]}, consumed {loader.consumed})")
            if len(groups) == 3:
                break
    finally:
        loader.close()
    assert [[f.path for f in group] for group in groups[1:]] == [[rtsp_server.url, mjpeg_server.url]] * 2
    assert all([f.original.shape[:2] for f in group] == [(120, 160), (128, 192)] for group in groups[1:])
    for stream in range(2):
        indices = [group[stream].index for group in groups[1:]]
        assert indices[1] > indices[0]  # never a frame twice
    assert not any(reader.is_alive() for reader in loader.readers)


# ---------------------------------------------------------------- LoadStreams' groups, without a network


class FakeReader:
    """What newest_unseen reads of a StreamReader: its newest frame and how many it has received."""

    def __init__(self):
        self.sequence, self.frame, self.capture = -1, None, None

    def deliver(self, frame):
        self.frame, self.sequence = frame, self.sequence + 1


def test_a_group_takes_the_newest_unseen_frame_of_each_stream_and_never_one_twice():
    readers = [FakeReader(), FakeReader(), FakeReader()]
    consumed = [-1, -1, -1]
    assert newest_unseen(readers, consumed) == []  # nothing received yet
    readers[0].deliver("a0")
    readers[2].deliver("c0")
    readers[2].deliver("c1")  # arrived before the next forward pass: c0 is skipped, not queued
    assert [(frame, index) for _, frame, index, _ in newest_unseen(readers, consumed)] == [("a0", 0), ("c1", 1)]
    assert newest_unseen(readers, consumed) == []  # no frame twice
    readers[1].deliver("b0")  # a stream that came late (or came back) joins the next group alone
    assert [(reader, frame) for reader, frame, _, _ in newest_unseen(readers, consumed)] == [(readers[1], "b0")]
    for reader, frame in zip(readers, ("a1", "b1", "c2")):
        reader.deliver(frame)
    assert [frame for _, frame, _, _ in newest_unseen(readers, consumed)] == ["a1", "b1", "c2"]  # source order
    assert consumed == [1, 1, 2]


def test_a_stream_that_ends_leaves_the_groups_and_the_others_go_on(fake_webcam, tmp_path):
    """Two webcams (cv2.VideoCapture(0) and (1) play clips at 12 FPS): camera 1 is unplugged after 2 s and never
    comes back; the groups go on with camera 0 alone, each frame once."""
    (tmp_path / "dev" / "video1").touch()
    clips = {0: write_video(tmp_path / "long.mp4", 240), 1: write_video(tmp_path / "short.mp4", 24)}
    opened = set()

    def open_camera(index):  # each camera plays its clip once; reopened, it delivers nothing (unplugged)
        first = index not in opened
        opened.add(index)
        return FakeCamera(clips[index]) if first else cv2.VideoCapture()
    fake_webcam(open_camera)
    loader = LoadStreams(["0", "1"], patch_size=64, timeout=1)
    try:
        groups = []
        for group in loader:
            groups.append([(frame.path, frame.index, frame_number(frame.original)) for frame in group])
            if loader.readers[1].finished and len(groups) > 5 and [path for path, _, _ in groups[-1]] == ["0"]:
                break
            wait_until(lambda: loader.readers[0].sequence > loader.consumed[0], 60, what="camera 0's next frame")
    finally:
        loader.close()
    paths = [[path for path, _, _ in group] for group in groups]
    assert ["0", "1"] in paths and paths[-1] == ["0"]
    for source in ("0", "1"):
        numbers = [number for group in groups for path, _, number in group if path == source]
        assert all(b > a for a, b in zip(numbers, numbers[1:])), numbers  # never a frame twice
    assert not any(reader.is_alive() for reader in loader.readers)
