"""Evaluate a trained model on a labelled split without training: loss, Dice and IoU computed by train.py's
own code, per class and per image, with a confusion matrix (as YOLO's `val` and MMSegmentation's test tool).

Usage:
    python val.py --model checkpoints/exp/best-checkpoint.pth.tar             # its run's test split (else val)
    python val.py --model checkpoints/exp/best-checkpoint.pth.tar --split val --save-masks
    python val.py --model best-checkpoint.pth.tar --data my_data/test.txt     # a split file
    python val.py --model best-checkpoint.onnx --data my_data/holdout         # a folder with imgs/ and masks/
    python val.py --model best-checkpoint.pth.tar --coco export/holdout.json  # a COCO file (segtoolkit.data.coco)
    python val.py --model best-checkpoint.onnx --data-dir my_data --search-files --val-split 0.2 --test-split 0.1
    torchrun --nproc-per-node 2 val.py --model best-checkpoint.pth.tar     # two processes (GPUs), one result

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
Under torchrun each process scores every N-th batch (batch k: process k % N, so each batch, and its mean
loss, is the one a single process scores) on its own device; the confusion matrices and loss sums are summed
over the processes and the per-image rows gathered, so val_results.json is a single process's.
Exit codes: 0 done, 1 the run failed (an output could not be written, a DataLoader worker killed), 2 bad
input (a one-line error naming the file or flag), 130 stopped by Ctrl-C or SIGTERM (no results written).
"""

import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path

from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from dataset import make_dataset
from segtoolkit.data.coco import coco_pairs
from segtoolkit.data.classes import DEFAULT_IGNORE_LABEL, MaskColors, load_mask_colors, output_colours
from segtoolkit.cli import (StopRequest, device_setting, half_setting, model_file_setting, name_setting,
                            project_setting, run_command, save_dir_setting, setting, settings_from, settings_parser,
                            verbose_setting)
from segtoolkit.training.config import (SAMPLE_DIR, SPLIT_FILES, RunConfig, check_run_name, locate, open_model,
                                        run_config, sample_split_file)
from segtoolkit import distributed
from segtoolkit.errors import EXIT_OK, EXIT_STOPPED, UserError
from segtoolkit.data.loaders import collate
from segtoolkit.evaluation.scoring import accumulate
from segtoolkit.inference.full_size import CONF_THRES_HELP, FullSizePredictor, check_conf_thres
from segtoolkit.data.loaders import guarded_batches, ignore_sigint_in_worker, worker_crash_as_error
from segtoolkit.training.losses import default_loss, make_loss, parse_class_weights
from segtoolkit.data.masks import class_pixel_counts, label_warnings
from segtoolkit.evaluation.metrics import ConfusionStats
from segtoolkit.inference.tiling import (check_tile_settings, tile_batch_setting, tile_overlap_setting, tile_setting,
                                        tile_weighting_setting)
from segtoolkit.outputs.files import metrics_json
from segtoolkit.data.splits import folder_pairs, pair_masks, read_split_file, search_files
from segtoolkit.outputs.val_report import (RESULTS_FILE, MaskWriter, PerImageScores, RunFolder, class_rows, class_table,
                                    plot_confusion_matrix, write_text)

SPLITS = ("train", "val", "test")
SEARCH_FLAGS = ("val_split", "test_split", "seed")  # train.py's, with train.py's defaults (RunConfig)
DATA = "Data (default: the checkpoint's own split)"
METRICS = "Metrics (default: as the checkpoint's run; train.py's for an export)"


