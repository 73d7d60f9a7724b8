"""dataset.py: reading any image kind, masks, letterboxing, split files and the two dataset classes."""

import re

import cv2
import numpy as np
import pytest
import torch

from dataset import BinaryDataset, Dataset, make_dataset
from segtoolkit.data.imaging import dataset_bit_depth, letterbox, normalize, preprocess_image, read_image, unletterbox
from segtoolkit.data.splits import pair_masks, read_split_file, search_files
from segtoolkit.data.imaging import IMAGENET_MEAN, IMAGENET_STD
from segtoolkit.errors import UserError
from helpers.data import write_pair
from segtoolkit.data.masks import IGNORE


def square_mask(height, width, value):
    mask = np.zeros((height, width), np.uint8)
    mask[height // 4: height // 2, width // 4: width // 2] = value
    return mask


@pytest.mark.parametrize("kind", ["gray8", "rgb8", "rgba8", "gray16", "rgb16"])
def test_every_image_kind_reaches_the_model_the_same_way(tmp_path, kind):
    base = np.tile(np.arange(0, 250, 250 / 80, dtype=np.float64)[:80], (60, 1))
    channels = {"gray": None, "rgb": 3, "rgba": 4}[kind.rstrip("0123456789")]
    sixteen = kind.endswith("16")
    pixels = (base * 257).astype(np.uint16) if sixteen else base.astype(np.uint8)
    if channels:
        pixels = np.stack([pixels] * channels, axis=2)
        if channels == 4:
            pixels[..., 3] = 65535 if sixteen else 255
    path = tmp_path / "image.png"
    cv2.imwrite(str(path), pixels)
    image = read_image(path)
    assert image.dtype == np.uint8 and image.shape == (60, 80, 3)
    assert np.abs(image[..., 0].astype(int) - base.astype(np.uint8)).max() <= 1
    pair = write_pair(tmp_path / "set", "a", pixels, square_mask(60, 80, 255))
    sample, mask = BinaryDataset([pair], 64).load_sample(0)
    assert sample.dtype == torch.float32 and sample.shape == (3, 64, 64)
    expected = normalize(letterbox(image, 64)[0])
    assert torch.allclose(sample, expected)


@pytest.mark.parametrize("foreground", [1, 255])
def test_binary_masks_0_1_and_0_255_become_0_1(tmp_path, foreground):
    image = np.full((64, 96, 3), 128, np.uint8)
    pair = write_pair(tmp_path, "a", image, square_mask(64, 96, foreground))
    dataset = BinaryDataset([pair], 64)
    assert dataset.masks[0].dtype == np.uint8 and set(np.unique(dataset.masks[0])) == {0, 1}
    assert dataset.images[0].dtype == np.uint8 and dataset.images[0].shape == (43, 64, 3)  # longest side = patch
    _, mask = dataset.load_sample(0)
    assert mask.shape == (1, 64, 64) and mask.dtype == torch.float32
    assert set(mask[0, :43].unique().tolist()) == {0.0, 1.0}
    assert (mask[0, 43:] == IGNORE).all()  # padding is not background: it never counts


def test_stretch_sample_fills_the_patch_and_every_pixel_counts(tmp_path):
    """--resize stretch: a 2:1 image is resized to the whole patch (no padding, nothing IGNORE), as
    preprocess_image(stretch=True) does for detection; the cache keys of the two modes differ."""
    image = np.tile(np.linspace(0, 250, 128, dtype=np.uint8), (64, 1))[..., None].repeat(3, axis=2)
    pair = write_pair(tmp_path, "a", image, square_mask(64, 128, 255))
    dataset = BinaryDataset([pair], 64, mode="stretch")
    assert dataset.images[0].shape == (64, 64, 3) and dataset.masks[0].shape == (64, 64)
    sample, mask = dataset.load_sample(0)
    assert sample.shape == (3, 64, 64) and mask.shape == (1, 64, 64)
    assert not (mask == IGNORE).any()  # every pixel is the image's
    assert set(mask.unique().tolist()) == {0.0, 1.0}
    assert mask[0, 16:32, 16:32].eq(1).all() and mask[0, 40:].eq(0).all()  # the object stretched with the image
    tensor, box = preprocess_image(read_image(pair[0]), 64, stretch=True)
    assert torch.allclose(sample, tensor) and (box.scaled_height, box.scaled_width) == (64, 64)
    bottom_row = sample[0, -1]  # the image's content reaches the patch's last row and column: no padding
    assert bottom_row[-1] > bottom_row[0] + 3  # the gradient spans the whole width
    assert unletterbox(dataset.masks[0], box).shape == (64, 128)
    letterboxed = BinaryDataset([pair], 64, cache="disk", cache_dir=tmp_path / "cache")
    assert (letterboxed.load_sample(0)[1] == IGNORE).any()  # the letterbox of the same image pads half of it
    stretched = BinaryDataset([pair], 64, mode="stretch", cache="disk", cache_dir=tmp_path / "cache")
    assert stretched.images[0].shape == (64, 64, 3)  # its own cache entry, not the letterboxed 32x64 one


def test_normalization_uses_the_mean_and_std():
    image = np.zeros((32, 32, 3), np.uint8)
    image[..., 1] = 255
    tensor = normalize(image)
    assert torch.allclose(tensor[0], torch.full((32, 32), -IMAGENET_MEAN[0] / IMAGENET_STD[0]))
    assert torch.allclose(tensor[1], torch.full((32, 32), (1 - IMAGENET_MEAN[1]) / IMAGENET_STD[1]))


def test_soft_binary_mask_is_refused_with_the_fix(tmp_path):
    mask = square_mask(64, 64, 255)
    mask[0, 0] = 128
    pair = write_pair(tmp_path, "soft", np.zeros((64, 64, 3), np.uint8), mask)
    with pytest.raises(UserError, match=r"soft\.png.*0/1, 0/255 or 0/65535.*JPEG"):
        BinaryDataset([pair], 64)


def test_multiclass_masks_class_indices_and_ignore_index(tmp_path):
    mask = square_mask(64, 64, 2)
    mask[0:4] = 255
    pair = write_pair(tmp_path, "multi", np.zeros((64, 64, 3), np.uint8), mask)
    dataset = Dataset([pair], 64, classes=3, ignore_index=255)
    _, labels = dataset.load_sample(0)
    assert labels.dtype == torch.int64 and labels.shape == (64, 64)
    assert set(labels.unique().tolist()) == {0, 2, IGNORE}  # --ignore-index becomes IGNORE, like padding
    assert (labels[0:4] == IGNORE).all() and (labels[4:] != IGNORE).all()
    with pytest.raises(UserError, match=r"multi\.png has value 255.*neither a class \(0\.\.2\)"):
        Dataset([pair], 64, classes=3)
    mask[10, 10] = 7
    write_pair(tmp_path, "multi", np.zeros((64, 64, 3), np.uint8), mask)
    with pytest.raises(UserError, match="has value 7"):
        Dataset([pair], 64, classes=3, ignore_index=255)


def test_mask_size_must_match_image(tmp_path):
    pair = write_pair(tmp_path, "a", np.zeros((64, 64, 3), np.uint8), np.zeros((32, 64), np.uint8))
    with pytest.raises(UserError, match=r"mask .*a\.png is 64x32 but image .*a\.png is 64x64"):
        BinaryDataset([pair], 64)


def test_patch_size_must_be_a_multiple_of_32(tmp_path):
    pair = write_pair(tmp_path, "a", np.zeros((64, 64, 3), np.uint8), np.zeros((64, 64), np.uint8))
    with pytest.raises(UserError, match="--patch-size 100 is not a positive multiple of 32"):
        make_dataset([pair], 100, classes=1)


def test_letterbox_round_trip_restores_the_original_geometry():
    mask = np.zeros((90, 200), np.uint8)
    mask[10:50, 120:180] = 1
    padded, box = letterbox(mask, 128, cv2.INTER_NEAREST)
    assert padded.shape == (128, 128) and (box.scaled_height, box.scaled_width) == (58, 128)
    assert padded[58:].sum() == 0
    restored = unletterbox(padded, box)
    assert restored.shape == mask.shape
    assert (restored == mask).mean() > 0.98
    tensor, box2 = preprocess_image(np.zeros((90, 200, 3), np.uint8), 128)
    assert tensor.shape == (3, 128, 128) and box2 == box


def test_split_file_parsing(tmp_path):
    root = tmp_path / "data"
    a, _ = write_pair(root, "a", np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), np.uint8))
    b, _ = write_pair(root, "b", np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), np.uint8))
    c, _ = write_pair(root, "c", np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), np.uint8))
    split = tmp_path / "split.txt"
    split.write_text(f"# a comment\n\nimgs/a.png\n  b.png   # bare name inside imgs/\n{c}\n")
    assert read_split_file(split, root) == [a, b, c]
    assert [m.name for _, m in pair_masks([a, b, c], root / "masks")] == ["a.png", "b.png", "c.png"]
    split.write_text("imgs/a.png\nimgs/missing1.png\nimgs/missing2.png\n")
    with pytest.raises(UserError, match=r"names 2 file\(s\) that do not exist: .*missing1\.png, .*missing2\.png"):
        read_split_file(split, root)
    with pytest.raises(UserError, match=r"split file .*nope\.txt does not exist.*--search-files"):
        read_split_file(tmp_path / "nope.txt", root)


