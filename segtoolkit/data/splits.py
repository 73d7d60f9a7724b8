"""Which images a run trains on: split files, folders paired by stem, and the random split of --search-files.

Every listed file is checked to exist (broken links named as such) before anything is decoded, and a list
is read as UTF-8 with or without a byte order mark; UTF-16 is refused with the fix.

Usage:
    from segtoolkit.data.splits import folder_pairs, read_split_file, pair_masks, search_files
    pairs = pair_masks(read_split_file("training_dataset.txt", "data/sample"), "data/sample/masks")
    train, val, test = search_files("my_data", val_split=0.2, test_split=0.1, seed=0)
    pairs = folder_pairs("my_data")                  # every image of my_data/imgs with its mask
"""

import math
import os
import random
from pathlib import Path

from segtoolkit.errors import UserError
from segtoolkit.data.imaging import IMAGE_SUFFIXES


def resolve_image_path(line, data_dir, img_dir="imgs"):
    """A split-file entry: absolute, relative to the data dir, or a bare name inside the image folder."""
    path = Path(line)
    if path.is_absolute():
        return path
    candidate = Path(data_dir) / path
    if is_file(candidate) or len(path.parts) > 1:
        return candidate
    return Path(data_dir) / img_dir / path


def is_file(path):
    """Path.is_file, but False (not an exception) for names the OS refuses, e.g. longer than NAME_MAX."""
    try:
        return Path(path).is_file()
    except (OSError, ValueError):
        return False


def is_broken_link(path):
    """A symbolic link whose target does not exist (Path.is_file says False, as for a missing file)."""
    try:
        return Path(path).is_symlink() and not Path(path).exists()
    except (OSError, ValueError):
        return False


def shown_link(path, name=None):
    """'name -> target' of a link, as an error shows it."""
    return f"{shorten(name or str(path))} -> {shorten(os.readlink(path))}"


def listed(names, limit=10):
    """The first `limit` names, comma-separated, and how many more."""
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def shorten(text, width=160):
    """A name as shown in an error: a line of garbage in a split file must not flood or garble the terminal."""
    text = "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)
    return text if len(text) <= width else f"{text[:width - 20]}...{text[-17:]}"


BYTE_ORDER_MARKS = ((b"\xff\xfe\x00\x00", "UTF-32 LE"), (b"\x00\x00\xfe\xff", "UTF-32 BE"),
                    (b"\xff\xfe", "UTF-16 LE"), (b"\xfe\xff", "UTF-16 BE"))


