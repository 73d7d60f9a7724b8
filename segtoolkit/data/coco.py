"""COCO JSON in and out: the files CVAT, Label Studio, Roboflow and labelme export, read as training masks
(train.py --coco, val.py --coco), and detect.py's masks written as one (--save-coco) to load back as
pre-annotations.

Reading (pycocotools rasterises every segmentation: polygons, uncompressed RLE and compressed RLE):
- classes: index 0 is background; every other category is a class, in the order of the file's
  `categories` list (not by id: ids may be 1, 3, 7). A category with id 0 (Roboflow's dataset-level
  parent) or named "background" (any case) is class 0 itself: its regions are painted as background.
  One category gives two classes (background and it), trained as several classes (softmax).
- overlaps: annotations are painted largest first, so where two overlap the smaller one wins (a nucleus
  drawn on its cell stays a nucleus); equal sizes: the later in the file wins.
- `iscrowd` regions are painted first, as IGNORE_LABEL (255, --ignore-index): left out of the loss and
  the metrics, except where a non-crowd annotation covers them, whose label is kept.
- an image without annotations is all background; a segmentation reaching outside its image is clipped
  (counted, one warning line); a missing image, an annotation naming an image or category the file does
  not list, a polygon of fewer than 3 points, or a JSON that is not COCO is a one-line error.
- images are found by `file_name` inside --data-dir (default: the JSON's folder), or its imgs/ (--img-dir)
  or images/ folder (CVAT's and Roboflow's layouts).
The masks are rasterised once, as palette PNGs of class indices in <cache>/coco-<hash>/ (the hash of the
JSON's bytes and the class table), and then read like any mask folder: the datasets, --cache modes, resume
and val.py need nothing of their own, and a second run on the same file rasterises nothing.

Writing (detect.py --save-coco): predictions.coco.json, one image per image or video frame, one
annotation per connected region of each class with its polygon (or RLE, --coco-rle), area in pixels, bbox
and `score`, the mean probability of its class over its pixels. Polygons run along the pixels' edges and
keep holes (each hole joined to its outline by a zero-width cut, as COCO polygons cannot hold holes), so
pycocotools rasterises them back to exactly the predicted pixels.

Usage:
    table = read_classes("labels.json")                    # CocoClasses: names, ids -> class indices
    pairs = coco_pairs("labels.json", table, data_dir=None, img_dir="imgs", cache_dir=Path(".cache"))
    writer = CocoWriter(["background", "cell"], rle=False); writer.add("a.png", mask, probabilities)
    writer.write(Path("runs/detect/exp/predictions.coco.json"))
"""

import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from pycocotools import mask as coco_mask

from segtoolkit.data.classes import DEFAULT_IGNORE_LABEL, MAX_CLASSES, check_names, class_colours
from segtoolkit.data.masks import palette_png
from segtoolkit.data.polygons import find_regions
from segtoolkit.errors import UserError
from segtoolkit.data.cache import write_atomically
from segtoolkit.data.sources import safe_name
from segtoolkit.data.splits import split_fractions

IGNORE_LABEL = DEFAULT_IGNORE_LABEL
CACHE_VERSION = 1
COCO_FILE = "predictions.coco.json"
EDGE_UPSAMPLING = 2  # outlines traced on the mask at twice its size run between pixel edges and centres:
# scaled back, pycocotools' rule (a pixel is in when its centre is) gives back exactly the mask's pixels


@dataclass(frozen=True)
class CocoClasses:
    """A COCO file's classes: names in class order (background first) and {category id: class index}."""
    names: tuple
    class_of: dict

    @property
    def classes(self):
        return len(self.names)


# ---------------------------------------------------------------- reading