def test_search_files_pairs_by_stem_and_splits_with_the_seed(tmp_path):
    for index in range(10):
        write_pair(tmp_path, f"s{index}", np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), np.uint8))
    train, val, test = search_files(tmp_path, val_split=0.2, test_split=0.1, seed=3)
    assert (len(train), len(val), len(test)) == (7, 2, 1)
    assert all(image.stem == mask.stem for image, mask in train + val + test)
    assert (train, val, test) == search_files(tmp_path, val_split=0.2, test_split=0.1, seed=3)
    assert search_files(tmp_path, val_split=0.2, test_split=0.1, seed=4) != (train, val, test)
    (tmp_path / "masks" / "s1.png").unlink()
    (tmp_path / "masks" / "s2.png").unlink()
    cv2.imwrite(str(tmp_path / "masks" / "orphan.png"), np.zeros((8, 8), np.uint8))
    with pytest.raises(UserError, match=r"images without a mask: s1\.png, s2\.png; masks without an image: orphan"):
        search_files(tmp_path)


# ---------------------------------------------------------------- EXIF orientation (issue 17, item 3)

# How a camera stores an upright scene under each EXIF orientation value (the inverse of what a viewer
# does to show it). 5 and 7 are mirror images across a diagonal; 6 is "rotate 90 clockwise to view".
STORED_AS = {1: lambda a: a, 2: np.fliplr, 3: lambda a: np.rot90(a, 2), 4: np.flipud,
             5: lambda a: np.swapaxes(a, 0, 1), 6: lambda a: np.rot90(a, 1),
             7: lambda a: np.rot90(a, 2).swapaxes(0, 1), 8: lambda a: np.rot90(a, -1)}


