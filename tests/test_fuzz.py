"""Property tests (hypothesis) for what the toolkit reads from disk: image/mask samples, split files,
--search-files folders and checkpoints. Each either yields a valid result of the documented shape and
range, or raises the documented UserError naming the file; never another exception.
"""

import tempfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st


from segtoolkit.data.imaging import IMAGE_SUFFIXES
from dataset import make_dataset
from segtoolkit.data.splits import pair_masks, read_split_file, search_files
from segtoolkit.errors import UserError
from segtoolkit.data.masks import IGNORE
from segtoolkit.models.checkpoints import load_checkpoint, save_checkpoint
from segtoolkit.models.factory import model_meta

FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MASK_VALUES = [0, 1, 2, 3, 4, 7, 100, 254, 255, 256, 1000, 65535, -1, 0.5]  # -1, 0.5: int16 / float TIFF masks


# ---------------------------------------------------------------- samples: image + mask files


@st.composite
def samples(draw):
    """An image file and a mask file as a user might have them, sometimes wrong or damaged."""
    height, width = draw(st.integers(1, 80)), draw(st.integers(1, 80))
    depth = draw(st.sampled_from([np.uint8, np.uint16]))
    channels = draw(st.sampled_from([1, 3, 4]))
    suffixes = [".png", ".tif"] + ([".jpg"] if depth is np.uint8 and channels != 4 else [])
    classes = draw(st.sampled_from([1, 2, 5]))
    values = draw(st.lists(st.sampled_from(MASK_VALUES), min_size=1, max_size=4, unique=True))
    return dict(
        height=height, width=width, depth=depth, channels=channels, image_suffix=draw(st.sampled_from(suffixes)),
        classes=classes, ignore_index=draw(st.sampled_from([None, 255])) if classes > 1 else None, values=values,
        float_mask=draw(st.booleans()),
        mask_channels=draw(st.sampled_from(["gray", "gray", "gray-as-bgr", "colour"])),
        mask_size=draw(st.sampled_from(["same"] * 4 + ["transposed", "smaller"])),
        damage=draw(st.sampled_from([None] * 6 + ["cut image", "cut mask", "garbage image", "empty mask"])),
        cut=draw(st.floats(0.0, 0.95)), patch=draw(st.sampled_from([32, 64])), augment=draw(st.booleans()),
        seed=draw(st.integers(0, 2**32 - 1)))


def write_sample(folder, spec):
    rng = np.random.default_rng(spec["seed"])
    shape = (spec["height"], spec["width"]) + ((spec["channels"],) if spec["channels"] > 1 else ())
    image = rng.integers(0, np.iinfo(spec["depth"]).max, size=shape, endpoint=True).astype(spec["depth"])
    mask_height, mask_width = {"same": (spec["height"], spec["width"]), "transposed": (spec["width"], spec["height"]),
                               "smaller": (max(1, spec["height"] - 1), spec["width"])}[spec["mask_size"]]
    values = np.array(spec["values"])
    if spec["float_mask"] or values.min() < 0 or not all(float(v).is_integer() for v in values):
        dtype, mask_suffix = (np.float32, ".tif") if spec["float_mask"] or values.max() > 32767 else (np.int16, ".tif")
        dtype = np.float32 if not all(float(v).is_integer() for v in values) else dtype
    else:
        dtype, mask_suffix = (np.uint16 if values.max() > 255 else np.uint8), ".png"
    mask = rng.choice(values, size=(mask_height, mask_width)).astype(dtype)
    if spec["mask_channels"] == "gray-as-bgr":
        mask = np.dstack([mask] * 3)
    elif spec["mask_channels"] == "colour":
        mask = np.dstack([mask, mask, np.full_like(mask, 3)])  # blue channel differs wherever the mask is not 3
    image_path, mask_path = folder / f"x{spec['image_suffix']}", folder / f"x_mask{mask_suffix}"
    assert cv2.imwrite(str(image_path), image) and cv2.imwrite(str(mask_path), mask)
    if spec["damage"] in ("cut image", "cut mask"):
        path = image_path if spec["damage"] == "cut image" else mask_path
        data = path.read_bytes()
        path.write_bytes(data[:int(len(data) * spec["cut"])])
    elif spec["damage"] == "garbage image":
        image_path.write_bytes(rng.bytes(int(spec["cut"] * 300)))
    elif spec["damage"] == "empty mask":
        mask_path.write_bytes(b"")
    return image_path, mask_path, mask