def load_coco(path, flag="--coco"):
    """The checked JSON of a COCO file: images, annotations and categories, each entry with its keys."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{flag} {path}: no such file; give the COCO JSON your labelling tool exported")
    try:
        coco = json.loads(path.read_text(encoding="utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserError(f"{flag} {path} is not a JSON file ({error}); give a COCO JSON export") from None
    needed = {"images": ("id", "file_name", "width", "height"), "annotations": ("id", "image_id", "category_id",
              "segmentation"), "categories": ("id", "name")}
    if not isinstance(coco, dict) or not all(isinstance(coco.get(key), list) for key in needed):
        raise UserError(f"{flag} {path} is not a COCO file: it needs the lists images, annotations and categories "
                        f"(export COCO 1.0 / COCO segmentation from your labelling tool)")
    for key, fields in needed.items():
        for entry in coco[key]:
            if not isinstance(entry, dict) or any(field not in entry for field in fields):
                raise UserError(f"{flag} {path} is not a COCO file: an entry of {key} lacks "
                                f"{', '.join(fields)} ({json.dumps(entry)[:80]}); export COCO from your tool")
    return coco


def is_background(category):
    return category["id"] == 0 or str(category["name"]).strip().casefold() == "background"


def read_classes(path, flag="--coco"):
    """The CocoClasses of a file: background, then its categories in file order."""
    categories = load_coco(path, flag)["categories"]
    names = ["background"] + [str(category["name"]).strip() for category in categories
                              if not is_background(category)]
    if len(names) < 2:
        raise UserError(f"{flag} {path} lists no category besides background; label at least one class")
    if len(names) > MAX_CLASSES:
        raise UserError(f"{flag} {path} lists {len(names) - 1} categories; at most {MAX_CLASSES - 1} fit in masks")
    check_names(names, f"{flag} {path}")
    return CocoClasses(tuple(names), class_indices(categories, names, path, flag))


def class_indices(categories, names, path, flag):
    """{category id: class index} of a file's categories, by name into `names` (the classes trained)."""
    class_of = {}
    for category in categories:
        name = "background" if is_background(category) else str(category["name"]).strip()
        if name not in names:
            raise UserError(f"{flag} {path}: category {name!r} is not one of the model's classes "
                            f"({', '.join(names[1:])}); export the file with the same categories")
        class_of[category["id"]] = names.index(name)
    return class_of


def coco_settings(coco, val_coco, classes, class_names, ignore_index, given):
    """{classes, class_names, ignore_index} of a train.py run on a COCO file (they follow from its
    categories); a --classes or --class-names that disagrees is refused rather than guessed between."""
    table = read_classes(coco)
    if val_coco is not None:
        class_indices(load_coco(val_coco, "--val-coco")["categories"], table.names, val_coco, "--val-coco")
    if "classes" in given and classes != table.classes:
        raise UserError(f"--classes {classes} conflicts with --coco {coco}, which gives {table.classes} classes "
                        f"({', '.join(table.names)}); drop --classes (the file sets it)")
    if class_names is not None and [name.strip() for name in class_names.split(",")] != list(table.names):
        raise UserError(f"--class-names {class_names} conflicts with --coco {coco}, whose classes are "
                        f"{', '.join(table.names)}; drop --class-names (the file names them)")
    return {"classes": table.classes, "class_names": ",".join(table.names),
            "ignore_index": IGNORE_LABEL if ignore_index is None else ignore_index}


def find_image(file_name, root, img_dir):
    """The image file a COCO entry names: inside root, root/img_dir or root/images; None when absent."""
    for folder in (root, root / img_dir, root / "images"):
        candidate = folder / file_name
        if candidate.is_file():
            return candidate
    return None


def coco_pairs(path, names, *, data_dir=None, img_dir="imgs", cache_dir, flag="--coco"):
    """[(image, mask PNG)] of every image in a COCO file, its masks rasterised into the cache once; `names`
    are the classes trained (background first), which the file's categories map onto by name."""
    path = Path(path)
    data = path.read_bytes()
    coco = load_coco(path, flag)
    class_of = class_indices(coco["categories"], list(names), path, flag)
    root = Path(data_dir) if data_dir is not None else path.resolve().parent
    images = {}
    for entry in coco["images"]:
        images[entry["id"]] = (entry, find_image(entry["file_name"], root, img_dir))
    missing = [entry["file_name"] for entry, found in images.values() if found is None]
    if missing:
        raise UserError(f"{flag} {path} names {len(missing)} image(s) not found in {root} (nor its {img_dir}/ or "
                        f"images/): {', '.join(missing[:5])}; give --data-dir, the folder holding them")
    by_image = {image_id: [] for image_id in images}
    for annotation in coco["annotations"]:
        if annotation["image_id"] not in images:
            raise UserError(f"{flag} {path}: annotation {annotation['id']} points at image id "
                            f"{annotation['image_id']}, which images does not list; fix or re-export the file")
        if annotation["category_id"] not in class_of:
            raise UserError(f"{flag} {path}: annotation {annotation['id']} has category id "
                            f"{annotation['category_id']}, which categories does not list; fix or re-export it")
        by_image[annotation["image_id"]].append(annotation)
    key = hashlib.sha1(data + json.dumps([CACHE_VERSION, names, sorted(class_of.items())]).encode()).hexdigest()
    folder = Path(cache_dir) / f"coco-{key[:16]}"
    pairs = [(found, folder / f"{image_id}.png") for image_id, (_, found) in images.items()]
    if not (folder / "complete.json").is_file():  # rasterised once; the note is written last
        folder.mkdir(parents=True, exist_ok=True)
        clipped, colours = 0, class_colours(len(names))
        for image_id, (entry, _) in images.items():
            mask, outside = rasterise(entry, by_image[image_id], class_of, path, flag)
            clipped += outside
            (folder / f"{image_id}.png").write_bytes(palette_png(mask, colours))  # complete.json vouches for them
        write_atomically(folder / "complete.json", {"source": str(path.resolve()), "clipped": clipped})
    clipped = json.loads((folder / "complete.json").read_text())["clipped"]
    if clipped:
        print(f"warning: {flag} {path}: {clipped} segmentation(s) reach outside their image; clipped to it",
              file=sys.stderr, flush=True)
    return pairs