def upright_scene(height=48, width=80):
    """An RGB image no flip or rotation maps onto itself: four coloured blocks of different sizes."""
    image = np.full((height, width, 3), 30, np.uint8)
    image[:16, :32] = (220, 40, 40)
    image[32:, 48:] = (40, 220, 40)
    image[8:24, 64:] = (40, 40, 220)
    return image


def save_with_orientation(path, rgb, orientation):
    """Write `rgb` with an EXIF orientation tag, as a phone (JPEG) or an editor (PNG, WebP, TIFF) would."""
    from PIL import Image
    image = Image.fromarray(np.ascontiguousarray(rgb))
    exif = image.getexif()
    exif[0x0112] = orientation
    options = {".jpg": dict(quality=95, subsampling=0), ".webp": dict(lossless=True)}.get(path.suffix, {})
    image.save(path, exif=exif, **options)
    return path


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("suffix", [".jpg", ".png", ".webp", ".tif"])
def test_images_are_read_upright_whatever_their_exif_orientation(tmp_path, suffix, orientation):
    from PIL import Image, ImageOps
    upright = upright_scene()
    stored = STORED_AS[orientation](upright)
    path = save_with_orientation(tmp_path / f"photo{suffix}", stored, orientation)
    tolerance = 4 if suffix == ".jpg" else 0  # mean absolute difference: JPEG is lossy
    # the table above is what a viewer (Pillow here) undoes: checked, so the test does not rest on it alone
    viewer = np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB"))
    assert viewer.shape == upright.shape and np.abs(viewer.astype(int) - upright).mean() <= tolerance
    image = read_image(path)
    assert image.shape == upright.shape
    assert np.abs(image.astype(int) - upright).mean() <= tolerance
    if orientation != 1 and stored.shape == upright.shape:
        assert np.abs(stored.astype(int) - upright).mean() > 20  # reading the raw pixel order would fail


