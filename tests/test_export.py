"""export.py: ONNX export, metadata round trip, agreement with PyTorch, and detect.py running the file."""

import contextlib
import io
import itertools
import json
import os
import re
import subprocess
import sys
import importlib.util
import textwrap
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
import torch

import export
from segtoolkit.export import onnx as onnx_export
from segtoolkit.inference import onnx_runtime
from segtoolkit.inference import openvino_runtime
from segtoolkit.export import int8 as quantize
from segtoolkit.inference import predictor as predict_module
from dataset import BinaryDataset
from segtoolkit.data.splits import pair_masks
from segtoolkit.data.imaging import normalize, preprocess_image, read_image, scaled, unletterbox
from segtoolkit.training.losses import make_loss
from segtoolkit.models.checkpoints import MODEL_META_KEYS, OPTIONAL_META_KEYS, save_checkpoint
from segtoolkit.errors import UserError
from segtoolkit.models.factory import build_model, model_from_checkpoint, model_meta
from segtoolkit.inference.tiling import tile_starts

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "sample"
PATCH = 64


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A Unet/resnet18 trained for 30 steps on the bundled sample at patch 64 (about 15 s): its masks
    have real edges, so agreement is tested where PyTorch and onnxruntime could disagree. No augmentation
    (albumentations draws its own seeds): the same model every run."""
    torch.manual_seed(0)
    images = sorted((SAMPLE / "imgs").iterdir())[:24]
    data = BinaryDataset(pair_masks(images, SAMPLE / "masks"), PATCH)
    loader = torch.utils.data.DataLoader(data, batch_size=8, shuffle=True, drop_last=True)
    model = build_model("Unet", "resnet18", 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    criterion = make_loss("bce", 1)  # the letterbox padding's targets are IGNORE: it must not count
    model.train()
    for batch, masks in itertools.islice(itertools.chain.from_iterable(itertools.repeat(loader)), 30):
        loss = criterion(model(batch), masks)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    path = tmp_path_factory.mktemp("export") / "best-checkpoint.pth.tar"
    save_checkpoint(path, model, model_meta("Unet", "resnet18", 1, PATCH), {"epochs": 1})
    return path


@pytest.fixture(scope="module")
def exported(checkpoint):
    """export.py --model CHECKPOINT with defaults: (onnx path, exit code)."""
    code = export.main(export.parse_args(["--model", str(checkpoint)]))
    return checkpoint.with_name("best-checkpoint.onnx"), code


def iou(a, b):
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else np.logical_and(a, b).sum() / union


def test_check_and_calibration_images_are_stretched_for_a_stretch_trained_model(tmp_path):
    """--check-images and --int8's calibration feed what detect.py feeds: a stretch-trained model (meta
    input_mode 'stretch') sees each image resized to the whole patch, a letterbox one the letterbox."""
    path = tmp_path / "wide.png"
    cv2.imwrite(str(path), np.random.default_rng(0).integers(0, 255, (40, 120, 3), dtype=np.uint8))
    image = read_image(path)
    for mode, stretch in (("stretch", True), ("letterbox", False)):
        [array] = quantize.preprocessed([path], model_meta("Unet", "resnet18", 1, 64, input_mode=mode))
        assert array.shape == (1, 3, 64, 64)
        assert np.array_equal(array, preprocess_image(image, 64, stretch=stretch)[0][None].numpy()), mode


def test_check_and_calibration_inputs_of_a_crop_trained_model_are_full_resolution_tiles(tmp_path):
    """Issue 22: a crop-trained model (meta input_mode 'tile') was calibrated and checked on whole letterboxed
    images, while detect.py feeds it patch-size tiles of the image at full resolution (times its --scale)."""
    path = tmp_path / "large.png"
    cv2.imwrite(str(path), np.random.default_rng(1).integers(0, 255, (200, 300, 3), dtype=np.uint8))
    image = read_image(path)
    for scale in (1.0, 0.5):
        meta = model_meta("Unet", "resnet18", 1, 64, input_mode="tile", scale=scale)
        seen = scaled(image, scale)  # what detect.py tiles: the image at its own size times the model's scale
        assert seen.shape[:2] == (round(200 * scale), round(300 * scale))
        places = [(top, left) for top in tile_starts(seen.shape[0], 64, 64)
                  for left in tile_starts(seen.shape[1], 64, 64)]
        arrays = quantize.preprocessed([path], meta, count=1000)
        assert len(arrays) == len(places) > 1  # every tile, not one letterboxed image
        for array, (top, left) in zip(arrays, places):
            assert array.shape == (1, 3, 64, 64) and array.dtype == np.float32
            assert np.array_equal(array[0], normalize(seen[top:top + 64, left:left + 64]).numpy()), (top, left)
        assert places[-1] == (seen.shape[0] - 64, seen.shape[1] - 64)  # the far corner, flush with the edge
    meta = model_meta("Unet", "resnet18", 1, 64, input_mode="tile")
    assert len(quantize.preprocessed([path, path], meta, count=4)) == 4  # count // images tiles of each image
    assert len(quantize.preprocessed([path] * 5, meta, count=4)) == 5  # at least one of each


def test_export_of_a_crop_trained_model_checks_on_tiles(checkpoint, tmp_path):
    stored = torch.load(checkpoint, weights_only=True)
    tiled = tmp_path / "tiled.pth.tar"
    model = model_from_checkpoint(stored)
    save_checkpoint(tiled, model, {**stored["meta"], "input_mode": "tile"})
    images = tmp_path / "check"
    images.mkdir()
    for image in sorted((SAMPLE / "imgs").iterdir())[:2]:
        (images / image.name).write_bytes(image.read_bytes())
    path, meta, check = export.run(model=tiled, check_images=str(images))
    assert meta["input_mode"] == "tile" and check.images == "tiles of 2 images (--check-images)"
    assert check.agreement[0] >= 0.99  # float32 against PyTorch on the tiles detect.py feeds


def test_default_output_strips_checkpoint_suffixes():
    assert onnx_export.default_output("runs/exp/best-checkpoint.pth.tar") == Path("runs/exp/best-checkpoint.onnx")
    assert onnx_export.default_output("weights.pt") == Path("weights.onnx")


def exported_meta(meta):
    """What an export carries of a checkpoint's meta: the model keys, and the input mode and scale (defaults
    when an older checkpoint has none)."""
    return {**{key: meta[key] for key in MODEL_META_KEYS}, **{key: meta.get(key, default) for key, default in
                                                               OPTIONAL_META_KEYS.items()}}


def test_export_writes_file_with_meta_dynamic_axes_and_opset(checkpoint, exported):
    path, code = exported
    assert code == 0 and path.is_file()
    proto = onnx.load(str(path), load_external_data=False)
    assert max(entry.version for entry in proto.opset_import if entry.domain in ("", "ai.onnx")) >= 17
    stored = {entry.key: entry.value for entry in proto.metadata_props}
    expected = torch.load(checkpoint, weights_only=True)["meta"]
    assert json.loads(stored[onnx_runtime.META_KEY]) == exported_meta(expected)
    dims = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, "height", "width"]
    meta, _ = onnx_runtime.load_onnx(path)
    assert meta == exported_meta(expected)


def test_onnx_masks_agree_with_pytorch_on_sample_images(checkpoint, exported):
    path, _ = exported
    model = model_from_checkpoint(torch.load(checkpoint, weights_only=True)).eval()
    meta, predict = onnx_runtime.load_onnx(path)
    scores, foreground = [], []
    for image_path in sorted((SAMPLE / "imgs").iterdir())[-16:]:
        image = read_image(image_path)
        tensor, box = preprocess_image(image, meta["patch_size"], meta["mean"], meta["std"])
        with torch.inference_mode():
            expected = model(tensor[None])[0, 0].numpy() > 0
        got = predict(tensor[None].numpy())[0, 0] > 0
        foreground.append(expected.mean())
        scores.append(iou(unletterbox(got.astype(np.uint8), box), unletterbox(expected.astype(np.uint8), box)))
    assert min(scores) >= 0.99, scores
    assert 0.02 < np.mean(foreground) < 0.98  # a trained model: masks with edges, not all one class
    # a larger batch at another size runs too (dynamic batch, height and width)
    assert predict(np.zeros((2, 3, 96, 128), np.float32)).shape == (2, 1, 96, 128)


def test_decoder_resizes_take_constant_scales_and_agree_at_other_sizes(checkpoint, exported):
    """smp's Unet decoder upsamples to a size computed from feature shapes; export.py replaces it by the
    constant 2x scale it always is (faster in onnxruntime), and the logits stay PyTorch's at any size."""
    path, _ = exported
    graph = onnx.load(str(path)).graph
    resizes = [node for node in graph.node if node.op_type == "Resize"]
    scales = {tensor.name: tuple(onnx.numpy_helper.to_array(tensor)) for tensor in graph.initializer}
    assert len(resizes) == 5 and all(len(node.input) == 3 and scales[node.input[2]] == (1, 1, 2, 2)
                                     for node in resizes)
    assert not [node for node in graph.node if node.op_type == "Shape"]  # the size computations are gone
    model = model_from_checkpoint(torch.load(checkpoint, weights_only=True)).eval()
    _, predict = onnx_runtime.load_onnx(path)
    for height, width in ((64, 64), (96, 160), (224, 128)):
        batch = torch.randn(1, 3, height, width)
        with torch.inference_mode():
            expected = model(batch).numpy()
        assert np.abs(predict(batch.numpy()) - expected).max() < 1e-3