def rasterise(image, annotations, class_of, path, flag="--coco"):
    """(uint8 mask of class indices, segmentations clipped) of one image: crowd regions IGNORE_LABEL first,
    then the others largest first, so the smaller of two overlapping annotations wins."""
    height, width = int(image["height"]), int(image["width"])
    mask = np.zeros((height, width), np.uint8)
    decoded, clipped = [], 0
    for annotation in annotations:
        pixels, outside = segmentation_pixels(annotation, height, width, path, flag)
        clipped += outside
        decoded.append((annotation, pixels))
    for annotation, pixels in decoded:
        if annotation.get("iscrowd"):
            mask[pixels] = IGNORE_LABEL
    regular = [(annotation, pixels) for annotation, pixels in decoded if not annotation.get("iscrowd")]
    for annotation, pixels in sorted(regular, key=lambda item: -int(item[1].sum())):  # stable: ties in file order
        mask[pixels] = class_of[annotation["category_id"]]
    return mask, clipped


def segmentation_pixels(annotation, height, width, path, flag):
    """(HxW bool pixels of an annotation's segmentation, 1 when it reached outside the image else 0)."""
    segmentation = annotation["segmentation"]
    where = f"{flag} {path}: annotation {annotation['id']}"
    if isinstance(segmentation, list):
        for polygon in segmentation:
            if not isinstance(polygon, list) or len(polygon) < 6 or len(polygon) % 2:
                points = len(polygon) // 2 if isinstance(polygon, list) else 0
                raise UserError(f"{where} has a polygon of {points} point(s); a polygon needs at least 3 (x, y) "
                                f"points: fix or delete it in the labelling tool")
        if not segmentation:
            return np.zeros((height, width), bool), 0
        points = np.concatenate([np.asarray(polygon, float).reshape(-1, 2) for polygon in segmentation])
        outside = int(points.min() < 0 or points[:, 0].max() > width or points[:, 1].max() > height)
        rle = coco_mask.merge(coco_mask.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation, dict) and "counts" in segmentation and "size" in segmentation:
        if list(segmentation["size"]) != [height, width]:
            raise UserError(f"{where}: its RLE is {segmentation['size'][1]}x{segmentation['size'][0]} but its "
                            f"image is {width}x{height}; re-export the file")
        counts = segmentation["counts"]
        rle = coco_mask.frPyObjects(segmentation, height, width) if isinstance(counts, list) else \
            {"size": [height, width], "counts": counts.encode() if isinstance(counts, str) else counts}
        outside = 0
    else:
        raise UserError(f"{where}: segmentation is neither polygons nor RLE; export COCO segmentation masks")
    return coco_mask.decode(rle).astype(bool), outside


def coco_splits(coco, val_coco, names, *, data_dir, img_dir, cache_dir, val_split, test_split, seed):
    """(train, val, test) pairs of a run on COCO files: --val-coco is the validation split when given (the
    --coco file then trains, less --test-split); otherwise --val-split and --test-split of --coco at random
    (segtoolkit.data.splits.split_fractions, as --search-files draws them)."""
    pairs = coco_pairs(coco, names, data_dir=data_dir, img_dir=img_dir, cache_dir=cache_dir)
    if val_coco is None:
        return split_fractions(pairs, val_split, test_split, seed)
    val = coco_pairs(val_coco, names, data_dir=data_dir, img_dir=img_dir, cache_dir=cache_dir, flag="--val-coco")
    train, _, test = split_fractions(pairs, 0.0, test_split, seed)
    return train, val, test


