"""What the classes are called and coloured: --class-names, --mask-colors files (colour masks read as class
indices) and the colours outputs show them in.

A colours file is CSV, `name,R,G,B` per line as CamVid's class_dict.csv (a header line, blank lines and `#`
comments are allowed), or JSON, `{"background": [0, 0, 0], "road": [128, 64, 128]}`. Its classes are its
lines in order, the first being class 0 (background); the name `ignore` gives instead the colour of pixels
left out of the loss and every metric (they become --ignore-index, 255 unless given). Two colours make a
binary model (--classes 1, as 0/255 masks do), more colours one class each.

Usage:
    colours = load_mask_colors("colours.csv")                     # MaskColors, or None for None
    labels = colours.labels(rgb, "masks/a.png", ignore_label=255)  # HxW class indices of an RGB mask
    names = parse_class_names("background,cell,nucleus", classes=3)
    palette = output_colours(meta)                                 # RGB per class: the training colours if any
"""

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segtoolkit.errors import UserError, file_problem

IGNORE_NAME = "ignore"
DEFAULT_IGNORE_LABEL = 255
MAX_CLASSES = 255  # class indices and the ignore label fit in uint8 masks and palette PNGs
FORMATS = "a CSV file (name,R,G,B per line) or a JSON file ({\"name\": [R, G, B], ...})"


# RGB, chosen to stay apart on natural images; class 0 (background) is never painted
PALETTE = [(0, 0, 0), (0, 220, 90), (255, 64, 64), (64, 128, 255), (255, 200, 0), (200, 0, 255),
           (0, 220, 220), (255, 128, 0), (128, 255, 0), (255, 0, 128), (128, 64, 0)]


def class_colours(classes):
    """One RGB colour per class index (index 0 = background). A binary model has classes == 1."""
    count = max(classes, 2)
    colours = list(PALETTE[:count])
    rng = np.random.default_rng(0)
    while len(colours) < count:  # beyond the palette: stable random colours
        colours.append(tuple(int(v) for v in rng.integers(40, 256, size=3)))
    return colours


def default_class_names(classes):
    """The names a model gets when none are given: background and foreground for one class."""
    return ["background", "foreground"] if classes == 1 else [f"class_{index}" for index in range(classes)]


def check_names(names, where):
    """Names become CSV columns, wandb keys (where '/' opens a section) and file metadata: each one is
    non-empty, used once, without '/', ',' or control characters."""
    for name in names:
        if not name or "/" in name or "," in name or any(ord(char) < 32 for char in name):
            raise UserError(f"{where}: class name {name!r} is empty or holds '/', ',' or a control character; "
                            f"give plain names such as background,cell")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise UserError(f"{where}: class name {repeated[0]} is given twice; give each class its own name")


def parse_class_names(text, classes, count=True):
    """--class-names 'a,b,c' as a list: one name per class, background first (two names for one class);
    `count` False checks the names alone (their classes are not known yet)."""
    names = [name.strip() for name in str(text).split(",")]
    check_names(names, f"--class-names {text}")
    needed = max(classes, 2)
    if count and len(names) != needed:
        which = "background and foreground" if classes == 1 else "one per class, background first"
        raise UserError(f"--class-names {text} gives {len(names)} name(s) but --classes {classes} needs {needed} "
                        f"({which}); give one name per class")
    return names


def packed(rgb):
    """uint32 R<<16 | G<<8 | B of an HxWx3 uint8 RGB array: one number per colour, compared in one pass."""
    rgb = rgb.astype(np.uint32)
    return rgb[..., 0] << 16 | rgb[..., 1] << 8 | rgb[..., 2]


def shown(key):
    return f"({key >> 16 & 255}, {key >> 8 & 255}, {key & 255})"


