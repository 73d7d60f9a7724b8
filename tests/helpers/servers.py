"""Real servers for the stream and window tests, started and stopped by the tests themselves.

- an RTSP server (GStreamer's, rtsp_server.py here, run by Debian's /usr/bin/python3 with python3-gi)
- an HTTP MJPEG server (mjpeg_server.py here), also over HTTPS with a self-signed certificate made by
  the `openssl` command at test time
- an RTMP server (FFmpeg in listen mode, rtmp_server.py here)
- an X server (Xvfb) with a window manager (openbox) for --view-img

The fixtures that start them are in fixtures_sources.py and fixtures_display.py.

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

HERE = Path(__file__).resolve().parent  # the server scripts
SYSTEM_PYTHON = "/usr/bin/python3"  # Debian's, which has the gi bindings for GStreamer


def free_port():
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until(condition, timeout, interval=0.1, what=None):
    """Poll `condition` until it returns something true or `timeout` seconds pass; return its last value.

    Anything that arrives asynchronously (a window's first paint, a row a subprocess writes, a server that
    comes back) is waited for this way, with a bound generous enough for a CPU shared three or four ways,
    never with a fixed sleep. With `what` (a string, or a function returning one, saying what was waited
    for and what is known so far), running out of time raises AssertionError with that text instead of
    returning the false value.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            if what is None:
                return value
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what() if callable(what) else what}")
        time.sleep(interval)


class ServerProcess:
    """A child process that prints 'ready' once it serves; start() waits for that line.

    For a restart, prepare() boots the next process beforehand up to the point where it would listen
    (interpreter, imports, pipeline) and holds it there; start() then only tells it to listen. Booting
    takes seconds on a busy machine (importing cv2 alone), longer than a client's reconnect attempts may
    wait: a test that restarts a server must not depend on how fast an interpreter starts.
    """

    def __init__(self, command, log_path):
        self.command, self.log_path, self.process, self.spare = command, Path(log_path), None, None

    def spawn(self, *extra):
        log = open(self.log_path, "a")
        process = subprocess.Popen([*self.command, *extra], stdin=subprocess.PIPE if extra else subprocess.DEVNULL,
                                   stdout=subprocess.PIPE, stderr=log, text=True)
        process.log = log
        return process

    def await_line(self, process, word, timeout):
        """Wait for a line holding `word` on the process's stdout; if it ends or times out, end it and raise."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([process.stdout], [], [], 0.2)
            if ready and word in process.stdout.readline():
                return
            if process.poll() is not None:
                break
        end(process)
        raise RuntimeError(f"{' '.join(map(str, self.command))} did not print {word!r} within {timeout:g} s; "
                           f"log: {self.log_path.read_text()[-2000:]}")

    def prepare(self, timeout=120):
        """Boot the process the next start() uses, and hold it just before it listens."""
        self.spare = self.spawn("--hold")
        try:
            self.await_line(self.spare, "holding", timeout)
        except RuntimeError:
            self.spare = None
            raise
        return self

    def start(self, timeout=120):  # a fresh machine builds its GStreamer plugin registry on first use
        if self.spare is not None:
            self.process, self.spare = self.spare, None
            self.process.stdin.write("listen\n")
            self.process.stdin.flush()
        else:
            self.process = self.spawn()
        try:
            self.await_line(self.process, "ready", timeout)
        except RuntimeError:
            self.process = None
            raise
        return self

    def stop(self):
        """Stop the serving process (a prepared one stays for the next start())."""
        if self.process is not None:
            end(self.process)
        self.process = None

    def close(self):
        """Stop the serving process and any prepared one."""
        self.stop()
        if self.spare is not None:
            end(self.spare)
        self.spare = None


def end(process):
    """Terminate (then kill) a server process and close its pipes and log."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
    for stream in (process.stdin, process.stdout, process.log):
        if stream is not None:
            stream.close()


def self_signed_certificate(folder):
    """(certificate, key) PEM files for 127.0.0.1, signed by themselves, valid for a day."""
    certificate, key = Path(folder) / "cert.pem", Path(folder) / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", str(key), "-out", str(certificate), "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True, timeout=30)
    return certificate, key


class MjpegServer(ServerProcess):
    """certificate=(cert.pem, key.pem): HTTPS only, at an https:// url; log_sent: a file where the server logs
    when it sent each frame to each client (mjpeg_server.py --log-sent)."""

    def __init__(self, log_dir, port=None, fps=10, width=192, height=128, start_number=0, certificate=None,
                 log_sent=None):
        self.port, self.certificate = port or free_port(), certificate
        extra = ["--certfile", str(certificate[0]), "--keyfile", str(certificate[1])] if certificate else []
        extra += ["--log-sent", str(log_sent)] if log_sent else []
        self.url = f"{'https' if certificate else 'http'}://127.0.0.1:{self.port}/stream.mjpg"
        super().__init__([sys.executable, str(HERE / "mjpeg_server.py"), "--port", str(self.port), "--fps", str(fps),
                          "--width", str(width), "--height", str(height), "--start", str(start_number), *extra],
                         Path(log_dir) / f"mjpeg-{self.port}.log")


class RtspServer(ServerProcess):
    def __init__(self, log_dir, port=None, protocols="tcp,udp", fps=10, width=160, height=120):
        self.port = port or free_port()
        self.url = f"rtsp://127.0.0.1:{self.port}/test"
        super().__init__([SYSTEM_PYTHON, str(HERE / "rtsp_server.py"), "--port", str(self.port), "--protocols",
                          protocols, "--fps", str(fps), "--width", str(width), "--height", str(height)],
                         Path(log_dir) / f"rtsp-{self.port}.log")


class RtmpServer(ServerProcess):
    def __init__(self, log_dir, port=None, fps=10, width=176, height=96):
        self.port = port or free_port()
        self.url = f"rtmp://127.0.0.1:{self.port}/live/test"
        super().__init__([sys.executable, str(HERE / "rtmp_server.py"), "--port", str(self.port), "--fps", str(fps),
                          "--width", str(width), "--height", str(height)], Path(log_dir) / f"rtmp-{self.port}.log")


def start_window_manager(display, log):
    """openbox on `display`, running once it has claimed the screen (_NET_SUPPORTING_WM_CHECK on the root).

    A desktop has a window manager, and Qt needs one: on bare Xvfb a new cv2 window missed its first expose
    and stayed black (13 of 44 windows for 5 s or more, in a probe on a loaded 2-core machine; 0 of 21 with
    openbox), which no polling by the window tests can outwait."""
    manager = subprocess.Popen([shutil.which("openbox") or "openbox", "--sm-disable"],
                               env={**os.environ, "DISPLAY": display}, stdout=log, stderr=log)
    deadline = time.monotonic() + 120  # seconds on a busy machine; a missing openbox fails at once
    while time.monotonic() < deadline and manager.poll() is None:
        check = subprocess.run(["xprop", "-display", display, "-root", "_NET_SUPPORTING_WM_CHECK"],
                               capture_output=True, text=True)
        if "window id" in check.stdout:
            return manager
        time.sleep(0.2)
    manager.kill()
    raise RuntimeError(f"openbox did not start on {display} (setup.sh --dev installs the openbox package)")
