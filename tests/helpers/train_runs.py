"""train.py runs for the reliability tests (tests/reliability): in this process or as a command whose output
is read while it runs, and checks of what a run left behind (checkpoints, results.csv)."""

import csv
import hashlib
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import cv2

import train
from segtoolkit.models.checkpoints import load_checkpoint
from segtoolkit.models.factory import model_from_checkpoint
from helpers.paths import REPO

FAST = ["--model", "Linknet", "--encoder", "tu-mobilenetv3_small_050"]  # 0.4M parameters, for runs that only need steps
# One intra-op thread: on a shared 2-core machine, two spinning OpenMP threads make each step 10x slower.
ENV = dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1", WANDB_SILENT="true", PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
CHECKPOINTS = ("checkpoint.pth.tar", "best-checkpoint.pth.tar")


def unique_name(label):
    return f"pytest-rel-{label}-{os.getpid()}-{random.randrange(10**6)}"


def data_flags(d):
    return ["--data-dir", str(d), "--train-list", str(d / "train.txt"), "--val-list", str(d / "val.txt"),
            "--test-list", str(d / "test.txt")]


def train_in_process(capsys, *flags):
    """(exit code, stdout, stderr) of `python train.py FLAGS`, run through train.main in this process."""
    code = train.main(train.parse_args([str(flag) for flag in flags]))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def start_cli(flags, log_dir, tag, **popen):
    """Start `python train.py FLAGS`; stdout and stderr go to files (read them while it runs)."""
    out, err = open(log_dir / f"{tag}.out", "w"), open(log_dir / f"{tag}.err", "w")
    proc = subprocess.Popen([sys.executable, str(REPO / "train.py"), *map(str, flags)], cwd=REPO, env=ENV,
                            stdout=out, stderr=err, **popen)
    proc.logs = (log_dir / f"{tag}.out", log_dir / f"{tag}.err")
    return proc


def logs(proc):
    return proc.logs[0].read_text(errors="replace"), proc.logs[1].read_text(errors="replace")


def wait_until(condition, proc, timeout=300, interval=0.05):
    """Poll `condition()` until true; False if the process ended first; AssertionError if time ran out.

    The bound covers train.py's start on a CPU shared three or four ways (importing torch alone: 20-40 s)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(interval)
    raise AssertionError(f"timed out; stderr so far:\n{logs(proc)[1][-2000:]}")


def fingerprint(folder):
    """{file name: sha256} of a folder, to show that a failed command touched nothing in it."""
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in sorted(Path(folder).iterdir())
            if path.is_file()}


def assert_complete_checkpoints(run_dir):
    """Each checkpoint present loads, carries its state (checkpoint.pth.tar: the full resume state; the best
    one: where in the run it was written) and rebuilds its model strictly."""
    steps = {}
    for name in CHECKPOINTS:
        path = run_dir / name
        if path.exists():
            checkpoint = load_checkpoint(path)
            resume = {"optimizer", "scheduler"} if name == "checkpoint.pth.tar" else set()
            assert {"model", "epoch", "step_in_epoch", "global_step", *resume} <= checkpoint.keys()
            model_from_checkpoint(checkpoint, path)  # load_state_dict(strict=True): every tensor there
            steps[name] = checkpoint["global_step"]
    return steps


def assert_results_csv_intact(run_dir):
    with open(run_dir / "results.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    header, body = rows[0], rows[1:]
    assert header[:3] == ["epoch", "lr", "train/loss"]
    for row in body:
        assert len(row) == len(header), row
        float(row[0]), float(row[header.index("val/dice")])
    return body


def rewrite_mask(d, stem, change):
    path = d / "masks" / f"{stem}.png"
    mask = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    path.unlink()
    new_path, new_mask = change(mask, path)
    cv2.imwrite(str(new_path), new_mask)


def truncate(path, fraction=0.5):
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[:int(len(data) * fraction)])
