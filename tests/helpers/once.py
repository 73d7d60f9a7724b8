"""Make a session fixture's files once for the whole run, whatever the number of xdist workers.

Each worker is a session of its own, so a session fixture runs once per worker, and the test files that use it
(`--dist loadfile`) may land in both: a checkpoint trained for a minute would be trained twice. The first worker
makes the files under a lock, in the folder every worker's temporary folders share; the others wait, then read.
"""

import os

from filelock import FileLock


def made_once(tmp_path_factory, name, make):
    """The folder `name`, filled by `make(folder)` once for the run (only read it: every worker gets the same)."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # pytest-of-<user>/pytest-<n>/, above each worker's own folder
    folder, done = root / name, root / f"{name}.done"
    with FileLock(str(root / f"{name}.lock")):
        if not done.exists():
            folder.mkdir(exist_ok=True)
            make(folder)
            done.touch()
    return folder
