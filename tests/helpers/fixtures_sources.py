"""Fixtures for live sources: stream servers (MJPEG over HTTP and HTTPS, RTSP, RTMP) started for one test, and a
fake webcam. Tests that use a server are marked `servers` (conftest.py marks them by these fixtures' names)."""

import pytest

from helpers.cameras import CameraCv2
from helpers.servers import MjpegServer, RtmpServer, RtspServer, self_signed_certificate


@pytest.fixture
def mjpeg_server(tmp_path):
    """A running MJPEG server at 10 FPS, 192x128 (its `url`); the test may stop() and start() it."""
    server = MjpegServer(tmp_path).start()
    yield server
    server.close()


@pytest.fixture
def https_mjpeg_server(tmp_path):
    """The same MJPEG stream over HTTPS only, with a self-signed certificate made for this test."""
    server = MjpegServer(tmp_path, certificate=self_signed_certificate(tmp_path)).start()
    yield server
    server.close()


@pytest.fixture
def rtsp_server(tmp_path):
    """A running GStreamer RTSP server (TCP and UDP) at 10 FPS, 160x120."""
    server = RtspServer(tmp_path).start()
    yield server
    server.close()


@pytest.fixture
def rtsp_udp_only_server(tmp_path):
    """An RTSP server that refuses TCP transport (like some cameras)."""
    server = RtspServer(tmp_path, protocols="udp").start()
    yield server
    server.close()


@pytest.fixture
def rtmp_server(tmp_path):
    """A running RTMP server (FFmpeg, H.264) at 10 FPS, 176x96, frames numbered like the MJPEG server's."""
    server = RtmpServer(tmp_path).start()
    yield server
    server.close()


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
