"""Issue 4, training side: bad input (exit 2), faults (SIGKILL, SIGINT/SIGTERM, non-finite steps, dead
workers, a failing validation preview; a run that fails exits 1) and untrusted checkpoints; plus the
model files and unreachable streams detect.py must refuse. tests/README.md has the table of every case
and what the user sees.

Bad input is checked in-process through `train.main` (same code path as the command line, without
paying the import time per case); a few cases also run the real command to show the exit code and
that stderr is one line.
"""

import ast
import copy
import csv
import hashlib
import math
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import train
from dataset import SegmentationDataset, make_dataset
from make_sample_data import write_dataset
from segtoolkit.training import run_log as run_logging
from segtoolkit.models.checkpoints import CHECKPOINT_FORMAT, load_checkpoint, save_checkpoint
from helpers.paths import RUNS
from helpers.training import TINY
from segtoolkit.training.config import REPO, RunConfig
from segtoolkit.errors import RunFailure, UserError
from segtoolkit.data.loaders import guarded_batches
from segtoolkit.data.masks import IGNORE
from segtoolkit.models.factory import build_model, model_from_checkpoint, model_meta
from segtoolkit.training.run_log import NullLogger
from segtoolkit.data.splits import pair_masks, read_split_file

FAST = ["--model", "Linknet", "--encoder", "tu-mobilenetv3_small_050"]  # 0.4M parameters, for runs that only need steps
# One intra-op thread: on a shared 2-core machine, two spinning OpenMP threads make each step 10x slower.
ENV = dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1", WANDB_SILENT="true", PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
CHECKPOINTS = ("checkpoint.pth.tar", "best-checkpoint.pth.tar")


# ---------------------------------------------------------------- fixtures and helpers


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """6 binary pairs: train.txt 4, val.txt 2, test.txt empty (an empty test split is allowed)."""
    root = tmp_path_factory.mktemp("reliability") / "data"
    paths = write_dataset(root, 6, seed=3)
    (root / "train.txt").write_text("".join(f"imgs/{p.name}\n" for p in paths[:4]))
    (root / "val.txt").write_text("".join(f"imgs/{p.name}\n" for p in paths[4:]))
    (root / "test.txt").write_text("# no test images\n")
    return root


@pytest.fixture
def data(pristine, tmp_path):
    """A fresh copy of the dataset for a test to damage."""
    return Path(shutil.copytree(pristine, tmp_path / "data"))


def unique_name(label):
    return f"pytest-rel-{label}-{os.getpid()}-{random.randrange(10**6)}"


@pytest.fixture
def run_name(request):
    name = unique_name(request.node.name.split("[")[0][5:30])
    yield name
    for folder in RUNS.glob(f"{name}*"):
        shutil.rmtree(folder, ignore_errors=True)


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


# ---------------------------------------------------------------- bad input: the table


def to_jpeg(d, folder, stem, cut=None):
    """Re-save a file as JPEG (optionally cut short) and point the split files at it."""
    path = d / folder / f"{stem}.png"
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    path.unlink()
    cv2.imwrite(str(path.with_suffix(".jpg")), image, [cv2.IMWRITE_JPEG_QUALITY, 90])
    if cut:
        truncate(path.with_suffix(".jpg"), cut)
    for split in ("train.txt", "val.txt"):
        text = (d / split).read_text().replace(f"{stem}.png", f"{stem}.jpg" if folder == "imgs" else f"{stem}.png")
        (d / split).write_text(text)
    return []


def class_masks(d, stem, value):
    """Turn the 0/255 masks into class indices 0/1, then put `value` into one of them."""
    for path in (d / "masks").iterdir():
        mask = cv2.imread(str(path), cv2.IMREAD_UNCHANGED) // 255
        if path.stem == stem:
            mask[0, 0] = value
        cv2.imwrite(str(path), mask)
    return ["--classes", 3]


def negative_class_mask(d):
    class_masks(d, "none", 0)
    rewrite_mask(d, "sample_001", lambda m, p: (p.with_suffix(".tif"), np.where(m > 0, 1, -1).astype(np.int16)))
    return ["--classes", 3]