def test_portrait_photo_with_an_upright_mask_trains_and_the_mask_stays_as_stored(tmp_path):
    upright = np.full((160, 100, 3), 20, np.uint8)
    upright[20:60, 10:50] = 230  # a bright square near the top left, as the user sees the photo
    mask = np.zeros((160, 100), np.uint8)
    mask[20:60, 10:50] = 255
    (tmp_path / "imgs").mkdir()
    (tmp_path / "masks").mkdir()
    image_path = save_with_orientation(tmp_path / "imgs" / "phone.jpg", STORED_AS[6](upright), 6)
    mask_path = tmp_path / "masks" / "phone.png"
    cv2.imwrite(str(mask_path), mask)
    dataset = BinaryDataset([(image_path, mask_path)], 64)  # today: "mask is 100x160 but image is 160x100"
    image, labels = dataset.images[0], dataset.masks[0]
    assert image.shape == (64, 40, 3) and labels.shape == (64, 40)
    assert image[labels == 1].mean() > 200 and image[labels == 0].mean() < 60  # the mask covers the square
    # masks are read as stored, even when a labelling tool copied the photo's EXIF into them
    tagged_mask = save_with_orientation(tmp_path / "masks" / "tagged.png", np.dstack([mask] * 3), 6)
    from segtoolkit.data.masks import read_mask
    assert read_mask(tagged_mask).shape == (160, 100)


# ---------------------------------------------------------------- text encodings of lists (issue 17, item 7)


def test_split_file_with_a_utf8_byte_order_mark_keeps_its_first_entry(tmp_path):
    root = tmp_path / "data"
    a, _ = write_pair(root, "a", np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), np.uint8))
    b, _ = write_pair(root, "b", np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), np.uint8))
    split = tmp_path / "split.txt"
    split.write_bytes("imgs/a.png\r\nimgs/b.png\r\n".encode("utf-8-sig"))  # Notepad's "UTF-8 with BOM"
    assert read_split_file(split, root) == [a, b]


@pytest.mark.parametrize("encoding, named", [("utf-16", "UTF-16 LE"), ("utf-16-be", "UTF-16 BE"),
                                             ("utf-16-le", "UTF-16 LE"), ("utf-32", "UTF-32 LE")])
def test_split_file_in_utf16_is_one_line_naming_the_encoding(tmp_path, encoding, named):
    root = tmp_path / "data"
    write_pair(root, "a", np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), np.uint8))
    split = tmp_path / "split.txt"
    split.write_bytes("imgs/a.png\r\n".encode(encoding))  # utf-16 / utf-32 write a BOM; -be / -le do not
    with pytest.raises(UserError, match=rf"^split file {re.escape(str(split))} is saved as {named}; save it as "
                                        rf"UTF-8 \(in Notepad: Save as, Encoding UTF-8\)$"):
        read_split_file(split, root)


def test_nul_bytes_alone_do_not_make_a_file_utf16(tmp_path):
    split = tmp_path / "split.txt"
    split.write_bytes(b"imgs/a\x00b.png\nimgs/c.png\n")  # a stray NUL in UTF-8 text: named as missing, not UTF-16
    with pytest.raises(UserError, match=r"names 2 file\(s\) that do not exist"):
        read_split_file(split, tmp_path)


def test_source_list_with_bom_or_in_utf16(tmp_path):
    from segtoolkit.data.sources import resolve_sources
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((8, 8, 3), np.uint8))
    cv2.imwrite(str(tmp_path / "b.png"), np.zeros((8, 8, 3), np.uint8))
    listing = tmp_path / "list.txt"
    listing.write_bytes("a.png\nb.png\n".encode("utf-8-sig"))
    files, streams = resolve_sources(str(listing))
    assert [f.name for f in files] == ["a.png", "b.png"] and streams == []
    listing.write_bytes("a.png\nb.png\n".encode("utf-16"))
    with pytest.raises(UserError, match=rf"^--source {re.escape(str(listing))} is saved as UTF-16 LE; save it as "
                                        rf"UTF-8"):
        resolve_sources(str(listing))


# ---------------------------------------------------------------- 12-bit data, broken links (issue 17, item 9)


