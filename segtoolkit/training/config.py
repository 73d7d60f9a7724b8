"""One training run's settings: built once from the command line, checked once, stored whole in every
checkpoint, and the only thing the trainer is built from.

A run is started in one of three ways, and the rules for each live here:
- new: the settings are the command line's;
- resume (`--load-model` an unfinished run's checkpoint.pth.tar): the stored settings and data files, with
  only the runtime flags (`RUNTIME_FIELDS`) taken from the command line; any other flag given that differs
  from the stored value is refused, since the run could not then continue as it was;
- fine-tune (`--load-model` a finished run, a best checkpoint or plain weights): a new run with the command
  line's settings, except that the model description (`MODEL_FIELDS`) defaults to the checkpoint's, and the
  data (`DATA_FIELDS`, as a whole) to its run's unless a data flag is given.

Usage:
    config = RunConfig.from_namespace(parse_args(argv))      # checked
    config = config.with_data_defaults()                     # a new run: absolute paths, split-file defaults
    config = config.resumed(RunConfig.from_dict(checkpoint["config"]), {"workers"}, path)   # a resume
"""

import dataclasses
import math
from dataclasses import dataclass, fields
from pathlib import Path

from segtoolkit.data.augment import DEFAULT_AUGMENTATION, PRESETS, load_augmentation
from segtoolkit.data.classes import parse_class_names, resolve_class_table
from segtoolkit.data.coco import coco_settings, coco_splits
from segtoolkit.cli import device_setting, flag_name, name_setting, project_setting, setting, verbose_setting
from segtoolkit.errors import UserError
from segtoolkit.training.losses import default_loss, parse_class_weights, parse_loss, stored_loss
from segtoolkit.data.cache import CACHE_MODES
from segtoolkit.data.imaging import (NORMALIZATIONS, check_bit_depth, check_patch_size, dataset_bit_depth,
                                     is_stretched, normalization_name)
from segtoolkit.models.checkpoints import load_checkpoint
from segtoolkit.models.factory import ARCHITECTURE_NAMES, architecture_class, check_encoder
from segtoolkit.outputs.files import check_save_dir
from segtoolkit.data.splits import pair_masks, read_split_file, search_files
from segtoolkit.inference.predictor import TorchPredictor, load_predictor
from segtoolkit.inference.tiling import check_tile_settings, tile_batch_setting, tile_overlap_setting, \
    tile_weighting_setting

# Defaults are relative to the working folder, never to where the toolkit is installed: run from the
# repository, a run without --data-dir trains on the bundled sample and its three split files beside data/
SAMPLE_DIR = Path("data") / "sample"
SPLIT_FILES = ("training_dataset.txt", "validation_dataset.txt", "test_dataset.txt")
RUNTIME_FIELDS = ("device", "workers", "pin_memory", "wandb_mode", "verbose", "load_model", "cache", "cache_dir",
                  "tile_batch")
MODEL_FIELDS = ("model", "encoder", "classes", "patch_size", "crop", "resize", "scale", "normalize")
RESIZE_MODES = ("letterbox", "stretch")  # how --resize fits a whole image into the patch (not with --crop)
SELECTIONS = ("best", "last")  # --select: which evaluation's weights are the run's result
DATA_FIELDS = ("data_dir", "img_dir", "mask_dir", "train_list", "val_list", "test_list", "search_files", "val_split",
               "test_split", "ignore_index", "mask_colors", "coco", "val_coco")
PATH_FIELDS = ("data_dir", "train_list", "val_list", "test_list", "load_model", "project", "mask_colors", "coco",
               "val_coco")
# what a configuration stored before a field existed meant, where that is not the field's default today
STORED_BEFORE = {"resize": "letterbox", "crops_per_image": 1, "use_amp": "off", "augment": "upright"}
AMP_MODES = ("auto", "on", "off")  # --use-amp; segtoolkit.training.precision.resolve_precision decides what auto is
AMP_DEFAULT = "auto"  # no quality lost over 3 seeds on three sets (docs/quality.md), 1.7x faster on BF16 CPUs


