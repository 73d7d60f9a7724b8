"""detect.py on live sources: RTSP, RTMP, HTTP(S) streams that drop and come back, and the webcam."""

import re
import signal
import time
from collections import Counter

import cv2
import pytest

from helpers.cameras import FakeCamera
from helpers.data import video_facts, write_video
from helpers.detect_runs import cli, detect_process, read_rows, run_detect, wait_for_rows, wait_for_stderr
from helpers.servers import RtspServer, wait_until


# ---------------------------------------------------------------- streams


def test_rtsp_stream_with_credentials_masked_everywhere(trained_checkpoint, rtsp_server, tmp_path):
    source = rtsp_server.url.replace("rtsp://", "rtsp://admin:s3cret@")
    result = run_detect("--model", trained_checkpoint, "--source", source, "--max-frames", "8", "--save-video",
                        "--save-dir", tmp_path, "--stream-timeout", "15")
    assert result.returncode == 0, result.stderr
    rows = read_rows(tmp_path)
    assert len(rows) == 8 and {r["source"] for r in rows} == {rtsp_server.url.replace("rtsp://", "rtsp://admin:***@")}
    videos = list(tmp_path.glob("*.mp4"))
    assert [v.name for v in videos] == [f"127.0.0.1_{rtsp_server.port}_test.mp4"]
    frames, fps, width, height = video_facts(videos[0])
    assert (frames, width, height) == (8, 160, 120) and fps == pytest.approx(10, rel=0.25)
    everything = result.stdout + result.stderr + (tmp_path / "results.csv").read_text()
    assert "s3cret" not in everything and "admin:***@" in result.stdout


def test_rtmp_stream_saved_at_its_size_and_fps(trained_checkpoint, rtmp_server, tmp_path):
    out = tmp_path / "out"
    result = run_detect("--model", trained_checkpoint, "--source", rtmp_server.url, "--max-frames", "6",
                        "--save-video", "--save-dir", out, "--stream-timeout", "20")
    assert result.returncode == 0, result.stderr
    rows = read_rows(out)
    assert len(rows) == 6 and {r["source"] for r in rows} == {rtmp_server.url}
    indices = [int(r["frame"]) for r in rows]
    assert all(b > a for a, b in zip(indices, indices[1:]))  # frames received so far: never one twice
    assert all(float(r["largest_polygon_px"]) > 0 for r in rows)  # the two bright blobs are found
    assert sorted(p.name for p in out.iterdir()) == [f"127.0.0.1_{rtmp_server.port}_live_test.mp4", "results.csv"]
    frames, fps, width, height = video_facts(out / f"127.0.0.1_{rtmp_server.port}_live_test.mp4")
    assert (frames, width, height) == (6, 176, 96) and fps == pytest.approx(10, rel=0.2)
    assert re.search(rf"stream {re.escape(rtmp_server.url)}: connected in [\d.]+ s, 176x96 at 10.0 FPS", result.stderr)
    assert re.search(rf"stream {re.escape(rtmp_server.url)} frame \d+ 176x96: [\d.]+ ms", result.stdout)


def test_https_stream_saved_at_its_size(trained_checkpoint, https_mjpeg_server, tmp_path):
    """https:// MJPEG behind a self-signed certificate: an MP4 of the stream's size, one results.csv row a frame."""
    out = tmp_path / "out"
    result = run_detect("--model", trained_checkpoint, "--source", https_mjpeg_server.url, "--max-frames", "6",
                        "--save-video", "--save-dir", out, "--stream-timeout", "10")
    assert result.returncode == 0, result.stderr
    rows = read_rows(out)
    assert len(rows) == 6 and {r["source"] for r in rows} == {https_mjpeg_server.url}
    indices = [int(r["frame"]) for r in rows]
    assert all(b > a for a, b in zip(indices, indices[1:]))
    assert all(float(r["largest_polygon_px"]) > 0 for r in rows)  # the two bright blobs are found
    video = f"127.0.0.1_{https_mjpeg_server.port}_stream.mjpg.mp4"
    assert sorted(p.name for p in out.iterdir()) == [video, "results.csv"]
    frames, fps, width, height = video_facts(out / video)
    assert (frames, width, height) == (6, 192, 128) and fps == pytest.approx(10, rel=0.2)
    assert re.search(rf"stream {re.escape(https_mjpeg_server.url)}: connected in [\d.]+ s, 192x128", result.stderr)


