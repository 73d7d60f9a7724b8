"""detect.py end to end on files: every file source kind, outputs and their sizes, accuracy, failed writes, Ctrl-C."""

import hashlib
import re
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import detect
from segtoolkit.inference import onnx_runtime
from helpers.data import LONG_CLIP_FRAMES, video_facts, write_video
from helpers.detect_runs import QUIET_ENV, cli, detect_process, read_rows, run_detect, wait_for_rows
from helpers.paths import REPO
from dataloaders import Frame
from segtoolkit.data.imaging import Letterbox
from segtoolkit.outputs.detections import ResultWriter
from helpers.mjpeg_server import draw_frame
from segtoolkit.errors import UserError
from segtoolkit.data.masks import read_mask
from segtoolkit.models.factory import model_from_checkpoint, model_meta
from segtoolkit.data.imaging import preprocess_image, read_image


# ---------------------------------------------------------------- files


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
    monkeypatch.setattr(detect, "open_model", lambda *args, **kwargs: (meta, top_half, None))  # no stored run
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
    assert list(row) == ["source", "frame", "inference_ms", "batch_size", "largest_polygon_px", "foreground_px",
                         "px_cell", "px_nucleus", "image_file", "mask_file", "video_file"]
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


