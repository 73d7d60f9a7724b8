"""COCO in and out (segtoolkit.data.coco): rasterising what labelling tools export (polygons with holes, both RLE
kinds, crowd regions, an empty image, category ids 1, 3, 7), the one-line errors of bad files, detect.py's
predictions.coco.json rasterised back to its own masks (a region with 200 holes too; --coco-rle read back by
pycocotools' COCO), --rank-uncertain on a video (no near-duplicate frames), and the loop end to end:
train.py --coco, detect.py --save-coco --rank-uncertain, and train.py --coco on the predictions."""

import copy
import csv
import json
import subprocess
import sys

import cv2
import numpy as np
import pytest
from pycocotools import mask as coco_mask
from pycocotools.coco import COCO

import val
from helpers.paths import REPO, RUNS
from dataloaders import Frame
from helpers.data import write_video
from helpers.detect_runs import QUIET_ENV, read_rows, run_detect
from segtoolkit.data.coco import CocoWriter, IGNORE_LABEL, coco_pairs, read_classes, segmentation_pixels
from segtoolkit.errors import UserError
from segtoolkit.data.masks import read_mask
from segtoolkit.outputs.uncertainty import UncertainFrames, margin_uncertainty

HEIGHT, WIDTH = 48, 64
NAMES = ("background", "cell", "nucleus", "debris")