@dataclass(frozen=True, kw_only=True)
class ValSettings:
    """val.py's flags: each field is the flag --field-name, its default and help written once, here. None in
    the Metrics group means "as the model's run" (train.py's default for an export): resolve() fills them in."""
    model: str = model_file_setting()
    data: str | None = setting(None, group=DATA, help="a split file (entries relative to --data-dir, else to the "
                               "file's folder) or a folder holding imgs/ and masks/ (every image, paired with its "
                               "mask by stem)")
    data_dir: str | None = setting(None, group=DATA, help="folder of a split file's entries, or of --search-files")
    img_dir: str = setting("imgs", group=DATA, help="image folder inside the data folder")
    mask_dir: str = setting("masks", group=DATA, help="mask folder inside the data folder")
    coco: Path | None = setting(None, group=DATA, metavar="FILE.json", help="evaluate every image of a COCO JSON "
                                "export (as train.py --coco reads it: categories matched to the model's classes by "
                                "name, iscrowd regions ignored)")
    mask_colors: Path | None = setting(None, group=DATA, metavar="FILE", help="read colour masks with this CSV or "
                                       "JSON file (as train.py's) instead of the colours the model was trained with; "
                                       "its classes are matched to the model's by name, in any order")
    search_files: bool = setting(False, group=DATA, help="split --data-dir's imgs/ and masks/ at random exactly as "
                                 "train.py --search-files does")
    val_split: float | None = setting(None, group=DATA, help="as train.py's (default: 0.2)")
    test_split: float | None = setting(None, group=DATA, help="as train.py's (default: 0)")
    seed: int | None = setting(None, group=DATA, help="as train.py's (default: 0)")
    split: str | None = setting(None, group=DATA, choices=SPLITS, help="part of the checkpoint's split or of "
                                "--search-files (default: test, or val without one)")
    batch_size: int | None = setting(None, group=METRICS, help="images per forward pass, as detect.py's (the loss is "
                                     "a batch mean); a tiled model (--tile) takes --tile-batch tiles at a time across "
                                     "the batch's images, its loss per image (default for it: 1)")
    ignore_index: int | None = setting(None, group=METRICS, help="mask value left out of loss and metrics")
    loss: str | None = setting(None, group=METRICS, help="loss spec as train.py's --loss (bce, ce, ce+dice...)")
    class_weights: str | None = setting(None, group=METRICS, help="one weight per class, comma-separated")
    tile: bool = tile_setting(METRICS)
    tile_overlap: float | None = tile_overlap_setting(None, METRICS)
    tile_weighting: str | None = tile_weighting_setting(None, METRICS)
    tile_batch: int | None = tile_batch_setting(None, METRICS)
    conf_thres: float | None = setting(None, group=METRICS, help=f"as detect.py's, for the metrics and the masks: "
                                       f"{CONF_THRES_HELP}")
    device: str = device_setting()
    half: bool = half_setting()
    workers: int = setting(2, group="Runtime", help="DataLoader worker processes")
    verbose: bool = verbose_setting()
    project: Path = project_setting(Path("runs") / "val", "Output")
    name: str = name_setting("Output")
    save_dir: Path | None = save_dir_setting(" (not one holding val_results.json)")
    save_masks: bool = setting(False, group="Output", help="write the predicted masks to masks/ at each image's size, "
                               "as detect.py does")

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class Data:
    """The labelled images to evaluate: pairs of (image, mask), the metric prefix, and what they are."""
    pairs: list
    prefix: str
    description: str
    split: str | None = None


# ---------------------------------------------------------------- the model and its run


def resolve(settings, meta, checkpoint):
    """The settings with the Metrics group's None filled in as the model's run (train.py's defaults for an
    exported model, which stores none): ignore index, loss, batch size (the loss is a mean over batches, so it
    changes it) and the tiles; `tile` is whether images are tiled (--tile, or a model trained with --crop)."""
    config = run_config(checkpoint)
    classes = meta["classes"]
    ignore_index = settings.ignore_index
    colours = model_mask_colors(meta, settings.mask_colors)
    if ignore_index is None and (settings.coco or config.ignore_index is None and colours and colours.ignore):
        ignore_index = DEFAULT_IGNORE_LABEL  # COCO crowd regions; the ignore colour as train.py read it
    tiled = FullSizePredictor.sees_tiles(meta, settings.tile)
    overlap, batch, weighting = config.tile_settings(settings.tile_overlap, settings.tile_batch,
                                                     settings.tile_weighting)
    resolved = settings.replace(ignore_index=config.ignore_index if ignore_index is None else ignore_index,
                                loss=settings.loss or config.loss or default_loss(classes),
                                batch_size=settings.batch_size or (1 if tiled else config.batch_size), tile=tiled,
                                tile_overlap=overlap, tile_batch=batch, tile_weighting=weighting)
    if resolved.ignore_index is not None and 0 <= resolved.ignore_index < classes:
        raise UserError(f"--ignore-index {resolved.ignore_index} is one of the model's classes 0..{classes - 1}; "
                        f"use a value outside them, e.g. 255")
    # a bad --loss or --class-weights: before any reading
    make_loss(resolved.loss, classes, loss_weights(settings, checkpoint, classes))
    return resolved


