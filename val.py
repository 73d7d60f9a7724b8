"""Evaluate a trained model on a labelled split without training: loss, Dice and IoU computed by train.py's
own code, per class and per image, with a confusion matrix (as YOLO's `val` and MMSegmentation's test tool).

Usage:
    python val.py --model checkpoints/exp/best-checkpoint.pth.tar             # its run's test split (else val)
    python val.py --model checkpoints/exp/best-checkpoint.pth.tar --split val --save-masks
    python val.py --model best-checkpoint.pth.tar --data my_data/test.txt     # a split file
    python val.py --model best-checkpoint.onnx --data my_data/holdout         # a folder with imgs/ and masks/
    python val.py --model best-checkpoint.pth.tar --coco export/holdout.json  # a COCO file (segtoolkit.data.coco)
    python val.py --model best-checkpoint.onnx --data-dir my_data --search-files --val-split 0.2 --test-split 0.1

Data: a train.py checkpoint lists the files of its run, and without a data flag val.py takes its test split
(its validation split when it has none; --split chooses). Otherwise, or for an exported model (which lists
no files), give --data FILE, a split file as train.py reads them: found as given or inside --data-dir, its
entries relative to --data-dir, else to the split file's own folder (the repository's three split files go
with data/sample, as in train.py); or --data DIR, a folder holding imgs/ and masks/ (every image, paired
with its mask by stem); or --data-dir DIR --search-files with train.py's --val-split, --test-split and
--seed, which draws exactly train.py's random split (--split chooses the part).
Settings: patch size, classes, normalization and class names come from the model; ignore index, loss,
class weights and batch size from the checkpoint's run (train.py's defaults for an exported model), so the
figures are those train.py computes: on a run's test split, val.py reproduces its test_results.json. The
flags below override them.
Writes to runs/val/exp (exp2, exp3... never overwriting; --save-dir DIR is used as is, if it holds no
earlier val_results.json): val_results.json (train.py's metric keys, named after the split: test/dice...,
val/... for --data; per-class Dice, IoU and pixels; the confusion matrix; model, data and settings; 0 for
a class predicted but absent from the ground truth, null for a class in neither, left out of the mean),
confusion_matrix.png (row-normalized), per_image.csv (one row
per image, worst Dice first) and, with --save-masks, masks/<name>.png at each image's size as detect.py
writes them (0/255 for one class, class indices for several, stored as palette PNGs in the classes'
colours): the labels the metrics count, detect.py's with the same --conf-thres (default: 0.5 for one class,
the plain argmax for several). Pixels are counted at each image's own size, as train.py counts them: the
model's logits upsampled bilinearly to the image (the letterbox padding cut away first), then thresholded
or argmaxed, against the original mask (segtoolkit.evaluation.scoring); the loss is computed where the model works
(the patch, or the image at a crop-trained model's --scale). Colour masks are read with the colours the
model was trained with (--mask-colors FILE reads them with others); palette PNGs as their indices.
Exit codes: 0 done, 1 the run failed (an output could not be written, a DataLoader worker killed), 2 bad
input (a one-line error naming the file or flag), 130 stopped by Ctrl-C or SIGTERM (no results written).
"""

import sys
from dataclasses import dataclass
from pathlib import Path

from torch.utils.data import DataLoader
from tqdm import tqdm

from dataset import make_dataset
from segtoolkit.models.checkpoints import load_checkpoint
from segtoolkit.data.coco import coco_pairs
from segtoolkit.data.classes import DEFAULT_IGNORE_LABEL, MaskColors, load_mask_colors, output_colours
from segtoolkit.cli import ArgumentParser, StopRequest, run_command
from segtoolkit.training.config import REPO as CHECKOUT, SAMPLE_DIR, SPLIT_FILES, RunConfig, check_run_name, locate, \
    stored_config
