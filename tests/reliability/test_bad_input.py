"""Issue 4, training side: bad input (exit 2, one line) and untrusted checkpoints (damaged, foreign, or
crafted to run code when loaded); plus the model files and unreachable streams detect.py must refuse.
tests/README.md has the table of every case and what the user sees; test_faults.py here has the faults.

Bad input is checked in-process through `train.main` (same code path as the command line, without
paying the import time per case); a few cases also run the real command to show the exit code and
that stderr is one line.
"""

import ast
import os
import re
import shutil
import subprocess
import sys
import time
import warnings

import cv2
import numpy as np
import pytest
import torch

import train
from segtoolkit.models.checkpoints import CHECKPOINT_FORMAT, load_checkpoint
from segtoolkit.models.factory import model_from_checkpoint
from helpers.paths import RUNS
from helpers.training import TINY
from helpers.paths import REPO
from segtoolkit.errors import UserError
from helpers.train_runs import (ENV, data_flags, fingerprint, rewrite_mask, train_in_process, truncate,
                                 unique_name)


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


# ---------------------------------------------------------------- detect.py: model files and streams it refuses


@pytest.fixture(scope="module")
def detect_inputs(tmp_path_factory, untrained_checkpoint):
    """An image, a real (untrained) checkpoint and files detect.py --model must refuse."""
    folder = tmp_path_factory.mktemp("detect_inputs")
    cv2.imwrite(str(folder / "image.png"), np.full((40, 60, 3), 80, np.uint8))
    shutil.copy(untrained_checkpoint, folder / "model.pth.tar")
    model = model_from_checkpoint(load_checkpoint(untrained_checkpoint))
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