def read_options(meta, settings):
    """How images and masks are read, as the model was trained: its description, its colours (or
    --mask-colors), its bit depth for 16-bit images, and the ignore index of the (resolved) settings."""
    return dict(patch_size=meta["patch_size"], classes=meta["classes"], ignore_index=settings.ignore_index,
                mean=meta["mean"], std=meta["std"], mask_colors=model_mask_colors(meta, settings.mask_colors),
                bit_depth=meta.get("bit_depth"))


def loss_weights(settings, checkpoint, classes):
    """The class weights of the loss: --class-weights, else the checkpoint's run's (None: unweighted)."""
    if settings.class_weights is None:
        return (checkpoint or {}).get("class_weights")
    weights = parse_class_weights(settings.class_weights, classes)
    if weights == "auto":
        raise UserError("--class-weights auto is computed from a training split; give the weights as a list "
                        "(train.py printed them at the start of the run)")
    return weights


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


def choose_data(settings, checkpoint):
    """The Data to evaluate, from the data flags, or the checkpoint's own split without one."""
    search_flags = {key: getattr(settings, key) for key in SEARCH_FLAGS if getattr(settings, key) is not None}
    data, data_dir, img_dir, mask_dir = settings.data, settings.data_dir, settings.img_dir, settings.mask_dir
    if data is not None:
        for flag, given in (("--search-files", settings.search_files), ("--split", settings.split),
                            *search_flags_given(search_flags)):
            if given:
                raise UserError(f"{flag} goes with a checkpoint's split or --search-files, but --data {data} is "
                                f"evaluated whole; drop {flag}")
        return data_from_path(Path(data), data_dir, img_dir, mask_dir)
    if settings.search_files:
        if data_dir is None:
            raise UserError("--search-files needs --data-dir DIR, the folder holding imgs/ and masks/ that train.py "
                            "split")
        defaults = {key: getattr(RunConfig, key) for key in SEARCH_FLAGS}  # train.py's
        return searched_split(data_dir, img_dir, mask_dir, settings.split, **{**defaults, **search_flags})
    for flag, given in (("--data-dir", data_dir is not None), *search_flags_given(search_flags)):
        if given:
            raise UserError(f"{flag} needs --search-files (train.py's random split of --data-dir), or give --data "
                            f"FILE, a split file whose entries are relative to --data-dir")
    if checkpoint is None:
        raise UserError(f"--model {settings.model} is an exported model, which lists no data files (a train.py "
                        f"checkpoint does); give --data FILE (a split file) or DIR (holding imgs/ and masks/), or "
                        f"--data-dir DIR --search-files")
    return checkpoint_split(checkpoint, settings.model, settings.split)


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
    if split_file.resolve() in {sample_split_file(name) for name in SPLIT_FILES}:
        return SAMPLE_DIR.resolve()
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


def check_flags(settings):
    """The flags, checked before anything is read or loaded."""
    check_run_name(settings.name)
    check_conf_thres(settings.conf_thres)
    check_tile_settings(settings.tile_overlap, settings.tile_batch, settings.tile_weighting)
    if settings.batch_size is not None and settings.batch_size < 1:
        raise UserError(f"--batch-size {settings.batch_size} must be at least 1")
    if settings.workers < 0:
        raise UserError(f"--workers {settings.workers} must be at least 0")


