"""detect.py end to end: every source kind, outputs and their sizes, accuracy, streams that drop, the window."""

import hashlib
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import detect
from segtoolkit.inference import onnx_runtime
from helpers.cameras import FakeCamera
from helpers.data import video_facts, write_video
from helpers.detect_runs import QUIET_ENV, detect_process, read_rows, run_detect, wait_for_rows, wait_for_stderr
from helpers.paths import REPO
from dataloaders import Frame
from segtoolkit.data.imaging import Letterbox
from segtoolkit.outputs.detections import ResultWriter
from segtoolkit.outputs.files import increment_path
from helpers.mjpeg_server import draw_frame
from segtoolkit.errors import UserError
from segtoolkit.data.masks import read_mask
from segtoolkit.models.factory import model_from_checkpoint, model_meta
from segtoolkit.inference import predictor as predict
from segtoolkit.data.imaging import preprocess_image, read_image
from segtoolkit.inference.full_size import to_labels
from segtoolkit.data.classes import class_colours
from segtoolkit.outputs.overlay import draw_overlay
from segtoolkit.data.polygons import find_regions, largest_area
from helpers.servers import wait_until


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """20 frames, 176x96, 12 FPS."""
    return write_video(tmp_path_factory.mktemp("clip") / "clip.mp4", 20)


LONG_CLIP_FRAMES = 3600  # about 2 minutes at detect.py's pace here: the window tests' bound


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory):
    """3600 frames: long enough to interrupt or quit in the middle. detect.py reads a file as fast as it can
    (300 frames took 26-35 s on a busy CPU, at 74-107 ms a frame, and a quiet one is several times faster),
    while the test acts only after polls, screenshots and key presses."""
    return write_video(tmp_path_factory.mktemp("long") / "long clip.mp4", LONG_CLIP_FRAMES)


def cli(capsys, *args):
    """detect.py's main() in this process (saves the interpreter start): (exit code, stdout, stderr)."""
    code = detect.main(detect.parse_args([str(arg) for arg in args]))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ---------------------------------------------------------------- pure pieces


def test_to_labels_thresholds_one_class_and_argmaxes_several_unless_a_threshold_is_given():
    """The one rule (segtoolkit.inference.full_size.to_labels) detect.py, val.py and training use. Several classes: the
    plain argmax by default (detect.py's --conf-thres 0.5 used to send unsure pixels to class 0 while the
    metrics counted the argmax); a threshold only when given."""
    binary = torch.tensor([[[2.0, -2.0], [0.1, -0.1]]])  # sigmoid: 0.88, 0.12, 0.52, 0.48
    assert to_labels(binary).tolist() == to_labels(binary, 0.5).tolist() == [[1, 0], [1, 0]]
    assert to_labels(binary, 0.6).tolist() == [[1, 0], [0, 0]]
    assert to_labels(binary, 0.0).tolist() == [[1, 1], [1, 1]] and to_labels(binary, 1.0).tolist() == [[0, 0], [0, 0]]
    logits = torch.log(torch.tensor([[[0.1, 0.3]], [[0.8, 0.3]], [[0.1, 0.4]]]))  # 3 classes, 1x2 pixels
    assert to_labels(logits).tolist() == [[1, 2]]  # the argmax, whatever the top probability
    assert to_labels(logits, 0.5).tolist() == [[1, 0]]  # second pixel: top prob 0.4 < 0.5
    assert to_labels(logits, 0.3).tolist() == [[1, 2]]
    assert to_labels(logits[None]).tolist() == [[[1, 2]]]  # a batch: classes on the third axis from the end
    ties = torch.zeros(3, 1, 2)
    assert to_labels(ties).tolist() == [[0, 0]]  # the first of equal logits, as argmax


def test_polygons_and_overlay():
    mask = np.zeros((60, 100), np.uint8)
    mask[10:20, 10:40] = 1  # 30x10 px: contour area (30-1)*(10-1)
    mask[30:50, 50:90] = 2
    regions = find_regions(mask)
    assert sorted(region.label for region in regions) == [1, 2]
    assert largest_area(regions) == (40 - 1) * (20 - 1)
    assert largest_area([]) == 0.0
    image = np.full((60, 100, 3), 50, np.uint8)
    out = draw_overlay(image, mask, regions, class_colours(3), ["1.0 ms"], ["bg", "a", "b"])
    assert (image == 50).all() and out.shape == image.shape
    expected = 0.55 * 50 + 0.45 * np.array(class_colours(3)[2])  # class 2's colour blended at alpha 0.45
    assert np.abs(out[40, 70] - expected).max() <= 1
    assert (out[55:, :40] == 50).all()  # background left alone away from the text and legend


def test_result_writer_names_are_unique_and_inside_save_dir(tmp_path):
    rgb = np.zeros((20, 30, 3), np.uint8)
    mask = np.zeros((20, 30), np.uint8)
    mask[5:10, 5:10] = 1

    def frame(path, capture=None, count=1, fps=None):
        return Frame(path, torch.zeros(3, 32, 32), rgb, capture, 0, count, Letterbox(20, 30, 21, 32), fps)

    writer = ResultWriter(tmp_path, save_video=True)
    for source in ("a/x.png", "b/x.jpg", "../../../evil.png"):
        writer.add(frame(source), mask, rgb, 1.0, 16.0)
    writer.add(frame("rtsp://u:***@cam:554/live", capture=object(), count=None, fps=10.0), mask, rgb, 1.0, 16.0)
    writer.close()
    files = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert files == ["cam_554_live.mp4", "evil.png", "masks/evil.png", "masks/x.png", "masks/x_2.png", "results.csv",
                     "x.png", "x_2.jpg"]
    assert set(np.unique(cv2.imread(str(tmp_path / "masks" / "x_2.png"), cv2.IMREAD_UNCHANGED))) == {0, 255}
    assert video_facts(tmp_path / "cam_554_live.mp4") == (1, 10.0, 30, 20)
    # told the run's sources, stems shared by different extensions keep them; the same name twice is numbered
    sources = ["a/x.png", "b/x.JPG", "c/x.png", "clip.mp4"]
    writer = ResultWriter(tmp_path / "told", save_video=True, sources=sources)
    for source in sources[:3]:
        writer.add(frame(source), mask, rgb, 1.0, 16.0)
    odd = np.zeros((21, 31, 3), np.uint8)  # an odd size: MJPEG .avi, read back at 31x21
    writer.add(Frame("clip.mp4", torch.zeros(3, 32, 32), odd, object(), 0, 5, Letterbox(21, 31, 21, 32), 10.0),
               mask[:21, :31], odd, 1.0, 0.0)
    writer.close()
    assert files_in(tmp_path / "told") == ["clip.avi", "masks/x.JPG.png", "masks/x.png.png", "masks/x.png_2.png",
                                           "results.csv", "x.JPG.jpg", "x.png.png", "x.png_2.png"]
    assert video_facts(tmp_path / "told" / "clip.avi") == (1, 10.0, 31, 21)