def mask_is_valid(spec, mask):
    if spec["mask_size"] != "same" and (spec["height"], spec["width"]) != mask.shape[:2]:
        return False
    if spec["mask_channels"] == "colour" and not np.all(mask[..., 0] == 3):
        return False
    present = set(np.unique(mask[..., 0] if mask.ndim == 3 else mask).tolist())
    if spec["classes"] == 1:
        return present <= {0, 1} or present <= {0, 255} or present <= {0, 65535}
    return all(value == spec["ignore_index"] or (float(value).is_integer() and 0 <= value < spec["classes"])
               for value in present)


@FUZZ
@given(spec=samples())
def test_sample_loading_gives_a_valid_sample_or_the_documented_error(spec):
    with tempfile.TemporaryDirectory() as tmp:
        image_path, mask_path, mask = write_sample(Path(tmp), spec)
        try:
            dataset = make_dataset([(image_path, mask_path)], spec["patch"], spec["classes"], spec["ignore_index"],
                                   augment=spec["augment"], threads=1)
            image, target = dataset.load_sample(0)
        except UserError as error:
            assert "\n" not in str(error)
            assert str(image_path) in str(error) or str(mask_path) in str(error), str(error)
            assert spec["damage"] or not mask_is_valid(spec, mask), f"refused a valid sample: {error}"
            return
    assert spec["damage"] or mask_is_valid(spec, mask), "accepted an invalid sample"
    patch = spec["patch"]
    assert image.dtype == torch.float32 and image.shape == (3, patch, patch) and torch.isfinite(image).all()
    if spec["classes"] == 1:
        assert target.dtype == torch.float32 and target.shape == (1, patch, patch)
        assert set(target.unique().tolist()) <= {0.0, 1.0, IGNORE}
    else:
        assert target.dtype == torch.int64 and target.shape == (patch, patch)
        assert set(target.unique().tolist()) <= set(range(spec["classes"])) | {IGNORE}  # --ignore-index too


# ---------------------------------------------------------------- split files


@pytest.fixture(scope="module")
def split_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("split_fuzz")
    for folder in ("imgs", "masks"):
        (root / folder).mkdir()
        for stem in ("a", "b", "c"):
            (root / folder / f"{stem}.png").write_bytes(b"")  # parsing never opens them
    return root


def good_entries(root):
    """Lines that name an existing image, in each spelling the split file accepts."""
    return {"imgs/a.png": "a", "b.png": "b", str(root / "imgs" / "c.png"): "c", "  imgs/b.png  ": "b",
            "imgs/c.png   # checked by hand": "c"}


SPLIT_LINES = st.one_of(
    st.sampled_from(["GOOD"] * 6),
    st.sampled_from(["", "   ", "# a comment", "#imgs/a.png", "imgs/missing.png", "missing.png", "/abs/missing.png",
                     "../imgs/a.png", "imgs", ".", "/", "imgs/a.png/", "a"]),
    st.text(max_size=40).map(lambda text: text.replace("\n", " ")),
    st.text(min_size=250, max_size=600),  # longer than a file name may be
    st.just("x\x00y"),
)


@FUZZ
@given(lines=st.lists(st.tuples(SPLIT_LINES, st.integers(0, 4)), max_size=12), raw=st.binary(max_size=64),
       bom=st.booleans())
