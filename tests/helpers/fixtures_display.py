"""A virtual X display for the --view-img window tests (marked `servers` by conftest.py)."""

import os
import select
import shutil
import subprocess
import time

import pytest

from helpers.servers import start_window_manager


@pytest.fixture(scope="session")
def xvfb_display(tmp_path_factory):
    """A virtual X display (':N', chosen by Xvfb itself so parallel runs do not collide)."""
    read_end, write_end = os.pipe()
    log = open(tmp_path_factory.mktemp("xvfb") / "xvfb.log", "w")
    process = subprocess.Popen([shutil.which("Xvfb") or "Xvfb", "-displayfd", str(write_end), "-screen", "0",
                                "800x600x24", "-nolisten", "tcp"], pass_fds=(write_end,), stdout=log, stderr=log)
    os.close(write_end)
    number = b""
    deadline = time.monotonic() + 60  # seconds on a busy machine; a missing Xvfb fails at once
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
    display = f":{number.decode().strip()}"
    manager = start_window_manager(display, log)
    yield display
    for server in (manager, process):
        server.terminate()
        server.wait(timeout=10)
    log.close()
