"""Masks as people keep them (issue 15): palette PNGs read as their indices, colour masks read through a
--mask-colors file, class names carried everywhere, palette PNG outputs, detect.py --save-json polygons and
--save-probs probabilities.

Three tiny runs are trained once for the module (Unet/resnet18, patch 64, one epoch, --search-files with a
test split) from make_sample_data.write_dataset: a 4-class run on VOC-style palette masks (void 255 along
the top rows), a binary run on palette masks holding 0/1, and a 3-class run on RGB colour masks with an
ignore colour, read through a CSV colours file."""

import csv
import json
import os
import re
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

import detect
import export
import train
import val
from helpers.paths import REPO, RUNS
from helpers.training import TINY, train_tiny
from make_sample_data import write_dataset
from segtoolkit.models.checkpoints import load_checkpoint, save_checkpoint
from segtoolkit.data.classes import load_mask_colors
from segtoolkit.errors import UserError
from segtoolkit.inference.full_size import FullSizePredictor
from segtoolkit.data.imaging import read_image
from segtoolkit.inference.predictor import TorchPredictor
from segtoolkit.data.masks import binary_mask, palette_png, read_mask
from segtoolkit.models.factory import model_from_checkpoint
from segtoolkit.inference.onnx_runtime import load_onnx
from segtoolkit.data.polygons import polygon_records

VOC = [(0, 0, 0), (128, 0, 0), (0, 128, 0), (128, 128, 0)]  # VOC's first colours; 255 (void) is (224, 224, 192)
COLOURS = {"background": (0, 0, 0), "cell": (255, 0, 0), "nucleus": (0, 0, 255)}
IGNORE_COLOUR = (255, 255, 255)
COLOURS_CSV = "# the classes of the colour masks\nname,r,g,b\n" + "".join(
    f"{name},{r},{g},{b}\n" for name, (r, g, b) in COLOURS.items()) + "ignore,255,255,255\n"


def save_palette(path, indices, colours):
    """A palette PNG of `indices` as labelling tools write it (VOC: void 255 in its own colour)."""
    picture = Image.fromarray(indices.astype(np.uint8), "P")
    flat = [value for colour in colours for value in colour]
    palette = flat + [0] * (768 - len(flat))
    palette[255 * 3:] = [224, 224, 192]
    picture.putpalette(palette)
    picture.save(path)


@pytest.fixture(scope="module")
def palette_run(tmp_path_factory):
    """(run folder, data folder): 4 classes in palette PNGs, void 255 in the top rows, named by --class-names."""
    data_dir = tmp_path_factory.mktemp("palette") / "voc"
    for path in write_dataset(data_dir, 12, seed=2, classes=4):
        mask_path = data_dir / "masks" / path.name
        indices = cv2.imread(str(mask_path), cv2.IMREAD_UNCHANGED)
        indices[:3] = 255
        save_palette(mask_path, indices, VOC)
    run = train_tiny(data_dir, f"pytest-masks-palette-{os.getpid()}", "--classes", "4", "--ignore-index", "255",
                     "--class-names", "background,plane,bike,bird")
    return run, data_dir