from segtoolkit.distributed import resolve_device
from segtoolkit.errors import EXIT_OK, EXIT_STOPPED, UserError
from segtoolkit.data.loaders import collate
from segtoolkit.evaluation.scoring import accumulate
from segtoolkit.inference.full_size import CONF_THRES_HELP, FullSizePredictor, check_conf_thres
from segtoolkit.data.loaders import guarded_batches, ignore_sigint_in_worker, worker_crash_as_error
from segtoolkit.training.losses import default_loss, make_loss, parse_class_weights
from segtoolkit.data.masks import class_pixel_counts, label_warnings
from segtoolkit.evaluation.metrics import ConfusionStats
from segtoolkit.inference.predictor import TorchPredictor, load_predictor
from segtoolkit.outputs.files import metrics_json
from segtoolkit.data.splits import folder_pairs, pair_masks, read_split_file, search_files
from segtoolkit.outputs.val_report import (RESULTS_FILE, MaskWriter, PerImageScores, RunFolder, class_rows, class_table,
                                    plot_confusion_matrix, write_text)

REPO = Path(__file__).resolve().parent
DEFAULT_PROJECT = REPO / "runs" / "val"
SPLITS = ("train", "val", "test")
SEARCH_DEFAULTS = {"val_split": 0.2, "test_split": 0.0, "seed": 0}  # train.py's


@dataclass(frozen=True)
class Data:
    """The labelled images to evaluate: pairs of (image, mask), the metric prefix, and what they are."""
    pairs: list
    prefix: str
    description: str
    split: str | None = None


@dataclass(frozen=True)
class Settings:
    """How the images are read and scored: the model's description, and its run's ignore index, loss, class
    weights and batch size (the loss is a mean over batches, so the batch size changes it)."""
    patch_size: int
    classes: int
    mean: tuple
    std: tuple
    class_names: list
    ignore_index: int | None
    loss: str
    class_weights: list | None
    batch_size: int
    mask_colors: MaskColors | None = None  # colour masks read as classes (the model's --mask-colors)
    colours: tuple = ()  # RGB per class of the saved masks
    tiled: bool = False  # whole images by sliding window (models trained with --crop, or --tile)
    tile_overlap: float = 0.25
    tile_batch: int = 4
    bit_depth: int | None = None  # how 16-bit images are scaled, as the model's training data (its meta)
    conf_thres: float | None = None  # None: 0.5 for one class, the plain argmax for several


# ---------------------------------------------------------------- the model and its run


def open_model(model, device, half=False):
    """(meta, predictor, checkpoint dict or None): the one place a model file is opened. Whether it is a
    train.py checkpoint is load_predictor's own decision (a TorchPredictor), so any other format it reads
    (ONNX, OpenVINO .xml) is an exported model here, with no stored run. half: as detect.py --half."""
    meta, predictor = load_predictor(model, device, half)
    # loaded a second time for the run's data and settings: load_predictor keeps only the model
    checkpoint = load_checkpoint(model, "--model") if isinstance(predictor, TorchPredictor) else None
    return meta, predictor, checkpoint


def eval_settings(meta, checkpoint, *, batch_size=None, ignore_index=None, loss=None, class_weights=None,
                  tile=False, tile_overlap=None, tile_batch=None, mask_colors=None, conf_thres=None):
    """The Settings: the model's description, the run's configuration (train.py's defaults for an exported
    model, which stores none), then the flags given."""
    config = (stored_config(checkpoint) if checkpoint else None) or RunConfig()
    classes = meta["classes"]
    colours = model_mask_colors(meta, mask_colors)
    if ignore_index is None and config.ignore_index is None and colours and colours.ignore:
        ignore_index = DEFAULT_IGNORE_LABEL  # as train.py read the ignore colour (an export stores no run settings)
    weights = (checkpoint or {}).get("class_weights")
    if class_weights is not None:
        weights = parse_class_weights(class_weights, classes)
        if weights == "auto":
            raise UserError("--class-weights auto is computed from a training split; give the weights as a list "
                            "(train.py printed them at the start of the run)")
    tiled = tile or meta.get("input_mode") == "tile"
    settings = Settings(patch_size=meta["patch_size"], classes=classes, mean=tuple(meta["mean"]),
                        std=tuple(meta["std"]), class_names=list(meta["class_names"]),
                        ignore_index=config.ignore_index if ignore_index is None else ignore_index,
                        loss=loss or config.loss or default_loss(classes), class_weights=weights,
                        batch_size=1 if tiled else batch_size or config.batch_size, tiled=tiled,
                        tile_overlap=config.tile_overlap if tile_overlap is None else tile_overlap,
                        tile_batch=tile_batch or config.tile_batch, mask_colors=colours,
                        colours=tuple(output_colours(meta)), bit_depth=meta.get("bit_depth"), conf_thres=conf_thres)
    if settings.ignore_index is not None and 0 <= settings.ignore_index < classes:
        raise UserError(f"--ignore-index {settings.ignore_index} is one of the model's classes 0..{classes - 1}; "
                        f"use a value outside them, e.g. 255")
    make_loss(settings.loss, classes, settings.class_weights)  # a bad --loss or --class-weights: before any reading
    return settings