@pytest.fixture
def fresh_bit_depth_notes(monkeypatch):
    """Each test sees the once-per-process bit-depth line again."""
    from segtoolkit.data import imaging
    monkeypatch.setattr(imaging, "REPORTED_BIT_DEPTHS", set())


@pytest.mark.parametrize("bits, suffix", [(10, ".png"), (12, ".tif"), (14, ".png")])
def test_high_bit_data_in_16_bit_files_is_scaled_by_its_bit_depth_and_said_once(tmp_path, bits, suffix, capsys,
                                                                                  fresh_bit_depth_notes):
    top = (1 << bits) - 1
    gray = np.tile(np.linspace(0, top, 64).round().astype(np.uint16), (8, 1))
    gray[0, 0] = top  # a camera's full scale
    paths = [tmp_path / f"{stem}{suffix}" for stem in ("a", "b")]
    for path in paths:
        assert cv2.imwrite(str(path), gray)
    image = read_image(paths[0])
    expected = np.round(gray.astype(np.float64) * 255 / top)
    assert np.abs(image[..., 0].astype(int) - expected).max() <= 1  # today: full scale reads as top / 257
    assert image[0, 0, 0] == 255 and image[0, 32, 0] in (expected[0, 32], expected[0, 32] - 1)
    read_image(paths[1])
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("warning: ")
    assert f"16-bit image {paths[0]} holds values up to {top}" in err and f"read as {bits}-bit data" in err


def test_full_range_16_bit_and_alpha_keep_the_16_bit_scale(tmp_path, capsys, fresh_bit_depth_notes):
    rgba = np.zeros((8, 8, 4), np.uint16)
    rgba[..., :3] = 4000  # 12-bit colour; the opaque alpha (65535) must not decide the scale
    rgba[..., 3] = 65535
    cv2.imwrite(str(tmp_path / "rgba.png"), rgba)
    assert read_image(tmp_path / "rgba.png")[0, 0, 0] == round(4000 * 255 / 4095)
    full = np.full((8, 8), 65535, np.uint16)
    full[0, 0] = 4000
    cv2.imwrite(str(tmp_path / "full.png"), full)
    image = read_image(tmp_path / "full.png")
    assert image[0, 0, 0] == round(4000 / 257) and image[1, 1, 0] == 255
    assert capsys.readouterr().err.count("read as 12-bit data") == 1


def two_frames(folder, maxima=(900, 4000), stem="frame"):
    """16-bit gray frames 64x64 holding raw 800 in their left half and their largest value in one pixel, with
    binary masks: folder/imgs, folder/masks; [(image, mask)]."""
    pairs = []
    for index, largest in enumerate(maxima):
        frame = np.full((64, 64), 100, np.uint16)
        frame[:, :32] = 800
        frame[0, 63] = largest
        pairs.append(write_pair(folder, f"{stem}{index}", frame, square_mask(64, 64, 255)))
    return pairs


def test_one_raw_value_reads_as_one_8_bit_value_in_every_image_of_the_data(tmp_path, capsys, fresh_bit_depth_notes):
    """Issue 22: each 16-bit image was scaled by its own largest value, so raw 800 read 199 in a frame whose
    largest was 900 (10-bit) and 50 in one whose largest was 4000 (12-bit)."""
    (first, _), (second, _) = two_frames(tmp_path)
    assert read_image(first)[0, 0, 0] == 199 and read_image(second)[0, 0, 0] == 50  # without a depth: as before
    assert dataset_bit_depth([first, second]) == 12  # the smallest depth holding the data's largest value
    same = [read_image(path, bit_depth=12)[0, 0, 0] for path in (first, second)]
    assert same == [round(800 * 255 / 4095)] * 2
    capsys.readouterr()
    clipped = read_image(second, bit_depth=10)  # --bit-depth 10 on data that holds 12 bits: 4000 clips
    assert clipped[0, 0, 0] == round(800 * 255 / 1023) and clipped[0, 63, 0] == 255
    read_image(second, bit_depth=10)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"16-bit image {second} holds values up to 4000, above the 10-bit range" in err
    eight = tmp_path / "eight.png"
    cv2.imwrite(str(eight), np.full((8, 8), 200, np.uint8))
    assert dataset_bit_depth([eight]) is None and read_image(eight, bit_depth=12)[0, 0, 0] == 200  # 8-bit as is
    tiff = tmp_path / "frame.tif"
    cv2.imwrite(str(tiff), np.full((8, 8), 16000, np.uint16))
    assert dataset_bit_depth([eight, tiff, first]) == 14
    dataset = BinaryDataset(two_frames(tmp_path / "set"), 64, bit_depth=12)
    assert [image[0, 0, 0] for image in dataset.images] == same  # training reads them the same way


