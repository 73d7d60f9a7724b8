"""Where the tests find the repository, the shared data and the runs they start."""

import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "data" / "sample"
# train.py's --project for every run the tests start: the repository's checkpoints/ is the user's.
# Removed at the end of the session (conftest.py's pytest_sessionfinish).
RUNS = Path(tempfile.mkdtemp(prefix="pytest-runs-"))