def model_mask_colors(meta, path=None):
    """How colour masks are read: --mask-colors FILE, whose classes are matched to the model's by name (in
    any order; a file lacking one of them, or naming another, is refused), else the colours the model was
    trained with (None: masks hold class indices, or palette indices)."""
    if path is None:
        return MaskColors.from_meta(meta.get("mask_colors"))
    colours = load_mask_colors(path)
    names = list(meta["class_names"])
    lacking = [name for name in names if name not in colours.names]
    unknown = [name for name in colours.names if name not in names]
    if lacking or unknown:
        problems = ([f"lacks {', '.join(lacking)}"] if lacking else []) + \
            ([f"names {', '.join(unknown)}, which the model does not have"] if unknown else [])
        raise UserError(f"--mask-colors {path} {' and '.join(problems)}: its classes are matched to the model's by "
                        f"name, and the model's are {', '.join(names)}; give a colour for each of them")
    # by name, not position: the file may list them in another order (road and sidewalk swapped their masks)
    colour_of = dict(zip(colours.names, colours.colors))
    return MaskColors(tuple(names), tuple(colour_of[name] for name in names), colours.ignore, colours.source)


# ---------------------------------------------------------------- the data


def choose_data(*, checkpoint, model, data=None, data_dir=None, search=False, split=None, img_dir="imgs",
                mask_dir="masks", search_flags=None):
    """The Data to evaluate, from the data flags, or the checkpoint's own split without one."""
    search_flags = search_flags or {}
    if data is not None:
        for flag, given in (("--search-files", search), ("--split", split), *search_flags_given(search_flags)):
            if given:
                raise UserError(f"{flag} goes with a checkpoint's split or --search-files, but --data {data} is "
                                f"evaluated whole; drop {flag}")
        return data_from_path(Path(data), data_dir, img_dir, mask_dir)
    if search:
        if data_dir is None:
            raise UserError("--search-files needs --data-dir DIR, the folder holding imgs/ and masks/ that train.py "
                            "split")
        return searched_split(data_dir, img_dir, mask_dir, split, **{**SEARCH_DEFAULTS, **search_flags})
    for flag, given in (("--data-dir", data_dir is not None), *search_flags_given(search_flags)):
        if given:
            raise UserError(f"{flag} needs --search-files (train.py's random split of --data-dir), or give --data "
                            f"FILE, a split file whose entries are relative to --data-dir")
    if checkpoint is None:
        raise UserError(f"--model {model} is an exported model, which lists no data files (a train.py checkpoint "
                        f"does); give --data FILE (a split file) or DIR (holding imgs/ and masks/), or --data-dir "
                        f"DIR --search-files")
    return checkpoint_split(checkpoint, model, split)


def coco_data(path, meta, data_dir, img_dir):
    """--coco FILE: every image of a COCO file, its categories mapped onto the model's classes by name."""
    folder = Path(data_dir) if data_dir is not None else Path(path).resolve().parent
    pairs = coco_pairs(path, meta["class_names"], data_dir=data_dir, img_dir=img_dir,
                       cache_dir=folder / ".segtoolkit-cache")
    if not pairs:
        raise UserError(f"--coco {path} lists no images; give another file")
    return Data([list(map(str, pair)) for pair in pairs], "val", f"COCO file {path}")


