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
keep holes (each hole joined to its region's outer outline by a zero-width cut, as COCO polygons cannot hold
holes), so pycocotools rasterises them back to exactly the predicted pixels. Each region is traced and encoded
inside its bounding box, so a region with hundreds of holes costs about what its pixels and points do.

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


def region_outlines(region, offset=(0, 0)):
    """COCO polygons ([x0, y0, x1, y1, ...] arrays) of a bool mask's regions, each with its holes joined in,
    along pixel edges (see EDGE_UPSAMPLING): polygons.find_regions' outlines of the mask upsampled k times,
    whose pixel centres then fall half a source pixel's k-th inside its edges; `offset` (x, y) is added: the
    mask is a crop at that place."""
    k = EDGE_UPSAMPLING
    upsampled = np.kron(region.astype(np.uint8), np.ones((k, k), np.uint8))
    outlines = []
    for found in find_regions(upsampled):
        ring = with_holes(found.outline.reshape(-1, 2), [hole.reshape(-1, 2) for hole in found.holes],
                          upsampled.shape)
        outlines.append((ring + 0.5) / k + np.asarray(offset, float))
    return outlines


def with_holes(outline, holes, shape):
    """One ring of an outline and its holes (points in an image of `shape`): each hole, from its first point,
    joined to the outline's vertex nearest that point by a cut there and back (no width: pycocotools' even-odd
    rule rasterises it to nothing, wherever it runs). Holes join the outline itself, never each other, and the
    ring is built once: linear in the points and the image's pixels."""
    if not holes:
        return outline
    # every pixel's nearest outline vertex, from one distance transform (labels: one per vertex pixel)
    vertices = np.ones(shape, np.uint8)
    vertices[outline[:, 1], outline[:, 0]] = 0
    _, nearest = cv2.distanceTransformWithLabels(vertices, cv2.DIST_L2, 5, labelType=cv2.DIST_LABEL_PIXEL)
    vertex_of = np.zeros(int(nearest.max()) + 1, np.int64)
    vertex_of[nearest[outline[:, 1], outline[:, 0]]] = np.arange(len(outline))
    starts = np.array([hole[0] for hole in holes])
    at = vertex_of[nearest[starts[:, 1], starts[:, 0]]]
    pieces, previous = [], 0
    for hole in np.argsort(at, kind="stable"):
        pieces += [outline[previous:at[hole] + 1], holes[hole], holes[hole][:1]]
        previous = at[hole]
    pieces.append(outline[previous:])
    return np.concatenate(pieces)


def crop_rle(crop, x, y, height, width):
    """Compressed COCO RLE, over a height x width image, of a bool crop whose top left pixel is (x, y):
    computed from the crop's column runs, never a whole-image array."""
    steps = np.diff(np.pad(crop.astype(np.int8), ((1, 1), (0, 0))), axis=0).T  # per column, down the rows
    columns, rows = np.nonzero(steps == 1)
    starts = (x + columns) * height + y + rows  # column-major pixel indices, as COCO counts them
    columns, rows = np.nonzero(steps == -1)
    ends = (x + columns) * height + y + rows
    continued = ends[:-1] == starts[1:]  # a run down one column's last row and on at the next one's first
    starts = np.concatenate([starts[:1], starts[1:][~continued]])
    ends = np.concatenate([ends[:-1][~continued], ends[-1:]])
    counts = np.diff(np.concatenate([[0], np.stack([starts, ends], 1).ravel(), [height * width]]))
    counts = counts[:-1] if counts[-1] == 0 else counts
    return coco_mask.frPyObjects({"size": [height, width], "counts": counts.tolist()}, height, width)


class CocoWriter:
    """predictions.coco.json of a detect.py run, built frame by frame and written once at the end."""

    def __init__(self, class_names, rle=False):
        self.class_names, self.rle = list(class_names), rle
        self.images, self.annotations = [], []

    def add(self, file_name, mask, probabilities=None):
        """One image (or frame): `mask` of class indices at its size, `probabilities` HxWxC at the same size
        (one class: the foreground's) for the regions' scores. Each region is handled in its bounding box."""
        height, width = mask.shape[:2]
        image = {"id": len(self.images) + 1, "file_name": file_name, "width": width, "height": height}
        self.images.append(image)
        present = np.flatnonzero(np.bincount(mask.ravel(), minlength=2)[1:]) + 1
        for label in present:
            count, regions, stats, _ = cv2.connectedComponentsWithStats((mask == label).astype(np.uint8),
                                                                        connectivity=8)
            for number in range(1, count):
                x, y, w, h, area = (int(value) for value in stats[number])
                crop = regions[y:y + h, x:x + w] == number
                scores = None if probabilities is None else probabilities[y:y + h, x:x + w]
                self.annotations.append(self.annotation(image, int(label), crop, (x, y, w, h, area), scores))

    def annotation(self, image, label, crop, box, probabilities):
        """One region's annotation in `image`: `crop` its pixels in its bounding box `box` (x, y, w, h,
        pixels), `probabilities` the same box of the image's."""
        x, y, w, h, area = box
        if self.rle:
            rle = crop_rle(crop, x, y, image["height"], image["width"])
            segmentation = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
        else:
            # quarters of a pixel (see EDGE_UPSAMPLING): exact as floats, written as they are
            segmentation = [outline.ravel().tolist() for outline in region_outlines(crop, (x, y))]
        score = 1.0
        if probabilities is not None:
            channel = probabilities[..., 0] if probabilities.shape[2] == 1 else probabilities[..., label]
            score = round(float(channel[crop].astype(np.float32).mean()), 4)
        return {"id": len(self.annotations) + 1, "image_id": image["id"], "category_id": label,
                "segmentation": segmentation, "area": float(area), "bbox": [float(x), float(y), float(w), float(h)],
                "iscrowd": 0, "score": score}

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
