"""Full resolution (issue 14): random-crop training, sliding-window inference shared by evaluation and
detect.py, and the --cache modes for data larger than memory."""

import os
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest
import torch

import detect
import train
from helpers.data import write_pair
from helpers.paths import REPO, RUNS
from helpers.training import TINY
from dataset import BinaryDataset, Dataset
from segtoolkit.models.checkpoints import load_checkpoint
from segtoolkit.errors import UserError
from segtoolkit.data.imaging import normalize
from segtoolkit.data.masks import IGNORE
from segtoolkit.models.factory import build_model, model_from_checkpoint
from segtoolkit.inference.full_size import FullSizePredictor, to_labels
from segtoolkit.inference.predictor import TorchPredictor
from segtoolkit.inference.tiling import Tiler, tile_starts



@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model("Unet", "resnet18", 2).eval()


# ---------------------------------------------------------------- sliding window


def test_tiles_cover_every_pixel_once_or_more_and_stay_inside():
    for length, tile, stride in ((300, 64, 48), (64, 64, 48), (65, 64, 48), (10, 64, 48), (1000, 256, 192)):
        starts = tile_starts(length, tile, stride)
        covered = np.zeros(max(length, tile), bool)
        for start in starts:
            covered[start:start + tile] = True
            assert start + tile <= max(length, tile)
        assert covered[:length].all() and starts[0] == 0


class BorderSensitive(torch.nn.Module):
    """A stand-in model whose output falls at its input's borders, as a CNN's does (zero padding): class 1
    where the 5x5 mean of the input is above 0.7 of its value inside, so the outer pixel rows and columns of
    every input it sees become class 0."""

    def forward(self, images):
        signal = images.sum(1, keepdim=True)
        mean = torch.nn.functional.avg_pool2d(signal, 5, stride=1, padding=2, count_include_pad=True)
        inside = signal[:, :, 32:33, 32:33]
        return torch.cat([0.7 * inside.expand_as(mean), mean], 1)


def test_a_constant_image_gives_a_constant_mask_across_tile_seams():
    """Each tile's border is wrong, as a CNN's is; blending must hide it wherever a neighbouring tile covers
    the pixel, so the mask is class 1 everywhere but at the image's own border."""
    image = np.full((150, 230, 3), 200, np.uint8)
    mask = FullSizePredictor(BorderSensitive(), 64, resize="tile", overlap=0.25, tile_batch=4).mask(image)
    assert mask.shape == (150, 230)
    assert (mask[2:-2, 2:-2] == 1).all()  # no seam where one tile ends and the next begins
    untiled = to_labels(BorderSensitive()(normalize(image[:64, :64])[None])[0])
    assert (untiled[0] == 0).all() and (untiled[:, -1] == 0).all()  # the stand-in is wrong at a tile's border


def test_an_image_the_size_of_one_tile_equals_the_untiled_prediction(model):
    predictor = TorchPredictor(model, torch.device("cpu"))
    image = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    tiled = Tiler(predictor, 64, 0.25, 4).logits(image)
    untiled = predictor(normalize(image)[None])[0]
    assert torch.allclose(tiled, untiled, atol=1e-5)


@pytest.mark.parametrize("size", [(37, 53), (64, 200), (150, 203), (257, 129)])
def test_output_sizes_always_equal_input_sizes_and_mask_streams_like_logits(model, size):
    predictor = TorchPredictor(model, torch.device("cpu"))
    image = np.random.default_rng(1).integers(0, 255, (*size, 3), dtype=np.uint8)
    logits = Tiler(predictor, 64, 0.25, 3, "linear").logits(image)
    assert tuple(logits.shape) == (2, *size)
    mask = FullSizePredictor(predictor, 64, resize="tile", overlap=0.25, tile_batch=3, weighting="linear").mask(image)
    assert np.array_equal(mask, to_labels(logits).numpy())  # the row-band path, same answer


def test_onnx_tiled_equals_pytorch_tiled(model, tmp_path):
    from segtoolkit.models.factory import model_meta
    from segtoolkit.export.onnx import export_onnx
    from segtoolkit.inference.onnx_runtime import load_onnx
    from segtoolkit.inference.predictor import ArrayPredictor
    export_onnx(model, model_meta("Unet", "resnet18", 2, 64), tmp_path / "m.onnx")
    _, predict = load_onnx(tmp_path / "m.onnx")
    image = np.random.default_rng(2).integers(0, 255, (150, 203, 3), dtype=np.uint8)
    torch_logits = Tiler(TorchPredictor(model, torch.device("cpu")), 64, 0.25, 4).logits(image)
    onnx_logits = Tiler(ArrayPredictor(predict), 64, 0.25, 4).logits(image)
    assert torch.allclose(torch_logits, onnx_logits, atol=1e-3)
    sure = torch_logits.softmax(0).max(0).values > 0.6
    assert torch.equal(torch_logits.argmax(0)[sure], onnx_logits.argmax(0)[sure])