def test_a_resize_whose_factor_changes_with_the_size_is_left_alone(tmp_path):
    """A Resize to a fixed output size is not a constant factor: the probe at two sizes sees that."""
    class FixedSize(torch.nn.Module):
        def forward(self, images):
            small = torch.nn.functional.interpolate(images, size=(images.shape[2] * 2, images.shape[3] * 2))
            return torch.nn.functional.interpolate(small, size=(48, 48)).mean(1, keepdim=True)

    path = tmp_path / "fixed.onnx"
    torch.onnx.export(FixedSize(), (torch.zeros(1, 3, 32, 32),), str(path), dynamo=False, opset_version=17,
                      input_names=[onnx_runtime.INPUT_NAME], output_names=[onnx_runtime.OUTPUT_NAME],
                      dynamic_axes={onnx_runtime.INPUT_NAME: {2: "h", 3: "w"}})
    proto = onnx_export.resize_by_scales(onnx.load(str(path)), 32, 3)
    resizes = [node for node in proto.graph.node if node.op_type == "Resize"]
    assert [len(node.input) for node in resizes] == [3, 4]  # the 2x one takes scales, the fixed one keeps sizes


@pytest.mark.slow
def test_detect_runs_the_onnx_file_with_no_extra_flags(checkpoint, exported, tmp_path):
    path, _ = exported
    image = sorted((SAMPLE / "imgs").iterdir())[-1]
    masks = {}
    for name, model in (("onnx", path), ("torch", checkpoint)):
        result = subprocess.run([sys.executable, str(REPO / "detect.py"), "--model", str(model), "--source",
                                 str(image), "--save-dir", str(tmp_path / name)], cwd=REPO, capture_output=True,
                                text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert result.returncode == 0, result.stderr[-2000:]
        masks[name] = cv2.imread(str(tmp_path / name / "masks" / f"{image.stem}.png"), cv2.IMREAD_GRAYSCALE)
    assert iou(masks["onnx"] > 0, masks["torch"] > 0) >= 0.99


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the legacy exporter, used on purpose
def test_load_onnx_refuses_foreign_and_missing_files(tmp_path):
    with pytest.raises(UserError, match="not an ONNX model"):
        onnx_runtime.load_onnx(REPO / "README.md")
    with pytest.raises(UserError, match="no such file"):
        onnx_runtime.load_onnx(tmp_path / "missing.onnx")
    foreign = tmp_path / "foreign.onnx"
    torch.onnx.export(torch.nn.Conv2d(3, 1, 1), (torch.zeros(1, 3, 8, 8),), str(foreign), dynamo=False)
    with pytest.raises(UserError, match="not written by export.py"):
        onnx_runtime.load_onnx(foreign)


def test_fixed_size_architecture_refuses_other_sizes_clearly(tmp_path):
    model = build_model("PSPNet", "resnet18", 1)
    with pytest.raises(UserError, match="multiple of 96"):
        onnx_export.export_onnx(model, model_meta("PSPNet", "resnet18", 1, 128), tmp_path / "psp.onnx")
    onnx_export.export_onnx(model, model_meta("PSPNet", "resnet18", 1, 128), tmp_path / "psp.onnx", patch_size=96)
    meta, predict = onnx_runtime.load_onnx(tmp_path / "psp.onnx")
    assert meta["patch_size"] == 96 and predict(np.zeros((2, 3, 96, 96), np.float32)).shape == (2, 1, 96, 96)
    with pytest.raises(UserError, match="accepts only 96x96"):
        predict(np.zeros((1, 3, 128, 128), np.float32))


def test_cli_errors_exit_2(checkpoint, tmp_path, capsys):
    assert export.main(export.parse_args(["--model", str(checkpoint), "--opset", "13"])) == 2
    assert "17 or higher" in capsys.readouterr().err
    assert export.main(export.parse_args(["--model", str(REPO / "README.md")])) == 2
    if importlib.util.find_spec("onnxsim") is None:
        output = tmp_path / "simplified.onnx"
        assert export.main(export.parse_args(["--model", str(checkpoint), "--simplify", "--output",
                                              str(output)])) == 2
        assert "pip install onnxsim" in capsys.readouterr().err and not output.exists()


def test_int8_export_keeps_the_description_and_agrees_with_pytorch(checkpoint, capsys):
    """int8 moves the masks only where the model is unsure: this 30-step model has many pixels near 0.5, so
    its IoU against PyTorch is 0.82-0.99 per image, but on the pixels PyTorch is sure of (probability
    below 0.12 or above 0.88) the two agree. export.py reports the IoU and warns below 0.99."""
    code = export.main(export.parse_args(["--model", str(checkpoint), "--int8", "--calibration",
                                          str(SAMPLE / "imgs"), "--calibration-count", "16"]))
    assert code == 0
    path = checkpoint.with_name("best-checkpoint-int8.onnx")
    out, err = capsys.readouterr()
    lowest = float(out.split(" lowest")[0].rsplit(" ", 1)[1])
    assert ("warning: int8 changes the masks" in err) == (lowest < 0.99)
    assert not list(path.parent.glob(".export-*"))  # temporary files removed
    graph = onnx.load(str(path)).graph
    assert sum(node.op_type == "QuantizeLinear" for node in graph.node) >= 10  # really quantized
    model = model_from_checkpoint(torch.load(checkpoint, weights_only=True)).eval()
    meta, predict = onnx_runtime.load_onnx(path)
    assert meta == exported_meta(torch.load(checkpoint, weights_only=True)["meta"])
    image_pixels = sure_pixels = flipped = 0
    for image_path in sorted((SAMPLE / "imgs").iterdir())[-16:]:  # not among the 16 calibration images
        tensor, box = preprocess_image(read_image(image_path), meta["patch_size"], meta["mean"], meta["std"])
        with torch.inference_mode():
            expected = model(tensor[None])[0, 0].numpy()
        got = predict(tensor[None].numpy())[0, 0]
        image = np.s_[:box.scaled_height, :box.scaled_width]  # the letterbox padding is not the image
        expected, got = expected[image], got[image]
        sure = np.abs(expected) > 2
        image_pixels, sure_pixels = image_pixels + expected.size, sure_pixels + sure.sum()
        flipped += ((got > 0) != (expected > 0))[sure].sum()
    assert sure_pixels > 0.5 * image_pixels  # most of the images' pixels: the check is not vacuous
    assert flipped <= 1e-3 * sure_pixels, (flipped, sure_pixels)


def test_int8_flags_are_checked(checkpoint, tmp_path, capsys):
    def error(*flags):
        assert export.main(export.parse_args(["--model", str(checkpoint), "--output", str(tmp_path / "x.onnx"),
                                              *flags])) == 2
        assert not list(tmp_path.glob("x.onnx*")) and not list(tmp_path.glob(".export-*"))
        return capsys.readouterr().err.strip()

    assert "--int8 needs --calibration" in error("--int8")
    assert "only used with --int8" in error("--calibration", str(SAMPLE / "imgs"))
    assert error("--int8", "--calibration", str(tmp_path / "nope")).startswith(f"error: --calibration {tmp_path}")
    (tmp_path / "clip.mp4").write_bytes(b"")
    assert "give images" in error("--int8", "--calibration", str(tmp_path / "clip.mp4"))
    assert "--calibration-count 0" in error("--int8", "--calibration", str(SAMPLE / "imgs"), "--calibration-count", "0")


def test_calibration_path_that_exists_is_taken_literally(tmp_path):
    """--calibration goes through the same resolve_sources as detect.py --source: an existing 'img[1].png'
    is that file, not a glob that matches img1.png beside it."""
    from segtoolkit.export import int8 as quantize
    for name in ("img[1].png", "img1.png"):
        cv2.imwrite(str(tmp_path / name), np.zeros((8, 8, 3), np.uint8))
    assert quantize.calibration_images(str(tmp_path / "img[1].png")) == [tmp_path / "img[1].png"]


def test_output_must_be_an_onnx_file_name_and_patch_size_is_checked(checkpoint, tmp_path, capsys):
    """--output DIR/ (a folder, existing or not), another suffix, --patch-size 0: one line, exit 2, nothing
    created. (Path() drops a trailing '/', and --patch-size 0 used to fall back to the checkpoint's size.)"""
    folder = tmp_path / "exports"
    folder.mkdir()
    cases = {
        f"{tmp_path / 'new'}{os.sep}": f"--output {tmp_path / 'new'}{os.sep} is a folder; give a file name ending in "
                                       f".onnx (for example {tmp_path / 'new' / 'model.onnx'})",
        str(folder): f"--output {folder} is a folder; give a file name ending in .onnx (for example "
                     f"{folder / 'model.onnx'})",
        str(tmp_path / "model.pt"): f"--output {tmp_path / 'model.pt'}: give a file name ending in .onnx (detect.py "
                                    f"tells an ONNX model by that suffix)",
    }
    for output, message in cases.items():
        assert export.main(export.parse_args(["--model", str(checkpoint), "--output", output])) == 2, output
        assert capsys.readouterr().err == f"error: {message}\n"
    assert export.main(export.parse_args(["--model", str(checkpoint), "--output", str(tmp_path / "m.onnx"),
                                          "--patch-size", "0"])) == 2
    assert capsys.readouterr().err == "error: --patch-size 0 is not a positive multiple of 32, which smp models " \
                                      "need; try 32\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exports"] and not list(folder.iterdir())