@dataclass(frozen=True)
class RunConfig:
    """Every setting of a run, and train.py's flags: each field is the flag --field-name (`--patch-size` is
    patch_size), its default and help written once, here (segtoolkit.cli.add_settings builds the parser)."""
    data_dir: str | None = setting(None, group="Data", help="dataset root holding the image and mask folders "
                                   "(default: data/sample in the current folder, the bundled sample)")
    img_dir: str = setting("imgs", group="Data", help="image folder name under --data-dir")
    mask_dir: str = setting("masks", group="Data", help="mask folder name under --data-dir (same file stems)")
    train_list: str | None = setting(None, group="Data", help="training split file (default: training_dataset.txt: "
                                     "the one beside data/ for the bundled sample, else the one inside --data-dir)")
    val_list: str | None = setting(None, group="Data", help="validation split file (default: validation_dataset.txt, "
                                   "found like --train-list's)")
    test_list: str | None = setting(None, group="Data", help="test split file (default: test_dataset.txt, found like "
                                    "--train-list's; without one there is no test evaluation)")
    search_files: bool = setting(False, group="Data", help="ignore the split files: pair imgs/ and masks/ by stem and "
                                 "split them randomly")
    coco: str | None = setting(  # segtoolkit.data.coco
        None, group="Data", metavar="FILE.json",
        help="train on a COCO JSON export (CVAT, Label Studio, Roboflow, labelme): its images (found beside it, or in "
             "--data-dir) and its polygons and RLE rasterised once into the cache; classes in the order of its "
             "categories, background 0 (a category named background, or id 0, is background); overlaps: the "
             "smaller annotation wins; iscrowd regions are ignored (--ignore-index 255). Split by --val-split and "
             "--test-split, or --val-coco")
    val_coco: str | None = setting(None, group="Data", metavar="FILE.json", help="with --coco, a second COCO file as "
                                   "the validation split (same categories)")
    val_split: float = setting(0.2, group="Data", help="validation fraction with --search-files or --coco")
    test_split: float = setting(0.0, group="Data", help="test fraction with --search-files or --coco")
    patch_size: int = setting(256, group="Data", help="square training size, a multiple of 32; images are resized "
                              "into it (see --resize; with --crop: the size of the crops, and of the tiles of "
                              "evaluation and detection)")
    # None: stretch, or letterbox with --crop (from_namespace decides; a stored configuration holds which)
    resize: str | None = setting(
        None, group="Data", choices=RESIZE_MODES,
        help="how a whole image fits the patch: stretch (default) resizes it to patch x patch ignoring the aspect "
             "ratio, no padding: every pixel row and column of the patch is image, which scored best on the "
             "street-scene benchmark (README); letterbox scales its longest side to the patch and pads (padding "
             "never counts), keeping shapes undistorted, for data whose aspect ratios vary a lot and where shape "
             "matters. Stored in the checkpoint: detect.py, val.py and export.py follow it. Not with --crop")
    crop: bool = setting(False, group="Data", help="train on random patch-size crops at the images' own resolution "
                         "(times --scale) instead of letterboxing whole images; validation, test and detection then "
                         "segment whole images by sliding window, at full resolution")
    # None: auto (train.py resolves it from the images' area before the run starts)
    crops_per_image: int | None = setting(
        None, group="Data", metavar="N", help="with --crop, random crops of every training image an epoch (default: "
        "as many as an average image's area holds, at least 1: a 512x512 image at patch 256 gives 4)")
    scale: float = setting(1.0, group="Data", help="with --crop, shrink images by this factor first (e.g. 0.5 for "
                           "very large images)")
    bit_depth: str | int = setting(
        "auto", group="Data", metavar="{auto,8,10,12,14,16}",
        help="how 16-bit images are scaled to 8 bits, the same for every image: auto (default) takes the smallest of "
             "10, 12, 14 and 16 bits holding the largest value in the training split's 16-bit images; or give the "
             "camera's depth. Stored in the checkpoint: detect.py, val.py and export.py read images with it (8-bit "
             "files are read as they are)")
    cache: str = setting("ram", group="Data", choices=CACHE_MODES,
                         help="where decoded images live: ram (fastest), disk (uint8 files in --cache-dir, read "
                              "memory-mapped: data larger than memory), none (decoded again at every read)")
    cache_dir: str | None = setting(None, group="Data", help="folder of --cache disk (default: .segtoolkit-cache "
                                    "inside --data-dir)")
    classes: int = setting(1, group="Data", help="1: binary masks (0/1 or 0/255); N>=2: masks hold class indices "
                           "0..N-1")
    ignore_index: int | None = setting(None, group="Data", help="multi-class mask value left out of loss and "
                                       "metrics (e.g. 255)")
    mask_colors: str | None = setting(  # segtoolkit.data.classes
        None, group="Data", metavar="FILE",
        help="colour masks: a CSV (name,R,G,B per class, background first; a line named ignore for pixels left "
             "out) or JSON ({\"name\": [R, G, B], ...}) file; it sets --classes and the class names (palette PNG "
             "masks need none: their indices are read)")
    class_names: str | None = setting(
        None, group="Data", metavar="NAMES",
        help="class names, background first: background,cell,nucleus (one class: background,object); they name "
             "results.csv columns, wandb keys, the preview and detect.py's outputs")
    normalize: str = setting(
        "imagenet", group="Data", choices=tuple(NORMALIZATIONS),
        help="how pixels are scaled for the model: imagenet (default) standardizes pixels / 255 with ImageNet's "
             "mean and std, what pretrained encoders expect; unit feeds pixels / 255 in [0, 1] as they are. Stored "
             "in the checkpoint (its mean and std): detect.py, val.py and export.py follow it")
    model: str = setting("Unet", group="Model", help=f"smp architecture: {', '.join(ARCHITECTURE_NAMES)}")
    encoder: str = setting("resnet34", group="Model", help="any smp encoder (resnet18, mobilenet_v2, tu-...)")
    encoder_weights: str = setting("imagenet", group="Model", help="'imagenet' (downloaded; random init with a "
                                   "warning when offline), 'none', or a file")
    load_model: str | None = setting(None, group="Model", help="an unfinished run's checkpoint.pth.tar resumes it; "
                                     "a finished run's, a best-checkpoint.pth.tar or plain weights start a new run "
                                     "from those weights")
    epochs: int = setting(50, group="Optimization", help="passes over the training split")
    batch_size: int = setting(8, group="Optimization", help="images per step per process (torchrun: per GPU)")
    lr: float = setting(1e-3, group="Optimization", help="peak learning rate reached by OneCycleLR")
    adam_eps: float = setting(1e-8, group="Optimization", help="AdamW epsilon")
    weight_decay: float = setting(1e-2, group="Optimization", help="AdamW weight decay")
    clip_grad: float = setting(255.0, group="Optimization", help="gradient norm clipping threshold (0: no "
                               "clipping)")
    use_amp: str = setting(AMP_DEFAULT, group="Optimization", choices=AMP_MODES, nargs="?", const="on",
                           help="mixed precision: on is float16 + gradient scaler on CUDA, bfloat16 autocast on the "
                           "CPU; auto is on for CUDA and for CPUs with native bfloat16 (AVX-512 BF16, AMX), off "
                           f"elsewhere; --use-amp alone is on (default: {AMP_DEFAULT})")
    eval_step: int | None = setting(None, group="Optimization", help="evaluate every N optimizer steps (default: "
                                    "once per epoch; the run's last step is always evaluated)")
    patience: int = setting(10, group="Optimization", help="stop when val Dice has not improved for this many "
                            "evaluations (0: never)")
    check_best_cooldown: int = setting(0, group="Optimization", help="evaluations within the first N epochs never "
                                       "write best-checkpoint.pth.tar")
    select: str = setting(
        "best", group="Optimization", choices=SELECTIONS,
        help="the run's result, written to best-checkpoint.pth.tar and scored on the test split: best (default) the "
             "weights of the evaluation with the highest val Dice; last those of the last evaluation (the end of "
             "training, or of an early stop), chosen without looking at the validation scores, as a plain "
             "training loop's")
    seed: int = setting(0, group="Optimization", help="seed for weights, shuffling, splits and augmentation: the same "
                        "seed and data give the same run")
    augment: str = setting(
        DEFAULT_AUGMENTATION, group="Optimization",
        help=f"augmentation: a preset ({', '.join(PRESETS)}) or an albumentations pipeline file (A.save, "
             f".yaml/.json). {DEFAULT_AUGMENTATION} (default: it matched or beat a plain loop at 6 and 30 epochs on "
             f"every set measured); upright: natural images with a top and a bottom (streets, people, products); "
             f"topdown: microscopy, aerial, documents (flips and 90 degree turns), worth trying on long runs")
    loss: str | None = setting(
        None, group="Optimization",
        help="bce (default, one class), ce (default, several), dice, jaccard, focal, lovasz, tversky:ALPHA,BETA "
             "(weights of false positives and false negatives, e.g. tversky:0.3,0.7 to miss less; 0.5,0.5 is dice), "
             "or a sum such as ce+dice or bce+dice; padding and --ignore-index never count")
    class_weights: str | None = setting(
        None, group="Optimization", help="per-class loss weights: 'auto' (median-frequency balancing over the "
        "training masks, printed at the start) or one number per class, e.g. 0.5,2 (default: none)")
    tile_overlap: float = tile_overlap_setting(0.25, "Optimization")
    tile_weighting: str = tile_weighting_setting("gaussian", "Optimization")
    tile_batch: int = tile_batch_setting(4, "Optimization")
    freeze_bn: bool = setting(False, group="Optimization", help="keep BatchNorm layers in eval mode (running "
                              "statistics), e.g. for tiny batches")
    device: str = device_setting()
    workers: int = setting(2, group="Runtime", help="DataLoader worker processes")
    pin_memory: bool = setting(True, group="Runtime", help="pin host memory for faster CUDA copies (ignored on the "
                               "CPU)")
    sync_bn: bool = setting(False, group="Runtime", help="torchrun: convert BatchNorm to SyncBatchNorm")
    verbose: bool = verbose_setting()
    project: str = project_setting("checkpoints", "Logging")
    name: str = name_setting("Logging")
    save_checkpoints: bool = setting(False, group="Logging", help="also write checkpoint.pth.tar after every "
                                     "evaluation (it is always written at the end of every epoch)")
    wandb_mode: str = setting("auto", group="Logging", choices=("auto", "online", "offline", "disabled"),
                              help="auto: online with wandb credentials, otherwise offline (sync later with "
                                   "`wandb sync`)")
    wandb_project: str = setting("unet-segmentation", group="Logging", help="wandb project name")

    # ------------------------------------------------------------ building

    @classmethod
    def from_namespace(cls, args):
        """The configuration of an argparse namespace, checked (paths as given: see with_data_defaults)."""
        values = {field.name: getattr(args, field.name) for field in fields(cls) if hasattr(args, field.name)}
        values = {key: str(value) if isinstance(value, Path) else value for key, value in values.items()}
        if getattr(args, "no_augment", False):  # --no-augment is --augment none
            if "augment" in getattr(args, "given", ()) and values.get("augment") != "none":
                raise UserError(f"--no-augment and --augment {values['augment']} contradict each other; keep one")
            values["augment"] = "none"
        values.update(class_table(values, getattr(args, "given", ())))
        values.update(coco_table(values, getattr(args, "given", ())))
        if "bit_depth" in values:
            values["bit_depth"] = check_bit_depth(values["bit_depth"])
        if values.get("resize", "") is None:  # --resize not given: stretch, unless --crop (no whole images)
            values["resize"] = "letterbox" if values.get("crop") else "stretch"
        config = cls(**values)
        config.check()
        return config

    @classmethod
    def from_dict(cls, stored):
        """A stored configuration (a checkpoint's); keys this version does not know are ignored."""
        known = {field.name for field in fields(cls)}
        if stored.get("no_augment") and "augment" not in stored:  # written before --augment existed
            stored = {**stored, "augment": "none"}
        stored = {**STORED_BEFORE, **stored}
        if isinstance(stored["use_amp"], bool):  # a switch until December 2026
            stored["use_amp"] = "on" if stored["use_amp"] else "off"
        stored["loss"] = stored_loss(stored.get("loss"))  # a bare tversky: written before it took its weights
        return cls(**{key: value for key, value in stored.items() if key in known})

    def to_dict(self):
        return dataclasses.asdict(self)

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)

    @property
    def input_mode(self):
        """How the model sees its images, as its meta stores it: 'tile' (--crop), 'letterbox' or 'stretch'."""
        return "tile" if self.crop else self.resize or "stretch"

    @property
    def uses_sample(self):
        return Path(self.data_dir).resolve() == SAMPLE_DIR.resolve()

    def with_data_defaults(self):
        """Absolute paths, and the split files: the bundled sample's three files go with the bundled sample
        only; another --data-dir uses its own training_dataset.txt etc. when it has them, else --train-list
        and --val-list (or --search-files) must be given, and there is no test split without --test-list."""
        if self.coco:  # the images a COCO file names are found beside it, or in --data-dir
            return self.replace(data_dir=str(Path(self.data_dir or Path(self.coco).parent).resolve()),
                                project=str(Path(self.project).resolve()),
                                load_model=str(Path(self.load_model).resolve()) if self.load_model else None)
        data_dir = Path(self.data_dir).resolve() if self.data_dir else sample_dir()
        lists = {}
        for key, default in zip(("train_list", "val_list", "test_list"), SPLIT_FILES):
            given = getattr(self, key)
            if given is not None:
                lists[key] = str(locate(given, data_dir))
            elif data_dir == SAMPLE_DIR.resolve():
                lists[key] = str(sample_split_file(default))
            else:
                lists[key] = str(data_dir / default) if (data_dir / default).is_file() else None
        config = self.replace(data_dir=str(data_dir), project=str(Path(self.project).resolve()), **lists)
        if config.load_model:
            config = config.replace(load_model=str(Path(config.load_model).resolve()))
        if not config.search_files:
            for key, flag in (("train_list", "--train-list"), ("val_list", "--val-list")):
                if getattr(config, key) is None:
                    missing = SPLIT_FILES[0 if key == 'train_list' else 1]
                    raise UserError(f"--data-dir {self.data_dir} has no {missing}; "
                                    f"give {flag} (a file listing one image per line), or --search-files to "
                                    f"split imgs/ and masks/ at random")
        return config

    def tile_settings(self, overlap=None, batch=None, weighting=None):
        """(overlap, batch, weighting) of sliding-window tiles: those given (detect.py's and val.py's flags), else
        this run's."""
        return (self.tile_overlap if overlap is None else overlap, self.tile_batch if batch is None else batch,
                self.tile_weighting if weighting is None else weighting)

    # ------------------------------------------------------------ checking

    def check(self):
        """Refuse impossible settings before anything is read, built or created."""
        architecture_class(self.model)
        check_encoder(self.encoder)
        check_patch_size(self.patch_size)
        for flag, value, low in (("--epochs", self.epochs, 1), ("--batch-size", self.batch_size, 1),
                                 ("--classes", self.classes, 1), ("--workers", self.workers, 0),
                                 ("--patience", self.patience, 0),
                                 ("--check-best-cooldown", self.check_best_cooldown, 0)):
            if value < low:
                raise UserError(f"{flag} {value} must be at least {low}")
        if self.eval_step is not None and self.eval_step < 1:
            raise UserError(f"--eval-step {self.eval_step} must be at least 1")
        if not (math.isfinite(self.clip_grad) and self.clip_grad >= 0):
            raise UserError(f"--clip-grad {self.clip_grad:g} must be 0 (no clipping) or a positive number")
        for flag, value in (("--lr", self.lr), ("--adam-eps", self.adam_eps)):
            if not (math.isfinite(value) and value > 0):
                why = " (0 would train without changing any weight)" if flag == "--lr" and value == 0 else ""
                raise UserError(f"{flag} {value:g} must be a positive number{why}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise UserError(f"--weight-decay {self.weight_decay:g} must be 0 or more")
        if self.ignore_index is not None and 0 <= self.ignore_index < self.classes:
            raise UserError(f"--ignore-index {self.ignore_index} is one of the classes 0..{self.classes - 1}; "
                            f"use a value outside them, e.g. 255")
        for flag, value in (("--val-split", self.val_split), ("--test-split", self.test_split)):
            if not 0 <= value < 1:
                raise UserError(f"{flag} {value} must be a fraction in [0, 1)")
        if self.search_files and self.val_split == 0:
            raise UserError("--search-files --val-split 0 leaves no validation images, which early stopping and "
                            "the best checkpoint need; give --val-split 0.1 or more (or split files)")
        check_run_name(self.name)
        check_save_dir(self.project, "--project")
        self.check_full_resolution()
        parse_loss(self.loss or default_loss(self.classes), self.classes)
        if self.class_names is not None and self.mask_colors is None:  # a colours file names the classes itself
            # with --load-model the classes may come from the checkpoint: the count is checked with them
            parse_class_names(self.class_names, self.classes, count=self.load_model is None)
        parse_class_weights(self.class_weights, self.classes)
        check_bit_depth(self.bit_depth)
        if self.augment not in PRESETS:
            load_augmentation(self.augment)  # the file exists and albumentations reads it

    def check_full_resolution(self):
        if self.resize not in RESIZE_MODES:
            raise UserError(f"--resize {self.resize}: choose one of {', '.join(RESIZE_MODES)}")
        if self.crop and self.resize != "letterbox":
            raise UserError(f"--crop and --resize {self.resize} contradict each other: --crop trains on crops at "
                            f"the images' own resolution, --resize says how whole images fit the patch; keep one")
        if not (0 < self.scale <= 1):
            raise UserError(f"--scale {self.scale} must be in (0, 1]: the factor images are shrunk by before --crop")
        if self.scale != 1 and not self.crop:
            raise UserError(f"--scale {self.scale} goes with --crop (letterboxing already fits images to the patch)")
        if self.crops_per_image is not None:
            if self.crops_per_image < 1:
                raise UserError(f"--crops-per-image {self.crops_per_image} must be at least 1")
            if self.crops_per_image != 1 and not self.crop:
                raise UserError(f"--crops-per-image {self.crops_per_image} goes with --crop (without it every "
                                f"sample is a whole image)")
        if self.cache not in CACHE_MODES:
            raise UserError(f"--cache {self.cache}: choose one of {', '.join(CACHE_MODES)}")
        check_tile_settings(self.tile_overlap, self.tile_batch, self.tile_weighting)

    # ------------------------------------------------------------ resume and fine-tune

    def resumed(self, stored, given, checkpoint_path):
        """The stored configuration, with this command line's runtime flags. A flag given that would change
        the run is refused: a resume continues the run exactly as it was."""
        typed = {"augment" if key == "no_augment" else key for key in given} & {field.name for field in fields(self)}
        changed = [key for key in sorted(typed) if key not in RUNTIME_FIELDS
                   and comparable(key, getattr(self, key)) != comparable(key, getattr(stored, key))]
        if changed:
            key = changed[0]
            raise UserError(f"{flag_name(key)} {show(getattr(self, key))} differs from the run being resumed "
                            f"({show(getattr(stored, key))}): a resume continues {checkpoint_path} as it was; "
                            f"drop {flag_name(key)}, or start a new run (fine-tune from its weights with "
                            f"--load-model {Path(checkpoint_path).with_name('best-checkpoint.pth.tar')})")
        return stored.replace(**{key: getattr(self, key) for key in RUNTIME_FIELDS})

    def fine_tuned(self, meta, stored, given):
        """A new run from a checkpoint's weights (`meta` its description, `stored` its run's configuration or
        None). Model, encoder, classes, patch size, input mode and normalization default to the checkpoint's,
        since its weights are meant for them. The data is the command line's when it gives any data flag, else
        that of the checkpoint's run: a fine-tune must not quietly train on the bundled sample. Everything else
        is the command line's."""
        taken = {"model": meta["architecture"], "encoder": meta["encoder"], "classes": meta["classes"],
                 "patch_size": meta["patch_size"], "crop": meta.get("input_mode") == "tile",
                 "resize": "stretch" if is_stretched(meta) else "letterbox",
                 "scale": meta.get("scale", 1.0), "normalize": normalization_name(meta)}
        if taken["normalize"] is None:  # a mean and std no --normalize gives: the command line's
            del taken["normalize"]
        if self.mask_colors is not None:  # the colours file given set the classes (from_namespace)
            del taken["classes"]
        if {"crop", "resize"} & set(given):  # one input mode: --crop or --resize given replaces the checkpoint's
            del taken["crop"], taken["resize"]
        if stored is not None and not set(DATA_FIELDS) & set(given):
            taken.update({key: getattr(stored, key) for key in DATA_FIELDS})
        if "classes" in taken and "classes" not in given and not taken.get("mask_colors", self.mask_colors):
            taken["class_names"] = ",".join(meta["class_names"])  # the checkpoint's classes keep their names
        return self.replace(**{key: value for key, value in taken.items() if key not in given})


# ---------------------------------------------------------------- how a run starts: new, resume, fine-tune


def class_table(values, given):
    """{classes, ignore_index, mask_colors} of a new run's settings: --mask-colors (found as given, or inside
    --data-dir, and stored absolute) sets the classes and the ignore index (segtoolkit.data.classes)."""
    if values.get("mask_colors") is None:
        return {}
    data_dir = Path(values["data_dir"]).resolve() if values.get("data_dir") else sample_dir()
    path = str(locate(values["mask_colors"], data_dir))
    classes, ignore_index = resolve_class_table(
        classes=values.get("classes", 1), class_names=values.get("class_names"),
        ignore_index=values.get("ignore_index"), mask_colors=path, given=given)
    return {"classes": classes, "ignore_index": ignore_index, "mask_colors": path}


def coco_table(values, given):
    """{coco, val_coco, classes, class_names, ignore_index} of a run on COCO files (stored absolute): the
    file's categories set the classes (segtoolkit.data.coco). Not with split files, --search-files or colours."""
    if values.get("coco") is None:
        if values.get("val_coco") is not None:
            raise UserError(f"--val-coco {values['val_coco']} goes with --coco TRAIN.json; give both")
        return {}
    for flag in ("train_list", "val_list", "test_list", "search_files", "mask_colors"):
        if values.get(flag):
            raise UserError(f"--coco {values['coco']} gives the images and masks; drop {flag_name(flag)}")
    paths = {key: str(Path(values[key]).resolve()) if values.get(key) else None for key in ("coco", "val_coco")}
    return {**paths, **coco_settings(paths["coco"], paths["val_coco"], values.get("classes", 1),
                                     values.get("class_names"), values.get("ignore_index"), given)}


def plan_run(config, given, checkpoint, world_size):
    """(configuration, mode, data) of a run: `mode` is 'new', 'resume' or 'fine-tune' (see the module's
    docstring), `data` the {'train', 'val', 'test'} lists of [image, mask] paths it trains on."""
    mode = start_mode(checkpoint, config.load_model)
    if mode == "resume":
        config, data = resumed_config(config, given, checkpoint, world_size)
        return config, mode, data
    if mode == "fine-tune" and "meta" in checkpoint:
        config = config.fine_tuned(checkpoint["meta"], stored_config(checkpoint), given)
    config = config.with_data_defaults()
    return config, mode, load_splits(config)


def load_splits(config):
    """(train, val, test) lists of (image, mask) pairs from the split files or --search-files."""
    if config.coco:
        train, val, test = coco_splits(config.coco, config.val_coco, parse_class_names(config.class_names,
                                       config.classes), data_dir=config.data_dir, img_dir=config.img_dir,
                                       cache_dir=config.cache_dir or Path(config.data_dir) / ".segtoolkit-cache",
                                       val_split=config.val_split, test_split=config.test_split, seed=config.seed)
    elif config.search_files:
        train, val, test = search_files(config.data_dir, config.img_dir, config.mask_dir, config.val_split,
                                        config.test_split, config.seed)
    else:
        mask_dir = Path(config.data_dir) / config.mask_dir
        train, val, test = (pair_masks(read_split_file(path, config.data_dir, config.img_dir), mask_dir)
                            if path else [] for path in (config.train_list, config.val_list, config.test_list))
    for name, pairs in (("training", train), ("validation", val)):
        if not pairs:
            raise UserError(f"the {name} split is empty; list images in it, or use --search-files with a "
                            f"larger split")
    return {"train": [list(map(str, pair)) for pair in train], "val": [list(map(str, pair)) for pair in val],
            "test": [list(map(str, pair)) for pair in test]}


def start_mode(checkpoint, path):
    """'new' without a checkpoint; 'resume' for an unfinished run's last state; otherwise 'fine-tune': a
    finished run, a best checkpoint or plain weights start a new run, so no finished run is ever rewritten."""
    if checkpoint is None:
        return "new"
    if "optimizer" not in checkpoint:
        return "fine-tune"
    kind = checkpoint.get("kind") or ("best" if Path(path).name.startswith("best") else "last")
    finished = checkpoint.get("finished", checkpoint["epoch"] >= checkpoint["epochs"])
    return "resume" if kind == "last" and not finished else "fine-tune"


def fine_tune_reason(checkpoint, path):
    if checkpoint.get("kind") == "best" or ("epoch" in checkpoint and Path(path).name.startswith("best")):
        return (f"a best checkpoint, epoch {checkpoint['epoch']} of {checkpoint['epochs']}; its run resumes from "
                f"{Path(path).with_name('checkpoint.pth.tar')}")
    if "optimizer" not in checkpoint:
        return "weights only"
    return f"a finished run, {checkpoint['epoch']} of {checkpoint['epochs']} epochs"


def resumed_config(config, given, checkpoint, world_size):
    """The configuration and data a resume continues with; refuses what would not continue the same run."""
    path = config.load_model
    config = config.resumed(stored_config(checkpoint), given, path)
    trained_by = checkpoint.get("world_size", 1)
    if trained_by != world_size:
        raise UserError(f"--load-model {path} was trained by {trained_by} process(es) and this run has "
                        f"{world_size}: its learning-rate schedule and epoch position count steps of "
                        f"{trained_by} process(es); resume it with {resume_command(path, trained_by)}, or "
                        f"fine-tune from its weights in a new run")
    data = checkpoint.get("data") or load_splits(config.with_data_defaults())  # older checkpoints: no file list
    gone = [image_or_mask for pairs in data.values() for pair in pairs for image_or_mask in pair
            if not Path(image_or_mask).is_file()]
    if gone:
        raise UserError(f"--load-model {path}: {len(gone)} of the files it was trained on are gone (first: "
                        f"{gone[0]}); put them back where they were to resume, or fine-tune from its weights "
                        f"in a new run")
    return config, data


def stored_config(checkpoint):
    """The RunConfig a checkpoint was trained with (older checkpoints call it 'args'), or None."""
    stored = checkpoint.get("config") or checkpoint.get("args")
    return RunConfig.from_dict(stored) if stored else None


def open_model(model, device, half=False):
    """(meta, predictor, checkpoint dict or None): the one place detect.py and val.py open a model file. Whether
    it is a train.py checkpoint is load_predictor's own decision (a TorchPredictor), so any other format it reads
    (ONNX, OpenVINO .xml) is an exported model here, with no stored run. half: as detect.py --half."""
    meta, predictor = load_predictor(model, device, half)
    # loaded a second time for the run's data and settings: load_predictor keeps only the model
    checkpoint = load_checkpoint(model, "--model") if isinstance(predictor, TorchPredictor) else None
    return meta, predictor, checkpoint


def run_config(checkpoint):
    """The RunConfig a model was trained with: its checkpoint's, or train.py's defaults for a model that stores
    none (an export, plain weights)."""
    return (stored_config(checkpoint) if checkpoint else None) or RunConfig()


def resolve_bit_depth(config, mode, checkpoint, data):
    """The bit depth the run reads 16-bit images with (segtoolkit.data.imaging), stored in its meta: a resume's
    is its checkpoint's (None for one trained before it was stored: each image by its own); otherwise
    --bit-depth, where auto is the training split's (None when it holds no 16-bit image)."""
    if mode == "resume":
        return checkpoint["meta"].get("bit_depth")
    if config.bit_depth != "auto":
        return int(config.bit_depth)
    return dataset_bit_depth(image for image, _ in data["train"])


def describe_data(config):
    if config.coco:
        return f"{config.coco}" + (f" (validation: {config.val_coco})" if config.val_coco else "")
    if config.search_files:
        return f"{config.data_dir} (--search-files)"
    return f"{config.data_dir} ({Path(config.train_list).name}, {Path(config.val_list).name})"


def resume_command(checkpoint_path, world_size):
    launcher = "python train.py" if world_size == 1 else f"torchrun --nproc_per_node={world_size} train.py"
    return f"{launcher} --load-model {checkpoint_path}"


def sample_dir():
    """The bundled sample, data/sample in the working folder (a run without --data-dir trains on it)."""
    if not SAMPLE_DIR.is_dir():
        raise UserError(f"no --data-dir given, and the bundled sample ({SAMPLE_DIR}) is not in {Path.cwd()}: give "
                        f"--data-dir DIR (a folder holding imgs/ and masks/), or run from the repository's folder")
    return SAMPLE_DIR.resolve()


def sample_split_file(name):
    """One of the bundled sample's split files (SPLIT_FILES), beside its data/ folder."""
    return SAMPLE_DIR.resolve().parents[1] / name


def locate(path, data_dir):
    """A split file as given (relative to the working folder), or inside --data-dir when only it has one."""
    path = Path(path)
    if not path.is_absolute() and not path.exists() and (data_dir / path).exists():
        path = data_dir / path
    return path.resolve()


def check_run_name(name):
    """--name is one folder inside the run root: never a path that leads elsewhere."""
    if not name or name in (".", "..") or any(char in name for char in "/\\\0") or name != name.strip():
        raise UserError(f"--name {name!r}: a run name is one folder name (no '/', '\\', '..', or surrounding "
                        f"spaces); give for example --name {safe_run_name(name)}")


def safe_run_name(name):
    cleaned = "-".join(part for part in name.replace("\\", "/").split("/") if part.strip() not in ("", ".", ".."))
    return cleaned.strip().replace("\0", "") or "exp"


def comparable(key, value):
    if key in PATH_FIELDS and value is not None:
        return str(Path(value).resolve())
    return value


def show(value):
    return "not set" if value is None else str(value)