def test_increment_path(tmp_path):
    assert increment_path(tmp_path / "exp") == tmp_path / "exp"
    (tmp_path / "exp").mkdir()
    (tmp_path / "exp2").mkdir()
    assert increment_path(tmp_path / "exp") == tmp_path / "exp3"


# ---------------------------------------------------------------- command line errors


def test_missing_source_and_missing_path_exit_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        detect.parse_args(["--model", "x.pth.tar"])
    assert exit_info.value.code == 2 and "--source" in capsys.readouterr().err
    # the source is checked before the model is even looked at; no traceback, one line
    result = run_detect("--model", "no-model.pth.tar", "--source", "no/such/image.png")
    assert result.returncode == 2
    assert result.stderr == "error: --source no/such/image.png: no such file or folder; give an image, video, " \
                            "folder, glob, .txt list, stream URL or webcam index\n"


def test_save_dir_that_is_a_file_fails_at_start(tmp_path, capsys):
    taken = tmp_path / "taken"
    taken.write_text("not a folder")
    cv2.imwrite(str(tmp_path / "image.png"), np.zeros((8, 8, 3), np.uint8))
    code, _, err = cli(capsys, "--model", "no-model.pth.tar", "--source", tmp_path / "image.png", "--save-dir",
                       taken / "out")
    assert code == 2 and err == f"error: --save-dir {taken / 'out'}: {taken} is a file, not a folder; give another " \
                                "--save-dir\n"  # before the model is looked at


def test_conflicting_flags_are_clear_errors(trained_checkpoint, easy_held_out, capsys, tmp_path):
    source = easy_held_out / "imgs" / "easy_000.png"
    code, _, err = cli(capsys, "--model", trained_checkpoint, "--source", source, "--classes", "3")
    assert code == 2 and "--classes 3 conflicts with" in err and "trained with 1 class(es)" in err
    code, _, err = cli(capsys, "--model", trained_checkpoint, "--source", source, "--encoder", "resnet34")
    assert code == 2 and "uses encoder resnet18" in err
    code, _, err = cli(capsys, "--model", trained_checkpoint, "--source", source, "--patch-size", "100")
    assert code == 2 and "multiple of 32" in err
    code, _, _ = cli(capsys, "--model", trained_checkpoint, "--source", source, "--classes", "1", "--encoder",
                     "resnet18", "--save-dir", tmp_path)
    assert code == 0  # the same values as the checkpoint's are fine


@pytest.mark.skipif(Path("/dev/video0").exists(), reason="this machine has a webcam")
def test_absent_webcam_is_a_clear_error(trained_checkpoint, capsys):
    code, _, err = cli(capsys, "--model", trained_checkpoint, "--source", "0")
    assert code == 2 and "webcam /dev/video0 does not exist" in err