def search_flags_given(search_flags):
    return [(f"--{key.replace('_', '-')}", True) for key in search_flags]


def data_from_path(path, data_dir, img_dir, mask_dir):
    """--data: a folder holding img_dir/ and mask_dir/ (every pair, by stem), or a split file."""
    if path.is_dir():
        if data_dir is not None:
            raise UserError(f"--data-dir {data_dir} is where a split file's entries are; --data {path} is a folder, "
                            f"evaluated whole: drop --data-dir")
        if not (path / img_dir).is_dir():
            raise UserError(f"--data {path} is a folder without {img_dir}/; give a folder holding {img_dir}/ and "
                            f"{mask_dir}/ (paired by file stem), or a split file")
        pairs = folder_pairs(path, img_dir, mask_dir)
        what = f"folder {path} ({img_dir}/ and {mask_dir}/)"
    else:
        split_file = locate(path, Path(data_dir).resolve()) if data_dir is not None else path
        if not split_file.is_file():
            raise UserError(f"--data {path}: no such file or folder; give a split file (one image per line) or a "
                            f"folder holding {img_dir}/ and {mask_dir}/")
        root = Path(data_dir) if data_dir is not None else entries_folder(split_file)
        pairs = pair_masks(read_split_file(split_file, root, img_dir), root / mask_dir)
        what = f"split file {split_file} (entries in {root})"
    if not pairs:
        raise UserError(f"--data {path} holds no images; list images in it, or give another --data")
    return Data([list(map(str, pair)) for pair in pairs], "val", what)


def entries_folder(split_file):
    """Where a split file's entries are without --data-dir: beside it, except for the repository's three
    split files, which list the bundled sample (as in train.py)."""
    if split_file.resolve() in {(CHECKOUT / name).resolve() for name in SPLIT_FILES}:
        return SAMPLE_DIR
    return split_file.parent


def searched_split(data_dir, img_dir, mask_dir, split, *, val_split, test_split, seed):
    """--search-files: train.py's random split of data_dir (segtoolkit.data.splits.search_files), one part."""
    parts = dict(zip(SPLITS, search_files(data_dir, img_dir, mask_dir, val_split, test_split, seed)))
    name = split or ("test" if parts["test"] else "val")
    if not parts[name]:
        raise UserError(f"--search-files in {data_dir} gives no {name} images with --val-split {val_split} "
                        f"--test-split {test_split}; give the fractions the run was trained with, or another --split")
    flags = f"--val-split {val_split} --test-split {test_split} --seed {seed}"
    return Data([list(map(str, pair)) for pair in parts[name]], name,
                f"the {name} split of --search-files in {data_dir} ({flags})", name)


def checkpoint_split(checkpoint, model, split):
    """A split of the files the checkpoint's run used: test when it has one, else val, or --split."""
    data = checkpoint.get("data")
    if not data:
        raise UserError(f"--model {model} lists no data files (weights only, or written before checkpoints kept "
                        f"them); give --data FILE or DIR, or --data-dir DIR --search-files")
    name = split or ("test" if data.get("test") else "val")
    pairs = data.get(name) or []
    if not pairs:
        other = "val" if name != "val" else "test"
        raise UserError(f"--split {name}: the run of {model} has no {name} split (it was trained without one); "
                        f"give --split {other}, or --data")
    gone = [path for pair in pairs for path in pair if not Path(path).is_file()]
    if gone:
        raise UserError(f"--model {model}: {len(gone)} of the files of its {name} split are gone (first: "
                        f"{gone[0]}); put them back where they were, or give --data")
    return Data([list(pair) for pair in pairs], name, f"the {name} split of the checkpoint's run", name)


# ---------------------------------------------------------------- the run