def square(x0, y0, x1, y1):
    """A COCO polygon along pixel edges: pixels x0..x1-1, y0..y1-1."""
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def labelled_file(root):
    """A COCO file as tools write it, with the mask it must rasterise to (image 1; image 2 is empty)."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True, exist_ok=True)
    for name in ("one.png", "two.png"):
        cv2.imwrite(str(root / "images" / name), rng.integers(0, 255, (HEIGHT, WIDTH, 3), np.uint8))
    ring = np.zeros((HEIGHT, WIDTH), np.uint8)
    ring[30:44, 40:60] = 1
    ring[34:40, 46:54] = 0  # a hole
    compressed = coco_mask.encode(np.asfortranarray(ring))
    debris = np.zeros((HEIGHT, WIDTH), np.uint8)
    debris[2:6, 50:62] = 1
    uncompressed = {"size": [HEIGHT, WIDTH], "counts": rle_counts(debris)}
    # a polygon with a hole: the outline 4..24 with the hole 10..14 joined in by a cut of no width
    holed = [4, 4, 24, 4, 24, 24, 4, 24, 4, 10, 10, 10, 10, 14, 14, 14, 14, 10, 4, 10]
    coco = {"images": [{"id": 11, "file_name": "one.png", "width": WIDTH, "height": HEIGHT},
                       {"id": 12, "file_name": "two.png", "width": WIDTH, "height": HEIGHT}],
            "categories": [{"id": 0, "name": "my-dataset"}, {"id": 1, "name": "cell"},
                           {"id": 3, "name": "nucleus"}, {"id": 7, "name": "debris"}],
            "annotations": [
                {"id": 1, "image_id": 11, "category_id": 3, "segmentation": [square(16, 16, 22, 22)], "iscrowd": 0},
                {"id": 2, "image_id": 11, "category_id": 1, "segmentation": [holed], "iscrowd": 0},
                {"id": 3, "image_id": 11, "category_id": 1, "iscrowd": 0,
                 "segmentation": {"size": compressed["size"], "counts": compressed["counts"].decode()}},
                {"id": 4, "image_id": 11, "category_id": 7, "segmentation": uncompressed, "iscrowd": 1},
                {"id": 5, "image_id": 11, "category_id": 7, "segmentation": [square(30, 4, 36, 10)], "iscrowd": 0},
                {"id": 6, "image_id": 11, "category_id": 1, "segmentation": [square(0, 30, 30, 46)], "iscrowd": 1},
                {"id": 7, "image_id": 11, "category_id": 3, "segmentation": [square(10, 36, 16, 40)], "iscrowd": 0}]}
    expected = np.zeros((HEIGHT, WIDTH), np.uint8)
    expected[0 + 30:46, 0:30] = IGNORE_LABEL  # crowd, under the nucleus drawn on it
    expected[2:6, 50:62] = IGNORE_LABEL
    expected[4:24, 4:24] = 1
    expected[10:14, 10:14] = 0
    expected[16:22, 16:22] = 2  # smaller than the cell it lies on: it wins, though listed first
    expected[ring == 1] = 1
    expected[4:10, 30:36] = 3
    expected[36:40, 10:16] = 2
    path = root / "labels.json"
    path.write_text(json.dumps(coco))
    return path, coco, expected


def rle_counts(mask):
    """Uncompressed COCO RLE counts (column-major runs, starting with zeros)."""
    flat = mask.flatten(order="F")
    changes = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    runs = np.diff(bounds).tolist()
    return ([0] + runs) if flat[0] else runs


def test_classes_follow_the_categories_in_file_order_background_first(tmp_path):
    path, _, _ = labelled_file(tmp_path)
    table = read_classes(path)
    assert table.names == NAMES
    assert table.class_of == {0: 0, 1: 1, 3: 2, 7: 3}  # id 0 (Roboflow's dataset category) is background


def test_rasterised_masks_polygons_holes_rle_crowd_overlaps_and_empty_image(tmp_path):
    path, _, expected = labelled_file(tmp_path)
    pairs = coco_pairs(path, NAMES, cache_dir=tmp_path / "cache")
    assert [image.name for image, _ in pairs] == ["one.png", "two.png"]
    first = read_mask(pairs[0][1])
    assert first.shape == (HEIGHT, WIDTH)
    assert np.array_equal(first, expected), np.argwhere(first != expected)[:5]
    assert not read_mask(pairs[1][1]).any()  # no annotation: all background
    stamp = pairs[0][1].stat().st_mtime_ns
    assert coco_pairs(path, NAMES, cache_dir=tmp_path / "cache") == pairs
    assert pairs[0][1].stat().st_mtime_ns == stamp  # rasterised once: the second read uses the cache


def test_segmentation_outside_the_image_is_clipped_with_one_warning(tmp_path, capsys):
    path, coco, expected = labelled_file(tmp_path)
    coco["annotations"].append({"id": 9, "image_id": 12, "category_id": 1, "iscrowd": 0,
                                "segmentation": [[-5, -5, 10, -5, 10, 10, -5, 10]]})
    path.write_text(json.dumps(coco))
    pairs = coco_pairs(path, NAMES, cache_dir=tmp_path / "cache")
    assert read_mask(pairs[1][1]).sum() == 100  # the 10x10 inside the image
    lines = [line for line in capsys.readouterr().err.splitlines() if "outside" in line]
    assert lines == [f"warning: --coco {path}: 1 segmentation(s) reach outside their image; clipped to it"]


def broken(coco, case):
    coco = copy.deepcopy(coco)
    if case == "missing image":
        coco["images"][1]["file_name"] = "gone.png"
    elif case == "unknown image":
        coco["annotations"][0]["image_id"] = 99
    elif case == "short polygon":
        coco["annotations"][0]["segmentation"] = [[1, 1, 5, 5]]
    elif case == "unknown category":
        coco["annotations"][0]["category_id"] = 5
    elif case == "not coco":
        coco = {"shapes": []}
    return coco


@pytest.mark.parametrize("case, message", [
    ("missing image", "names 1 image(s) not found in"),
    ("unknown image", "annotation 1 points at image id 99, which images does not list"),
    ("short polygon", "annotation 1 has a polygon of 2 point(s); a polygon needs at least 3"),
    ("unknown category", "annotation 1 has category id 5, which categories does not list"),
    ("not coco", "is not a COCO file: it needs the lists images, annotations and categories")])
def test_bad_files_are_one_line_errors(tmp_path, case, message):
    path, coco, _ = labelled_file(tmp_path)
    path.write_text(json.dumps(broken(coco, case)))
    with pytest.raises(UserError) as error:
        coco_pairs(path, NAMES, cache_dir=tmp_path / "cache") if case != "not coco" else read_classes(path)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_train_refuses_a_bad_file_in_one_line(tmp_path):
    path = tmp_path / "labels.json"
    path.write_text("{not json")
    result = subprocess.run([sys.executable, str(REPO / "train.py"), "--coco", str(path), "--wandb-mode", "disabled"],
                            cwd=REPO, env=QUIET_ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith(f"error: --coco {path} is not a JSON file")


@pytest.mark.parametrize("rle", [False, True])
def test_written_regions_rasterise_back_to_the_mask_exactly(rle):
    rng = np.random.default_rng(3)
    mask = (cv2.GaussianBlur(rng.random((HEIGHT, WIDTH)), (0, 0), 2) * 6).astype(np.uint8) % 3  # holes, islands
    writer = CocoWriter(["background", "a", "b"], rle=rle)
    writer.add("x.png", mask)
    back = np.zeros_like(mask)
    for annotation in writer.document()["annotations"]:
        pixels = segmentation_pixels(annotation, HEIGHT, WIDTH, "predictions.coco.json", "--coco")[0]
        assert not back[pixels].any()  # regions never overlap
        back[pixels] = annotation["category_id"]
        assert annotation["area"] == pixels.sum() and annotation["score"] == 1.0
    assert np.array_equal(back, mask)


def test_a_region_with_many_holes_rasterises_back_exactly():
    mask = np.zeros((160, 160), np.uint8)
    mask[4:154, 4:154] = 1  # one square with 200 holes of 1 to 3 pixels a side; 20 of the 3 x 3 ones hold an island
    islands = 0
    for number in range(200):
        y, x, side = 8 + 10 * (number // 15), 8 + 10 * (number % 15), number % 3 + 1
        mask[y:y + side, x:x + side] = 0
        if side == 3 and islands < 20:
            mask[y + 1, x + 1], islands = 1, islands + 1
    writer = CocoWriter(["background", "cell"])
    writer.add("holes.png", mask)
    annotations = writer.document()["annotations"]
    assert len(annotations) == 1 + islands
    big = max(annotations, key=lambda annotation: annotation["area"])
    assert len(big["segmentation"]) == 1 and big["bbox"] == [4.0, 4.0, 150.0, 150.0]  # the holes joined into one ring
    back = np.zeros_like(mask)
    for annotation in annotations:
        pixels = segmentation_pixels(annotation, *mask.shape, "predictions.coco.json", "--coco")[0]
        assert not back[pixels].any() and annotation["area"] == pixels.sum()
        back[pixels] = 1
    assert np.array_equal(back, mask), np.argwhere(back != mask)[:5]


def test_detect_save_coco_rle_decodes_to_its_own_masks(tmp_path, multiclass_checkpoint, easy_held_out):
    save_dir = tmp_path / "detect"
    result = run_detect("--model", multiclass_checkpoint, "--source", easy_held_out / "imgs", "--save-dir", save_dir,
                        "--save-coco", "--coco-rle")
    assert result.returncode == 0, result.stderr[-3000:]
    predictions = COCO(str(save_dir / "predictions.coco.json"))  # pycocotools reads it as any COCO file
    assert len(predictions.imgs) == 8
    assert {annotation["category_id"] for annotation in predictions.anns.values()} == {1, 2}
    for image in predictions.imgs.values():
        mask = read_mask(save_dir / "masks" / image["file_name"])
        annotations = predictions.loadAnns(predictions.getAnnIds(imgIds=image["id"]))
        assert all(isinstance(annotation["segmentation"]["counts"], str) for annotation in annotations)
        for label in (1, 2):
            back = np.zeros(mask.shape, bool)
            for annotation in annotations:
                if annotation["category_id"] == label:
                    back |= predictions.annToMask(annotation) > 0
            assert np.array_equal(back, mask == label), (image["file_name"], label)


def test_rank_uncertain_on_a_video_takes_no_near_duplicate_frames(tmp_path, multiclass_checkpoint):
    clip, gap, save_dir = write_video(tmp_path / "clip.mp4", 12), 4, tmp_path / "detect"
    result = run_detect("--model", multiclass_checkpoint, "--source", clip, "--save-dir", save_dir, "--save-probs",
                        "--rank-uncertain", "12", "--rank-gap", str(gap))
    assert result.returncode == 0, result.stderr[-3000:]
    scores = {}  # each frame's, from the probabilities detect.py scored it by (float16, as it held them)
    for row in read_rows(save_dir):
        with np.load(save_dir / row["probs_file"]) as stored:
            scores[int(row["frame"])] = margin_uncertainty(stored["probabilities"])
    assert sorted(scores) == list(range(12))
    with open(save_dir / "to_label.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    frames, taken = [int(row["frame"]) for row in rows], [float(row["uncertainty"]) for row in rows]
    assert 1 <= len(rows) <= 3  # 12 asked for, but of frames closer than 4 only one is taken
    assert all(abs(a - b) >= gap for a in frames for b in frames if a != b)
    assert taken == sorted(taken, reverse=True)
    assert frames[0] == max(scores, key=scores.get)  # the least sure frame of all leads
    assert taken == pytest.approx([scores[frame] for frame in frames], abs=1e-6)
    for row in rows:
        assert row["source"] == str(clip)
        assert cv2.imread(str(save_dir / row["image_file"])).shape == (96, 176, 3)  # the frame, at its size
        assert read_mask(save_dir / row["mask_file"]).shape == (96, 176)


def test_margin_uncertainty_is_zero_when_sure_and_one_for_ties():
    sure = np.zeros((4, 4, 3), np.float32)
    sure[..., 1] = 1
    assert margin_uncertainty(sure) == 0
    assert margin_uncertainty(np.full((4, 4, 2), 0.5, np.float32)) == pytest.approx(1)
    assert margin_uncertainty(np.full((4, 4, 1), 0.5, np.float32)) == pytest.approx(1)  # one class: p and 1 - p
    assert margin_uncertainty(np.full((4, 4, 1), 0.9, np.float32)) == pytest.approx(0.2)


def test_near_duplicate_video_frames_are_not_all_taken(tmp_path):
    ranking = UncertainFrames(count=3, gap=5)
    original = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    for index, p in enumerate([0.55, 0.52, 0.51, 0.9, 0.9, 0.9, 0.9, 0.9, 0.6, 0.99]):  # 0.5 is least sure
        frame = Frame("clip.mp4", None, original, object(), index, 10, None, 25.0)
        ranking.add(frame, np.zeros((HEIGHT, WIDTH), np.uint8), np.full((HEIGHT, WIDTH, 1), p, np.float32))
    ranking.write(tmp_path)
    with open(tmp_path / "to_label.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    # frames 0, 1 and 3-6 lie within 5 of frame 2; frame 8 replaces 7 (surer) and keeps out 9 (surer still)
    assert [int(row["frame"]) for row in rows] == [2, 8]
    assert all((tmp_path / row["image_file"]).is_file() for row in rows)


def train_command(*args, name):
    return [sys.executable, str(REPO / "train.py"), *map(str, args), "--encoder", "resnet18", "--encoder-weights",
            "none", "--patch-size", "64", "--epochs", "1", "--batch-size", "2", "--workers", "0",
            "--wandb-mode", "disabled", "--name", name, "--project", str(RUNS)]


def labelled_set(root, count=8):
    """`count` images of bright squares (cell) with a dark square (nucleus) inside, labelled in one COCO file."""
    rng = np.random.default_rng(5)
    (root / "images").mkdir(parents=True)
    images, annotations = [], []
    for index in range(count):
        image = rng.integers(0, 60, (HEIGHT, WIDTH, 3), np.uint8)
        x, y = int(rng.integers(2, 30)), int(rng.integers(2, 14))
        image[y:y + 30, x:x + 30] = 220
        image[y + 10:y + 20, x + 10:x + 20] = 120
        cv2.imwrite(str(root / "images" / f"s{index}.png"), image)
        images.append({"id": index + 1, "file_name": f"s{index}.png", "width": WIDTH, "height": HEIGHT})
        annotations += [{"id": 2 * index + 1, "image_id": index + 1, "category_id": 3, "iscrowd": 0,
                         "segmentation": [square(x, y, x + 30, y + 30)]},
                        {"id": 2 * index + 2, "image_id": index + 1, "category_id": 7, "iscrowd": 0,
                         "segmentation": [square(x + 10, y + 10, x + 20, y + 20)]}]
    path = root / "labels.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": [{"id": 3, "name": "cell"}, {"id": 7, "name": "nucleus"}]}))
    return path


@pytest.mark.slow
def test_train_from_coco_detect_to_coco_rank_and_train_on_the_predictions(tmp_path, run_name):
    labels = labelled_set(tmp_path / "data")
    result = subprocess.run(train_command("--coco", labels, "--val-split", "0.25", name=run_name), cwd=REPO,
                            env=QUIET_ENV, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "background, cell, nucleus" in result.stdout
    checkpoint = RUNS / run_name / "best-checkpoint.pth.tar"
    save_dir = tmp_path / "detect"
    result = run_detect("--model", checkpoint, "--source", tmp_path / "data" / "images", "--save-dir", save_dir,
                        "--save-coco", "--rank-uncertain", "3")
    assert result.returncode == 0, result.stderr[-3000:]
    predictions = json.loads((save_dir / "predictions.coco.json").read_text())
    assert [category["name"] for category in predictions["categories"]] == ["cell", "nucleus"]
    assert len(predictions["images"]) == 8 and predictions["annotations"]
    for image in predictions["images"]:  # rasterised back: detect.py's own masks, class by class
        mask = read_mask(save_dir / "masks" / image["file_name"])
        back = np.zeros_like(mask)
        for annotation in predictions["annotations"]:
            if annotation["image_id"] == image["id"]:
                assert 0 <= annotation["score"] <= 1 and len(annotation["bbox"]) == 4
                rles = coco_mask.frPyObjects(annotation["segmentation"], image["height"], image["width"])
                back[coco_mask.decode(coco_mask.merge(rles)) > 0] = annotation["category_id"]  # pycocotools' own
        for label in (1, 2):
            union = np.logical_or(mask == label, back == label).sum()
            assert union == 0 or np.logical_and(mask == label, back == label).sum() / union >= 0.98
    with open(save_dir / "to_label.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    scores = [float(row["uncertainty"]) for row in rows]
    assert len(rows) == 3 and scores == sorted(scores, reverse=True)
    for row in rows:
        assert (save_dir / row["image_file"]).is_file() and (save_dir / row["mask_file"]).is_file()
    scored = val.run(model=checkpoint, coco=labels, save_dir=tmp_path / "val", workers=0)  # val.py --coco
    assert 0 <= scored["metrics"]["val/dice"] <= 1 and (tmp_path / "val" / "per_image.csv").is_file()
    # the predictions, corrected or not, train a model again
    result = subprocess.run(train_command("--coco", save_dir / "predictions.coco.json", "--data-dir",
                                          tmp_path / "data" / "images", "--val-split", "0.25",
                                          name=f"{run_name}-again"),
                            cwd=REPO, env=QUIET_ENV, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