@dataclass(frozen=True)
class MaskColors:
    """A --mask-colors table: class names and RGB colours in class order, the ignore colour (or None) and
    the file it came from (for messages)."""
    names: tuple
    colors: tuple
    ignore: tuple | None = None
    source: str = ""

    @property
    def classes(self):
        """The --classes the table trains by default: 1 (binary) for two colours, else one per colour."""
        return 1 if len(self.names) == 2 else len(self.names)

    @property
    def key(self):
        """What a cache of decoded masks depends on: the colours, in order, and the ignore colour."""
        return json.dumps([self.colors, self.ignore], separators=(",", ":"))

    def labels(self, rgb, path, ignore_label=None):
        """HxW class indices (uint8, or uint16 for an ignore label above 255) of an HxWx3 RGB mask; a colour
        the table lacks is a UserError naming the mask, the colour and its pixels."""
        ignore_label = DEFAULT_IGNORE_LABEL if ignore_label is None else ignore_label
        keys = [int(key) for key in packed(np.asarray(self.colors, np.uint8))]
        labels = list(range(len(keys)))
        if self.ignore is not None:
            keys.append(int(packed(np.asarray([self.ignore], np.uint8))[0]))
            labels.append(ignore_label)
        order = np.argsort(keys)
        sorted_keys = np.asarray(keys, np.uint32)[order]
        sorted_labels = np.asarray(labels, np.uint16 if max(labels) > 255 else np.uint8)[order]
        out = np.empty(rgb.shape[:2], sorted_labels.dtype)
        for start in range(0, rgb.shape[0], 256):  # row blocks: the lookup's temporaries stay small
            block = packed(rgb[start:start + 256])
            position = np.minimum(np.searchsorted(sorted_keys, block), len(keys) - 1)
            if not np.array_equal(sorted_keys[position], block):
                raise self.unknown_colour(rgb, sorted_keys, path)
            out[start:start + 256] = sorted_labels[position]
        return out

    def unknown_colour(self, rgb, known, path):
        """The error for colours the table lacks: the commonest of them, its pixels, and how many others."""
        keys = packed(rgb)
        values, counts = np.unique(keys[~np.isin(keys, known)], return_counts=True)
        top = int(np.argmax(counts))
        others = (f"; {len(values) - 1} other colour(s) are not in it either (a JPEG, resized or anti-aliased "
                  f"mask? save colour masks as PNG without smoothing)" if len(values) > 1 else "")
        return UserError(f"mask {path} has colour {shown(int(values[top]))} in {int(counts[top])} pixel(s), "
                         f"which --mask-colors {self.source} does not list{others}; add it to {self.source} "
                         f"(name,R,G,B) or fix the mask")

    def to_meta(self):
        """The table as plain data, for a checkpoint's meta and an ONNX file's metadata."""
        return {"names": list(self.names), "colors": [list(colour) for colour in self.colors],
                "ignore": list(self.ignore) if self.ignore is not None else None, "file": self.source}

    @classmethod
    def from_meta(cls, stored):
        """The table stored by to_meta, or None (a model trained without --mask-colors)."""
        if not stored:
            return None
        return cls(tuple(stored["names"]), tuple(tuple(colour) for colour in stored["colors"]),
                   tuple(stored["ignore"]) if stored.get("ignore") is not None else None, stored.get("file", ""))


# ---------------------------------------------------------------- reading a colours file


def load_mask_colors(path):
    """The MaskColors of a CSV or JSON colours file (None for None); a bad file is a one-line UserError."""
    if path is None:
        return None
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--mask-colors {path}: {file_problem(path)}; give {FORMATS}")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"--mask-colors {path} cannot be read as UTF-8 text ({error}); give {FORMATS}") from None
    entries = json_entries(text, path) if path.suffix.lower() == ".json" else csv_entries(text, path)
    return table_from_entries(entries, path)


def colour_of(values, path, where, line):
    """(R, G, B) from three values 0..255, or a UserError quoting the line."""
    try:
        colour = tuple(int(str(value).strip()) for value in values)
    except ValueError:
        colour = ()
    if len(colour) != 3 or not all(0 <= value <= 255 for value in colour):
        raise UserError(f"--mask-colors {path} {where}: {line} is not name,R,G,B with R, G and B whole numbers "
                        f"0..255; fix it")
    return colour


def csv_entries(text, path):
    """[(name, (R, G, B), where)] of a CSV colours file; a first line that is not a colour is a header."""
    entries = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = [field.strip() for field in next(csv.reader([line]))]
        header = not entries and len(fields) == 4 and not any(field.isdigit() for field in fields[1:])
        if header:
            continue
        if len(fields) != 4:
            colour_of((), path, f"line {number}", repr(line.strip()))
        entries.append((fields[0], colour_of(fields[1:], path, f"line {number}", repr(line.strip())),
                        f"line {number}"))
    return entries