def wide_encoding(data):
    """'UTF-16 LE' and the like when `data` is UTF-16/32 text: a byte order mark, or (as some tools write
    it without one) text with a NUL in every other byte; None otherwise, also for UTF-8 with a stray NUL."""
    for mark, name in BYTE_ORDER_MARKS:
        if data.startswith(mark):
            return name
    even, odd = data[0::2].count(0), data[1::2].count(0)
    if max(even, odd) * 2 < max(len(data) // 2, 1) or min(even, odd) * 10 > max(even, odd):
        return None
    return "UTF-16 LE" if odd > even else "UTF-16 BE"


def read_list_text(path, label):
    """The text of a split file or source list, `label` naming it in errors. UTF-8 with the byte order mark
    Windows editors write is read too (the mark would otherwise stick to the first entry); UTF-16 would
    decode as garbage names, so it is refused with the fix."""
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise UserError(f"{label} cannot be read ({error.strerror or error}); check its permissions") from None
    encoding = wide_encoding(data)
    if encoding:
        raise UserError(f"{label} is saved as {encoding}; save it as UTF-8 (in Notepad: Save as, Encoding UTF-8)")
    return data.decode("utf-8-sig", errors="replace")


def read_split_file(path, data_dir, img_dir="imgs"):
    """Image paths listed in a split file; blank lines and '#' comments ignored; missing files listed."""
    path = Path(path)
    if not path.is_file():
        problem = "is a folder, not a file; give the file" if path.is_dir() else "does not exist; create it"
        raise UserError(f"split file {path} {problem} (one image path per line) "
                        f"or use --search-files to split imgs/ and masks/ automatically")
    images = []
    for raw in read_list_text(path, f"split file {path}").splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            images.append(resolve_image_path(line, data_dir, img_dir))
    absent = [image for image in images if not is_file(image)]
    broken = [shown_link(image) for image in absent if is_broken_link(image)]
    missing = [shorten(str(image)) for image in absent if not is_broken_link(image)]
    parts = [f"{len(names)} {what}: {listed(names)}" for names, what in (
        (missing, "file(s) that do not exist"), (broken, "broken link(s) (the file they point to does not exist)"))
        if names]
    if parts:
        raise UserError(f"split file {path} names {' and '.join(parts)}; check --data-dir or fix the list")
    return images


def index_by_stem(folder):
    """{stem: path} of the image files in a folder; non-image files are an error naming them."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"folder {folder} does not exist; check --data-dir, --img-dir and --mask-dir")
    entries = sorted(path for path in folder.iterdir() if not path.name.startswith("."))
    broken = [path for path in entries if is_broken_link(path)]
    if broken:  # is_file() is False for them: they would be dropped without a word
        raise UserError(f"folder {folder} holds {len(broken)} broken link(s) (the file they point to does not "
                        f"exist): {listed([shown_link(path, path.name) for path in broken])}; fix or remove them")
    files = [path for path in entries if path.is_file()]
    others = [path.name for path in files if path.suffix.lower() not in IMAGE_SUFFIXES]
    if others:
        raise UserError(f"folder {folder} holds non-image files: {', '.join(others[:10])}; move them out "
                        f"(images must end in {', '.join(IMAGE_SUFFIXES)})")
    index = {}
    for path in files:
        if path.stem in index:
            raise UserError(f"folder {folder} has two files with stem '{path.stem}': {index[path.stem].name} "
                            f"and {path.name}; keep one")
        index[path.stem] = path
    return index


def pair_masks(images, mask_dir):
    """[(image, mask)] pairing each image with the mask of the same stem; all orphans listed at once."""
    masks = index_by_stem(mask_dir)
    missing = [str(image) for image in images if Path(image).stem not in masks]
    if missing:
        raise UserError(f"no mask in {mask_dir} for {len(missing)} image(s): {', '.join(missing[:10])}"
                        f"{' ...' if len(missing) > 10 else ''}; add masks with the same file stem")
    return [(Path(image), masks[Path(image).stem]) for image in images]


def folder_pairs(folder, img_dir="imgs", mask_dir="masks"):
    """[(image, mask)] of every image in folder/img_dir with the mask of the same stem in folder/mask_dir, in
    the order of their stems; an image without a mask is an error listing them all (val.py --data DIR)."""
    images = index_by_stem(Path(folder) / img_dir)
    return pair_masks([images[stem] for stem in sorted(images)], Path(folder) / mask_dir)


def search_files(data_dir, img_dir="imgs", mask_dir="masks", val_split=0.2, test_split=0.0, seed=0):
    """Pair imgs/ and masks/ by stem and split them into (train, val, test) lists of pairs."""
    images = index_by_stem(Path(data_dir) / img_dir)
    masks = index_by_stem(Path(data_dir) / mask_dir)
    no_mask = sorted(set(images) - set(masks))
    no_image = sorted(set(masks) - set(images))
    if no_mask or no_image:
        parts = []
        if no_mask:
            parts.append(f"images without a mask: {', '.join(images[s].name for s in no_mask[:20])}")
        if no_image:
            parts.append(f"masks without an image: {', '.join(masks[s].name for s in no_image[:20])}")
        raise UserError(f"--search-files in {data_dir}: {'; '.join(parts)}; add or remove them so every "
                        f"image has a mask with the same stem")
    for flag, value in (("--val-split", val_split), ("--test-split", test_split)):
        if not 0 <= value < 1:
            raise UserError(f"{flag} {value} must be a fraction in [0, 1)")
    return split_fractions([(images[stem], masks[stem]) for stem in sorted(images)], val_split, test_split, seed)


def split_fractions(pairs, val_split, test_split, seed):
    """(train, val, test) of `pairs` shuffled by `seed`: ceil(val_split) of them validate, floor(test_split) test."""
    pairs = list(pairs)
    random.Random(seed).shuffle(pairs)
    n_val, n_test = math.ceil(len(pairs) * val_split), math.floor(len(pairs) * test_split)
    return pairs[n_val + n_test:], pairs[:n_val], pairs[n_val:n_val + n_test]