def check_flags(batch_size, workers, name, conf_thres=None):
    """The flags, checked before anything is read or loaded."""
    check_run_name(name)
    check_conf_thres(conf_thres)
    if batch_size is not None and batch_size < 1:
        raise UserError(f"--batch-size {batch_size} must be at least 1")
    if workers < 0:
        raise UserError(f"--workers {workers} must be at least 0")


def run(*, model, data=None, data_dir=None, search=False, split=None, img_dir="imgs", mask_dir="masks",
        search_flags=None, batch_size=None, ignore_index=None, loss=None, class_weights=None, device="auto",
        workers=2, save_masks=False, save_dir=None, project=DEFAULT_PROJECT, name="exp", tile=False,
        tile_overlap=None, tile_batch=None, mask_colors=None, half=False, coco=None, conf_thres=None):
    """Evaluate `model` on a labelled split and write the results. `search_flags` holds the --search-files
    fractions and seed given ({"val_split": 0.25}...). Returns a summary dict: metrics, save_dir (None when
    stopped), interrupted."""
    check_flags(batch_size, workers, name, conf_thres)
    device = resolve_device(device)
    folder = RunFolder(save_dir, project, name)
    meta, predictor, checkpoint = open_model(model, device, half)
    chosen = coco_data(coco, meta, data_dir, img_dir) if coco else choose_data(
        checkpoint=checkpoint, model=model, data=data, data_dir=data_dir, search=search, split=split,
        img_dir=img_dir, mask_dir=mask_dir, search_flags=search_flags)
    ignore_index = DEFAULT_IGNORE_LABEL if coco and ignore_index is None else ignore_index  # crowd regions
    settings = eval_settings(meta, checkpoint, batch_size=batch_size, ignore_index=ignore_index, loss=loss,
                             class_weights=class_weights, tile=tile, tile_overlap=tile_overlap, tile_batch=tile_batch,
                             mask_colors=mask_colors, conf_thres=conf_thres)
    full_size = FullSizePredictor.from_meta(predictor, meta, tile=settings.tiled, overlap=settings.tile_overlap,
                                            tile_batch=settings.tile_batch, conf_thres=settings.conf_thres)
    dataset = make_dataset(chosen.pairs, settings.patch_size, settings.classes, settings.ignore_index,
                           mean=settings.mean, std=settings.std, threads=max(2, workers), evaluation=True,
                           mode=full_size.dataset_mode, scale=full_size.scale,
                           mask_colors=settings.mask_colors, bit_depth=settings.bit_depth)
    for line in label_warnings(class_pixel_counts(dataset), settings.classes, settings.ignore_index,
                               settings.class_names, split=chosen.split or "evaluation"):
        print(f"warning: {line}", file=sys.stderr, flush=True)
    how = f"whole images by sliding window of {settings.patch_size}" if settings.tiled else \
        f"patch {settings.patch_size}, batch {settings.batch_size}"
    print(f"evaluating {model} on {chosen.description}: {len(dataset)} images, {how}, loss {settings.loss}",
          flush=True)
    with StopRequest("stopping after this batch; no results are written") as stop:
        stats, per_image = score(full_size, dataset, settings, folder, save_masks, workers, stop)
    if stop.is_set():
        print("stopped: no results written" + (f" (the masks so far are in {folder.created})" if folder.created
                                               else ""), flush=True)
        return {"metrics": None, "save_dir": None, "interrupted": True}
    metrics = stats.compute(chosen.prefix, settings.class_names if settings.classes > 1 else None)
    matrix = stats.reduced()[0]
    rows = class_rows(matrix, settings.class_names)
    write_outputs(folder, metrics, matrix, rows, per_image, model=model, chosen=chosen, settings=settings)
    print("\n".join(class_table(rows, metrics, chosen.prefix, settings.classes)))
    print(f"loss {metrics[f'{chosen.prefix}/loss']:.4f} over {len(dataset)} images ({chosen.description}); "
          f"results in {folder.path}: {RESULTS_FILE}, confusion_matrix.png, per_image.csv"
          + (", masks/" if save_masks else ""), flush=True)
    return {"metrics": metrics, "save_dir": folder.path, "interrupted": False}