def test_http_stream_survives_restart_and_ends_when_gone(trained_checkpoint, mjpeg_server, tmp_path):
    """Server stopped and restarted mid-run: detection resumes. Stopped for good: clean end, exit 0."""
    out = tmp_path / "out"
    with detect_process("--model", trained_checkpoint, "--source", mjpeg_server.url, "--save-video", "--save-dir",
                        out, "--stream-timeout", "6") as process:
        wait_for_rows(process, out, 5)
        mjpeg_server.prepare()  # booted now: the restart below only binds the port, however busy the machine
        mjpeg_server.stop()
        wait_for_stderr(process, "no frame, reconnecting")  # down until detect.py has seen the stream drop
        mjpeg_server.start()  # same port
        wait_for_stderr(process, "reconnected after")
        rows_after_reconnect = len(read_rows(out))
        wait_until(lambda: len(read_rows(out)) >= rows_after_reconnect + 5, 120,
                   what=lambda: f"detection to resume: {len(read_rows(out))} rows, {rows_after_reconnect} at the "
                                f"reconnection")
        mjpeg_server.stop()
        stopped_at = time.monotonic()
        stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr
    assert time.monotonic() - stopped_at < 6 + 20
    assert "reconnected after" in stderr and "giving up" in stderr
    rows = read_rows(out)
    frames, fps, _, _ = video_facts(out / f"127.0.0.1_{mjpeg_server.port}_stream.mjpg.mp4")
    assert frames == len(rows) and fps == pytest.approx(10, rel=0.2)  # measured: the stream says 25
    assert f"{len(rows)} frame(s)" in stdout.splitlines()[-1]


def test_rtsp_stream_survives_restart_and_ends_when_gone(trained_checkpoint, rtsp_server, tmp_path):
    """The same over RTSP, GStreamer's server stopped and started again on its port: detection resumes.

    Retries come 0.5, 1, 2, then 4 s apart: an 8 s --stream-timeout leaves room for one more try on a busy
    machine. The server is down from the stop until detect.py has seen the drop; its replacement is booted
    beforehand, so coming back takes no longer than binding the port (with a 1.5 s sleep and then a Python
    start, reconnecting took about 5.7 s, close to the last retry)."""
    out = tmp_path / "out"
    with detect_process("--model", trained_checkpoint, "--source", rtsp_server.url, "--save-video", "--save-dir",
                        out, "--stream-timeout", "8") as process:
        wait_for_rows(process, out, 5)
        rtsp_server.prepare()  # booted now: the restart below only binds the port, however busy the machine
        rtsp_server.stop()
        wait_for_stderr(process, "no frame, reconnecting")  # down until detect.py has seen the stream drop
        rtsp_server.start()  # same port
        wait_for_stderr(process, "reconnected after")
        rows_after_reconnect = len(read_rows(out))
        wait_until(lambda: len(read_rows(out)) >= rows_after_reconnect + 5, 120,
                   what=lambda: f"detection to resume: {len(read_rows(out))} rows, {rows_after_reconnect} at the "
                                f"reconnection")
        rtsp_server.stop()
        stopped_at = time.monotonic()
        stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr
    assert time.monotonic() - stopped_at < 8 + 20
    assert re.search(rf"stream {re.escape(rtsp_server.url)}: no frame, reconnecting for up to 8 s", stderr)
    assert "reconnected after" in stderr and "giving up" in stderr
    rows = read_rows(out)
    assert {r["source"] for r in rows} == {rtsp_server.url}
    indices = [int(r["frame"]) for r in rows]
    assert all(b > a for a, b in zip(indices, indices[1:]))  # counting goes on across the reconnect
    frames, fps, width, height = video_facts(out / f"127.0.0.1_{rtsp_server.port}_test.mp4")
    assert (frames, width, height) == (len(rows), 160, 120) and fps == pytest.approx(10, rel=0.25)
    assert f"{len(rows)} frame(s)" in stdout.splitlines()[-1]


