"""detect.py: the pure pieces, command line errors, --half and the runtime chosen by the model file.

Its outputs are in test_detect_outputs.py, live streams and the webcam in test_detect_streams.py, the window in
test_detect_window.py."""

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import detect
from segtoolkit.inference import onnx_runtime
from helpers.detect_runs import cli, run_detect
from segtoolkit.outputs.files import make_run_dir
from segtoolkit.inference import predictor as predict
from segtoolkit.data.imaging import preprocess_image, read_image
from segtoolkit.inference.full_size import to_labels
from segtoolkit.data.classes import class_colours
from segtoolkit.outputs.overlay import draw_overlay
from segtoolkit.data.polygons import find_regions, largest_area


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


def test_make_run_dir_takes_the_first_free_name(tmp_path):
    assert make_run_dir(tmp_path / "exp") == tmp_path / "exp"
    (tmp_path / "exp2").touch()  # a file of that name is skipped too
    assert make_run_dir(tmp_path / "exp") == tmp_path / "exp3"


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
    expected = r"^--half: this CPU has no native bfloat16 \(.*\); running float32$"
    with pytest.warns(UserWarning, match=expected) as caught:
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


@pytest.mark.slow
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