def score(full_size, dataset, settings, folder, save_masks, workers, stop):
    """The split through the model in order, counted by train.py's loop (segtoolkit.evaluation.scoring.accumulate):
    (ConfusionStats, PerImageScores); each mask written as its image is scored with --save-masks."""
    loader = DataLoader(dataset, settings.batch_size, shuffle=False, num_workers=workers, collate_fn=collate,
                        worker_init_fn=ignore_sigint_in_worker if workers else None)
    criterion = make_loss(settings.loss, settings.classes, settings.class_weights)
    per_image = PerImageScores(dataset.pairs, settings.classes, settings.class_names)
    masks = MaskWriter(folder, dataset.pairs, settings.classes, settings.colours) if save_masks else None

    def on_image(mask, matrix):
        per_image.add(matrix)
        if masks is not None:
            masks.add(mask)

    hint = "no results were written"
    bar = tqdm(total=len(loader), desc="val", unit="batch", dynamic_ncols=True)
    batches = until_stopped(guarded_batches(loader, "evaluation", lambda: hint, bar), stop)
    with worker_crash_as_error(lambda: hint):
        stats = accumulate(full_size, batches, ConfusionStats(settings.classes, settings.ignore_index),
                           criterion=criterion, on_image=on_image)
    bar.close()
    return stats, per_image


def until_stopped(batches, stop):
    """The batches until Ctrl-C or SIGTERM: the current batch is finished, none started after it."""
    for batch in batches:
        if stop.is_set():
            return
        yield batch


def write_outputs(folder, metrics, matrix, rows, per_image, *, model, chosen, settings):
    """val_results.json, confusion_matrix.png and per_image.csv in the run folder."""
    results = {**metrics, "model": str(model), "data": chosen.description, "split": chosen.split,
               "images": len(per_image.rows), "per_class": rows,
               "confusion_matrix": matrix.long().tolist(),  # rows: ground truth, columns: prediction
               "settings": {"patch_size": settings.patch_size, "classes": settings.classes,
                            "ignore_index": settings.ignore_index, "loss": settings.loss,
                            "class_weights": settings.class_weights, "batch_size": settings.batch_size,
                            "conf_thres": settings.conf_thres}}
    write_text(folder.path / RESULTS_FILE, metrics_json(results) + "\n")
    title = f"{Path(model).name} on {chosen.description}, {len(per_image.rows)} images"
    plot_confusion_matrix(matrix, settings.class_names, folder.path / "confusion_matrix.png", title)
    per_image.write_csv(folder.path / "per_image.csv")


# ---------------------------------------------------------------- the command line