def test_three_streams_in_one_run_one_drops_the_others_go_on_and_it_reconnects(trained_checkpoint, rtsp_server,
                                                                                mjpeg_server, tmp_path):
    """Two RTSP streams and an HTTP MJPEG stream in one detect.py, one forward pass over the newest frame of each.
    The second RTSP server is stopped mid-run: the other two keep adding rows while it is down; started again on
    its port, its rows resume. Each stream has its own video and its own name in the source column."""
    second = RtspServer(tmp_path).start()
    try:
        dropped = second.url.replace("rtsp://", "rtsp://admin:s3cret@")
        shown = {rtsp_server.url: rtsp_server.url, dropped: second.url.replace("rtsp://", "rtsp://admin:***@"),
                 mjpeg_server.url: mjpeg_server.url}
        first_url, dropped_url, mjpeg_url = shown.values()
        out = tmp_path / "out"
        with detect_process("--model", trained_checkpoint, "--source", rtsp_server.url, dropped, mjpeg_server.url,
                            "--save-video", "--save-dir", out, "--stream-timeout", "60") as process:
            def rows_of():
                return Counter(row["source"] for row in read_rows(out)) if (out / "results.csv").exists() else {}

            def waiting_for(what):
                return lambda: f"{what}; rows so far {dict(rows_of())}; stderr: {process.output()[1][-2000:]}"

            wait_until(lambda: all(rows_of().get(url, 0) >= 3 for url in shown.values()), 300,
                       what=waiting_for("3 rows of each stream"))
            second.prepare()  # booted now: the restart below only binds the port, however busy the machine
            second.stop()
            wait_for_stderr(process, rf"stream {re.escape(dropped_url)}: no frame, reconnecting")
            at_drop = rows_of()
            # the server stays down until this wait is over: the other two go on without it
            wait_until(lambda: all(rows_of()[url] >= at_drop[url] + 5 for url in (first_url, mjpeg_url)), 120,
                       what=waiting_for(f"5 more rows of the streams still up ({dict(at_drop)} at the drop)"))
            assert "reconnected after" not in process.output()[1]
            second.start()  # same port
            wait_for_stderr(process, rf"stream {re.escape(dropped_url)}: reconnected after")
            at_reconnect = rows_of()
            wait_until(lambda: rows_of()[dropped_url] >= at_reconnect[dropped_url] + 3, 120,
                       what=waiting_for(f"the reconnected stream's rows ({dict(at_reconnect)} at the reconnection)"))
            process.send_signal(signal.SIGTERM)
            stdout, stderr = process.communicate(timeout=120)
    finally:
        second.close()
    assert process.returncode == 130, stderr
    rows = read_rows(out)
    assert {row["source"] for row in rows} == set(shown.values())
    assert "s3cret" not in stdout + stderr + (out / "results.csv").read_text()
    for url, name, size in ((first_url, f"127.0.0.1_{rtsp_server.port}_test.mp4", (160, 120)),
                            (dropped_url, f"127.0.0.1_{second.port}_test.mp4", (160, 120)),
                            (mjpeg_url, f"127.0.0.1_{mjpeg_server.port}_stream.mjpg.mp4", (192, 128))):
        own = [row for row in rows if row["source"] == url]
        indices = [int(row["frame"]) for row in own]
        assert all(b > a for a, b in zip(indices, indices[1:])), (url, indices)  # never a frame twice
        assert {row["video_file"] for row in own} == {name}
        frames, _, width, height = video_facts(out / name)
        assert (frames, (width, height)) == (len(own), size)
    assert sorted(p.name for p in out.iterdir()) == sorted([f"127.0.0.1_{rtsp_server.port}_test.mp4",
                                                           f"127.0.0.1_{second.port}_test.mp4",
                                                           f"127.0.0.1_{mjpeg_server.port}_stream.mjpg.mp4",
                                                           "results.csv"])