def test_warnings_are_one_line_without_a_source_line(tmp_path):
    """export.py on the command line prints a warning raised during its run as 'warning: ...', not Python's
    'file.py:NN: UserWarning' with the warn() call's source line."""
    script = tmp_path / "warns.py"
    script.write_text(textwrap.dedent("""\
        import sys
        import warnings
        import export
        def load_checkpoint(path):
            warnings.warn("something the user should know,\\nover two lines")
            raise export.UserError("stopped here")
        export.load_checkpoint = load_checkpoint
        sys.exit(export.main(export.parse_args(sys.argv[1:])))
        """))
    result = subprocess.run([sys.executable, str(script), "--model", "any.pth.tar"], cwd=REPO, capture_output=True,
                            text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)})
    assert result.returncode == 2
    assert result.stderr == "warning: something the user should know, over two lines\nerror: stopped here\n"


# ---------------------------------------------------------------- OpenVINO and the masks' agreement


def sure_pixel_flips(model, predict, image_paths, meta):
    """(pixels flipped where PyTorch float32 is sure, |logit| > 2; sure pixels; image pixels) over the images,
    letterbox padding left out."""
    flipped = sure_pixels = image_pixels = 0
    for image_path in image_paths:
        tensor, box = preprocess_image(read_image(image_path), meta["patch_size"], meta["mean"], meta["std"])
        with torch.inference_mode():
            expected = model(tensor[None])[0, 0].numpy()
        got = np.asarray(predict(tensor[None].numpy()))[0, 0]
        image = np.s_[:box.scaled_height, :box.scaled_width]
        expected, got = expected[image], got[image]
        sure = np.abs(expected) > 2
        flipped += ((got > 0) != (expected > 0))[sure].sum()
        sure_pixels, image_pixels = sure_pixels + sure.sum(), image_pixels + expected.size
    return flipped, sure_pixels, image_pixels