def run(**flags):
    """val.py as a function: `flags` are ValSettings' fields (model required, the rest as the command line's
    defaults). Returns evaluate(ValSettings(**flags))."""
    return evaluate(ValSettings(**flags))


def evaluate(settings):
    """Evaluate settings.model on a labelled split and write the results. Returns a summary dict: metrics,
    save_dir (None when stopped), interrupted."""
    check_flags(settings)
    process, device = distributed.setup(settings.device)
    distributed.share_cores(device)
    folder = RunFolder(settings.save_dir, settings.project, settings.name)
    if process.distributed:  # one folder for every process: rank 0's, made now
        folder.created = Path(distributed.broadcast_object(str(folder.path) if process.is_main else None))
    meta, predictor, checkpoint = open_model(settings.model, device, settings.half)
    chosen = coco_data(settings.coco, meta, settings.data_dir, settings.img_dir) if settings.coco else \
        choose_data(settings, checkpoint)
    settings = resolve(settings, meta, checkpoint)
    full_size = FullSizePredictor.from_meta(predictor, meta, tile=settings.tile, overlap=settings.tile_overlap,
                                            tile_batch=settings.tile_batch, weighting=settings.tile_weighting,
                                            conf_thres=settings.conf_thres)
    dataset = make_dataset(chosen.pairs, **read_options(meta, settings), threads=max(2, settings.workers),
                           evaluation=True, mode=full_size.dataset_mode, scale=full_size.scale)
    say = print if process.is_main else lambda *args, **kwargs: None
    for line in label_warnings(class_pixel_counts(dataset), meta["classes"], settings.ignore_index,
                               meta["class_names"], split=chosen.split or "evaluation"):
        say(f"warning: {line}", file=sys.stderr, flush=True)
    how = f"whole images by sliding window of {meta['patch_size']}" if settings.tile else f"patch {meta['patch_size']}"
    how += f", batch {settings.batch_size}"
    say(f"evaluating {settings.model} on {chosen.description}: {len(dataset)} images, {how}, loss {settings.loss}"
        + (f", {process.world_size} processes" if process.distributed else ""), flush=True)
    weights = loss_weights(settings, checkpoint, meta["classes"])
    with StopRequest("stopping after this batch; no results are written") as stop:
        stats, per_image = score(full_size, dataset, meta, settings, weights, folder, stop, process)
    if distributed.any_process(stop.is_set(), device):
        print("stopped: no results written" + (f" (the masks so far are in {folder.created})" if folder.created
                                               else ""), flush=True)
        return {"metrics": None, "save_dir": None, "interrupted": True}
    class_names = meta["class_names"]
    metrics = stats.compute(chosen.prefix, class_names if meta["classes"] > 1 else None)
    matrix = stats.reduced()[0]
    rows = class_rows(matrix, class_names)
    if not process.is_main:
        return {"metrics": metrics, "save_dir": folder.path, "interrupted": False}
    write_outputs(folder, metrics, matrix, rows, per_image, chosen=chosen, meta=meta, settings=settings,
                  weights=weights)
    print("\n".join(class_table(rows, metrics, chosen.prefix, meta["classes"])))
    print(f"loss {metrics[f'{chosen.prefix}/loss']:.4f} over {len(dataset)} images ({chosen.description}); "
          f"results in {folder.path}: {RESULTS_FILE}, confusion_matrix.png, per_image.csv"
          + (", masks/" if settings.save_masks else ""), flush=True)
    return {"metrics": metrics, "save_dir": folder.path, "interrupted": False}