def test_an_8000x6000_image_runs_with_memory_bounded_by_the_tile_batch(tmp_path):
    """A cheap stand-in model, so the test measures the tiling, not a network: the peak memory beyond the
    uint8 image (144 MB) and the uint8 mask (48 MB) stays far below a float32 copy of the image (576 MB)."""
    code = (
        "import resource, numpy as np, torch\n"
        "from segtoolkit.inference.full_size import FullSizePredictor\n"
        "conv = torch.nn.Conv2d(3, 2, 1)\n"
        "predict = lambda batch: conv(batch).detach()\n"
        "image = np.zeros((6000, 8000, 3), np.uint8); image[:, 4000:] = 255\n"
        "tiled = FullSizePredictor(predict, 256, resize='tile', tile_batch=8)\n"
        "tiled.mask(image[:512, :512])  # torch's lazily loaded kernels are not tiling\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "mask = tiled.mask(image)\n"
        "after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "print(mask.shape, (after - before) // 1024)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=900,
                            env=dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1"))
    assert result.returncode == 0, result.stderr[-2000:]
    shape, growth_mib = result.stdout.rsplit(")", 1)
    assert shape + ")" == "(6000, 8000"  + ")"
    assert int(growth_mib) < 250, result.stdout  # mask 48 MiB + one band of logits, not 576 MiB of floats


# ---------------------------------------------------------------- crop training data


def test_crops_are_taken_at_the_images_own_resolution_and_small_images_padded(tmp_path):
    rng = np.random.default_rng(3)
    big = rng.integers(0, 255, (120, 200, 3), dtype=np.uint8)
    mask = (rng.random((120, 200)) > 0.5).astype(np.uint8) * 255
    pair = write_pair(tmp_path, "big", big, mask)
    dataset = BinaryDataset([pair], 64, mode="crop")
    stored_image, stored_mask = dataset.store.get(0)
    assert stored_image.shape == (120, 200, 3)  # not shrunk to the patch
    crops = [dataset.load_sample(0, seed) for seed in range(8)]
    assert all(image.shape == (3, 64, 64) and target.shape == (1, 64, 64) for image, target in crops)
    assert torch.equal(crops[0][0], dataset.load_sample(0, 0)[0])  # the seed decides the window
    assert len({tuple(image[0, 0, :4].tolist()) for image, _ in crops}) > 1  # windows move
    rgb = cv2.cvtColor(big, cv2.COLOR_BGR2RGB)
    image, target = crops[0]
    found = [(top, left) for top in range(120 - 63) for left in range(200 - 63)
             if torch.allclose(normalize(rgb[top:top + 64, left:left + 64]), image)]
    assert len(found) == 1  # the crop is an exact window of the full-resolution image
    small = write_pair(tmp_path / "s", "small", rng.integers(0, 255, (40, 50, 3), dtype=np.uint8),
                       np.full((40, 50), 255, np.uint8))
    _, target = BinaryDataset([small], 64, mode="crop").load_sample(0, 0)
    assert (target[0, :40, :50] == 1).all() and (target[0, 40:] == IGNORE).all() and (target[0, :, 50:] == IGNORE).all()


def position_image(height, width):
    """An image whose pixel (y, x) holds y in red and x in green (BGR on disk), and a 3-class mask of both."""
    rows, columns = np.mgrid[:height, :width]
    image = np.stack([np.zeros_like(rows), columns, rows], axis=2).astype(np.uint8)
    return image, ((rows + columns) % 3).astype(np.uint8)


def test_a_crop_of_a_larger_image_is_labelled_everywhere_at_every_position(tmp_path):
    """Issue 22: the validity map was cut by the window twice, so a crop at (top, left) kept labels only in
    its (P - top) x (P - left) corner, and none once top or left reached the patch. Every crop of an image
    larger than the patch is the image's: no IGNORE, and the labels are the mask's window."""
    positions = {}
    for stem, (height, width), seeds in (("wide", (130, 200), range(300)), ("near", (65, 66), range(60))):
        image, mask = position_image(height, width)
        dataset = Dataset([write_pair(tmp_path / stem, stem, image, mask)], 64, classes=3, mode="crop")
        seen = positions.setdefault(stem, set())
        for seed in seeds:
            window, _, _ = dataset.cropped(*dataset.store.get(0), seed)
            top, left = int(window[0, 0, 0]), int(window[0, 0, 1])  # the window's place, read from its pixel
            seen.add((top, left))
            _, target = dataset.load_sample(0, seed)
            assert not (target == IGNORE).any(), (stem, top, left)
            assert torch.equal(target, torch.from_numpy(mask[top:top + 64, left:left + 64]).long())
    wide = positions["wide"]
    assert max(top for top, _ in wide) >= 64 and max(left for _, left in wide) >= 64  # past the first patch
    assert any(top >= 64 and left >= 64 for top, left in wide)
    assert positions["near"] == {(top, left) for top in range(2) for left in range(3)}  # far corner (1, 2) too


def test_a_crop_of_a_smaller_image_ignores_exactly_its_padding(tmp_path):
    image, mask = position_image(40, 50)
    dataset = Dataset([write_pair(tmp_path, "small", image, mask)], 64, classes=3, mode="crop")
    for seed in range(5):
        _, target = dataset.load_sample(0, seed)
        padding = np.ones((64, 64), bool)
        padding[:40, :50] = False
        assert torch.equal(target == IGNORE, torch.from_numpy(padding))
        assert torch.equal(target[:40, :50], torch.from_numpy(mask).long())


@pytest.mark.parametrize("cache", ["ram", "disk", "none"])
def test_every_cache_mode_gives_the_same_samples(tmp_path, cache):
    pairs = [write_pair(tmp_path / "d", f"p{i}", np.random.default_rng(i).integers(0, 255, (50 + i, 70, 3),
                                                                                   dtype=np.uint8),
                        (np.random.default_rng(i).random((50 + i, 70)) * 3).astype(np.uint8)) for i in range(4)]
    reference = Dataset(pairs, 64, classes=3)
    dataset = Dataset(pairs, 64, classes=3, cache=cache, cache_dir=tmp_path / "cache")
    for index in range(4):
        for a, b in zip(reference.load_sample(index), dataset.load_sample(index)):
            assert torch.equal(a, b)
    assert dataset.label_counts == reference.label_counts


def test_disk_cache_is_rebuilt_when_a_file_changes_and_reused_otherwise(tmp_path):
    pair = write_pair(tmp_path / "d", "a", np.full((40, 60, 3), 10, np.uint8), np.zeros((40, 60), np.uint8))
    cache = tmp_path / "cache"
    Dataset([pair], 64, classes=2, cache="disk", cache_dir=cache)
    notes = sorted(cache.glob("*.json"))
    written = notes[0].stat().st_mtime_ns
    time.sleep(0.01)
    Dataset([pair], 64, classes=2, cache="disk", cache_dir=cache)
    assert notes[0].stat().st_mtime_ns == written  # valid: not decoded or written again
    cv2.imwrite(str(pair[1]), np.ones((40, 60), np.uint8))
    changed = Dataset([pair], 64, classes=2, cache="disk", cache_dir=cache)
    assert notes[0].stat().st_mtime_ns != written
    assert changed.label_counts == {1: 64 * 43}  # the new mask (shrunk to the patch: 64x43), not the old one


def test_disk_cache_in_a_folder_that_cannot_be_written_is_one_line(tmp_path):
    pair = write_pair(tmp_path / "d", "a", np.zeros((40, 60, 3), np.uint8), np.zeros((40, 60), np.uint8))
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match=r"--cache disk cannot write its cache in .*file/cache .*; give --cache-dir"):
        Dataset([pair], 64, classes=2, cache="disk", cache_dir=tmp_path / "file" / "cache")


# ---------------------------------------------------------------- crop training end to end


def test_crop_training_evaluates_whole_images_and_detect_tiles_on_its_own(tmp_path, run_name, capsys):
    rng = np.random.default_rng(4)
    data = tmp_path / "data"
    for index in range(6):
        image = rng.integers(0, 255, (90 + 10 * index, 150, 3), dtype=np.uint8)
        mask = np.zeros(image.shape[:2], np.uint8)
        mask[:, : 60 + index] = 255
        write_pair(data, f"s{index}", image, mask)
    code = train.main(train.parse_args([*TINY, "--data-dir", str(data), "--search-files", "--val-split", "0.34",
                                        "--epochs", "1", "--crop", "--cache", "disk", "--name", run_name]))
    out, err = capsys.readouterr()
    assert code == 0, err[-2000:]
    checkpoint = load_checkpoint(RUNS / run_name / "best-checkpoint.pth.tar")
    assert checkpoint["meta"]["input_mode"] == "tile" and checkpoint["config"]["crop"] is True
    # an epoch draws as many crops of each image as its area holds patches (about 4 here), and stores it
    train_images = [cv2.imread(image).shape[:2] for image, _ in checkpoint["data"]["train"]]
    crops = round(np.mean([height * width for height, width in train_images]) / 64 ** 2)
    assert crops >= 3 and checkpoint["config"]["crops_per_image"] == crops
    assert f"1 epoch x {len(train_images) * crops // 2} steps at patch 64 ({crops} crops per image)" in out
    # detect.py picks sliding-window inference from the checkpoint, with no flag: masks at each image's size
    image_path = data / "imgs" / "s5.png"
    summary = detect.run(model=RUNS / run_name / "best-checkpoint.pth.tar", source=image_path,
                         save_dir=tmp_path / "out")
    assert summary["frames"] == 1
    written = cv2.imread(str(tmp_path / "out" / "masks" / "s5.png"), cv2.IMREAD_UNCHANGED)
    model = model_from_checkpoint(checkpoint).eval()
    expected = FullSizePredictor(TorchPredictor(model, torch.device("cpu")), 64, resize="tile").mask(
        cv2.cvtColor(cv2.imread(str(image_path)), cv2.COLOR_BGR2RGB))
    assert written.shape == (140, 150) and np.array_equal(written > 0, expected > 0)


@pytest.mark.parametrize("repeats", [1, 3])
def test_an_epoch_draws_every_sample_crops_per_image_times_each_with_its_own_seed(repeats):
    from segtoolkit.distributed import Process
    from segtoolkit.data.loaders import ResumableSampler, sample_seed
    sampler = ResumableSampler(range(10), True, 0, Process(), batch_size=2, repeats=repeats)
    sampler.set_epoch(2)
    drawn = list(sampler)
    assert sorted(index for index, _ in drawn) == sorted(list(range(10)) * repeats) and len(sampler) == 10 * repeats
    assert len({seed for _, seed in drawn}) == 10 * repeats  # each crop of a sample its own place
    if repeats == 1:  # one crop per image: the epoch runs already stored (and resumed) drew, unchanged
        assert all(seed == sample_seed(0, 2, index) for index, seed in drawn)
    sampler.skip = 2  # a resume mid-epoch skips the batches done, counted in crops
    assert list(sampler) == drawn[4:]


def test_crops_per_image_goes_with_crop_only_and_is_at_least_one(capsys):
    for flags, message in ((["--crops-per-image", "2"], "--crops-per-image 2 goes with --crop"),
                           (["--crop", "--crops-per-image", "0"], "--crops-per-image 0 must be at least 1")):
        assert train.main(train.parse_args([*TINY, "--epochs", "1", *flags])) == 2
        last = capsys.readouterr().err.strip().splitlines()[-1]
        assert last.startswith(f"error: {message}"), last


def test_a_resume_keeps_its_crops_per_image_and_runs_stored_before_drew_one():
    from segtoolkit.training.config import RunConfig
    stored = RunConfig(crop=True, crops_per_image=3)
    assert RunConfig(crop=True, crops_per_image=None).resumed(stored, set(), "run/checkpoint.pth.tar") \
        .crops_per_image == 3
    with pytest.raises(UserError, match=r"^--crops-per-image 2 differs from the run being resumed \(3\)"):
        RunConfig(crop=True, crops_per_image=2).resumed(stored, {"crops_per_image"}, "run/checkpoint.pth.tar")
    older = {key: value for key, value in stored.to_dict().items() if key != "crops_per_image"}
    assert RunConfig.from_dict(older).crops_per_image == 1  # the sampler they were trained with


def test_val_reproduces_a_crop_trained_runs_full_resolution_test_results(tmp_path, run_name, capsys):
    import json

    import val
    rng = np.random.default_rng(5)
    data = tmp_path / "data"
    for index in range(8):
        image = rng.integers(0, 255, (80 + 9 * index, 130, 3), dtype=np.uint8)
        mask = np.zeros(image.shape[:2], np.uint8)
        mask[10:, : 50 + 5 * index] = 255
        write_pair(data, f"s{index}", image, mask)
    code = train.main(train.parse_args([*TINY, "--data-dir", str(data), "--search-files", "--val-split", "0.25",
                                        "--test-split", "0.25", "--epochs", "1", "--crop", "--scale", "0.5",
                                        "--name", run_name]))
    assert code == 0, capsys.readouterr().err[-2000:]
    expected = json.loads((RUNS / run_name / "test_results.json").read_text())
    summary = val.run(model=RUNS / run_name / "best-checkpoint.pth.tar", save_dir=tmp_path / "val", workers=0,
                      save_masks=True)
    assert summary["metrics"].keys() >= expected.keys()
    for key, value in expected.items():
        assert summary["metrics"][key] == pytest.approx(value, abs=1e-6), key
    test_image = load_checkpoint(RUNS / run_name / "checkpoint.pth.tar")["data"]["test"][0][0]
    written = cv2.imread(str(tmp_path / "val" / "masks" / f"{os.path.basename(test_image)}"), cv2.IMREAD_UNCHANGED)
    assert written.shape == cv2.imread(test_image).shape[:2]  # the image's own size (scale 0.5 undone)