def test_view_img_without_display_fails_at_start(trained_checkpoint, easy_held_out, capsys, monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    code, _, err = cli(capsys, "--model", trained_checkpoint, "--source", easy_held_out / "imgs", "--view-img")
    assert code == 2 and "--view-img needs a display" in err
    monkeypatch.setenv("DISPLAY", ":4321")
    code, _, err = cli(capsys, "--model", trained_checkpoint, "--source", easy_held_out / "imgs", "--view-img")
    assert code == 2 and "DISPLAY=:4321 but no X server listens there" in err


# ---------------------------------------------------------------- files


def test_folder_masks_match_ground_truth(trained_checkpoint, easy_held_out, tmp_path):
    """Held-out, far-from-square images: right un-letterboxing gives a high IoU, a wrong one does not."""
    result = run_detect("--model", trained_checkpoint, "--source", easy_held_out / "imgs", "--save-dir", tmp_path)
    assert result.returncode == 0, result.stderr
    rows = read_rows(tmp_path)
    ious = []
    for index, truth_path in enumerate(sorted((easy_held_out / "masks").glob("*.png"))):
        truth = cv2.imread(str(truth_path), cv2.IMREAD_UNCHANGED) > 0
        mask = cv2.imread(str(tmp_path / "masks" / truth_path.name), cv2.IMREAD_UNCHANGED)
        annotated = cv2.imread(str(tmp_path / truth_path.name))
        assert mask.shape == truth.shape and annotated.shape[:2] == truth.shape  # original size
        assert set(np.unique(mask)) <= {0, 255}
        assert int(rows[index]["foreground_px"]) == np.count_nonzero(mask)
        assert rows[index]["source"].endswith(truth_path.name) and rows[index]["frame"] == "0"
        ious.append(np.logical_and(mask > 0, truth).sum() / np.logical_or(mask > 0, truth).sum())
    foreground_share = np.mean([(cv2.imread(str(p), 0) > 0).mean() for p in (easy_held_out / "masks").glob("*")])
    assert len(rows) == 8 and np.mean(ious) > 0.6 > 3 * foreground_share, (ious, foreground_share)
    assert re.search(r"image 8/8 .*easy_007.png \d+x\d+: [\d.]+ ms, largest polygon \d+ px", result.stdout)
    assert "8 frame(s)" in result.stdout.splitlines()[-1]


def test_stretch_trained_model_sees_stretched_frames_and_masks_keep_the_input_size(tmp_path, capsys, monkeypatch):
    """A model whose meta says input_mode 'stretch' is fed each image resized to the whole patch (no padding),
    and its patch-sized mask is stretched back: here a model that marks the top half of the patch marks
    exactly the top half of every image, whatever its aspect ratio."""
    patch, seen = 64, []

    def top_half(batch):
        seen.append(batch.clone())
        logits = torch.full((batch.shape[0], 1, patch, patch), -5.0)
        logits[:, :, :patch // 2] = 5.0
        return logits

    meta = model_meta("Unet", "resnet18", 1, patch, input_mode="stretch")
    monkeypatch.setattr(detect, "load_predictor", lambda *args, **kwargs: (meta, top_half))
    sizes = {"wide.png": (40, 120), "tall.png": (150, 70)}  # (height, width)
    for name, (height, width) in sizes.items():
        rng = np.random.default_rng(height)
        (tmp_path / "imgs").mkdir(exist_ok=True)
        cv2.imwrite(str(tmp_path / "imgs" / name), rng.integers(0, 255, (height, width, 3), dtype=np.uint8))
    code, _, err = cli(capsys, "--model", tmp_path / "stretched.pth.tar", "--source", tmp_path / "imgs",
                       "--save-dir", tmp_path / "out")
    assert code == 0, err
    expected = [preprocess_image(read_image(tmp_path / "imgs" / name), patch, stretch=True)[0] for name in
                sorted(sizes)]
    assert len(seen) == 2 and all(torch.equal(got[0], want) for got, want in zip(seen, expected))
    for name, (height, width) in sizes.items():
        mask = cv2.imread(str(tmp_path / "out" / "masks" / name), cv2.IMREAD_UNCHANGED)
        assert mask.shape == (height, width)
        assert (mask[:height // 2] == 255).all() and (mask[height // 2 + 1:] == 0).all()


def test_video_saved_at_source_size_fps_and_length(trained_checkpoint, clip, tmp_path, capsys):
    code, out, err = cli(capsys, "--model", trained_checkpoint, "--source", clip, "--save-video", "--save-dir",
                         tmp_path)
    assert code == 0, err
    assert video_facts(tmp_path / "clip.mp4") == (20, 12.0, 176, 96)
    rows = read_rows(tmp_path)
    assert [int(r["frame"]) for r in rows] == list(range(20))
    assert all(float(r["largest_polygon_px"]) > 0 for r in rows)  # two bright blobs in every frame
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4", "results.csv"]
    assert re.search(r"video 1/1 \(20/20\) .*clip.mp4 176x96: [\d.]+ ms, largest polygon \d+ px", out)


def test_glob_list_max_frames_and_nosave(trained_checkpoint, easy_held_out, clip, tmp_path, capsys):
    listing = tmp_path / "sources.txt"
    listing.write_text(f"{easy_held_out}/imgs/easy_00[01].png\n{clip}\n")
    out = tmp_path / "out"
    code, _, err = cli(capsys, "--model", trained_checkpoint, "--source", listing, "--max-frames", "7",
                       "--save-video", "--save-dir", out)
    assert code == 0, err
    rows = read_rows(out)
    assert [(Path(r["source"]).name, r["frame"]) for r in rows] == \
        [("easy_000.png", "0"), ("easy_001.png", "0")] + [("clip.mp4", str(i)) for i in range(5)]
    assert video_facts(out / "clip.mp4")[0] == 5
    assert (out / "masks" / "easy_001.png").is_file()
    nosave = tmp_path / "nosave"
    code, _, _ = cli(capsys, "--model", trained_checkpoint, "--source", f"{easy_held_out}/imgs/*.png", "--nosave",
                     "--save-video", "--save-dir", nosave)
    assert code == 0 and [p.name for p in nosave.iterdir()] == ["results.csv"]
    assert len(read_rows(nosave)) == 8


def test_default_save_dir_never_overwrites(trained_checkpoint, easy_held_out, tmp_path):
    image = easy_held_out / "imgs" / "easy_003.png"
    first = detect.run(model=trained_checkpoint, source=image, project=tmp_path / "runs" / "detect")
    second = detect.run(model=trained_checkpoint, source=image, project=tmp_path / "runs" / "detect")
    assert first["save_dir"] == tmp_path / "runs" / "detect" / "exp"
    assert second["save_dir"] == tmp_path / "runs" / "detect" / "exp2"
    assert (second["save_dir"] / "easy_003.png").is_file() and first["frames"] == second["frames"] == 1


def test_multiclass_masks_and_per_class_columns(multiclass_checkpoint, easy_held_out, tmp_path, capsys):
    code, _, err = cli(capsys, "--model", multiclass_checkpoint, "--source", easy_held_out / "imgs" / "easy_001.png",
                       "--conf-thres", "0", "--save-dir", tmp_path / "any")
    assert code == 0, err
    row = read_rows(tmp_path / "any")[0]
    assert list(row) == ["source", "frame", "inference_ms", "largest_polygon_px", "foreground_px", "px_cell",
                         "px_nucleus", "image_file", "mask_file", "video_file"]
    mask = read_mask(tmp_path / "any" / "masks" / "easy_001.png")  # a palette PNG: its indices
    assert set(np.unique(mask)) <= {0, 1, 2} and mask.shape == cv2.imread(
        str(easy_held_out / "imgs" / "easy_001.png")).shape[:2]
    assert int(row["px_cell"]) == (mask == 1).sum() and int(row["px_nucleus"]) == (mask == 2).sum()
    assert int(row["foreground_px"]) == (mask > 0).sum() > 0
    # an untrained 3-class model is never 99% sure: every pixel falls back to background
    cli(capsys, "--model", multiclass_checkpoint, "--source", easy_held_out / "imgs" / "easy_001.png",
        "--conf-thres", "0.99", "--save-dir", tmp_path / "sure")
    assert read_rows(tmp_path / "sure")[0]["foreground_px"] == "0"


def test_onnx_model_goes_through_load_onnx(trained_checkpoint, easy_held_out, tmp_path, monkeypatch):
    """detect.py --model x.onnx calls onnx_runtime.load_onnx and shares everything else with the torch path."""
    checkpoint = torch.load(trained_checkpoint, weights_only=True)
    model = model_from_checkpoint(checkpoint).eval()
    calls = []

    def load_onnx(path):
        calls.append(Path(path))
        return checkpoint["meta"], lambda batch: model(torch.from_numpy(batch)).detach().numpy()

    monkeypatch.setattr(onnx_runtime, "load_onnx", load_onnx)
    onnx_file = tmp_path / "model.onnx"
    onnx_file.write_bytes(b"stand-in")
    image = easy_held_out / "imgs" / "easy_002.png"
    detect.run(model=onnx_file, source=image, save_dir=tmp_path / "onnx")
    detect.run(model=trained_checkpoint, source=image, save_dir=tmp_path / "torch")
    assert calls == [onnx_file]
    onnx_mask = cv2.imread(str(tmp_path / "onnx" / "masks" / "easy_002.png"))
    assert np.array_equal(onnx_mask, cv2.imread(str(tmp_path / "torch" / "masks" / "easy_002.png")))


def test_unreadable_image_is_skipped_with_its_name(trained_checkpoint, easy_held_out, tmp_path, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    (folder / "bad.png").write_bytes(b"not a png")
    (folder / "good.png").write_bytes((easy_held_out / "imgs" / "easy_000.png").read_bytes())
    with pytest.warns(UserWarning, match=r"skipping .*bad.png: cannot be read \(truncated or not an image\)$"):
        code, _, _ = cli(capsys, "--model", trained_checkpoint, "--source", folder, "--save-dir", tmp_path / "out")
    assert code == 0
    assert [Path(r["source"]).name for r in read_rows(tmp_path / "out")] == ["good.png"]
    (folder / "good.png").unlink()  # nothing left to segment: a warning, a summary that says so, no folder
    with pytest.warns(UserWarning, match=r"skipping .*bad.png"):
        code, out, _ = cli(capsys, "--model", trained_checkpoint, "--source", folder, "--save-dir", tmp_path / "none")
    assert code == 0 and not (tmp_path / "none").exists()
    assert re.fullmatch(r"0 frames in [\d.]+ s: nothing to segment, nothing written", out.splitlines()[-1])


def files_in(folder):
    """Every file under `folder`, as paths relative to it."""
    return sorted(p.relative_to(folder).as_posix() for p in Path(folder).rglob("*") if p.is_file())


def file_hashes(folder):
    return {name: hashlib.sha256((Path(folder) / name).read_bytes()).hexdigest() for name in files_in(folder)}


def named_files(rows):
    """The output files results.csv names (image, mask, video columns), in row order, without repeats."""
    names = [r[column] for r in rows for column in ("image_file", "mask_file", "video_file") if r[column]]
    return list(dict.fromkeys(names))


def imwrite_failing_after(monkeypatch, works):
    """cv2.imwrite (images, binary masks) and write_bytes (palette masks) that write `works` files, then fail
    as on a full disk: imwrite returns False, write_bytes raises what write_new_file does. Returns the paths."""
    from segtoolkit.outputs import files as output_files
    real, real_bytes, calls = cv2.imwrite, output_files.write_bytes, []

    def imwrite(path, *args):
        calls.append(path)
        return len(calls) <= works and real(path, *args)

    def write_bytes(path, data):
        calls.append(path)
        if len(calls) > works:
            raise output_files.write_failure(path)
        real_bytes(path, data)

    monkeypatch.setattr(cv2, "imwrite", imwrite)
    monkeypatch.setattr(output_files, "write_bytes", write_bytes)
    return calls


def test_failed_image_write_is_one_line_exit_1_and_outputs_so_far_stay(multiclass_checkpoint, easy_held_out, clip,
                                                                        tmp_path, capsys, monkeypatch):
    """A write failing (full disk) at the 2nd image's mask: exit code 1, one line naming the file;
    the video before it is closed and plays, results.csv has a row for exactly the frames whose files exist,
    and the 2nd image's annotated file, written just before, is removed with it."""
    listing = tmp_path / "sources.txt"
    listing.write_text(f"{clip}\n{easy_held_out}/imgs/easy_000.png\n{easy_held_out}/imgs/easy_001.png\n"
                       f"{easy_held_out}/imgs/easy_002.png\n")
    calls = imwrite_failing_after(monkeypatch, works=3)
    out = tmp_path / "out"
    code, _, err = cli(capsys, "--model", multiclass_checkpoint, "--source", listing, "--save-video", "--save-dir", out)
    assert code == 1 and len(calls) == 4
    assert err.splitlines() == [f"error: cannot write {out / 'masks' / 'easy_001.png'} (disk full, or its folder was "
                                "removed or made read-only); the outputs before it are complete; free space or give "
                                "another --save-dir"]
    rows = read_rows(out)
    assert [(Path(r["source"]).name, r["frame"]) for r in rows] == \
        [("clip.mp4", str(i)) for i in range(20)] + [("easy_000.png", "0")]
    assert files_in(out) == ["clip.mp4", "easy_000.png", "masks/easy_000.png", "results.csv"]
    assert video_facts(out / "clip.mp4") == (20, 12.0, 176, 96)


def test_masks_folder_replaced_by_a_file_mid_run_is_one_line_exit_1(multiclass_checkpoint, easy_held_out, tmp_path,
                                                                   capsys, monkeypatch):
    from segtoolkit.outputs import detections as detect_outputs
    real_add = detect_outputs.ResultWriter.add

    def add(self, frame, *args):
        real_add(self, frame, *args)
        if frame.path.endswith("easy_000.png"):  # someone removes masks/ and leaves a file in its place
            shutil.rmtree(self.save_dir / "masks")
            (self.save_dir / "masks").write_text("in the way")

    monkeypatch.setattr(detect_outputs.ResultWriter, "add", add)
    out = tmp_path / "out"
    code, _, err = cli(capsys, "--model", multiclass_checkpoint, "--source", easy_held_out / "imgs", "--save-dir", out)
    assert code == 1 and len(err.splitlines()) == 1
    assert err.startswith(f"error: cannot write {out / 'masks'}") and "free space or give another --save-dir" in err
    assert [Path(r["source"]).name for r in read_rows(out)] == ["easy_000.png"]
    assert files_in(out) == ["easy_000.png", "masks", "results.csv"]  # easy_001.png written first is removed


def test_failed_results_row_removes_that_frames_files(tmp_path):
    """The disk fills up at the results.csv row, after the image and mask were written: a RunFailure naming
    results.csv, and the frame's two files are removed, so the folder still agrees with results.csv."""
    rgb, mask = np.zeros((20, 30, 3), np.uint8), np.zeros((20, 30), np.uint8)
    frame = Frame("a.png", torch.zeros(3, 32, 32), rgb, None, 0, 1, Letterbox(20, 30, 21, 32))
    writer = ResultWriter(tmp_path)
    writer.add(frame, mask, rgb, 1.0, 0.0)

    class FullDisk:
        def writerow(self, row):
            raise OSError(28, "No space left on device")

    writer.csv = FullDisk()
    with pytest.raises(UserError) as failure:
        writer.add(frame, mask, rgb, 1.0, 0.0)
    writer.close()
    assert failure.value.exit_code == 1 and str(failure.value) == \
        f"cannot write {tmp_path / 'results.csv'} (No space left on device); the outputs before it are complete; " \
        "free space or give another --save-dir"
    assert files_in(tmp_path) == ["a.png", "masks/a.png", "results.csv"] and len(read_rows(tmp_path)) == 1


def test_failed_write_on_the_command_line_has_no_traceback(multiclass_checkpoint, easy_held_out, tmp_path):
    script = tmp_path / "full_disk.py"
    script.write_text(textwrap.dedent("""\
        import sys
        import cv2
        real, calls = cv2.imwrite, []
        def imwrite(path, *args):  # the disk fills up after the first image (its palette mask is not imwrite's)
            calls.append(path)
            return len(calls) <= 1 and real(path, *args)
        cv2.imwrite = imwrite
        import detect
        sys.exit(detect.main(detect.parse_args(sys.argv[1:])))
        """))
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, str(script), "--model", str(multiclass_checkpoint), "--source",
                             str(easy_held_out / "imgs"), "--save-dir", str(out)], cwd=REPO,
                            env={**QUIET_ENV, "PYTHONPATH": str(REPO)},
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [f"error: cannot write {out / 'easy_001.png'} (disk full, or its folder was "
                                          "removed or made read-only); the outputs before it are complete; free "
                                          "space or give another --save-dir"]
    assert files_in(out) == ["easy_000.png", "masks/easy_000.png", "results.csv"] and len(read_rows(out)) == 1


def test_output_names_keep_unicode_and_the_extension_where_stems_collide(multiclass_checkpoint, easy_held_out,
                                                                         tmp_path, capsys):
    """日本.png keeps its name; odd.avi (3 frames) and odd.mp4 (5 frames) write odd.avi.mp4 and odd.mp4.mp4, each
    from its own source; results.csv names every file it wrote, relative to --save-dir."""
    source = tmp_path / "source"
    source.mkdir()
    shutil.copy(easy_held_out / "imgs" / "easy_000.png", source / "日本.png")
    write_video(source / "odd.avi", 3)
    write_video(source / "odd.mp4", 5)
    out = tmp_path / "out"
    code, _, err = cli(capsys, "--model", multiclass_checkpoint, "--source", source, "--save-video", "--save-dir", out)
    assert code == 0, err
    assert files_in(out) == ["masks/日本.png", "odd.avi.mp4", "odd.mp4.mp4", "results.csv", "日本.png"]
    assert video_facts(out / "odd.avi.mp4")[0] == 3 and video_facts(out / "odd.mp4.mp4")[0] == 5
    rows = read_rows(out)
    files = {(Path(r["source"]).name, r["image_file"], r["mask_file"], r["video_file"]) for r in rows}
    assert files == {("odd.avi", "", "", "odd.avi.mp4"), ("odd.mp4", "", "", "odd.mp4.mp4"),
                     ("日本.png", "日本.png", "masks/日本.png", "")}


def test_second_run_into_the_same_save_dir_appends_with_new_names(multiclass_checkpoint, easy_held_out, tmp_path,
                                                                  capsys):
    """Two runs into one --save-dir: results.csv keeps its header and gains the second run's rows, which name
    new files (easy_000_2.png); the first run's files are untouched, and every file is named by one row."""
    image = easy_held_out / "imgs" / "easy_000.png"
    out = tmp_path / "out"
    assert cli(capsys, "--model", multiclass_checkpoint, "--source", image, "--save-dir", out)[0] == 0
    first = file_hashes(out)
    assert cli(capsys, "--model", multiclass_checkpoint, "--source", image, "--save-dir", out)[0] == 0
    assert cli(capsys, "--model", multiclass_checkpoint, "--source", image, "--save-dir", out, "--nosave")[0] == 0
    rows = read_rows(out)
    assert [(r["image_file"], r["mask_file"]) for r in rows] == \
        [("easy_000.png", "masks/easy_000.png"), ("easy_000_2.png", "masks/easy_000_2.png"), ("", "")]
    assert (out / "results.csv").read_text(encoding="utf-8").count("source,frame") == 1
    assert {name: digest for name, digest in file_hashes(out).items() if name in first and name != "results.csv"} \
        == {name: digest for name, digest in first.items() if name != "results.csv"}
    assert sorted(named_files(rows) + ["results.csv"]) == files_in(out)  # the CSV agrees with the folder
    other = tmp_path / "other"  # a results.csv with other columns (another model's classes) is never appended to
    other.mkdir()
    (other / "results.csv").write_text("source,frame,inference_ms\nx.png,0,1.0\n")
    code, _, err = cli(capsys, "--model", multiclass_checkpoint, "--source", image, "--save-dir", other)
    assert code == 2 and err == f"error: --save-dir {other} holds a results.csv with other columns (another model's " \
                                "classes, an earlier detect.py, or other --save-probs); give another " \
                                "--save-dir\n"
    assert files_in(other) == ["results.csv"] and read_rows(other) == [{"source": "x.png", "frame": "0",
                                                                        "inference_ms": "1.0"}]


def test_odd_sized_video_is_saved_at_its_own_size(multiclass_checkpoint, tmp_path, capsys):
    """A 321x241 video: MP4 encoders here need even sizes (OpenCV would cut it to 320x240), so it is saved as
    MJPEG in .avi, read back at 321x241 with every frame."""
    source = tmp_path / "odd size.avi"
    writer = cv2.VideoWriter(str(source), cv2.CAP_OPENCV_MJPEG, cv2.VideoWriter_fourcc(*"MJPG"), 12.0, (321, 241))
    for number in range(6):
        writer.write(draw_frame(number, 321, 241))
    writer.release()
    assert video_facts(source) == (6, 12.0, 321, 241)
    out = tmp_path / "out"
    code, _, err = cli(capsys, "--model", multiclass_checkpoint, "--source", source, "--save-video", "--save-dir", out)
    assert code == 0, err
    assert files_in(out) == ["odd size.avi", "results.csv"] and video_facts(out / "odd size.avi") == (6, 12.0, 321, 241)
    assert {r["video_file"] for r in read_rows(out)} == {"odd size.avi"}
    capture = cv2.VideoCapture(str(out / "odd size.avi"))
    shapes = set()
    while (frame := capture.read())[0]:
        shapes.add(frame[1].shape)
    capture.release()
    assert shapes == {(241, 321, 3)}


def test_bad_patch_size_and_device_are_one_line_errors_that_create_nothing(multiclass_checkpoint, easy_held_out,
                                                                          tmp_path, capsys):
    image = easy_held_out / "imgs" / "easy_000.png"
    out = tmp_path / "out"
    cases = {("--patch-size", "0"): "--patch-size 0 is not a positive multiple of 32, which smp models need; try 32",
             ("--patch-size", "48"): "--patch-size 48 is not a positive multiple of 32, which smp models need; try 64"}
    for device in ("gpu", "mps", "cuda:x", "cpu:0", "tpu"):
        cases[("--device", device)] = f"--device {device} is not a device this toolkit runs on; use auto, cpu, " \
                                      f"cuda or cuda:N (N: the GPU's index)"
    for flags, message in cases.items():
        code, stdout, err = cli(capsys, "--model", multiclass_checkpoint, "--source", image, "--save-dir", out, *flags)
        assert (code, stdout, err) == (2, "", f"error: {message}\n"), flags
        assert not out.exists()


def test_skipped_image_warning_is_one_line_in_detection_terms(multiclass_checkpoint, easy_held_out, tmp_path):
    """The real command: the warning for an unreadable image says what detection does (no 'remove it from the
    split', a training fix) and shows no source line of the toolkit (file.py:NN, warnings.warn(...))."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    (folder / "bad.png").write_bytes(b"not a png")
    shutil.copy(easy_held_out / "imgs" / "easy_000.png", folder / "good.png")
    result = run_detect("--model", multiclass_checkpoint, "--source", folder, "--save-dir", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    assert result.stderr == f"warning: skipping {folder / 'bad.png'}: cannot be read (truncated or not an image)\n"
    assert not re.search(r"\.py:\d+:|warnings\.warn\(", result.stderr)


def test_ctrl_c_leaves_playable_video_and_complete_csv(trained_checkpoint, long_clip, tmp_path):
    with detect_process("--model", trained_checkpoint, "--source", long_clip, "--save-video", "--save-dir",
                        tmp_path) as process:
        wait_for_rows(process, tmp_path, 5)
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    rows = read_rows(tmp_path)
    assert 5 <= len(rows) < LONG_CLIP_FRAMES and all(None not in r.values() and r["foreground_px"] != "" for r in rows)
    frames, fps, width, height = video_facts(tmp_path / "long clip.mp4")  # spaces are kept in output names
    assert (frames, fps, width, height) == (len(rows), 12.0, 176, 96)
    assert "SIGINT received" in stderr and "(interrupted)" in stdout


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
    monkeypatch.setattr(detect, "REPO", tmp_path)
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


# ---------------------------------------------------------------- the window, on a virtual display


def find_window(display, title_start):
    """(id, x, y, width, height) of the first top-level window whose name starts with `title_start`, or None."""
    windows = find_windows(display, title_start)
    return windows[0] if windows else None


def find_windows(display, title_start):
    """(id, x, y, width, height) of every window (mapped or not) whose name starts with `title_start`: a test
    that looked only at the first one listed saw it black for 120 s on a busy machine, so each is looked at."""
    tree = subprocess.run(["xwininfo", "-root", "-tree", "-display", display], capture_output=True, text=True).stdout
    found = []
    for line in tree.splitlines():
        match = re.search(r'(0x[0-9a-f]+) "' + re.escape(title_start) +
                          r'[^"]*":.*?(\d+)x(\d+)[+-]\d+[+-]\d+\s+\+(-?\d+)\+(-?\d+)', line)
        if match:
            width, height, x, y = map(int, match.groups()[1:])
            found.append((match.group(1), x, y, width, height))
    return found


def screenshot(display, path):
    subprocess.run(["import", "-display", display, "-window", "root", str(path)], check=True, timeout=60)
    return cv2.imread(str(path))


def window_pixels(display, window_id, path):
    """What X holds of one window (by id), or None when it cannot be read (gone, not mapped yet)."""
    done = subprocess.run(["import", "-display", display, "-window", window_id, str(path)], capture_output=True,
                          timeout=60)
    return cv2.imread(str(path)) if done.returncode == 0 else None


def wait_for_window_showing(display, title_start, path, process, shows, timeout=120):
    """(id, pixels on screen) of the window titled `title_start`... once `shows(pixels)` is true, or of the
    last look when `timeout` s have passed (the caller's assertions then say what is wrong).

    A window is mapped, at its size, before its first paint, and on a busy machine that paint can come
    seconds later (a screenshot then shows the window all black): one screenshot races it. The window is
    looked up again for every screenshot, since it may still be moved or resized."""
    last = []

    def look():
        assert process.poll() is None, (f"detect.py ended while its window was awaited; last look: "
                                        f"{describe(last[1]) if last and last[1] is not None else 'no window'}; "
                                        f"{process.output()[1]}")
        for window_id, x, y, width, height in find_windows(display, title_start):
            # the window's own contents by its id, and its place on the root window: either may lag under load
            for pixels in (window_pixels(display, window_id, path),
                           screenshot(display, path)[y:y + height, x:x + width]):
                if pixels is not None and pixels.size:
                    last[:] = [window_id, pixels]
                    if shows(pixels):
                        return True
        return False
    wait_until(look, timeout, interval=0.5)
    assert last, f"no window {title_start!r} on the display"
    return last


def describe(shown):
    """What a test saw of a window: its size, mean brightness and share of overlay green."""
    return (f"{shown.shape[1]}x{shown.shape[0]} px, mean {shown.mean():.1f}, green {overlay_green(shown).mean():.3f}"
            if shown.size else "an empty screenshot")


def overlay_green(shown):
    """Pixels of a screenshot where the blended mask colour (class 1's green) shows."""
    return (shown[..., 1].astype(int) - shown[..., 2] > 60) & (shown[..., 1] > 150)


def press_key(display, window, key, process, timeout=120):
    """Focus the window and type `key` (XTEST, like a real keyboard) until the process exits.

    A key typed before the window has the focus is lost, so it is typed again every 10 s until `timeout`:
    on a busy machine the frame in hand, closing the outputs and exiting can take a while."""
    env = {**QUIET_ENV, "DISPLAY": display}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            subprocess.run(["xdotool", "windowfocus", "--sync", window], env=env, capture_output=True, timeout=30)
            subprocess.run(["xdotool", "key", key], env=env, capture_output=True, timeout=30)
        except subprocess.TimeoutExpired:  # the window went away meanwhile: the process is ending
            pass
        if wait_until(lambda: process.poll() is not None, 10):
            return
    raise AssertionError(f"detect.py did not react to key {key} within {timeout} s")


def test_view_img_shows_live_video_and_q_quits(trained_checkpoint, long_clip, xvfb_display, tmp_path):
    env = {**QUIET_ENV, "DISPLAY": xvfb_display}
    with detect_process("--model", trained_checkpoint, "--source", long_clip, "--view-img", "--save-dir", tmp_path,
                        env=env) as process:
        window = wait_until(lambda: find_window(xvfb_display, "detect.py ") or process.poll() is not None, 300)
        assert window and process.poll() is None, f"no detect.py window on the display: {process.output()}"
        wait_for_rows(process, tmp_path, 10)
        window_id, shown = wait_for_window_showing(
            xvfb_display, "detect.py ", tmp_path / "screen.png", process,
            lambda shown: shown.shape[1] >= 400 and shown.mean() > 20 and overlay_green(shown).mean() > 0.02)
        assert shown.shape[1] >= 400 and shown.mean() > 20  # enlarged from 176x96, and not black
        assert overlay_green(shown).mean() > 0.02  # the blended mask colour is on screen
        press_key(xvfb_display, window_id, "q", process)
        stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr
    assert "(quit)" in stdout and len(read_rows(tmp_path)) < LONG_CLIP_FRAMES


def test_view_img_on_a_live_stream_and_q_quits(trained_checkpoint, mjpeg_server, xvfb_display, tmp_path):
    """--view-img on the HTTP MJPEG stream: the window shows the overlay while the stream runs; q ends the run
    with exit code 0 and every output complete."""
    env = {**QUIET_ENV, "DISPLAY": xvfb_display}
    with detect_process("--model", trained_checkpoint, "--source", mjpeg_server.url, "--view-img", "--save-video",
                        "--save-dir", tmp_path, "--stream-timeout", "10", env=env) as process:
        window = wait_until(lambda: find_window(xvfb_display, f"detect.py {mjpeg_server.url}")
                            or process.poll() is not None, 300)
        assert window and process.poll() is None, f"no detect.py window on the display: {process.output()}"
        wait_for_rows(process, tmp_path, 10)
        window_id, shown = wait_for_window_showing(
            xvfb_display, f"detect.py {mjpeg_server.url}", tmp_path / "screen.png", process,
            lambda shown: shown.shape[1] >= 400 and shown.mean() > 20 and overlay_green(shown).mean() > 0.02)
        assert process.poll() is None  # the stream is still running
        assert shown.shape[1] >= 400 and shown.mean() > 20  # enlarged from 192x128, and not black
        assert overlay_green(shown).mean() > 0.02  # the blended mask colour is on screen
        press_key(xvfb_display, window_id, "q", process)
        stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr
    assert "(quit)" in stdout.splitlines()[-1]
    rows = read_rows(tmp_path)
    assert len(rows) >= 10 and all(None not in r.values() and r["foreground_px"] != "" for r in rows)
    assert f"{len(rows)} frame(s)" in stdout.splitlines()[-1]
    frames, fps, width, height = video_facts(tmp_path / f"127.0.0.1_{mjpeg_server.port}_stream.mjpg.mp4")
    assert (frames, width, height) == (len(rows), 192, 128) and fps == pytest.approx(10, rel=0.2)  # playable, whole


def test_an_image_window_is_enlarged_and_waits_for_its_key(monkeypatch):
    """cv2's window calls recorded, no display: a small image gets a window 480 px on its long side, and
    show() returns only once a key comes (q would quit)."""
    from segtoolkit.outputs import detections as detect_outputs
    calls, keys = [], iter([-1] * 6 + [ord("n")])
    fake = {"namedWindow": lambda *a: calls.append("namedWindow"),
            "resizeWindow": lambda name, width, height: calls.append(("resizeWindow", width, height)),
            "imshow": lambda name, image: calls.append(("imshow", image.shape)),
            "setWindowTitle": lambda *a: None, "getWindowProperty": lambda *a: 1.0,
            "waitKey": lambda delay: next(keys)}
    for name, function in fake.items():
        monkeypatch.setattr(detect_outputs.cv2, name, function)
    frame = Frame("a.png", None, np.zeros((30, 40, 3), np.uint8), None, 0, 1, None)
    viewer = detect_outputs.Viewer()
    assert viewer.show(frame, np.zeros((30, 40, 3), np.uint8), threading.Event()) is True
    assert calls == ["namedWindow", ("resizeWindow", 480, 360), ("imshow", (30, 40, 3))]
    assert next(keys, None) is None  # the key ended the wait
    keys = iter([ord("q")])
    assert viewer.show(frame, np.zeros((30, 40, 3), np.uint8), threading.Event()) is False  # q quits
    assert calls.count("namedWindow") == 1  # one window for every image


def test_view_img_image_waits_for_a_key(trained_checkpoint, easy_held_out, xvfb_display, tmp_path):
    env = {**QUIET_ENV, "DISPLAY": xvfb_display}
    image = easy_held_out / "imgs" / "easy_004.png"
    with detect_process("--model", trained_checkpoint, "--source", image, "--view-img", "--save-dir", tmp_path,
                        env=env) as process:
        window = wait_until(lambda: find_window(xvfb_display, "detect.py ") or process.poll() is not None, 300)
        assert window and process.poll() is None, f"no detect.py window on the display: {process.output()}"
        time.sleep(1.5)
        assert process.poll() is None, "the window closed without a key press"

        def difference_to_saved(shown):
            saved = cv2.imread(str(tmp_path / "easy_004.png"))
            saved = cv2.resize(saved, (shown.shape[1], shown.shape[0]), interpolation=cv2.INTER_AREA)
            return np.abs(shown.astype(int) - saved).mean()
        window_id, shown = wait_for_window_showing(xvfb_display, "detect.py ", tmp_path / "screen.png", process,
                                                   lambda shown: difference_to_saved(shown) < 25)
        assert difference_to_saved(shown) < 25  # the window shows the annotated image
        press_key(xvfb_display, window_id, "space", process)
        process.communicate(timeout=60)
    assert process.returncode == 0


# ---------------------------------------------------------------- --half and the runtime chosen by the file


def iou(a, b):
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def write_cpuinfo(path, flags):
    path.write_text(f"processor\t: 0\nmodel name\t: Test CPU 9000\nflags\t\t: fpu sse2 avx {flags}\n\n")
    return path


def test_half_precision_follows_the_device_and_the_cpus_native_bfloat16(tmp_path, monkeypatch):
    sapphire = write_cpuinfo(tmp_path / "amx", "avx2 avx512f avx512_bf16 amx_tile amx_bf16")
    zen4 = write_cpuinfo(tmp_path / "zen4", "avx2 avx512f avx512_bf16")
    epyc = write_cpuinfo(tmp_path / "epyc", "avx2 fma f16c")
    assert predict.native_bfloat16(sapphire) == ["AVX-512 BF16", "AMX"]
    assert predict.native_bfloat16(zen4) == ["AVX-512 BF16"] and predict.native_bfloat16(epyc) == []
    assert predict.cpu_summary(epyc) == "Test CPU 9000: AVX2, no AVX-512 BF16 or AMX"
    cpu = torch.device("cpu")
    assert predict.half_dtype(torch.device("cuda"), True) == torch.float16  # no CUDA needed to decide
    assert predict.half_dtype(cpu, True, cpu_bfloat16=True) == torch.bfloat16
    assert predict.half_dtype(cpu, False, cpu_bfloat16=True) == torch.float32
    monkeypatch.setattr(predict, "cpu_summary", lambda: "Test CPU 9000: AVX2, no AVX-512 BF16 or AMX")
    with pytest.warns(UserWarning) as caught:
        assert predict.half_dtype(cpu, True, cpu_bfloat16=False) == torch.float32
    assert [str(w.message) for w in caught] == ["--half: this CPU has no native bfloat16 (Test CPU 9000: AVX2, no "
                                                "AVX-512 BF16 or AMX); running float32"]


def test_half_without_native_bfloat16_warns_once_and_runs_float32(trained_checkpoint, easy_held_out, tmp_path,
                                                                  monkeypatch):
    monkeypatch.setattr(predict, "native_bfloat16", lambda: [])
    source = easy_held_out / "imgs"
    with pytest.warns(UserWarning, match=r"^--half: this CPU has no native bfloat16 \(.*\); running float32$") as caught:
        detect.run(model=trained_checkpoint, source=source, save_dir=tmp_path / "half", half=True)
    assert len([w for w in caught if "--half" in str(w.message)]) == 1
    detect.run(model=trained_checkpoint, source=source, save_dir=tmp_path / "float32")
    for mask in sorted((tmp_path / "float32" / "masks").iterdir()):
        assert mask.read_bytes() == (tmp_path / "half" / "masks" / mask.name).read_bytes()


def test_half_on_a_bfloat16_cpu_runs_bfloat16_and_agrees_on_sure_pixels(trained_checkpoint, easy_held_out):
    """The bfloat16 path itself, forced on a CPU without native bfloat16 (where PyTorch emulates it, slowly):
    weights and inputs in bfloat16, logits back in float32, and no pixel that float32 is sure of flips."""
    cpu = torch.device("cpu")
    meta, half = predict.load_predictor(trained_checkpoint, cpu, half=True, cpu_bfloat16=True)
    _, float32 = predict.load_predictor(trained_checkpoint, cpu)
    assert next(half.model.parameters()).dtype == torch.bfloat16
    flipped = sure = 0
    for image_path in sorted((easy_held_out / "imgs").iterdir()):
        tensor, box = preprocess_image(read_image(image_path), meta["patch_size"], meta["mean"], meta["std"])
        expected, got = float32(tensor[None])[0, 0], half(tensor[None])[0, 0]
        assert got.dtype == torch.float32 and got.shape == expected.shape
        image = np.s_[:box.scaled_height, :box.scaled_width]
        confident = expected[image].abs() > 2
        flipped += ((got[image] > 0) != (expected[image] > 0))[confident].sum().item()
        sure += confident.sum().item()
        assert iou((got[image] > 0).numpy(), (expected[image] > 0).numpy()) >= 0.95
    assert sure > 1000 and flipped <= 1e-3 * sure, (flipped, sure)


def test_half_chooses_the_openvino_precision_hint_and_onnx_stays_float32(trained_checkpoint, tmp_path, monkeypatch):
    """.xml: --half is OpenVINO's bf16 inference precision where the CPU has bfloat16, f32 elsewhere (with the
    warning); .onnx: onnxruntime has no half precision for the file, so --half says so and runs it."""
    from segtoolkit.inference import openvino_runtime
    meta = torch.load(trained_checkpoint, weights_only=True)["meta"]
    hints = []
    monkeypatch.setattr(openvino_runtime, "load_openvino",
                        lambda path, precision: hints.append(precision) or (meta, lambda batch: batch[:, :1]))
    monkeypatch.setattr(onnx_runtime, "load_onnx", lambda path: (meta, lambda batch: batch[:, :1]))
    for name in ("model.xml", "model.onnx"):
        (tmp_path / name).write_text("stand-in")
    cpu = torch.device("cpu")
    predict.load_predictor(tmp_path / "model.xml", cpu, half=True, cpu_bfloat16=True)
    predict.load_predictor(tmp_path / "model.xml", cpu)
    with pytest.warns(UserWarning, match="no native bfloat16"):
        predict.load_predictor(tmp_path / "model.xml", cpu, half=True, cpu_bfloat16=False)
    assert hints == ["bf16", "f32", "f32"]
    with pytest.warns(UserWarning, match=r"^--half: onnxruntime runs model.onnx in float32 \(it has no half "
                                         r"precision for a float32 file\); for half precision give the \.pth\.tar "
                                         r"checkpoint or an OpenVINO export \(\.xml\)$"):
        _, predictor = predict.load_predictor(tmp_path / "model.onnx", cpu, half=True)
    assert predictor(torch.ones(1, 3, 4, 4)).dtype == torch.float32


def test_half_on_the_command_line(trained_checkpoint, easy_held_out, tmp_path):
    """The real command on this machine's CPU: without native bfloat16 one warning line and float32's masks;
    with it no warning and masks that agree."""
    image = easy_held_out / "imgs" / "easy_001.png"
    half = run_detect("--model", trained_checkpoint, "--source", image, "--half", "--save-dir", tmp_path / "half")
    float32 = run_detect("--model", trained_checkpoint, "--source", image, "--save-dir", tmp_path / "float32")
    assert half.returncode == 0 and float32.returncode == 0, half.stderr
    masks = [cv2.imread(str(tmp_path / name / "masks" / image.name), cv2.IMREAD_GRAYSCALE) > 0
             for name in ("half", "float32")]
    if predict.native_bfloat16():
        assert half.stderr == "" and iou(*masks) >= 0.99
    else:
        assert half.stderr == f"warning: --half: this CPU has no native bfloat16 ({predict.cpu_summary()}); " \
                              f"running float32\n"
        assert np.array_equal(*masks)