def score(full_size, dataset, meta, settings, weights, folder, stop, process=distributed.Process()):
    """The split through the model in order, counted by train.py's loop (segtoolkit.evaluation.scoring.accumulate):
    (ConfusionStats, PerImageScores); each mask written as its image is scored with --save-masks. Under torchrun
    each process scores its batches (batch_share); the stats are summed, the rows gathered by rank 0."""
    workers, classes = settings.workers, meta["classes"]
    mine = batch_share(len(dataset), settings.batch_size, process.rank, process.world_size)
    loader = DataLoader(Subset(dataset, mine), settings.batch_size, shuffle=False, num_workers=workers,
                        collate_fn=collate, worker_init_fn=ignore_sigint_in_worker if workers else None)
    criterion = make_loss(settings.loss, classes, weights)
    pairs = [dataset.pairs[i] for i in mine]
    per_image = PerImageScores(pairs, classes, meta["class_names"])
    masks = None
    if settings.save_masks:
        colours = tuple(output_colours(meta))
        # the names one process would give, decided once: a name taken twice gets _2 in the split's order
        names = distributed.broadcast_object(MaskWriter(folder, dataset.pairs, classes).plan() if process.is_main
                                             else None) if process.distributed else None
        masks = MaskWriter(folder, pairs, classes, colours, names=names and [names[i] for i in mine])

    def on_image(mask, matrix):
        per_image.add(matrix)
        if masks is not None:
            masks.add(mask)

    hint = "no results were written"
    bar = tqdm(total=len(loader), desc="val", unit="batch", dynamic_ncols=True, disable=not process.is_main)
    batches = until_stopped(guarded_batches(loader, "evaluation", lambda: hint, bar), stop)
    with worker_crash_as_error(lambda: hint):
        stats = accumulate(full_size, batches, ConfusionStats(classes, settings.ignore_index),
                           criterion=criterion, on_image=on_image)
    bar.close()
    if process.distributed:  # every image's row, in the split's order
        gathered = distributed.gather_objects((mine, per_image.rows))
        per_image.rows = [row for _, row in sorted((index, row) for indices, rows in gathered
                                                   for index, row in zip(indices, rows))]
    return stats, per_image


def batch_share(count, batch_size, rank, world_size):
    """The images of this process: those of every world_size-th batch of one process's batches, from `rank`."""
    return [index for index in range(count) if index // batch_size % world_size == rank]


def until_stopped(batches, stop):
    """The batches until Ctrl-C or SIGTERM: the current batch is finished, none started after it."""
    for batch in batches:
        if stop.is_set():
            return
        yield batch


def write_outputs(folder, metrics, matrix, rows, per_image, *, chosen, meta, settings, weights):
    """val_results.json, confusion_matrix.png and per_image.csv in the run folder."""
    results = {**metrics, "model": str(settings.model), "data": chosen.description, "split": chosen.split,
               "images": len(per_image.rows), "per_class": rows,
               "confusion_matrix": matrix.long().tolist(),  # rows: ground truth, columns: prediction
               "settings": {"patch_size": meta["patch_size"], "classes": meta["classes"],
                            "ignore_index": settings.ignore_index, "loss": settings.loss,
                            "class_weights": weights, "batch_size": settings.batch_size,
                            "conf_thres": settings.conf_thres}}
    write_text(folder.path / RESULTS_FILE, metrics_json(results) + "\n")
    title = f"{Path(settings.model).name} on {chosen.description}, {len(per_image.rows)} images"
    plot_confusion_matrix(matrix, meta["class_names"], folder.path / "confusion_matrix.png", title)
    per_image.write_csv(folder.path / "per_image.csv")


# ---------------------------------------------------------------- the command line


def parse_args(argv=None):
    return build_parser().parse_args(argv)


def build_parser():
    return settings_parser(ValSettings, __doc__)  # the flags are ValSettings' fields


def val_from_args(args):
    """evaluate() with the command line's settings; the exit code: 130 when stopped, else 0."""
    try:
        return EXIT_STOPPED if evaluate(settings_from(ValSettings, args))["interrupted"] else EXIT_OK
    finally:
        distributed.teardown()


def main(args):
    """val.py with parsed arguments; returns the exit code (an error is one line: segtoolkit.cli)."""
    return run_command(val_from_args, args)


if __name__ == "__main__":
    sys.exit(main(parse_args()))