def test_split_file_parsing_lists_existing_images_or_names_the_missing_ones(split_data, lines, raw, bom):
    good = good_entries(split_data)
    chosen = [list(good)[pick] if line == "GOOD" else line for line, pick in lines]
    with tempfile.TemporaryDirectory() as tmp:
        split = Path(tmp) / "split.txt"
        data = "\n".join(chosen).encode("utf-8", "surrogatepass") + (b"\n" + raw if raw else b"")
        split.write_bytes((b"\xef\xbb\xbf" if bom else b"") + data)  # Windows editors' UTF-8 byte order mark
        try:
            images = read_split_file(split, split_data)
        except UserError as error:
            assert "\n" not in str(error)
            if str(error).startswith(f"split file {split} is saved as UTF-16"):
                assert b"\x00" in data, "called UTF-16 without a NUL byte"  # only garbage bytes look like it
                return
            assert str(error).startswith(f"split file {split} names ") and "that do not exist" in str(error)
            assert any(line not in good for line in chosen) or raw, "refused a split naming only existing images"
            return
    assert all(path.is_file() and path.parent == split_data / "imgs" for path in images)
    if not raw and all(line in good for line in chosen):
        assert [path.stem for path in images] == [good[line] for line in chosen]
    pairs = pair_masks(images, split_data / "masks")
    assert [mask.stem for _, mask in pairs] == [image.stem for image in images]


# ---------------------------------------------------------------- --search-files folders

FILE_NAMES = st.sampled_from([f"{stem}{suffix}" for stem in "abcdef" for suffix in (".png", ".jpg", ".tif")]
                             + ["notes.txt", "Thumbs.db", ".hidden", "b.PNG"])


@FUZZ
@given(images=st.sets(FILE_NAMES, max_size=8), masks=st.sets(FILE_NAMES, max_size=8),
       val_split=st.floats(-0.5, 1.5), test_split=st.floats(-0.5, 1.5), seed=st.integers(0, 10),
       dangling=st.sampled_from([None, "imgs", "masks"]))
def test_search_files_partitions_every_pair_or_says_what_is_wrong(images, masks, val_split, test_split, seed,
                                                                  dangling):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for folder, names in (("imgs", images), ("masks", masks)):
            (root / folder).mkdir()
            for name in names:
                (root / folder / name).write_bytes(b"")
        if dangling:  # a link whose target was moved away: is_file() says False, like for no file at all
            (root / dangling / "z.png").symlink_to(root / "moved" / "z.png")
        try:
            train, val, test = search_files(root, val_split=val_split, test_split=test_split, seed=seed)
        except UserError as error:
            assert "\n" not in str(error)
            assert any(s in str(error) for s in ("non-image files", "two files with stem", "without a mask",
                                                 "without an image", "must be a fraction", "broken link")), str(error)
            if dangling and "broken link" not in str(error):  # only a check of imgs/ may come before masks/
                assert dangling == "masks" and f"folder {root / 'imgs'} " in str(error), str(error)
            return
    assert not dangling, "a broken link was dropped without a word"
    visible = [{Path(n).stem for n in names if not n.startswith(".")} for names in (images, masks)]
    assert visible[0] == visible[1]
    assert all(Path(n).suffix.lower() in IMAGE_SUFFIXES for n in images | masks if not n.startswith("."))
    assert 0 <= val_split < 1 and 0 <= test_split < 1
    stems = [image.stem for image, _ in train + val + test]
    assert sorted(stems) == sorted(visible[0])  # every pair exactly once
    assert all(image.stem == mask.stem for image, mask in train + val + test)


# ---------------------------------------------------------------- checkpoints


@pytest.fixture(scope="module")
def checkpoint_bytes(tmp_path_factory):
    path = tmp_path_factory.mktemp("checkpoint_fuzz") / "small.pth.tar"
    save_checkpoint(path, torch.nn.Conv2d(3, 2, 3), model_meta("Unet", "resnet18", 1, 64), {"lr": 0.1}, epoch=1)
    return path.read_bytes()


@FUZZ
@given(cut=st.floats(0, 1), flips=st.lists(st.tuples(st.floats(0, 1), st.integers(1, 255)), max_size=4))
def test_damaged_checkpoint_loads_or_is_refused_with_one_line(checkpoint_bytes, cut, flips):
    data = bytearray(checkpoint_bytes[:int(len(checkpoint_bytes) * cut)])
    for where, xor in flips:
        if data:
            data[min(int(where * len(data)), len(data) - 1)] ^= xor
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "damaged.pth.tar"
        path.write_bytes(bytes(data))
        try:
            checkpoint = load_checkpoint(path)
        except UserError as error:
            assert "\n" not in str(error) and str(path) in str(error)
            return
    assert "model" in checkpoint  # a flip inside tensor bytes can still load: the file is well formed