# ---------------------------------------------------------------- writing


def check_coco_output(save_coco, rle, save_dir):
    """detect.py's --coco-rle goes with --save-coco; a predictions.coco.json in --save-dir is another run's."""
    if rle and not save_coco:
        raise UserError("--coco-rle says how --save-coco writes regions; add --save-coco, or drop --coco-rle")
    if save_coco and save_dir is not None and (Path(save_dir) / COCO_FILE).exists():
        raise UserError(f"--save-dir {save_dir} holds a {COCO_FILE} of an earlier run; give another --save-dir")


def frame_file_name(frame):
    """A frame's file_name in predictions.coco.json: an image's own name, a video frame's <stem>_<frame>.png."""
    return Path(frame.path).name if frame.is_image else f"{safe_name(frame.path)}_{frame.index:06d}.png"


def region_outlines(region):
    """COCO polygons ([x0, y0, x1, y1, ...] lists) of a bool mask's regions, each with its holes joined in,
    along pixel edges (see EDGE_UPSAMPLING): polygons.find_regions' outlines of the mask upsampled k times,
    whose pixel centres then fall half a source pixel's k-th inside its edges."""
    k = EDGE_UPSAMPLING
    outlines = []
    for found in find_regions(np.kron(region.astype(np.uint8), np.ones((k, k), np.uint8))):
        points = (found.outline.reshape(-1, 2) + 0.5) / k
        for hole in found.holes:
            points = joined(points, (hole.reshape(-1, 2) + 0.5) / k)
        outlines.append(points)
    return outlines


def joined(outline, hole):
    """One outline holding `hole`: from its point nearest the hole, round the hole and back (a cut of no
    width, which rasterises to nothing)."""
    distances = ((outline[:, None, :] - hole[None, :, :]) ** 2).sum(-1)
    at, start = np.unravel_index(np.argmin(distances), distances.shape)
    loop = np.concatenate([hole[start:], hole[:start + 1]])
    return np.concatenate([outline[:at + 1], loop, outline[at:]])


class CocoWriter:
    """predictions.coco.json of a detect.py run, built frame by frame and written once at the end."""

    def __init__(self, class_names, rle=False):
        self.class_names, self.rle = list(class_names), rle
        self.images, self.annotations = [], []

    def add(self, file_name, mask, probabilities=None):
        """One image (or frame): `mask` of class indices at its size, `probabilities` HxWxC at the same size
        (one class: the foreground's) for the regions' scores."""
        height, width = mask.shape[:2]
        image_id = len(self.images) + 1
        self.images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
        present = np.flatnonzero(np.bincount(mask.ravel(), minlength=2)[1:]) + 1
        for label in present:
            count, regions = cv2.connectedComponents((mask == label).astype(np.uint8), connectivity=8)
            for number in range(1, count):
                region = regions == number
                self.annotations.append(self.annotation(image_id, int(label), region, probabilities))

    def annotation(self, image_id, label, region, probabilities):
        rle = coco_mask.encode(np.asfortranarray(region.astype(np.uint8)))
        if self.rle:
            segmentation = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
        else:
            segmentation = [[round(float(value), 2) for value in outline.ravel()]
                            for outline in region_outlines(region)]
        score = 1.0
        if probabilities is not None:
            channel = probabilities[..., 0] if probabilities.shape[2] == 1 else probabilities[..., label]
            score = round(float(channel[region].astype(np.float32).mean()), 4)
        return {"id": len(self.annotations) + 1, "image_id": image_id, "category_id": label,
                "segmentation": segmentation, "area": float(coco_mask.area(rle)),
                "bbox": [float(value) for value in coco_mask.toBbox(rle)], "iscrowd": 0, "score": score}

    def drop_last(self):
        """Take back the last image and its annotations (its results.csv row could not be written)."""
        if self.images:
            image_id = self.images.pop()["id"]
            self.annotations = [entry for entry in self.annotations if entry["image_id"] != image_id]

    def document(self):
        categories = [{"id": index, "name": name, "supercategory": ""}
                      for index, name in enumerate(self.class_names) if index > 0]
        return {"info": {"description": "detect.py predictions"}, "images": self.images,
                "annotations": self.annotations, "categories": categories}

    def write(self, path):
        write_atomically(Path(path), self.document())