@pytest.fixture(scope="module")
def exported_openvino(checkpoint):
    """export.py --model CHECKPOINT --format openvino --check-images (8 sample images): (xml path, exit code,
    stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = export.main(export.parse_args(["--model", str(checkpoint), "--format", "openvino", "--check-images",
                                              str(SAMPLE / "imgs" / "sample_00*.png")]))
    return checkpoint.with_name("best-checkpoint.xml"), code, out.getvalue(), err.getvalue()


def test_openvino_export_writes_xml_and_bin_with_the_checkpoints_description(checkpoint, exported_openvino):
    path, code, out, err = exported_openvino
    assert code == 0, err
    assert path.is_file() and path.with_suffix(".bin").stat().st_size > 40e6  # float32 weights, not FP16-compressed
    assert not list(path.parent.glob(".export-*")) and not list(path.parent.glob("*float32*"))
    expected = exported_meta(torch.load(checkpoint, weights_only=True)["meta"])
    import openvino
    stored = openvino.Core().read_model(str(path)).get_rt_info(onnx_runtime.META_KEY).astype(str)
    assert json.loads(stored) == expected  # under the ONNX file's key
    meta, predict = openvino_runtime.load_openvino(path)
    assert meta == expected
    assert predict(np.zeros((2, 3, 96, 128), np.float32)).shape == (2, 1, 96, 128)  # dynamic batch and size
    assert f"to {path} and best-checkpoint.bin" in out
    lowest = float(re.search(r"OpenVINO float32 masks against PyTorch's on 10 images \(--check-images\): IoU "
                             r"[\d.]+ mean, ([\d.]+) lowest", out).group(1))
    assert lowest >= 0.99 and "OpenVINO float32" not in err  # the float32 file gives the checkpoint's masks
    halves = [re.search(re.escape(name) + r" masks against PyTorch's on 10 images \(--check-images\): IoU "
                        r"[\d.]+ mean, ([\d.]+) lowest", out)
              for name in ("OpenVINO --half (bfloat16)", "the checkpoint with --half (PyTorch bfloat16)")]
    for half in halves:  # bfloat16 is checked where --half would run it, for the file and for the checkpoint
        assert bool(half) == bool(predict_module.native_bfloat16())
    # where it runs, bfloat16 warns exactly when it moves the masks of this briefly trained, unsure model
    assert err.count("warning") == sum(float(half.group(1)) < 0.99 for half in halves if half), err
    assert ("--half runs float32 on this CPU" in out) == (not predict_module.native_bfloat16())


def test_openvino_masks_agree_with_pytorch_on_the_pixels_it_is_sure_of(checkpoint, exported_openvino):
    path, _, _, _ = exported_openvino
    model = model_from_checkpoint(torch.load(checkpoint, weights_only=True)).eval()
    meta, predict = openvino_runtime.load_openvino(path)
    flipped, sure, pixels = sure_pixel_flips(model, predict, sorted((SAMPLE / "imgs").iterdir())[-16:], meta)
    assert sure > 0.5 * pixels and flipped == 0, (flipped, sure)  # float32 both: not one sure pixel moves
    batch = torch.randn(1, 3, 96, 160)
    with torch.inference_mode():
        assert np.abs(predict(batch.numpy()) - model(batch).numpy()).max() < 1e-3


@pytest.mark.slow
def test_detect_runs_the_openvino_file_with_no_extra_flags(checkpoint, exported_openvino, tmp_path):
    path, _, _, _ = exported_openvino
    images = sorted((SAMPLE / "imgs").iterdir())[-3:]
    listing = tmp_path / "images.txt"
    listing.write_text("".join(f"{image}\n" for image in images))
    for name, model in (("openvino", path), ("torch", checkpoint)):
        result = subprocess.run([sys.executable, str(REPO / "detect.py"), "--model", str(model), "--source",
                                 str(listing), "--save-dir", str(tmp_path / name)], cwd=REPO, capture_output=True,
                                text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert result.returncode == 0 and result.stderr == "", result.stderr[-2000:]
    torch_model = model_from_checkpoint(torch.load(checkpoint, weights_only=True)).eval()
    meta = onnx_runtime.check_meta(json.dumps(torch.load(checkpoint, weights_only=True)["meta"]), checkpoint)
    for image in images:
        masks = {name: cv2.imread(str(tmp_path / name / "masks" / f"{image.stem}.png"), cv2.IMREAD_GRAYSCALE) > 0
                 for name in ("openvino", "torch")}
        tensor, box = preprocess_image(read_image(image), meta["patch_size"], meta["mean"], meta["std"])
        with torch.inference_mode():
            logits = torch_model(tensor[None])[0, 0].numpy()
        sure = unletterbox((np.abs(logits) > 2).astype(np.uint8), box) > 0
        assert sure.mean() > 0.5 and np.array_equal(masks["openvino"][sure], masks["torch"][sure])
        assert iou(masks["openvino"], masks["torch"]) >= 0.99


def test_float32_onnx_export_reports_its_masks_agreement(checkpoint, tmp_path, capsys, monkeypatch):
    """--check-images: the IoU against PyTorch on those images; below 0.99 a warning (forced here by a stand-in
    for the IoU: a float32 file agrees). The CPU is taken as one without bfloat16, so that only the file's own
    check runs (test_openvino_export_on_a_bfloat16_cpu_also_reports_half covers the --half lines)."""
    monkeypatch.setattr(export, "native_bfloat16", lambda: [])
    output = tmp_path / "checked.onnx"
    args = ["--model", str(checkpoint), "--output", str(output), "--check-images", str(SAMPLE / "imgs"),
            "--patch-size", "32"]
    assert export.main(export.parse_args(args)) == 0
    out, err = capsys.readouterr()
    match = re.search(r"ONNX float32 masks against PyTorch's on 32 images \(--check-images\): IoU ([\d.]+) mean, "
                      r"([\d.]+) lowest", out)
    assert match and float(match.group(2)) >= 0.99 and err == "", (out, err)
    monkeypatch.setattr(quantize, "mask_agreement", lambda model, predict, batches: (0.9512, 0.9876))
    assert export.main(export.parse_args(args)) == 0
    assert capsys.readouterr().err == (
        "warning: ONNX float32 changes the masks more than expected (ONNX float32 masks against PyTorch's on 32 "
        "images (--check-images): IoU 0.9876 mean, 0.9512 lowest); compare detect.py's masks from the checkpoint "
        "and from this file before relying on it\n")


def test_openvino_export_on_a_bfloat16_cpu_also_reports_half(checkpoint, exported_openvino, monkeypatch):
    """Where detect.py --half would run the file in bfloat16, export.py checks that precision too (the CPU's answer
    is forced; on a CPU without bfloat16 OpenVINO runs the bf16 hint in float32, so the IoU stays high there; on
    one with it, this briefly trained model's unsure pixels may move, and the warning must then say so)."""
    path, _, _, _ = exported_openvino
    monkeypatch.setattr(export, "native_bfloat16", lambda: ["AMX"])
    model = model_from_checkpoint(torch.load(checkpoint, weights_only=True)).eval()
    meta = openvino_runtime.load_openvino(path)[0]
    check = export.check_file(model, path, meta, "openvino", False, sorted((SAMPLE / "imgs").iterdir())[:2], "2 images")
    summary, warnings = export.describe_check(check, "openvino", False)
    assert "OpenVINO --half (bfloat16) masks against PyTorch's on 2 images: IoU" in summary
    assert "the checkpoint with --half (PyTorch bfloat16) masks against PyTorch's on 2 images: IoU" in summary
    assert "--half runs float32" not in summary
    if not predict_module.native_bfloat16():
        assert check.half_agreement[0] >= 0.99  # OpenVINO runs the hint in float32 here; PyTorch bfloat16 is real
    # a warning for each bfloat16 run that moved the masks of this briefly trained, unsure model, and only then
    assert len(warnings) == sum(agreement[0] < 0.99 for agreement in (check.half_agreement, check.torch_half_agreement))


def test_openvino_half_agrees_with_pytorch_on_sure_pixels(checkpoint, exported_openvino):
    """OpenVINO --half (bfloat16 where the CPU has it, else float32) flips no pixel PyTorch float32 is sure of
    (|logit| > 2), on images the export's check did not use: the int8 test's rule."""
    path, _, _, _ = exported_openvino
    model = model_from_checkpoint(torch.load(checkpoint, weights_only=True)).eval()
    meta, predict = openvino_runtime.load_openvino(path, precision="bf16")
    image_pixels = sure_pixels = flipped = 0
    for image_path in sorted((SAMPLE / "imgs").iterdir())[-16:]:
        tensor, box = preprocess_image(read_image(image_path), meta["patch_size"], meta["mean"], meta["std"])
        with torch.inference_mode():
            expected = model(tensor[None])[0, 0].numpy()
        got = predict(tensor[None].numpy())[0, 0]
        image = np.s_[:box.scaled_height, :box.scaled_width]
        expected, got = expected[image], got[image]
        sure = np.abs(expected) > 2
        image_pixels, sure_pixels = image_pixels + expected.size, sure_pixels + sure.sum()
        flipped += ((got > 0) != (expected > 0))[sure].sum()
    assert sure_pixels > 0.5 * image_pixels
    assert flipped <= 1e-3 * sure_pixels, (flipped, sure_pixels)


def test_format_and_check_images_flags_are_checked(checkpoint, tmp_path, capsys):
    def error(*flags):
        assert export.main(export.parse_args(["--model", str(checkpoint), *flags])) == 2
        assert not list(tmp_path.iterdir())  # nothing written
        return capsys.readouterr().err

    assert error("--format", "openvino", "--output", str(tmp_path / "model.onnx")) == (
        f"error: --output {tmp_path / 'model.onnx'}: give a file name ending in .xml (detect.py tells an OpenVINO "
        f"model by that suffix)\n")
    assert error("--format", "openvino", "--int8", "--calibration", str(SAMPLE / "imgs"), "--output",
                 str(tmp_path / "m.xml")).startswith("error: --int8 writes an int8 ONNX file; drop --format openvino")
    assert error("--output", str(tmp_path / "m.onnx"), "--check-images", str(tmp_path / "nope")).startswith(
        f"error: --check-images {tmp_path / 'nope'}: no such file or folder")
    with pytest.raises(SystemExit):
        export.parse_args(["--model", str(checkpoint), "--format", "tflite"])