BAD_INPUT = [
    # (case, setup(data dir) -> extra flags, what the one-line error says)
    ("truncated PNG image", lambda d: truncate(d / "imgs/sample_000.png"),
     r"image .*imgs/sample_000\.png cannot be read \(truncated or not an image\); replace it or remove it from "
     r"the split"),
    ("truncated JPEG image", lambda d: to_jpeg(d, "imgs", "sample_001", cut=0.6),
     r"image .*imgs/sample_001\.jpg cannot be read \(truncated or not an image\)"),
    ("text file named .png", lambda d: (d / "imgs/sample_002.png").write_text("not an image"),
     r"image .*imgs/sample_002\.png cannot be read \(truncated or not an image\)"),
    ("empty image file", lambda d: (d / "imgs/sample_003.png").write_bytes(b""),
     r"image .*imgs/sample_003\.png cannot be read"),
    ("unreadable mask", lambda d: truncate(d / "masks/sample_004.png", 0.3),
     r"mask .*masks/sample_004\.png cannot be read \(truncated or not an image\); replace it"),
    ("non-image file among images (--search-files)",
     lambda d: (d / "imgs/notes.txt").write_text("x") and ["--search-files"],
     r"folder .*imgs holds non-image files: notes\.txt; move them out \(images must end in \.png, "),
    ("non-image file among masks", lambda d: (d / "masks/Thumbs.db").write_bytes(b"\0"),
     r"folder .*masks holds non-image files: Thumbs\.db; move them out"),
    ("orphans with --search-files, all listed at once",
     lambda d: [(d / "masks/sample_000.png").unlink(), (d / "masks/sample_001.png").unlink(),
                (d / "imgs/sample_005.png").unlink()] and ["--search-files"],
     r"--search-files in .*: images without a mask: sample_000\.png, sample_001\.png; masks without an image: "
     r"sample_005\.png; add or remove them so every image has a mask with the same stem"),
    ("image without mask (split files)",
     lambda d: [(d / "masks/sample_000.png").unlink(), (d / "masks/sample_002.png").unlink()] and [],
     r"no mask in .*masks for 2 image\(s\): .*sample_000\.png, .*sample_002\.png; add masks with the same file stem"),
    ("mask size differs from image",
     lambda d: rewrite_mask(d, "sample_001", lambda m, p: (p, cv2.resize(m, (40, 30),
                                                                          interpolation=cv2.INTER_NEAREST))),
     r"mask .*sample_001\.png is 40x30 but image .*sample_001\.png is \d+x\d+; masks must match their image's size"),
    ("multi-class value out of range", lambda d: class_masks(d, "sample_002", 7),
     r"mask .*sample_002\.png has value 7, which is neither a class \(0\.\.2\) nor --ignore-index \(None\); "
     r"fix the mask or the --classes/--ignore-index flags"),
    ("negative class value (int16 TIFF)", negative_class_mask,
     r"mask .*sample_001\.tif has value -1, which is neither a class"),
    ("soft binary mask", lambda d: rewrite_mask(d, "sample_003", lambda m, p: (p, cv2.GaussianBlur(m, (9, 9), 3))),
     r"mask .*sample_003\.png has values 0, 1, 2, .*: a binary mask must be 0/1, 0/255 or 0/65535 \(soft, resized or "
     r"JPEG masks: threshold them and save as PNG\), or use --classes N for class indices"),
    ("JPEG binary mask", lambda d: to_jpeg(d, "masks", "sample_000"),
     r"mask .*sample_000\.jpg has values .*: a binary mask must be 0/1, 0/255 or 0/65535 \(soft, resized or JPEG "
     r"masks"),
    ("colour mask", lambda d: rewrite_mask(d, "sample_000", lambda m, p: (p, np.dstack([m, m // 2, m]))),
     r"mask .*sample_000\.png is a colour image; save masks as single-channel PNGs of class indices"),
    ("missing split file", lambda d: ["--train-list", d / "nope.txt"],
     r"split file .*nope\.txt does not exist; create it \(one image path per line\) or use --search-files"),
    ("split file naming missing files",
     lambda d: (d / "train.txt").write_text("imgs/sample_000.png\nimgs/gone1.png\ngone2.png\n/abs/gone3.png\n"),
     r"split file .*train\.txt names 3 file\(s\) that do not exist: .*imgs/gone1\.png, .*imgs/gone2\.png, "
     r"/abs/gone3\.png; check --data-dir or fix the list"),
    ("split file line longer than a file name may be", lambda d: (d / "val.txt").write_text("x" * 5000 + "\n"),
     r"split file .*val\.txt names 1 file\(s\) that do not exist: [^ ]{1,140}\.\.\.x{17}; check --data-dir"),
    ("split file line with control characters", lambda d: (d / "val.txt").write_text("a\x00b\x1b[2J\n"),
     r"split file .*val\.txt names 1 file\(s\) that do not exist: .*/imgs/a\\x00b\\x1b\[2J; check --data-dir"),
    ("empty training split", lambda d: (d / "train.txt").write_text("# nothing yet\n\n"),
     r"the training split is empty; list images in it, or use --search-files"),
    ("empty validation split", lambda d: (d / "val.txt").write_text(""), r"the validation split is empty"),
    ("--val-split outside [0, 1)", lambda d: ["--search-files", "--val-split", "1.5"],
     r"--val-split 1\.5 must be a fraction in \[0, 1\)"),
    ("unknown --model", lambda d: ["--model", "Unett"],
     r"--model Unett is not an smp architecture \(did you mean Unet\?\); choose one of: Unet, UnetPlusPlus"),
    ("unknown --encoder", lambda d: ["--encoder", "resnet19"],
     r"--encoder resnet19 is not an smp encoder \(did you mean resnet18\?\); valid names: .*resnet34"),
    ("--patch-size not a multiple of 32", lambda d: ["--patch-size", "100"],
     r"--patch-size 100 is not a positive multiple of 32, which smp models need; try 96"),
    ("--patch-size 0", lambda d: ["--patch-size", "0"], r"--patch-size 0 is not a positive multiple of 32.*try 32"),
    ("--classes 0", lambda d: ["--classes", "0"], r"--classes 0 must be at least 1"),
    ("--epochs 0", lambda d: ["--epochs", "0"], r"--epochs 0 must be at least 1"),
    ("--eval-step 0", lambda d: ["--eval-step", "0"], r"--eval-step 0 must be at least 1"),
    ("batch larger than the training set", lambda d: ["--batch-size", "5"],
     r"--batch-size 5 x 1 process\(es\) is larger than the training set \(4 images\) and incomplete batches are "
     r"dropped; lower --batch-size or add images"),
    ("--encoder-weights file missing", lambda d: ["--encoder-weights", d / "enc.pth"],
     r"--encoder-weights .*enc\.pth: no such file; give 'imagenet', 'none' or a weights file"),
    ("--encoder-weights not a checkpoint", lambda d: (d / "enc.pth").write_text("junk") and
     ["--encoder-weights", d / "enc.pth"],
     r"--encoder-weights .*enc\.pth is truncated or not a PyTorch checkpoint \(.*\); use a complete file"),
    ("--encoder-weights without a state dict", lambda d: torch.save([1, 2], d / "enc.pth") or
     ["--encoder-weights", d / "enc.pth"],
     r"--encoder-weights .*enc\.pth holds no state dict \(a dict of named tensors\)"),
    ("--load-model missing", lambda d: ["--load-model", d / "none.pth.tar"],
     r"checkpoint .*none\.pth\.tar: no such file"),
    ("split file saved as UTF-16 (PowerShell >)",
     lambda d: (d / "train.txt").write_bytes((d / "train.txt").read_text().encode("utf-16")),
     r"split file .*train\.txt is saved as UTF-16 LE; save it as UTF-8 \(in Notepad: Save as, Encoding UTF-8\)$"),
    ("broken link among images (--search-files)",
     lambda d: (d / "imgs/extra.png").symlink_to(d / "gone/extra.png") or ["--search-files"],
     r"folder .*imgs holds 1 broken link\(s\) \(the file they point to does not exist\): extra\.png -> "
     r".*gone/extra\.png; fix or remove them$"),
    ("split file naming a broken link",
     lambda d: (d / "imgs/sample_000.png").unlink() or (d / "imgs/sample_000.png").symlink_to(d / "moved.png"),
     r"split file .*train\.txt names 1 broken link\(s\) \(the file they point to does not exist\): "
     r".*imgs/sample_000\.png -> .*moved\.png; check --data-dir or fix the list$"),
]
if not torch.cuda.is_available():
    BAD_INPUT.append(("--device cuda without CUDA", lambda d: ["--device", "cuda"],
                      r"--device cuda: CUDA is not available on this machine; use --device cpu"))


@pytest.mark.parametrize("case, setup, message", BAD_INPUT, ids=[case[0] for case in BAD_INPUT])
def test_bad_input_is_one_line_error_before_training(case, setup, message, data, run_name, capsys):
    extra = setup(data)
    extra = extra if isinstance(extra, list) else []
    code, out, err = train_in_process(capsys, *TINY, *data_flags(data), "--name", run_name, *extra)
    lines = err.strip().splitlines()
    assert code == 2, err[-2000:]
    assert lines[-1].startswith("error: ") and "Traceback" not in err, err[-2000:]
    assert re.search(message, lines[-1]), lines[-1]
    assert "training in" not in out  # refused before the model, the run folder or any step
    assert not list(RUNS.glob(f"{run_name}*"))


def test_wandb_online_without_credentials_suggests_offline(data, run_name, capsys, monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    code, _, err = train_in_process(capsys, *TINY, *data_flags(data), "--name", run_name, "--wandb-mode", "online")
    assert code == 2
    assert err.strip() == ("error: --wandb-mode online needs wandb credentials (run `wandb login` or set "
                           "WANDB_API_KEY); or use --wandb-mode offline and upload later with `wandb sync`")
    assert not list(RUNS.glob(f"{run_name}*"))


def test_command_line_prints_one_line_and_exits_2(data, run_name, tmp_path):
    rewrite_mask(data, "sample_001", lambda m, p: (p, cv2.resize(m, (40, 30), interpolation=cv2.INTER_NEAREST)))
    result = subprocess.run([sys.executable, str(REPO / "train.py"), *TINY, *map(str, data_flags(data)),
                             "--name", run_name], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: mask "), result.stderr
    assert result.stdout == ""
    with pytest.raises(UserError, match="masks must match"):  # --verbose lets the traceback through
        train.main(train.parse_args([*TINY, *map(str, data_flags(data)), "--name", run_name, "--verbose"]))


# ---------------------------------------------------------------- checkpoints given to --load-model


@pytest.fixture(scope="module")
def finished_run(pristine):
    """A complete 1-epoch run (empty test split); yields (run_dir, exit code, stdout)."""
    name = unique_name("finished")
    code = train.main(train.parse_args([*TINY, *data_flags(pristine), "--name", name]))
    yield RUNS / name, code
    shutil.rmtree(RUNS / name, ignore_errors=True)


def test_empty_test_split_trains_and_skips_the_test_evaluation(finished_run):
    run_dir, code = finished_run
    assert code == 0
    assert (run_dir / "best-checkpoint.pth.tar").exists() and (run_dir / "checkpoint.pth.tar").exists()
    assert not (run_dir / "test_results.json").exists()


def foreign_checkpoints(folder, finished):
    """name -> (path, expected error) for files that --load-model must refuse."""
    state = {"conv.weight": torch.zeros(2, 3, 3, 3)}
    real = (finished / "checkpoint.pth.tar").read_bytes()
    files = {
        "truncated": (real[:len(real) // 2], r"is truncated or not a PyTorch checkpoint \(.*\); use a complete file "
                                             r"written by train\.py"),
        "cut one byte short": (real[:-1], r"is truncated or not a PyTorch checkpoint"),
        "empty file": (b"", r"is truncated or not a PyTorch checkpoint"),
        "an image": (cv2.imencode(".png", np.zeros((8, 8), np.uint8))[1].tobytes(),
                     r"is truncated or not a PyTorch checkpoint"),
        "other tool's checkpoint": ({"state_dict": state, "epoch": 3, "hyper_parameters": {"lr": 1}},
                                    r"was not written by this toolkit \(no 'unet-segmentation-toolkit' header and "
                                    r"not a plain state dict\); train one with train\.py"),
        "state dict of another network": (state, r"--load-model .*: no tensor matches a Unet with this encoder; "
                                                 r"check --model and --encoder"),
        "newer format version": ({"format": CHECKPOINT_FORMAT, "version": 99, "meta": {}, "model": state},
                                 r"is a unet-segmentation-toolkit file this version cannot read \(format version "
                                 r"99\); update the toolkit"),
    }
    paths = {}
    for name, (content, message) in files.items():
        path = folder / (name.replace(" ", "_").replace("'", "") + ".pth.tar")
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            torch.save(content, path)
        paths[name] = (path, message)
    return paths


def test_bad_checkpoints_are_refused_and_nothing_is_touched(finished_run, pristine, tmp_path, run_name, capsys):
    run_dir, _ = finished_run
    before = fingerprint(run_dir)
    cases = foreign_checkpoints(tmp_path, run_dir)
    for case, (path, message) in cases.items():
        content = path.read_bytes()
        code, out, err = train_in_process(capsys, *TINY, *data_flags(pristine), "--name", run_name,
                                          "--load-model", path)
        assert code == 2, (case, err[-1500:])
        last = err.strip().splitlines()[-1]
        assert last.startswith("error: ") and "Traceback" not in err, (case, err[-1500:])
        assert re.search(message, last), (case, last)
        assert path.read_bytes() == content, case
    assert fingerprint(run_dir) == before
    assert not list(RUNS.glob(f"{run_name}*"))


# ---------------------------------------------------------------- security: checkpoints that would run code


class RunsCode:
    """Unpickling this calls `function(*arguments)`: what a malicious checkpoint does."""

    def __init__(self, function, *arguments):
        self.function, self.arguments = function, arguments

    def __reduce__(self):
        return self.function, self.arguments


def malicious_checkpoints(folder, marker):
    payloads = {
        "zip, open() creates a file": ({"format": CHECKPOINT_FORMAT, "version": 1, "meta": {},
                                        "model": RunsCode(open, str(marker), "w")}, {}),
        "legacy format": ({"model": RunsCode(open, str(marker), "w")}, {"_use_new_zipfile_serialization": False}),
        "os.system": (RunsCode(os.system, f"touch {marker}"), {}),
    }
    paths = {}
    for name, (payload, options) in payloads.items():
        paths[name] = folder / (name.split(",")[0].replace(" ", "_").replace(".", "_") + ".pth")
        torch.save(payload, paths[name], **options)
    return paths


def test_the_crafted_checkpoint_really_runs_code_when_loaded_unsafely(tmp_path):
    """Control: the payload is live, so the refusals below mean something."""
    marker = tmp_path / "ran"
    path = malicious_checkpoints(tmp_path, marker)["zip, open() creates a file"]
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_checkpoint_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "ran"
    for name, path in malicious_checkpoints(tmp_path, marker).items():
        with pytest.raises(UserError, match=r"refused: it would call (io\.open|posix\.system) when loaded, so it "
                                            r"could run code; only tensors and plain data are accepted"):
            load_checkpoint(path)
        assert not marker.exists(), name


def test_train_refuses_code_running_checkpoint_and_encoder_weights(data, run_name, tmp_path, capsys):
    marker = tmp_path / "ran"
    paths = malicious_checkpoints(tmp_path, marker)
    result = subprocess.run([sys.executable, str(REPO / "train.py"), *TINY, *map(str, data_flags(data)),
                             "--name", run_name, "--load-model", str(paths["os.system"])],
                            cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: checkpoint {paths['os.system']} refused: it would call posix.system")
    assert result.stderr.count("\n") == 1, result.stderr
    code, _, err = train_in_process(capsys, *TINY, *data_flags(data), "--name", run_name,
                                    "--encoder-weights", paths["zip, open() creates a file"])
    assert code == 2 and "refused: it would call io.open" in err.strip().splitlines()[-1]
    assert not marker.exists()
    assert not list(RUNS.glob(f"{run_name}*"))


def test_every_torch_load_in_the_toolkit_is_weights_only():
    calls = []
    for source in sorted([*REPO.glob("*.py"), *REPO.glob("segtoolkit/**/*.py")]):
        for node in ast.walk(ast.parse(source.read_text(), str(source))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load"
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch"):
                safe = any(k.arg == "weights_only" and getattr(k.value, "value", None) is True for k in node.keywords)
                calls.append((source.name, node.lineno, safe))
    assert calls, "no torch.load found: the check looks in the wrong place"
    assert all(safe for *_, safe in calls), [call for call in calls if not call[2]]


# ---------------------------------------------------------------- faults: SIGKILL, SIGINT, SIGTERM


def temp_files(run_dir):
    return list(run_dir.glob(".*.tmp"))


def test_sigkill_at_any_moment_leaves_complete_checkpoints_and_resumes(data, run_name, tmp_path):
    """Kill -9 repeatedly, mostly while a checkpoint is being written (--eval-step 1 --save-checkpoints
    write one after every step): each file is always the previous or the new complete one."""
    run_dir = RUNS / run_name
    flags = [*TINY, *data_flags(data), "--name", run_name, "--epochs", "3", "--eval-step", "1",
             "--save-checkpoints", "--patience", "0"]
    resume = ["--load-model", run_dir / "checkpoint.pth.tar", "--wandb-mode", "disabled", "--workers", "0"]
    rounds = ["write", "random", "write"]
    kills_mid_write, last_step, rng = 0, -1, random.Random(0)
    for number, moment in enumerate(rounds):
        left_by_earlier_kills = set(temp_files(run_dir)) if run_dir.exists() else set()
        proc = start_cli(flags if number == 0 else resume, tmp_path, f"round{number}")
        if number == 0:  # the first kill only once there is something to resume from
            wait_until(lambda: (run_dir / "checkpoint.pth.tar").exists(), proc)
        if moment == "write":
            wait_until(lambda: set(temp_files(run_dir)) - left_by_earlier_kills, proc, interval=0.002)
        else:
            wait_until(lambda: "epoch" in logs(proc)[1], proc)
            time.sleep(rng.uniform(0, 1.5))
        if proc.poll() is not None:  # finished before this kill: nothing left to interrupt
            assert proc.returncode == 0, logs(proc)[1][-2000:]
            break
        proc.kill()
        proc.wait(timeout=60)
        kills_mid_write += bool(set(temp_files(run_dir)) - left_by_earlier_kills)
        steps = assert_complete_checkpoints(run_dir)
        assert steps["checkpoint.pth.tar"] >= last_step  # progress already saved is never lost
        last_step = steps["checkpoint.pth.tar"]
        assert_results_csv_intact(run_dir)
    else:
        proc = start_cli(resume, tmp_path, "final")
        assert proc.wait(timeout=600) == 0, logs(proc)[1][-3000:]
    assert kills_mid_write >= 2
    steps = assert_complete_checkpoints(run_dir)
    assert steps["checkpoint.pth.tar"] == 3 * 2  # 3 epochs x 2 steps, all done despite the kills
    assert not list(run_dir.glob(".checkpoint.pth.tar.*.tmp"))  # the next save removed the killed writes' leftovers
    assert_results_csv_intact(run_dir)


def exit_codes_in_wandb(run_dir):
    from helpers.wandb_records import read_records
    return [record.exit.exit_code for path in run_dir.glob("wandb/offline-run-*/run-*.wandb")
            for record in read_records(path) if record.WhichOneof("record_type") == "exit"]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_sigint_sigterm_finish_the_step_save_and_resume(signum, data, run_name, tmp_path):
    """Ctrl-C reaches the whole process group (workers included); SIGTERM only the trainer."""
    run_dir = RUNS / run_name
    wandb_mode = "offline" if signum == signal.SIGTERM else "disabled"
    workers = "1" if signum == signal.SIGINT else "0"
    flags = [*TINY, *data_flags(data), "--name", run_name, "--epochs", "3", "--workers", workers,
             "--wandb-mode", wandb_mode]
    proc = start_cli(flags, tmp_path, "first", start_new_session=True)
    assert wait_until(lambda: "epoch 2/3" in logs(proc)[1], proc, interval=0.01), logs(proc)[1][-2000:]
    if signum == signal.SIGINT:
        os.killpg(proc.pid, signum)
    else:
        proc.send_signal(signum)
    assert proc.wait(timeout=300) == 130  # the step in flight, then a checkpoint and wandb's close: slow when busy
    out, err = logs(proc)
    name = signal.Signals(signum).name
    assert f"{name} received: finishing this step, then saving checkpoint.pth.tar" in err
    assert f"resume with:\n  python train.py --load-model {run_dir / 'checkpoint.pth.tar'}\n" in err
    assert "Traceback" not in err
    checkpoint = load_checkpoint(run_dir / "checkpoint.pth.tar")
    # the step in flight ended: normally epoch 2 step 1; a signal that lands during an evaluation stops after it
    assert (checkpoint["epoch"], checkpoint["step_in_epoch"]) in {(1, 1), (1, 2), (2, 0), (2, 1)}
    assert len(assert_results_csv_intact(run_dir)) == checkpoint["epoch"]  # one complete row per finished epoch
    if signum == signal.SIGTERM:
        assert exit_codes_in_wandb(run_dir) == [130]  # the wandb run was closed, marked as interrupted
    resumed = start_cli(["--load-model", run_dir / "checkpoint.pth.tar", "--wandb-mode", "disabled",
                         "--workers", "0"], tmp_path, "resumed")
    assert resumed.wait(timeout=600) == 0, logs(resumed)[1][-3000:]
    assert load_checkpoint(run_dir / "checkpoint.pth.tar")["global_step"] == 3 * 2
    assert len(assert_results_csv_intact(run_dir)) == 3


def test_killed_dataloader_worker_is_a_one_line_error(data, run_name, tmp_path):
    run_dir = RUNS / run_name
    flags = [*TINY, *FAST, *data_flags(data), "--name", run_name, "--epochs", "20", "--workers", "1"]
    proc = start_cli(flags, tmp_path, "worker")
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
    assert wait_until(lambda: (run_dir / "checkpoint.pth.tar").exists() and children.read_text().split(), proc)
    os.kill(int(children.read_text().split()[0]), signal.SIGKILL)
    assert proc.wait(timeout=300) == 1  # a fault, not the user's input
    err = logs(proc)[1]
    last = err.strip().splitlines()[-1]
    # torch reports the dead worker either itself or as a broken pipe while a batch is received
    assert last.startswith("error: ") and ("DataLoader worker" in last or "killed worker" in last), err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    assert f"resume with: python train.py --load-model {run_dir / 'checkpoint.pth.tar'}" in last
    assert_complete_checkpoints(run_dir)


# ---------------------------------------------------------------- faults in-process: bad samples, non-finite steps


def small_trainer(d, run_dir, test_split=None, **options):
    def pairs(split):
        return pair_masks(read_split_file(d / split, d), d / "masks")
    torch.manual_seed(0)
    architecture, encoder, classes = FAST[1], FAST[3], options.get("classes", 1)  # the data stays binary
    config = RunConfig(**{**dict(model=architecture, encoder=encoder, patch_size=64, epochs=2, batch_size=2,
                                 workers=0), **options})
    test_set = make_dataset(pairs(test_split), 64, 1, evaluation=True) if test_split else None
    return train.UnetTraining(build_model(architecture, encoder, classes), make_dataset(pairs("train.txt"), 64, 1),
                              make_dataset(pairs("val.txt"), 64, 1, evaluation=True), test_set, config=config,
                              run_dir=run_dir, meta=model_meta(architecture, encoder, classes, 64))


def test_worker_death_seen_after_the_last_batch_is_a_one_line_error(data, tmp_path):
    """A worker killed late fails the next() that would have ended the epoch: there is no batch to name."""
    trainer = small_trainer(data, tmp_path)

    class DiesAtTheEnd(DataLoader):
        def __iter__(self):
            yield from super().__iter__()
            raise RuntimeError("DataLoader worker (pid(s) 4242) exited unexpectedly")
    loader = copy.copy(trainer.train_loader)
    loader.__class__ = DiesAtTheEnd
    with pytest.raises(RunFailure) as error:
        list(guarded_batches(loader, "training", trainer.resume_hint))
    assert str(error.value) == ("loading training data after batch 2 failed: DataLoader worker (pid(s) 4242) exited "
                                "unexpectedly; a killed worker? lower --workers or --batch-size; no checkpoint was "
                                "saved yet")


class WorkerIterator:
    """Stands for torch's multi-process DataLoader iterator: batches, then a failure; its shutdown meets the
    dead worker's SIGCHLD check, as torch's does."""

    def __init__(self, batches, failure, worker_alive):
        self.batches, self.failure, self.shut_down = list(batches), failure, False
        self._workers = [type("Worker", (), {"is_alive": lambda _: worker_alive})()]

    def __next__(self):
        if self.batches:
            return self.batches.pop(0)
        raise self.failure

    def _shutdown_workers(self):
        self.shut_down = True
        raise RuntimeError("DataLoader worker (pid 7433) is killed by signal: Killed.")


def loader_with(trainer, iterator):
    class Loader(DataLoader):
        def __iter__(self):
            return iterator
    loader = copy.copy(trainer.train_loader)
    loader.__class__ = Loader
    return loader


def test_a_batch_failing_shuts_the_workers_down_before_the_one_line_error(data, tmp_path):
    """Left to torch, the iterator is shut down when collected, often at exit, where its check of the dead worker
    raises in __del__ and prints "Exception ignored" and a traceback after train.py's one-line error."""
    trainer = small_trainer(data, tmp_path)
    iterator = WorkerIterator(["batch 1"], ConnectionResetError(104, "Connection reset by peer"), worker_alive=False)
    with pytest.raises(RunFailure) as error:
        list(guarded_batches(loader_with(trainer, iterator), "training", trainer.resume_hint))
    assert iterator.shut_down
    assert str(error.value).startswith("loading training batch 2 (images ") and "Connection reset by peer" in \
        str(error.value)


@pytest.mark.parametrize("worker_alive", [False, True])
def test_a_loop_left_after_a_worker_died_shuts_the_workers_down(data, tmp_path, worker_alive):
    """worker_crash_as_error's case: the dead worker is reported in the loop's body and the loop is left; the
    workers are shut down then, but only when one is dead (persistent workers serve the next epoch)."""
    trainer = small_trainer(data, tmp_path)
    iterator = WorkerIterator(["batch 1", "batch 2"], StopIteration(), worker_alive=worker_alive)
    batches = guarded_batches(loader_with(trainer, iterator), "training", trainer.resume_hint)
    assert next(batches) == "batch 1"
    batches.close()
    assert iterator.shut_down is not worker_alive


def test_files_deleted_mid_run_do_not_matter_samples_are_in_memory(data):
    pairs = pair_masks(read_split_file(data / "train.txt", data), data / "masks")
    dataset = make_dataset(pairs, 64, 1, augment=True)
    shutil.rmtree(data / "imgs")
    shutil.rmtree(data / "masks")
    for index in range(len(dataset)):
        image, mask = dataset[index]
        assert image.shape == (3, 64, 64) and mask.shape == (1, 64, 64)


@pytest.mark.parametrize("workers", [0, 1])
def test_sample_failing_mid_run_names_its_files(data, tmp_path, workers):
    trainer = small_trainer(data, tmp_path, workers=workers)
    load_sample = trainer.train_set.load_sample

    def broken(index, seed=None):
        if index == 3:
            raise OSError("Input/output error")
        return load_sample(index, seed)
    trainer.train_set.load_sample = broken
    with pytest.raises(RunFailure) as error:
        trainer.fit()
    assert error.value.exit_code == 1
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("loading training batch ") and "sample_003.png" in message, message
    assert "Input/output error; fix or remove those files" in message


def test_non_finite_step_is_skipped_with_a_warning_and_leaves_the_model_untouched(data, tmp_path):
    trainer = small_trainer(data, tmp_path)
    images, masks = next(iter(trainer.train_loader))
    before = {key: value.clone() for key, value in trainer.model.state_dict().items()}
    with pytest.warns(UserWarning, match=r"non-finite loss or gradient at step 0: step skipped \(1 in a row\)"):
        trainer.train_step(torch.full_like(images, math.nan), masks, trainer.new_stats())
    after = trainer.model.state_dict()
    assert all(torch.equal(before[key], after[key]) for key in before)  # weights and BatchNorm statistics
    assert trainer.optimizer.state == {} and trainer.bad_steps == 1
    trainer.train_step(images, masks, trainer.new_stats())
    assert trainer.bad_steps == 0  # a good step resets the count
    assert any(not torch.equal(before[key], value) for key, value in trainer.model.state_dict().items())


def test_a_batch_without_labelled_pixels_is_skipped_and_is_not_a_divergence(data, tmp_path):
    """Issue 22: with several classes an all-IGNORE batch (a crop of padding or --ignore-index) gave a NaN
    cross-entropy, counted as a non-finite step; 20 in a row ended the run with "training diverged"."""
    trainer = small_trainer(data, tmp_path, classes=3, epochs=12)  # 24 steps: the schedule outlasts the loop
    images, _ = next(iter(trainer.train_loader))
    unlabelled = torch.full((len(images), 64, 64), IGNORE, dtype=torch.long)
    before = {key: value.clone() for key, value in trainer.model.state_dict().items()}
    stats = trainer.new_stats()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(train.MAX_BAD_STEPS + 1):  # more than the divergence limit: never raises
            assert trainer.train_step(images, unlabelled, stats) is None
    assert trainer.bad_steps == 0 and trainer.optimizer.state == {}
    assert all(torch.equal(before[key], value) for key, value in trainer.model.state_dict().items())
    assert stats.loss[1] == 0 and stats.matrix.sum() == 0  # nothing counted in the training metrics
    messages = [str(w.message) for w in caught]
    assert not [m for m in messages if "non-finite loss or gradient" in m]
    assert sum("has no labelled pixel" in m for m in messages) == 1  # said once per run
    labels = torch.randint(0, 3, (len(images), 64, 64))
    labels[0] = IGNORE  # one unlabelled image among labelled ones is an ordinary step
    assert math.isfinite(trainer.train_step(images, labels, stats).item()) and trainer.optimizer.state != {}


def poison_after(trainer, good_samples):
    """Training samples load as usual for the first `good_samples` loads, then every image is all inf."""
    load_sample, calls = trainer.train_set.load_sample, [0]

    def poisoned(index, seed=None):
        calls[0] += 1
        image, mask = load_sample(index, seed)
        return (image if calls[0] <= good_samples else torch.full_like(image, math.inf)), mask
    trainer.train_set.load_sample = poisoned


def test_twenty_non_finite_steps_stop_the_run_and_best_checkpoint_stays_good(data, tmp_path):
    trainer = small_trainer(data, tmp_path, epochs=12)  # 2 good steps, then every step non-finite
    poison_after(trainer, good_samples=4)
    with warnings.catch_warnings(record=True) as caught, pytest.raises(RunFailure) as error:
        warnings.simplefilter("always")
        trainer.fit()
    assert str(error.value) == ("20 non-finite steps in a row: training diverged; lower --lr or check the data. "
                                "best-checkpoint.pth.tar holds the last good model")
    assert sum("step skipped" in str(w.message) for w in caught) == 20
    best = load_checkpoint(tmp_path / "best-checkpoint.pth.tar")
    assert best["global_step"] == 2  # written after the good steps, never after a skipped one
    assert all(torch.isfinite(value).all() for value in best["model"].values() if value.is_floating_point())
    assert trainer.global_step == 2 + 19  # the 20th bad step raised before being counted


def test_non_finite_validation_loss_never_becomes_the_best_checkpoint(data, tmp_path):
    trainer = small_trainer(data, tmp_path)
    torch.nn.init.constant_(trainer.model.segmentation_head[0].weight, math.nan)
    trainer.end_of_evaluation_period()
    assert trainer.best_fitness == -math.inf
    assert not (tmp_path / "best-checkpoint.pth.tar").exists()


def test_divergence_on_the_command_line_is_one_line(data, run_name, capsys):
    code, _, err = train_in_process(capsys, *TINY, *FAST, *data_flags(data), "--name", run_name, "--lr", "1e30",
                                    "--batch-size", "1", "--epochs", "7")
    assert code == 1  # the input was valid; the run failed
    assert err.strip().splitlines()[-1].startswith("error: 20 non-finite steps in a row: training diverged; lower --lr")
    assert "Traceback" not in err
    assert_complete_checkpoints(RUNS / run_name)


def test_sample_failing_mid_run_on_the_command_line_exits_1(data, run_name, capsys, monkeypatch):
    load_sample, calls = SegmentationDataset.load_sample, [0]

    def failing_after_the_first_batch(self, index, seed=None):
        calls[0] += 1
        if calls[0] > 2:
            raise OSError("Input/output error")
        return load_sample(self, index, seed)
    monkeypatch.setattr(SegmentationDataset, "load_sample", failing_after_the_first_batch)
    code, _, err = train_in_process(capsys, *TINY, *FAST, *data_flags(data), "--name", run_name)
    last = err.strip().splitlines()[-1]
    assert code == 1, err[-2000:]
    assert re.fullmatch(r"error: loading training batch 2 \(images .*\) failed: Input/output error; fix or remove "
                        r"those files \(a killed worker: lower --workers or --batch-size\); no checkpoint was "
                        r"saved yet", last), last
    assert "Traceback" not in err


# ---------------------------------------------------------------- the final test evaluation


def test_worker_killed_during_the_test_evaluation_is_a_one_line_error(data, run_name, capsys, monkeypatch):
    """The worker loading the test split dies (SIGKILL, as the OOM killer does); training is complete."""
    (data / "test.txt").write_text((data / "val.txt").read_text())
    test_images = {Path(line).name for line in (data / "test.txt").read_text().split()}
    load_sample = SegmentationDataset.load_sample
    testing = [False]

    def killed_in_the_test_worker(self, index, seed=None):
        if testing[0] and torch.utils.data.get_worker_info() is not None and self.pairs[index][0].name in test_images:
            os.kill(os.getpid(), signal.SIGKILL)
        return load_sample(self, index, seed)
    test = train.UnetTraining.test

    def test_marked(self):
        testing[0] = True
        return test(self)
    monkeypatch.setattr(SegmentationDataset, "load_sample", killed_in_the_test_worker)
    monkeypatch.setattr(train.UnetTraining, "test", test_marked)
    code, out, err = train_in_process(capsys, *TINY, *FAST, *data_flags(data), "--name", run_name, "--workers", "1")
    run_dir = RUNS / run_name
    last = err.strip().splitlines()[-1]
    assert code == 1, err[-2000:]
    assert last.startswith("error: ") and "DataLoader worker" in last, last
    assert last.endswith(f"training had finished: {run_dir / 'best-checkpoint.pth.tar'}"), last
    assert "Traceback" not in err
    assert not (run_dir / "test_results.json").exists()
    assert_complete_checkpoints(run_dir)


def test_worker_death_reported_during_the_test_forward_pass_is_a_one_line_error(data, tmp_path):
    """torch raises a dead worker from its SIGCHLD handler, wherever the main process is: here inside the
    model's forward pass, outside the loader's own try (this used to end the run with a traceback)."""
    trainer = small_trainer(data, tmp_path, test_split="val.txt")

    def dies(_images):
        raise RuntimeError("DataLoader worker (pid 4242) is killed by signal: Killed. ")
    trainer.model.forward = dies
    with pytest.raises(RunFailure) as error:
        trainer.test()
    assert str(error.value) == ("DataLoader worker (pid 4242) is killed by signal: Killed. (killed for memory? lower "
                                "--workers or --batch-size); training had finished: "
                                f"{tmp_path}/best-checkpoint.pth.tar")
    assert not (tmp_path / "test_results.json").exists()


# ---------------------------------------------------------------- the validation preview


class FailingWandb(NullLogger):
    def log_image(self, key, image, step=None, caption=None):
        raise ConnectionError("wandb: network is unreachable")


def png_is_a_folder(trainer, monkeypatch):
    (trainer.run_dir / "val_predictions.png").mkdir()


def wandb_fails(trainer, monkeypatch):
    trainer.logger = FailingWandb()


def sample_fails_in_the_main_process(trainer, monkeypatch):
    """The evaluation loads in a worker and passes; the preview loads in the main process and fails."""
    load_sample = trainer.val_set.load_sample

    def failing(index, seed=None):
        if torch.utils.data.get_worker_info() is None:
            raise OSError("Input/output error")
        return load_sample(index, seed)
    monkeypatch.setattr(trainer.val_set, "load_sample", failing)


def out_of_memory(*_):
    raise MemoryError()


def grid_fails(trainer, monkeypatch):
    monkeypatch.setattr(run_logging, "prediction_grid", out_of_memory)


PREVIEW_FAULTS = [
    ("PNG cannot be written", png_is_a_folder,
     r"validation preview: writing .*val_predictions\.png failed \(OSError: OpenCV could not write "
     r".*val_predictions\.png\); training continues"),
    ("wandb fails", wandb_fails,
     r"validation preview: logging it to wandb failed \(ConnectionError: wandb: network is unreachable\); "
     r"training continues"),
    ("a sample fails", sample_fails_in_the_main_process,
     r"validation preview: drawing the first 2 validation images failed \(OSError: Input/output error\); "
     r"training continues"),
    ("drawing the grid fails", grid_fails,
     r"validation preview: drawing the first 2 validation images failed \(MemoryError\); training continues"),
]


@pytest.mark.parametrize("case, inject, message", PREVIEW_FAULTS, ids=[case[0] for case in PREVIEW_FAULTS])
def test_failing_validation_preview_is_a_warning_and_training_goes_on(case, inject, message, data, tmp_path,
                                                                      monkeypatch):
    trainer = small_trainer(data, tmp_path, epochs=2, workers=1 if case == "a sample fails" else 0)
    inject(trainer, monkeypatch)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert trainer.fit() == "finished"
    previews = [str(w.message) for w in caught if "validation preview" in str(w.message)]
    assert len(previews) == 2 and all(re.fullmatch(message, text) for text in previews), previews  # once per epoch
    assert trainer.global_step == 2 * 2 and trainer.evaluations == 2
    assert assert_complete_checkpoints(tmp_path)["checkpoint.pth.tar"] == 4
    assert (tmp_path / "val_predictions.png").is_file() == (case == "wandb fails")


# ---------------------------------------------------------------- float16: steps the gradient scaler skips


def cpu_grad_scaler(trainer):
    """What resolve_precision gives on CUDA under --use-amp, on the CPU: the same skip-and-rescale logic."""
    trainer.scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 16)
    assert trainer.scaler.is_enabled()


def test_steps_the_gradient_scaler_skips_are_counted_silently_and_keep_batchnorm(data, tmp_path):
    trainer = small_trainer(data, tmp_path)
    cpu_grad_scaler(trainer)
    images, masks = next(iter(trainer.train_loader))
    before = {key: value.clone() for key, value in trainer.model.state_dict().items()}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.train_step(torch.full_like(images, math.nan), masks, trainer.new_stats())
    assert not [w for w in caught if "step skipped" in str(w.message)]  # the scaler's overflows are normal
    assert trainer.bad_steps == 1
    assert trainer.scaler.get_scale() == 2.0 ** 15  # the scaler saw the overflow and lowered its scale
    after = trainer.model.state_dict()
    assert all(torch.equal(before[key], after[key]) for key in before)  # weights and BatchNorm statistics
    assert trainer.optimizer.state == {}
    trainer.train_step(images, masks, trainer.new_stats())
    assert trainer.bad_steps == 0 and trainer.optimizer.state != {}  # a good step is taken and resets the count


def test_twenty_steps_the_gradient_scaler_skips_stop_the_run(data, tmp_path):
    trainer = small_trainer(data, tmp_path, epochs=12)  # 2 good steps, then every step non-finite
    cpu_grad_scaler(trainer)
    poison_after(trainer, good_samples=4)
    with warnings.catch_warnings(record=True) as caught, pytest.raises(RunFailure) as error:
        warnings.simplefilter("always")
        trainer.fit()
    assert str(error.value).startswith("20 non-finite steps in a row: training diverged; lower --lr")
    assert not [w for w in caught if "step skipped" in str(w.message)]
    assert trainer.global_step == 2 + 19
    best = load_checkpoint(tmp_path / "best-checkpoint.pth.tar")
    assert best["global_step"] == 2
    assert all(torch.isfinite(value).all() for value in best["model"].values() if value.is_floating_point())


# ---------------------------------------------------------------- detect.py: model files and streams it refuses


@pytest.fixture(scope="module")
def detect_inputs(tmp_path_factory):
    """An image, a real (untrained) checkpoint and files detect.py --model must refuse."""
    folder = tmp_path_factory.mktemp("detect_inputs")
    cv2.imwrite(str(folder / "image.png"), np.full((40, 60, 3), 80, np.uint8))
    torch.manual_seed(0)
    model = build_model("Unet", "resnet18", 1)
    save_checkpoint(folder / "model.pth.tar", model, model_meta("Unet", "resnet18", 1, 64))
    real = (folder / "model.pth.tar").read_bytes()
    (folder / "truncated.pth.tar").write_bytes(real[:len(real) // 2])
    (folder / "image.pth.tar").write_bytes((folder / "image.png").read_bytes())
    torch.save({"state_dict": {"conv.weight": torch.zeros(2, 3, 3, 3)}, "epoch": 3}, folder / "other_tool.pth.tar")
    torch.save(model.state_dict(), folder / "weights_only.pth")
    (folder / "text.onnx").write_text("not an ONNX model")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter, used on purpose for a file export.py did not write
        torch.onnx.export(torch.nn.Conv2d(3, 1, 1), (torch.zeros(1, 3, 8, 8),), str(folder / "foreign.onnx"),
                          dynamo=False)
    import openvino
    openvino.save_model(openvino.convert_model(str(folder / "foreign.onnx")), str(folder / "foreign.xml"))
    (folder / "no_weights.xml").write_bytes((folder / "foreign.xml").read_bytes())  # its .bin not copied
    (folder / "text.xml").write_text("not an OpenVINO model")
    (folder / "text.bin").write_bytes(b"\0" * 64)
    return folder


DETECT_BAD_MODELS = [
    ("missing", "missing.pth.tar", r"checkpoint {dir}/missing\.pth\.tar: no such file"),
    ("truncated", "truncated.pth.tar", r"checkpoint {dir}/truncated\.pth\.tar is truncated or not a PyTorch "
                                       r"checkpoint \(PytorchStreamReader failed reading zip archive: failed finding "
                                       r"central directory\); use a complete file written by train\.py"),
    ("not a checkpoint (a PNG)", "image.pth.tar", r"checkpoint {dir}/image\.pth\.tar is truncated or not a PyTorch "
                                                  r"checkpoint \(the pickle stream is damaged\); use a complete file "
                                                  r"written by train\.py"),
    ("another tool's checkpoint", "other_tool.pth.tar",
     r"checkpoint {dir}/other_tool\.pth\.tar was not written by this toolkit \(no 'unet-segmentation-toolkit' "
     r"header and not a plain state dict\); train one with train\.py"),
    ("weights only", "weights_only.pth", r"{dir}/weights_only\.pth holds weights only, with no architecture; it can "
                                         r"fine-tune with train\.py --load-model but detect\.py needs a checkpoint "
                                         r"written by train\.py"),
    ("ONNX not written by export.py", "foreign.onnx",
     r"{dir}/foreign\.onnx is an ONNX model but was not written by export\.py \(no 'unet-segmentation-toolkit' "
     r"metadata: architecture, normalization, patch size\); export it with: python export\.py --model CHECKPOINT"),
    ("not an ONNX file", "text.onnx", r"{dir}/text\.onnx is not an ONNX model onnxruntime can load \(.*\); export "
                                      r"one with: python export\.py --model CHECKPOINT"),
    ("OpenVINO model missing", "missing.xml", r"--model {dir}/missing\.xml: no such file"),
    ("OpenVINO model not written by export.py", "foreign.xml",
     r"{dir}/foreign\.xml is an OpenVINO model but was not written by export\.py \(no 'unet-segmentation-toolkit' "
     r"rt_info: architecture, normalization, patch size\); export one with: python export\.py --model CHECKPOINT "
     r"--format openvino"),
    ("OpenVINO .xml without its .bin", "no_weights.xml",
     r"OpenVINO model {dir}/no_weights\.xml: its weights no_weights\.bin are not beside it; an OpenVINO model is the "
     r"\.xml and the \.bin export\.py wrote, keep \(or copy\) them together"),
    ("not an OpenVINO file", "text.xml", r"{dir}/text\.xml is not an OpenVINO model OpenVINO can load \(.+\); export "
                                         r"one with: python export\.py --model CHECKPOINT --format openvino"),
    ("the .bin of an OpenVINO model", "foreign.bin", r"--model {dir}/foreign\.bin is the weights of an OpenVINO "
                                                     r"model; give {dir}/foreign\.xml"),
]


@pytest.mark.parametrize("case, name, message", DETECT_BAD_MODELS, ids=[case[0] for case in DETECT_BAD_MODELS])
def test_detect_refuses_bad_model_files_with_one_line(case, name, message, detect_inputs, tmp_path, capsys):
    import detect
    path = detect_inputs / name
    content = path.read_bytes() if path.exists() else None
    code = detect.main(detect.parse_args(["--model", str(path), "--source", str(detect_inputs / "image.png"),
                                          "--save-dir", str(tmp_path / "out")]))
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert re.fullmatch("error: " + message.format(dir=re.escape(str(detect_inputs))), err.strip()), err
    assert not (tmp_path / "out").exists()  # refused before any output
    assert (path.read_bytes() if path.exists() else None) == content


def test_detect_unreachable_stream_is_one_line_with_credentials_masked(detect_inputs, tmp_path, capsys):
    import detect
    from helpers.servers import free_port
    url = f"rtsp://admin:s3cret@127.0.0.1:{free_port()}/live"
    arguments = ["--model", str(detect_inputs / "model.pth.tar"), "--source", url, "--stream-timeout", "2",
                 "--save-dir", str(tmp_path / "out")]
    result = subprocess.run([sys.executable, str(REPO / "detect.py"), *arguments], cwd=REPO, env=ENV,
                            capture_output=True, text=True, timeout=600)  # only a hang: see below for the time
    assert result.returncode == 2, result.stderr
    assert result.stderr == (f"error: stream {url.replace('s3cret', '***')}: could not read a frame within 2 s "
                             f"(--stream-timeout); check the address, that the server is running, and "
                             f"--rtsp-transport\n")
    assert result.stdout == "" and not (tmp_path / "out").exists()  # no frame: no run folder, no results.csv
    # bounded by --stream-timeout: timed in this process, as the command's own time is mostly importing torch,
    # which a CPU shared three or four ways stretches to a minute
    started = time.monotonic()
    assert detect.main(detect.parse_args(arguments)) == 2
    assert time.monotonic() - started < 20, capsys.readouterr().err