def test_the_bit_depth_is_decided_once_stored_in_the_checkpoint_and_used_by_every_reader(tmp_path, run_name, capsys,
                                                                                         fresh_bit_depth_notes):
    import train
    from helpers.paths import RUNS
    from helpers.training import TINY
    from dataloaders import LoadImages
    from segtoolkit.export import int8 as quantize
    from segtoolkit.models.checkpoints import load_checkpoint, save_checkpoint
    from segtoolkit.models.factory import build_model, model_meta
    from val import ValSettings, read_options
    pairs = two_frames(tmp_path / "data", (900, 4000), "train") + two_frames(tmp_path / "data", (1000,), "val")
    for name, stems in (("train.txt", ["train0", "train1"]), ("val.txt", ["val0"])):
        (tmp_path / "data" / name).write_text("".join(f"imgs/{stem}.png\n" for stem in stems))
    common = ["--data-dir", str(tmp_path / "data"), "--train-list", "train.txt", "--val-list", "val.txt", *TINY]
    assert train.main(train.parse_args([*common, "--name", run_name])) == 0
    out = capsys.readouterr().out
    assert "16-bit images read as 12-bit data" in out  # the training split's largest value is 4000
    checkpoint = load_checkpoint(RUNS / run_name / "best-checkpoint.pth.tar")
    meta = checkpoint["meta"]
    assert meta["bit_depth"] == 12 and checkpoint["config"]["bit_depth"] == "auto"
    # every reader scales 16-bit files by the stored depth: raw 800 is one 8-bit value everywhere
    expected = round(800 * 255 / 4095)
    frames = list(LoadImages([pair[0] for pair in pairs], None, bit_depth=meta["bit_depth"]))
    assert [frame.original[0, 0, 0] for frame in frames] == [expected] * 3
    assert read_options(meta, ValSettings(model="m"))["bit_depth"] == 12  # val.py
    assert quantize.preprocessed([pairs[0][0]], meta)[0][0, 0, 0, 0] == pytest.approx(
        normalize(np.full((1, 1, 3), expected, np.uint8))[0, 0, 0].item())  # export's check and calibration
    old_meta = {key: value for key, value in meta.items() if key != "bit_depth"}  # written before it was stored
    save_checkpoint(tmp_path / "old.pth.tar", build_model("Unet", "resnet18", 1), old_meta)
    assert load_checkpoint(tmp_path / "old.pth.tar")["meta"]["bit_depth"] is None  # each image by its own
    assert model_meta("Unet", "resnet18", 1, 64)["bit_depth"] is None
    assert train.main(train.parse_args([*common, "--name", run_name, "--bit-depth", "14", "--epochs", "1"])) == 0
    assert load_checkpoint(RUNS / f"{run_name}2" / "best-checkpoint.pth.tar")["meta"]["bit_depth"] == 14
    capsys.readouterr()
    assert train.main(train.parse_args([*common, "--name", run_name, "--bit-depth", "9"])) == 2
    err = capsys.readouterr().err
    assert err == ("error: --bit-depth 9: give auto (from the training split's 16-bit images) or one of "
                   "8, 10, 12, 14, 16\n")


def test_16_bit_masks_are_not_scaled(tmp_path):
    from segtoolkit.data.masks import read_mask
    mask = np.zeros((8, 8), np.uint16)
    mask[2:4, 2:4] = 300
    cv2.imwrite(str(tmp_path / "m.png"), mask)
    assert np.array_equal(read_mask(tmp_path / "m.png"), mask)


@pytest.mark.parametrize("folder", ["imgs", "masks"])
def test_broken_link_in_a_data_folder_is_named(tmp_path, folder):
    for stem in ("a", "b"):
        write_pair(tmp_path, stem, np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), np.uint8))
    (tmp_path / folder / "c.png").symlink_to(tmp_path / "elsewhere" / "c.png")  # today: silently dropped
    with pytest.raises(UserError, match=rf"^folder .*{folder} holds 1 broken link\(s\) \(the file they point to "
                                        rf"does not exist\): c\.png -> .*elsewhere/c\.png; fix or remove them$"):
        search_files(tmp_path)