def test_several_file_sources_are_named_in_the_source_column(trained_checkpoint, easy_held_out, clip, tmp_path,
                                                              capsys):
    """Files given as several --source values: each row's source is its file's path, as given."""
    image = sorted((easy_held_out / "imgs").iterdir())[0]
    code, stdout, stderr = cli(capsys, "--model", trained_checkpoint, "--source", clip, image, "--save-dir", tmp_path,
                               "--nosave")
    assert code == 0, stderr
    assert Counter(row["source"] for row in read_rows(tmp_path)) == {str(clip): 20, str(image): 1}


def test_webcam_runs_through_the_stream_reader(trained_checkpoint, fake_webcam, tmp_path, capsys):
    """--source 0 with cv2.VideoCapture(0) playing a 5 s clip at 12 FPS, then unplugged: the whole pipeline
    (reader thread, FPS, reconnect attempts, clean end with exit 0) as with a real camera."""
    clip = write_video(tmp_path / "camera.mp4", 60)
    camera = fake_webcam(lambda index: FakeCamera(clip) if not camera.cameras else cv2.VideoCapture())
    out = tmp_path / "out"
    code, stdout, stderr = cli(capsys, "--model", trained_checkpoint, "--source", "0", "--save-video", "--save-dir",
                               out, "--stream-timeout", "2")
    assert code == 0, stderr
    assert "stream 0: connected in" in stderr and "176x96 at 12.0 FPS (reported)" in stderr
    assert "stream 0: no frame, reconnecting for up to 2 s" in stderr and "giving up" in stderr
    rows = read_rows(out)
    indices = [int(r["frame"]) for r in rows]
    assert len(rows) >= 5 and {r["source"] for r in rows} == {"0"}
    assert all(b > a for a, b in zip(indices, indices[1:])) and indices[-1] <= 59  # never a frame twice
    assert sorted(p.name for p in out.iterdir()) == ["results.csv", "webcam0.mp4"]
    assert video_facts(out / "webcam0.mp4") == (len(rows), 12.0, 176, 96)
    assert re.search(r"stream 0 frame \d+ 176x96: [\d.]+ ms", stdout)
    assert f"{len(rows)} frame(s)" in stdout.splitlines()[-1]
    assert len(camera.cameras) >= 2 and camera.cameras[0].reads > 60  # reopened after the unplug
    assert all(not c.isOpened() for c in camera.cameras)  # every capture released


def test_webcam_without_frames_is_a_clear_error_and_writes_nothing(trained_checkpoint, fake_webcam, tmp_path,
                                                                   capsys, monkeypatch):
    """A camera that opens but never delivers a frame; nothing is created, not even the default run folder."""
    camera = fake_webcam(lambda index: FakeCamera(write_video(tmp_path / "any.mp4", 2), frames=False))
    monkeypatch.chdir(tmp_path)  # the default --project, runs/detect, is in the working folder
    started = time.monotonic()
    code, stdout, stderr = cli(capsys, "--model", trained_checkpoint, "--source", "0", "--stream-timeout", "2")
    assert code == 2 and stdout == ""
    assert stderr == "error: webcam 0: could not read a frame within 2 s (--stream-timeout); check that it works " \
                     "and that no other program uses it\n"
    assert time.monotonic() - started < 30
    assert not (tmp_path / "runs").exists()
    assert camera.cameras and all(not c.isOpened() for c in camera.cameras)
    kept = tmp_path / "kept"  # an existing --save-dir stays as it was
    kept.mkdir()
    (kept / "results.csv").write_text("an earlier run's\n")
    code, _, _ = cli(capsys, "--model", trained_checkpoint, "--source", "0", "--stream-timeout", "1", "--save-dir",
                     kept)
    assert code == 2 and [p.name for p in kept.iterdir()] == ["results.csv"]
    assert (kept / "results.csv").read_text() == "an earlier run's\n"