@pytest.fixture(scope="module")
def binary_palette_run(tmp_path_factory):
    """(run folder, data folder): binary masks stored as palette PNGs of 0/1."""
    data_dir = tmp_path_factory.mktemp("palette-binary") / "data"
    for path in write_dataset(data_dir, 12, seed=4):
        mask_path = data_dir / "masks" / path.name
        save_palette(mask_path, cv2.imread(str(mask_path), cv2.IMREAD_UNCHANGED) // 255, VOC)
    return train_tiny(data_dir, f"pytest-masks-binary-{os.getpid()}", "--class-names", "background,object"), data_dir


def write_colour_masks(data_dir, count=12, seed=3):
    """RGB masks in COLOURS, the top row IGNORE_COLOUR, and colours.csv inside data_dir."""
    table = np.array(list(COLOURS.values()) + [IGNORE_COLOUR], np.uint8)
    for path in write_dataset(data_dir, count, seed=seed, classes=3):
        mask_path = data_dir / "masks" / path.name
        indices = cv2.imread(str(mask_path), cv2.IMREAD_UNCHANGED)
        indices[0] = 3
        cv2.imwrite(str(mask_path), cv2.cvtColor(table[indices], cv2.COLOR_RGB2BGR))
    (data_dir / "colours.csv").write_text(COLOURS_CSV)


@pytest.fixture(scope="module")
def colour_run(tmp_path_factory):
    """(run folder, data folder): 3 classes in RGB colour masks, read by --mask-colors colours.csv (found in
    --data-dir), whose ignore colour becomes --ignore-index 255."""
    data_dir = tmp_path_factory.mktemp("colour") / "labelled"
    write_colour_masks(data_dir)
    return train_tiny(data_dir, f"pytest-masks-colour-{os.getpid()}", "--mask-colors", "colours.csv"), data_dir


def plain_argmax(checkpoint_path, image_path):
    """The model's argmax for one image at its original size, as detect.py computes it by default (its logits
    upsampled to the image, segtoolkit.inference.full_size, whose agreement with torch's bilinear interpolation
    tests/test_full_size.py checks)."""
    checkpoint = load_checkpoint(checkpoint_path)
    model = model_from_checkpoint(checkpoint).eval()
    full_size = FullSizePredictor.from_meta(TorchPredictor(model, torch.device("cpu")), checkpoint["meta"])
    return full_size.mask(read_image(image_path))


def read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def run_detect(capsys, model, source, save_dir, *flags):
    code = detect.main(detect.parse_args(["--model", str(model), "--source", str(source), "--device", "cpu",
                                          "--save-dir", str(save_dir), *map(str, flags)]))
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return read_csv(save_dir / "results.csv")


def assert_areas_add_up(mask, polygons):
    """For each class the polygons' areas add up to its pixels less half a boundary pixel per outline step
    and one per outline (segtoolkit.data.polygons): 0 <= pixels - areas <= sum(length / 2 + 1)."""
    for label in range(1, int(mask.max()) + 1):
        records = [record for record in polygons if record["class"] == label]
        pixels = int((mask == label).sum())
        area = sum(record["area"] for record in records)
        outlines = [record["points"] for record in records] + [hole for record in records for hole in record["holes"]]
        bound = sum(cv2.arcLength(np.array(points, np.float32).reshape(-1, 1, 2), True) / 2 + 1
                    for points in outlines)
        assert -0.05 * len(records) <= pixels - area <= bound + 0.05 * len(records), (label, pixels, area, bound)
        assert (pixels == 0) == (not records)


# ---------------------------------------------------------------- reading masks


def test_palette_png_is_read_as_its_indices(tmp_path):
    indices = np.array([[0, 1, 2], [3, 255, 0]], np.uint8)
    save_palette(tmp_path / "multi.png", indices, VOC)
    assert cv2.imread(str(tmp_path / "multi.png"), cv2.IMREAD_UNCHANGED).ndim == 3  # what OpenCV would give
    assert np.array_equal(read_mask(tmp_path / "multi.png"), indices)
    save_palette(tmp_path / "binary.png", np.array([[0, 1], [1, 0]], np.uint8), [(0, 0, 0), (255, 255, 255)])
    assert np.array_equal(binary_mask(read_mask(tmp_path / "binary.png"), "binary.png"), [[0, 1], [1, 0]])
    (tmp_path / "written.png").write_bytes(palette_png(indices, VOC))  # what detect.py and val.py write
    assert np.array_equal(read_mask(tmp_path / "written.png"), indices)


def test_colours_file_csv_and_json_give_the_same_table(tmp_path):
    (tmp_path / "colours.csv").write_text(COLOURS_CSV)
    (tmp_path / "colours.json").write_text(json.dumps({**COLOURS, "ignore": IGNORE_COLOUR}))
    from_csv, from_json = load_mask_colors(tmp_path / "colours.csv"), load_mask_colors(tmp_path / "colours.json")
    assert from_csv.names == from_json.names == ("background", "cell", "nucleus")
    assert from_csv.colors == from_json.colors and from_csv.ignore == from_json.ignore == IGNORE_COLOUR
    rgb = np.array([[[0, 0, 0], [255, 0, 0]], [[0, 0, 255], [255, 255, 255]]], np.uint8)
    assert np.array_equal(from_csv.labels(rgb, "m.png", ignore_label=255), [[0, 1], [2, 255]])
    rgb[0, 0] = (1, 2, 3)
    with pytest.raises(UserError, match=r"mask m.png has colour \(1, 2, 3\) in 1 pixel\(s\), which --mask-colors "):
        from_csv.labels(rgb, "m.png")


def test_polygon_areas_add_up_to_pixel_counts():
    """Regions with holes, islands in holes, one-pixel lines and touching classes."""
    rng = np.random.default_rng(0)
    for _ in range(20):
        mask = np.zeros((60, 80), np.uint8)
        for _ in range(6):
            label, centre = int(rng.integers(1, 4)), (int(rng.integers(0, 80)), int(rng.integers(0, 60)))
            cv2.circle(mask, centre, int(rng.integers(1, 20)), label, -1 if rng.random() < 0.7 else 1)
        mask[rng.random(mask.shape) < 0.02] = 0  # pinholes
        records = polygon_records(mask, ["background", "a", "b", "c"])
        assert {record["name"] for record in records} <= {"a", "b", "c"}
        assert_areas_add_up(mask, records)


# ---------------------------------------------------------------- end to end


def test_palette_masks_train_detect_and_validate(palette_run, capsys, tmp_path):
    run, data_dir = palette_run
    checkpoint = load_checkpoint(run / "best-checkpoint.pth.tar")
    assert checkpoint["meta"]["class_names"] == ["background", "plane", "bike", "bird"]
    assert "val/dice_bird" in read_csv(run / "results.csv")[0]
    assert cv2.imread(str(run / "val_predictions.png")).shape[0] > 3 * 64  # rows of previews, then the legend
    test_images = [image for image, _ in checkpoint["data"]["test"]]
    sources = tmp_path / "sources.txt"
    sources.write_text("".join(f"{image}\n" for image in test_images))
    rows = run_detect(capsys, run / "best-checkpoint.pth.tar", sources, tmp_path / "detect", "--conf-thres", "0",
                      "--save-json", "--save-probs")
    assert [column for column in rows[0] if column.startswith("px_")] == ["px_plane", "px_bike", "px_bird"]
    lines = read_jsonl(tmp_path / "detect" / "polygons.jsonl")
    assert [line["source"] for line in lines] == [row["source"] for row in rows] == test_images
    for row, line, image in zip(rows, lines, test_images):
        written = Image.open(tmp_path / "detect" / row["mask_file"])
        palette = written.getpalette()[:12]
        shown = {tuple(palette[start:start + 3]) for start in range(3, 12, 3)}
        assert written.mode == "P" and palette[:3] == [0, 0, 0] and len(shown - {(0, 0, 0)}) == 3  # visible classes
        mask = np.array(written)
        assert np.array_equal(mask, plain_argmax(run / "best-checkpoint.pth.tar", image)), image
        assert (line["height"], line["width"]) == mask.shape == cv2.imread(image).shape[:2]
        assert int(row["px_bird"]) == (mask == 3).sum()
        assert_areas_add_up(mask, line["polygons"])
        points = np.array([point for record in line["polygons"] for point in record["points"]]).reshape(-1, 2)
        assert not points.size or (points.min() >= 0 and points[:, 0].max() < mask.shape[1]
                                   and points[:, 1].max() < mask.shape[0])
        stored = np.load(tmp_path / "detect" / row["probs_file"])
        assert stored["probabilities"].shape == mask.shape + (4,) and stored["probabilities"].dtype == np.float16
        assert list(stored["class_names"]) == ["background", "plane", "bike", "bird"]
        probabilities = stored["probabilities"].astype(np.float32)
        assert np.allclose(probabilities.sum(axis=2), 1, atol=0.01)
        # both from the same full-size logits: the mask is the probabilities' argmax, but where float16
        # rounding ties two classes
        assert (probabilities.argmax(axis=2) == mask).mean() > 0.99
    summary = val.run(model=run / "best-checkpoint.pth.tar", save_dir=tmp_path / "val", workers=0, save_masks=True,
                      device="cpu")
    out = capsys.readouterr().out
    expected = json.loads((run / "test_results.json").read_text())
    assert summary["metrics"]["test/dice_bird"] == pytest.approx(expected["test/dice_bird"], abs=1e-6)
    assert "plane" in out and "bird" in out and (tmp_path / "val" / "confusion_matrix.png").is_file()
    saved = Image.open(tmp_path / "val" / "masks" / os.path.basename(test_images[0]))
    assert saved.mode == "P" and np.array(saved).shape == cv2.imread(test_images[0]).shape[:2]


def test_binary_palette_masks_train_detect_and_validate(binary_palette_run, capsys, tmp_path):
    """Binary outputs stay 0/255 gray PNGs; --save-probs writes a 16-bit PNG per image."""
    run, data_dir = binary_palette_run
    image = data_dir / "imgs" / "sample_000.png"
    rows = run_detect(capsys, run / "best-checkpoint.pth.tar", image, tmp_path / "detect", "--save-probs",
                      "--save-json")
    mask = cv2.imread(str(tmp_path / "detect" / rows[0]["mask_file"]), cv2.IMREAD_UNCHANGED)
    assert mask.ndim == 2 and set(np.unique(mask)) <= {0, 255}
    probabilities = cv2.imread(str(tmp_path / "detect" / rows[0]["probs_file"]), cv2.IMREAD_UNCHANGED)
    assert rows[0]["probs_file"].endswith(".png") and probabilities.dtype == np.uint16
    assert probabilities.shape == mask.shape == cv2.imread(str(image)).shape[:2]
    (line,) = read_jsonl(tmp_path / "detect" / "polygons.jsonl")
    assert {record["name"] for record in line["polygons"]} <= {"object"}
    assert_areas_add_up(mask // 255, line["polygons"])
    summary = val.run(model=run / "best-checkpoint.pth.tar", save_dir=tmp_path / "val", workers=0, device="cpu")
    capsys.readouterr()
    assert 0 <= summary["metrics"]["test/dice"] <= 1


def test_colour_masks_train_detect_validate_and_export(colour_run, capsys, tmp_path):
    """The colours file names the classes and sets the ignore index; detect.py's palette masks use the
    training colours; val.py reads the colour masks with them, without a flag; an ONNX export keeps them."""
    run, data_dir = colour_run
    checkpoint = load_checkpoint(run / "best-checkpoint.pth.tar")
    meta = checkpoint["meta"]
    assert meta["classes"] == 3 and meta["class_names"] == list(COLOURS)
    assert meta["mask_colors"]["colors"] == [list(colour) for colour in COLOURS.values()]
    assert checkpoint["config"]["ignore_index"] == 255
    image = checkpoint["data"]["test"][0][0]
    rows = run_detect(capsys, run / "best-checkpoint.pth.tar", image, tmp_path / "detect", "--conf-thres", "0")
    written = Image.open(tmp_path / "detect" / rows[0]["mask_file"])
    assert written.mode == "P" and written.getpalette()[:9] == [v for colour in COLOURS.values() for v in colour]
    assert np.array_equal(np.array(written), plain_argmax(run / "best-checkpoint.pth.tar", image))
    summary = val.run(model=run / "best-checkpoint.pth.tar", save_dir=tmp_path / "val", workers=0, device="cpu")
    capsys.readouterr()
    expected = json.loads((run / "test_results.json").read_text())
    assert summary["metrics"]["test/iou_nucleus"] == pytest.approx(expected["test/iou_nucleus"], abs=1e-6)
    assert export.main(export.parse_args(["--model", str(run / "best-checkpoint.pth.tar"), "--output",
                                          str(tmp_path / "model.onnx")])) == 0
    capsys.readouterr()
    onnx_meta, _ = load_onnx(tmp_path / "model.onnx")
    assert onnx_meta["mask_colors"] == meta["mask_colors"] and onnx_meta["class_names"] == list(COLOURS)


def test_checkpoint_without_new_meta_keys_still_loads(colour_run, tmp_path):
    """A checkpoint from before --mask-colors has no mask_colors: it loads with None and detect.py runs."""
    stored = torch.load(colour_run[0] / "best-checkpoint.pth.tar", weights_only=True)
    del stored["meta"]["mask_colors"]
    torch.save(stored, tmp_path / "old.pth.tar")
    assert load_checkpoint(tmp_path / "old.pth.tar")["meta"]["mask_colors"] is None
    summary = detect.run(model=tmp_path / "old.pth.tar", source=colour_run[1] / "imgs" / "sample_000.png",
                         save_dir=tmp_path / "out")
    assert summary["frames"] == 1 and Image.open(tmp_path / "out" / "masks" / "sample_000.png").mode == "P"


def test_resume_reads_the_masks_with_the_colours_it_was_trained_with(colour_run, tmp_path, capsys):
    """The colours file is changed after training (a class's colour edited): a resume still reads the masks
    with the table in its checkpoint, so no mask turns unknown halfway through a run."""
    run, data_dir = colour_run
    copy = RUNS / f"pytest-masks-resume-{os.getpid()}"
    shutil.copytree(run, copy)
    checkpoint = load_checkpoint(copy / "checkpoint.pth.tar")
    state = {key: value for key, value in checkpoint.items() if key not in ("format", "version", "meta", "config",
                                                                             "model")}
    state.update(finished=False)  # as if stopped after its last epoch, before the test: every mask is read again
    model = model_from_checkpoint(checkpoint)
    save_checkpoint(copy / "checkpoint.pth.tar", model, checkpoint["meta"], checkpoint["config"], **state)
    colours = data_dir / "colours.csv"
    original = colours.read_text()
    colours.write_text(original.replace("cell,255,0,0", "cell,250,0,0"))
    try:
        code = train.main(train.parse_args(["--load-model", str(copy / "checkpoint.pth.tar"), "--workers", "0",
                                            "--wandb-mode", "disabled"]))
    finally:
        colours.write_text(original)
    out, err = capsys.readouterr()
    assert code == 0, err[-2000:]
    assert f"resuming in {copy}" in out
    assert load_checkpoint(copy / "best-checkpoint.pth.tar")["meta"]["mask_colors"] == checkpoint["meta"]["mask_colors"]


# ---------------------------------------------------------------- bad input


def bad_colours(data_dir, name, text):
    (data_dir / name).write_text(text)
    return name


@pytest.mark.parametrize("flags, message", [
    (["--mask-colors", "nope.csv"], r"--mask-colors \S*nope.csv: no such file; give a CSV file"),
    (["--mask-colors", "@road,300,0,0"], r"line 2: 'road,300,0,0' is not name,R,G,B with R, G and B whole "
                                         r"numbers 0..255; fix it"),
    (["--mask-colors", "@road,1,2,3\nsky,1,2,3"], r"colour \(1, 2, 3\) is given to both road and sky; give each "
                                                  r"class its own colour"),
    (["--mask-colors", "colours.csv", "--classes", "5"], r"--classes 5 conflicts with --mask-colors \S+, which "
                                                         r"lists 3 classes \(background, cell, nucleus\)"),
    (["--classes", "3", "--class-names", "a,b"], r"--class-names a,b gives 2 name\(s\) but --classes 3 needs 3"),
    (["--classes", "3", "--class-names", "a,b/c,d"], r"class name 'b/c' is empty or holds '/'"),
])
def test_bad_colours_and_names_are_one_line_errors(flags, message, tmp_path, capsys):
    data_dir = tmp_path / "data"
    write_colour_masks(data_dir, count=4)
    if flags[0] == "--mask-colors" and flags[1].startswith("@"):
        flags = ["--mask-colors", bad_colours(data_dir, "bad.csv", "background,0,0,0\n" + flags[1][1:] + "\n")]
    code = train.main(train.parse_args([*TINY, "--data-dir", str(data_dir), "--search-files", "--name",
                                        f"pytest-masks-bad-{os.getpid()}", *flags]))
    err = capsys.readouterr().err
    assert code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith("error: ") and re.search(message, err), err
    assert not list(RUNS.glob(f"pytest-masks-bad-{os.getpid()}*"))


def test_unknown_colour_is_one_line_exit_2_before_training(tmp_path):
    """A colour the file lacks in any mask (here the last one read): one line naming the mask, the colour and
    its pixels, exit code 2, no traceback, no run folder."""
    data_dir = tmp_path / "data"
    write_colour_masks(data_dir, count=6)
    mask_path = data_dir / "masks" / "sample_005.png"
    mask = cv2.imread(str(mask_path))
    mask[5:8, 10:14] = (30, 20, 10)  # BGR: RGB (10, 20, 30)
    cv2.imwrite(str(mask_path), mask)
    result = subprocess.run([sys.executable, str(REPO / "train.py"), *TINY, "--data-dir", str(data_dir),
                             "--search-files", "--mask-colors", "colours.csv", "--project", str(tmp_path / "runs")],
                            capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 2 and result.stdout == "", result.stderr
    assert result.stderr.splitlines() == [
        f"error: mask {mask_path} has colour (10, 20, 30) in 12 pixel(s), which --mask-colors "
        f"{data_dir / 'colours.csv'} does not list; add it to {data_dir / 'colours.csv'} (name,R,G,B) or fix the mask"]
    assert not (tmp_path / "runs").exists()


# ---------------------------------------------------------------- the README's examples


@pytest.mark.slow
def test_every_readme_mask_formats_command_runs_as_written(tmp_path, monkeypatch, capsys):
    """README's "Mask formats" train.py lines, as written (then made tiny), each from a folder holding the data
    it names: voc_like/ (palette PNGs of 21 classes, void 255), my_data/ of colour masks with colours.csv in
    the working folder, or my_data/ of 3-class index masks."""
    section = (REPO / "README.md").read_text().split("## Mask formats", 1)[1].split("\n## ", 1)[0]
    commands = [line.split("#", 1)[0].split()[2:] for line in section.splitlines()
                if line.startswith("python3 train.py")]
    assert len(commands) == 3
    for path in write_dataset(tmp_path / "voc" / "voc_like", 8, seed=7, classes=21):
        mask_path = path.parent.parent / "masks" / path.name
        indices = cv2.imread(str(mask_path), cv2.IMREAD_UNCHANGED)
        indices[-2:] = 255
        save_palette(mask_path, indices, VOC)
    write_colour_masks(tmp_path / "colour" / "my_data", count=8)
    (tmp_path / "colour" / "my_data" / "colours.csv").rename(tmp_path / "colour" / "colours.csv")
    write_dataset(tmp_path / "index" / "my_data", 8, seed=8, classes=3)
    for number, words in enumerate(commands):
        kind = "voc" if "voc_like" in words else "colour" if "--mask-colors" in words else "index"
        monkeypatch.chdir(tmp_path / kind)
        name = f"pytest-masks-readme-{os.getpid()}-{number}"
        code = train.main(train.parse_args([*words, *TINY, "--name", name]))
        assert code == 0, (words, capsys.readouterr().err[-2000:])
        assert (RUNS / name / "best-checkpoint.pth.tar").is_file()