def json_entries(text, path):
    """[(name, (R, G, B), where)] of a JSON colours file: one object of name: [R, G, B], in order."""
    def no_repeats(pairs):
        names = [name for name, _ in pairs]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise UserError(f"--mask-colors {path}: class name {repeated[0]} is given twice; give each class "
                            f"its own name")
        return pairs

    try:
        pairs = json.loads(text, object_pairs_hook=no_repeats)
    except json.JSONDecodeError as error:
        raise UserError(f"--mask-colors {path} is not valid JSON ({error.msg} at line {error.lineno}); give "
                        f"{FORMATS}") from None
    # object_pairs_hook turns every JSON object into a list of (name, value) tuples; arrays stay lists
    if not (isinstance(pairs, list) and all(isinstance(pair, tuple) and isinstance(pair[1], list)
                                            for pair in pairs)):
        raise UserError(f"--mask-colors {path} must hold one JSON object of \"name\": [R, G, B]; give {FORMATS}")
    return [(name.strip(), colour_of(value, path, f"entry {name!r}", json.dumps(value)), f"entry {name!r}")
            for name, value in pairs]


def table_from_entries(entries, path):
    """MaskColors of a file's entries: the name 'ignore' is the ignore colour; names and colours are unique."""
    ignore = [colour for name, colour, _ in entries if name.casefold() == IGNORE_NAME]
    classes = [(name, colour) for name, colour, _ in entries if name.casefold() != IGNORE_NAME]
    if len(ignore) > 1:
        raise UserError(f"--mask-colors {path} gives {len(ignore)} ignore colours; give at most one line named "
                        f"{IGNORE_NAME}")
    check_names([name for name, _ in classes], f"--mask-colors {path}")
    owners = {}
    for name, colour in classes + [(IGNORE_NAME, colour) for colour in ignore]:
        if colour in owners:
            raise UserError(f"--mask-colors {path}: colour {colour} is given to both {owners[colour]} and {name}; "
                            f"give each class its own colour")
        owners[colour] = name
    if not 2 <= len(classes) <= MAX_CLASSES:
        raise UserError(f"--mask-colors {path} lists {len(classes)} class(es); list the background first, then "
                        f"at least one class (at most {MAX_CLASSES})")
    return MaskColors(tuple(name for name, _ in classes), tuple(colour for _, colour in classes),
                      ignore[0] if ignore else None, str(path))


# ---------------------------------------------------------------- a run's classes


def resolve_class_table(*, classes, class_names, ignore_index, mask_colors, given):
    """(classes, ignore_index) of a train.py run. A colours file sets the classes (a two-colour file: 1, or
    --classes 2) and names them; its ignore colour becomes --ignore-index, 255 unless given. A --classes or
    --class-names that disagrees with it is refused rather than guessed between."""
    colours = load_mask_colors(mask_colors)
    if colours is None:
        return classes, ignore_index
    allowed = (1, 2) if len(colours.names) == 2 else (len(colours.names),)
    if "classes" in given and classes not in allowed:
        raise UserError(f"--classes {classes} conflicts with --mask-colors {mask_colors}, which lists "
                        f"{len(colours.names)} classes ({', '.join(colours.names)}); drop --classes (the colours "
                        f"file sets it)")
    if class_names is not None and [name.strip() for name in class_names.split(",")] != list(colours.names):
        raise UserError(f"--class-names {class_names} conflicts with --mask-colors {mask_colors}, which names the "
                        f"classes {', '.join(colours.names)}; drop --class-names (the colours file names them)")
    if colours.ignore is not None and ignore_index is None:
        ignore_index = DEFAULT_IGNORE_LABEL
    return (classes if "classes" in given else colours.classes), ignore_index


def run_class_names(classes, class_names=None, colours=None):
    """The names of a run's classes: the colours file's, else --class-names, else the defaults."""
    if colours is not None:
        return list(colours.names)
    return parse_class_names(class_names, classes) if class_names else default_class_names(classes)


def output_colours(meta):
    """RGB per class for palette masks, the overlay and the preview: the training colours when the model
    was trained with --mask-colors, else the overlay's class colours (background black)."""
    colours = MaskColors.from_meta(meta.get("mask_colors"))
    return [tuple(colour) for colour in colours.colors] if colours else class_colours(meta["classes"])