def test_split_file_naming_a_broken_link_says_so(tmp_path):
    root = tmp_path / "data"
    write_pair(root, "a", np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), np.uint8))
    (root / "imgs" / "b.png").symlink_to(tmp_path / "gone.png")
    split = tmp_path / "split.txt"
    split.write_text("imgs/a.png\nimgs/b.png\nimgs/missing.png\n")
    with pytest.raises(UserError, match=r"names 1 file\(s\) that do not exist: .*imgs/missing\.png and 1 broken "
                                        r"link\(s\) \(the file they point to does not exist\): .*imgs/b\.png -> "
                                        r".*gone\.png; check --data-dir or fix the list"):
        read_split_file(split, root)


# ---------------------------------------------------------------- start-of-run label warnings (issue 17, item 5)


def label_set(tmp_path, masks, classes, ignore_index=None):
    pairs = [write_pair(tmp_path, f"s{index}", np.full(mask.shape + (3,), 90, np.uint8), mask)
             for index, mask in enumerate(masks)]
    return make_dataset(pairs, 64, classes, ignore_index)


def test_0_255_masks_with_ignore_index_255_warn_that_no_foreground_is_left(tmp_path):
    from segtoolkit.data.masks import class_pixel_counts, label_warnings
    train = label_set(tmp_path, [square_mask(64, 64, 255), square_mask(64, 64, 255)], classes=2, ignore_index=255)
    counts = class_pixel_counts(train)
    assert counts == {0: 2 * (64 * 64 - 16 * 16), 255: 2 * 16 * 16}
    lines = label_warnings(counts, 2, 255, ["class_0", "class_1"])
    assert len(lines) == 1 and "\n" not in lines[0]
    assert re.fullmatch(r"--ignore-index 255 removes every foreground pixel: the training masks hold only 0 and "
                        r"255, so the model learns background alone; masks of 0 and 255 are binary masks: train "
                        r"them with --classes 1 \(without --ignore-index\)", lines[0]), lines[0]


def test_class_that_never_appears_in_the_training_masks_is_named(tmp_path):
    from segtoolkit.data.masks import class_pixel_counts, label_warnings
    train = label_set(tmp_path, [square_mask(64, 64, 1)], classes=3)  # 0/1 masks with --classes 3
    names = ["background", "road", "car"]
    assert label_warnings(class_pixel_counts(train), 3, None, names) == [
        "class 2 (car) never appears in the training masks (as read at the patch size): the model cannot "
        "learn it; check the masks and --classes 3"]
    assert label_warnings(class_pixel_counts(train), 2, None, names[:2]) == []
    assert label_warnings({0: 10, 255: 5}, 3, 255, None) == [
        "--ignore-index 255 removes every foreground pixel: the training masks hold only 0 and 255, so the model "
        "learns background alone; masks of 0 and 255 are binary masks: train them with --classes 1 (without "
        "--ignore-index)"]
    assert label_warnings({0: 10, 1: 3}, 4, None, None, split="validation") == [
        "classes 2, 3 never appear in the validation masks (as read): "
        "their Dice stays empty, left out of the mean; check the masks and --classes 4"]


def test_binary_masks_without_foreground_warn(tmp_path):
    from segtoolkit.data.masks import class_pixel_counts, label_warnings
    empty = label_set(tmp_path / "empty", [np.zeros((64, 64), np.uint8)] * 2, classes=1)
    assert class_pixel_counts(empty) == {0: 2 * 64 * 64}
    assert label_warnings(class_pixel_counts(empty), 1, None, ["background", "foreground"]) == [
        "class 1 (foreground) never appears in the training masks (as read at the patch size): the model cannot "
        "learn it; check the masks and --classes 1"]
    fine = label_set(tmp_path / "fine", [square_mask(64, 64, 255)], classes=1)
    assert class_pixel_counts(fine) == {0: 64 * 64 - 256, 1: 256}
    assert label_warnings(class_pixel_counts(fine), 1, None, ["background", "foreground"]) == []