def parse_args(argv=None):
    parser = ArgumentParser(description=__doc__)
    model = parser.add_argument_group("Model")
    model.add_argument("--model", required=True,
                       help="checkpoint from train.py (.pth.tar), or from export.py an .onnx file (onnxruntime) or "
                            "an .xml with its .bin (OpenVINO)")
    data = parser.add_argument_group("Data (default: the checkpoint's own split)")
    data.add_argument("--data", default=None,
                      help="a split file (entries relative to --data-dir, else to the file's folder) or a folder "
                           "holding imgs/ and masks/ (every image, paired with its mask by stem)")
    data.add_argument("--data-dir", default=None, help="folder of a split file's entries, or of --search-files")
    data.add_argument("--img-dir", default="imgs", help="image folder inside the data folder")
    data.add_argument("--mask-dir", default="masks", help="mask folder inside the data folder")
    data.add_argument("--coco", type=Path, default=None, metavar="FILE.json",
                      help="evaluate every image of a COCO JSON export (as train.py --coco reads it: categories "
                           "matched to the model's classes by name, iscrowd regions ignored)")
    data.add_argument("--mask-colors", type=Path, default=None, metavar="FILE",
                      help="read colour masks with this CSV or JSON file (as train.py's) instead of the colours the "
                           "model was trained with; its classes are matched to the model's by name, in any order")
    data.add_argument("--search-files", action="store_true",
                      help="split --data-dir's imgs/ and masks/ at random exactly as train.py --search-files does")
    data.add_argument("--val-split", type=float, default=None, help="as train.py's (default: 0.2)")
    data.add_argument("--test-split", type=float, default=None, help="as train.py's (default: 0)")
    data.add_argument("--seed", type=int, default=None, help="as train.py's (default: 0)")
    data.add_argument("--split", choices=SPLITS, default=None,
                      help="part of the checkpoint's split or of --search-files (default: test, or val without one)")
    metrics = parser.add_argument_group("Metrics (default: as the checkpoint's run; train.py's for an export)")
    metrics.add_argument("--batch-size", type=int, default=None, help="images per batch (the loss is a batch mean)")
    metrics.add_argument("--ignore-index", type=int, default=None, help="mask value left out of loss and metrics")
    metrics.add_argument("--loss", default=None, help="loss spec as train.py's --loss (bce, ce, ce+dice...)")
    metrics.add_argument("--class-weights", default=None, help="one weight per class, comma-separated")
    metrics.add_argument("--tile", action="store_true",
                         help="segment whole images at full resolution by sliding window (automatic for models "
                              "trained with --crop)")
    metrics.add_argument("--tile-overlap", type=float, default=None, help="overlap of the tiles (default: the run's)")
    metrics.add_argument("--tile-batch", type=int, default=None, help="tiles per forward pass (default: the run's)")
    metrics.add_argument("--conf-thres", type=float, default=None, help=f"as detect.py's, for the metrics and the "
                         f"masks: {CONF_THRES_HELP}")
    runtime = parser.add_argument_group("Runtime")
    runtime.add_argument("--device", default="auto",
                         help="auto (cuda if available, else cpu), cpu, cuda, cuda:1 (.onnx: onnxruntime decides; "
                              ".xml: OpenVINO on the CPU)")
    runtime.add_argument("--half", action="store_true",
                         help="half precision as detect.py --half: float16 on CUDA, bfloat16 on CPUs with AVX-512 "
                              "BF16 or AMX (.pth.tar and .xml); on other CPUs, and for .onnx, a warning and float32")
    runtime.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    runtime.add_argument("--verbose", action="store_true",
                         help="full tracebacks for errors, and Python warnings with their source line")
    output = parser.add_argument_group("Output")
    output.add_argument("--project", type=Path, default=DEFAULT_PROJECT,
                        help="folder of the run folders (default: runs/val/ in the repository)")
    output.add_argument("--name", default="exp", help="run folder name: <project>/<name>, then name2, name3...")
    output.add_argument("--save-dir", type=Path, default=None,
                        help="output folder, used as is instead of --project/--name (not one holding val_results.json)")
    output.add_argument("--save-masks", action="store_true",
                        help="write the predicted masks to masks/ at each image's size, as detect.py does")
    return parser.parse_args(argv)


def val_from_args(args):
    """run() with the command line's arguments; returns the exit code."""
    search_flags = {key: getattr(args, key) for key in SEARCH_DEFAULTS if getattr(args, key) is not None}
    summary = run(model=args.model, data=args.data, data_dir=args.data_dir, search=args.search_files,
                  split=args.split, img_dir=args.img_dir, mask_dir=args.mask_dir, search_flags=search_flags,
                  batch_size=args.batch_size, ignore_index=args.ignore_index, loss=args.loss,
                  class_weights=args.class_weights, device=args.device, workers=args.workers,
                  save_masks=args.save_masks, save_dir=args.save_dir, project=args.project, name=args.name,
                  tile=args.tile, tile_overlap=args.tile_overlap, tile_batch=args.tile_batch,
                  mask_colors=args.mask_colors, half=args.half, coco=args.coco, conf_thres=args.conf_thres)
    return EXIT_STOPPED if summary["interrupted"] else EXIT_OK


def main(args):
    """val.py with parsed arguments; returns the exit code (an error is one line: segtoolkit.cli)."""
    return run_command(val_from_args, args)


if __name__ == "__main__":
    sys.exit(main(parse_args()))
