"""Real servers for the stream and window tests, started and stopped by the tests themselves.

- an RTSP server (GStreamer's, tests/rtsp_server.py, run by Debian's /usr/bin/python3 with python3-gi)
- an HTTP MJPEG server (tests/mjpeg_server.py), also over HTTPS with a self-signed certificate made by
  the `openssl` command at test time
- an RTMP server (FFmpeg in listen mode, tests/rtmp_server.py)
- an X server (Xvfb) for --view-img

All listen on 127.0.0.1 (Xvfb on a local socket only), pick free ports or displays themselves, wait for
readiness with a deadline and are stopped (then killed) at the end of the test.
"""

import os
import select
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
SYSTEM_PYTHON = "/usr/bin/python3"  # Debian's, which has the gi bindings for GStreamer


def free_port():
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until(condition, timeout, interval=0.1):
    """Poll `condition` until it returns something true or `timeout` seconds pass; return its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


class ServerProcess:
    """A child process that prints 'ready' once it serves; start() waits for that line."""

    def __init__(self, command, log_path):
        self.command, self.log_path, self.process = command, Path(log_path), None

    def start(self, timeout=60):  # a fresh machine builds its GStreamer plugin registry on first use
        self.log = open(self.log_path, "a")
        self.process = subprocess.Popen(self.command, stdout=subprocess.PIPE, stderr=self.log, text=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.process.stdout], [], [], 0.2)
            if ready and "ready" in self.process.stdout.readline():
                return self
            if self.process.poll() is not None:
                break
        self.stop()
        raise RuntimeError(f"{' '.join(map(str, self.command))} did not start; log: {self.log_path.read_text()[-2000:]}")

    def stop(self):
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        if self.process is not None:
            self.process.stdout.close()
            self.log.close()
        self.process = None


def self_signed_certificate(folder):
    """(certificate, key) PEM files for 127.0.0.1, signed by themselves, valid for a day."""
    certificate, key = Path(folder) / "cert.pem", Path(folder) / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", str(key), "-out", str(certificate), "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True, timeout=30)
    return certificate, key


class MjpegServer(ServerProcess):
    """certificate=(cert.pem, key.pem): HTTPS only, at an https:// url."""

    def __init__(self, log_dir, port=None, fps=10, width=192, height=128, start_number=0, certificate=None):
        self.port, self.certificate = port or free_port(), certificate
        tls = ["--certfile", str(certificate[0]), "--keyfile", str(certificate[1])] if certificate else []
        self.url = f"{'https' if certificate else 'http'}://127.0.0.1:{self.port}/stream.mjpg"
        super().__init__([sys.executable, str(TESTS / "mjpeg_server.py"), "--port", str(self.port), "--fps", str(fps),
                          "--width", str(width), "--height", str(height), "--start", str(start_number), *tls],
                         Path(log_dir) / f"mjpeg-{self.port}.log")


class RtspServer(ServerProcess):
    def __init__(self, log_dir, port=None, protocols="tcp,udp", fps=10, width=160, height=120):
        self.port = port or free_port()
        self.url = f"rtsp://127.0.0.1:{self.port}/test"
        super().__init__([SYSTEM_PYTHON, str(TESTS / "rtsp_server.py"), "--port", str(self.port), "--protocols",
                          protocols, "--fps", str(fps), "--width", str(width), "--height", str(height)],
                         Path(log_dir) / f"rtsp-{self.port}.log")


class RtmpServer(ServerProcess):
    def __init__(self, log_dir, port=None, fps=10, width=176, height=96):
        self.port = port or free_port()
        self.url = f"rtmp://127.0.0.1:{self.port}/live/test"
        super().__init__([sys.executable, str(TESTS / "rtmp_server.py"), "--port", str(self.port), "--fps", str(fps),
                          "--width", str(width), "--height", str(height)], Path(log_dir) / f"rtmp-{self.port}.log")


@pytest.fixture
def mjpeg_server(tmp_path):
    """A running MJPEG server at 10 FPS, 192x128 (its `url`); the test may stop() and start() it."""
    server = MjpegServer(tmp_path).start()
    yield server
    server.stop()


@pytest.fixture
def https_mjpeg_server(tmp_path):
    """The same MJPEG stream over HTTPS only, with a self-signed certificate made for this test."""
    server = MjpegServer(tmp_path, certificate=self_signed_certificate(tmp_path)).start()
    yield server
    server.stop()


@pytest.fixture
def rtsp_server(tmp_path):
    """A running GStreamer RTSP server (TCP and UDP) at 10 FPS, 160x120."""
    server = RtspServer(tmp_path).start()
    yield server
    server.stop()


@pytest.fixture
def rtsp_udp_only_server(tmp_path):
    """An RTSP server that refuses TCP transport (like some cameras)."""
    server = RtspServer(tmp_path, protocols="udp").start()
    yield server
    server.stop()


@pytest.fixture
def rtmp_server(tmp_path):
    """A running RTMP server (FFmpeg, H.264) at 10 FPS, 176x96, frames numbered like the MJPEG server's."""
    server = RtmpServer(tmp_path).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def xvfb_display(tmp_path_factory):
    """A virtual X display (':N', chosen by Xvfb itself so parallel runs do not collide)."""
    read_end, write_end = os.pipe()
    log = open(tmp_path_factory.mktemp("xvfb") / "xvfb.log", "w")
    process = subprocess.Popen([shutil.which("Xvfb") or "Xvfb", "-displayfd", str(write_end), "-screen", "0",
                                "800x600x24", "-nolisten", "tcp"], pass_fds=(write_end,), stdout=log, stderr=log)
    os.close(write_end)
    number = b""
    deadline = time.monotonic() + 20
    while not number.endswith(b"\n") and time.monotonic() < deadline and process.poll() is None:
        if select.select([read_end], [], [], 0.2)[0]:
            chunk = os.read(read_end, 16)
            if not chunk:
                break
            number += chunk
    os.close(read_end)
    if not number.strip():
        process.kill()
        raise RuntimeError("Xvfb did not start (setup.sh --dev installs the xvfb package)")
    yield f":{number.decode().strip()}"
    process.terminate()
    process.wait(timeout=10)
    log.close()
