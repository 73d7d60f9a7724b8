"""A model's logits at each image's own size, and the one rule from logits to a mask: what detect.py writes,
what val.py and train.py's validation and test count, and what the quality benchmark scores.

How a model sees an image, as its checkpoint's meta says:
- whole-image models (train.py --resize stretch, the default, or letterbox): the image is fitted into the
  patch (imaging.preprocess_image); the patch's logits, the letterbox padding cut away first, are upsampled
  bilinearly to the image's size (`restore`);
- crop-trained models (meta input_mode 'tile', or --tile): the image, shrunk by the model's --scale, by
  sliding window (segtoolkit.inference.tiling); those logits upsampled bilinearly to the image's size.
Then `to_labels`, the one rule: one class, foreground where the sigmoid is above conf_thres (0.5 by
default); several classes, the argmax, and only with a conf_thres given, pixels whose top probability is
below it become class 0. A mask resized after thresholding (nearest) would put class edges elsewhere than
the metrics count them; here there is one order: upsample, then decide.

The upsampling runs in bands of rows (`upsample_rows`: bilinear with half-pixel centres, as
torch.nn.functional.interpolate with align_corners=False and OpenCV), so memory holds one band of full-size
logits, never the whole image's; each output pixel is the same arithmetic whatever the bands, so every
caller gets the same mask to the bit.

Usage:
    full = FullSizePredictor.from_meta(predictor, meta)          # tile=..., conf_thres=... as the flags say
    mask = full.mask(rgb)                                        # uint8 HxW at the image's size
    logits = full.logits(rgb)                                    # float32 CxHxW at the image's size
    for start, stop, logits in full.blocks(rgb): ...             # CxRxW: rows start:stop of the image
    first, second = full.blocks_of_each([rgb, other])            # forward passes shared; read them in order
    inputs = full.inputs(rgb)                                    # what the model is fed: the patch, or tiles
    dataset = make_dataset(..., evaluation=True, mode=full.dataset_mode)   # images stored as they are fitted
    mask, probabilities = collect(restore(patch_logits, box), (height, width), probabilities=True)
"""

import math

import numpy as np
import torch

from segtoolkit.errors import UserError
from segtoolkit.data.imaging import IMAGENET_MEAN, IMAGENET_STD, is_stretched, preprocess_image, scaled
from segtoolkit.inference.probabilities import STORED_DTYPE, logits_to_probabilities
from segtoolkit.inference.tiling import Tiler

BAND_ELEMENTS = 1 << 22  # float32 logits per band of upsampled rows (16 MiB): memory is bounded by it
CONF_THRES_HELP = ("one class: probability above which a pixel is foreground (default 0.5); several classes: the "
                   "argmax by default, and when given, pixels whose top probability is below it become class 0")


def check_conf_thres(conf_thres):
    if conf_thres is not None and not 0 <= conf_thres <= 1:
        raise UserError(f"--conf-thres {conf_thres} must be a probability in [0, 1]")


def to_labels(logits, conf_thres=None):
    """The class of each pixel: logits ... x C x H x W (classes on the third axis from the end) -> int64
    ... x H x W. One class: 1 where sigmoid(logit) > conf_thres (0.5 when None), decided on the logit (above
    log(p / (1 - p)), 0 for 0.5) so that no rounding of the sigmoid moves a pixel. Several: the argmax; with
    a conf_thres, pixels whose top softmax probability is below it become class 0 (background)."""
    logits = logits.detach()
    if logits.shape[-3] == 1:
        p = 0.5 if conf_thres is None else conf_thres
        threshold = -math.inf if p <= 0 else math.inf if p >= 1 else math.log(p / (1 - p))
        return (logits[..., 0, :, :] > threshold).long()
    labels = logits.max(-3).indices  # the first largest, as argmax, which is 10x slower across a leading axis
    if conf_thres is not None:
        labels[torch.softmax(logits.float(), -3).amax(-3) < conf_thres] = 0
    return labels


def mask_dtype(classes):
    """uint8 for up to 256 classes (and one), else uint16: what masks are stored as."""
    return np.uint8 if classes <= 256 else np.uint16


# ---------------------------------------------------------------- bilinear, band by band


def source_rows(source, target, device):
    """Bilinear sampling of `target` rows from `source` ones, half-pixel centres (align_corners=False): for
    each, (the source row at or above it, the one below, the weight of the first, of the second)."""
    # in float32, as torch computes it, so that the two agree to the rounding of the values
    scale = torch.tensor(source / target, dtype=torch.float32)
    position = ((torch.arange(target, dtype=torch.float32) + 0.5) * scale - 0.5).clamp_min(0)
    above = position.floor().long().clamp_max(source - 1)
    below = (above + 1).clamp_max(source - 1)
    weight = torch.where(below > above, position - above, 0.0)
    return above.to(device), below.to(device), (1 - weight)[:, None].to(device), weight[:, None].to(device)


def widen(block, width):
    """C x R x w logits -> C x R x `width`, bilinearly along the rows only (the height is kept, so each row is
    resized on its own, whatever the rows around it)."""
    if block.shape[2] == width:
        return block
    return torch.nn.functional.interpolate(block[None], size=(block.shape[1], width), mode="bilinear",
                                           align_corners=False)[0]


def upsample_rows(blocks, source_size, size):
    """Blocks (start, stop, C x rows x source width) that cover a logit map of `source_size` (height, width)
    from top to bottom -> the same blocks at `size`, bilinearly: each output row is made as soon as the two
    source rows it reads have come (from them, then widened), and only the source rows still to be read are
    kept. Equal sizes pass unchanged."""
    source_height, (height, width) = source_size[0], size  # the source width is each block's own
    if source_height == height:
        for start, stop, block in blocks:
            yield start, stop, widen(block, width)
        return
    rows, kept, first, done = None, None, 0, 0  # kept: the source rows from `first` on
    for _start, stop, block in blocks:
        rows = rows or source_rows(source_height, height, block.device)
        kept = block if kept is None else torch.cat([kept, block], 1)
        ready = int(torch.searchsorted(rows[1], stop))  # output rows whose source row below has come
        if ready > done:
            above, below = rows[0][done:ready] - first, rows[1][done:ready] - first
            tall = kept.index_select(1, above) * rows[2][done:ready] + kept.index_select(1, below) * rows[3][done:ready]
            yield done, ready, widen(tall, width)
            done = ready
        if done < height:
            keep_from = int(rows[0][done])
            kept, first = kept[:, keep_from - first:], keep_from


def restore(logits, box):
    """The blocks of a fitted patch's logits (C x P x P) at its image's size: the letterbox padding cut away
    (a stretched patch has none), then upsampled bilinearly, in bands of at most about BAND_ELEMENTS."""
    cut = logits[:, :box.scaled_height, :box.scaled_width]
    channels, rows = cut.shape[0], cut.shape[1]
    step = max(1, BAND_ELEMENTS * rows // max(1, channels * box.width * box.height))  # source rows per band
    parts = ((start, min(start + step, rows), cut[:, start:start + step]) for start in range(0, rows, step))
    return upsample_rows(parts, (rows, box.scaled_width), (box.height, box.width))


def collect(blocks, size, conf_thres=None, probabilities=False, seen=None):
    """(mask, probabilities) of an image from its full-size blocks: the uint8 (uint16 past 256 classes) HxW
    mask of `to_labels`, and with `probabilities` the float16 HxWxC sigmoid or softmax (else None).
    `seen(start, stop, labels)` gets each block's int64 labels (on the CPU) as they are made."""
    mask = probs = None
    for start, stop, logits in blocks:
        if mask is None:
            mask = np.empty(size, mask_dtype(logits.shape[0]))
            probs = np.empty((*size, logits.shape[0]), STORED_DTYPE) if probabilities else None
        labels = to_labels(logits, conf_thres).cpu()
        mask[start:stop] = labels.numpy()
        if seen is not None:
            seen(start, stop, labels)
        if probs is not None:
            probs[start:stop] = logits_to_probabilities(logits.cpu())
    return mask, probs


# ---------------------------------------------------------------- the object


class FullSizePredictor:
    """A predictor (float32 NCHW batch -> float32 logits NCHW on the CPU) fitted to images of any size:
    `resize` 'stretch' or 'letterbox' (whole images fitted into `patch_size`) or 'tile' (sliding window over
    the image times `scale`); logits and masks come back at the image's own size (see the module)."""

    def __init__(self, predictor, patch_size, *, mean=IMAGENET_MEAN, std=IMAGENET_STD, resize="stretch", scale=1.0,
                 overlap=0.25, tile_batch=4, weighting="gaussian", conf_thres=None, stop=None, progress=False):
        if resize not in ("stretch", "letterbox", "tile"):
            raise ValueError(f"resize {resize} is not stretch, letterbox or tile")
        check_conf_thres(conf_thres)
        self.predictor, self.patch_size, self.resize = predictor, patch_size, resize
        self.mean, self.std, self.conf_thres = tuple(mean), tuple(std), conf_thres
        self.scale = scale if resize == "tile" else 1.0
        # stop (an Event) and progress: see Tiler; detect.py stops a long tiled frame between batches of tiles
        self.tiler = Tiler(predictor, patch_size, overlap, tile_batch, weighting, mean, std, stop=stop,
                           progress=progress) if resize == "tile" else None

    @staticmethod
    def sees_tiles(meta, tile=False):
        """Whether a model (its meta) sees whole images by sliding window: crop-trained models (input_mode
        'tile') always, any model when `tile` (--tile) asks for it. The one rule; from_meta follows it."""
        return bool(tile) or meta.get("input_mode") == "tile"

    @classmethod
    def from_meta(cls, predictor, meta, *, tile=False, patch_size=None, overlap=0.25, tile_batch=4,
                  weighting="gaussian", conf_thres=None, stop=None, progress=False):
        """As a model's meta (a checkpoint's or an export's) says: crop-trained models (input_mode 'tile') or
        `tile` by sliding window at the model's --scale, others fitted as they were trained."""
        tiled = cls.sees_tiles(meta, tile)
        return cls(predictor, patch_size or meta["patch_size"], mean=meta["mean"], std=meta["std"],
                   resize="tile" if tiled else "stretch" if is_stretched(meta) else "letterbox",
                   scale=meta.get("scale", 1.0), overlap=overlap, tile_batch=tile_batch, weighting=weighting,
                   conf_thres=conf_thres, stop=stop, progress=progress)

    @property
    def tiled(self):
        return self.tiler is not None

    @property
    def dataset_mode(self):
        """The mode of an evaluation dataset (dataset.py) that stores images as this predictor fits them: 'full'
        (at the model's --scale) when tiled, else 'stretch' or 'letterbox'."""
        return "full" if self.tiled else self.resize

    def fit(self, image):
        """(float32 3xPxP input, Letterbox) of a uint8 RGB image, for whole-image models."""
        return preprocess_image(image, self.patch_size, self.mean, self.std, stretch=self.resize == "stretch")

    def inputs(self, image, most=None):
        """The normalized float32 3xPxP inputs this predictor feeds the model for a uint8 RGB image: the fitted
        patch of a whole-image model; the tiles of the image at the model's --scale for a tiled one, up to
        `most` of them (all by default) spread evenly over the image (export.py's calibration and checks)."""
        if not self.tiled:
            return [self.fit(image)[0]]
        image = scaled(image, self.scale)
        places = self.tiler.places(image)
        most = len(places) if most is None else min(most, len(places))
        step = len(places) / most
        return [self.tiler.tile_input(image, *places[int((index + 0.5) * step)]) for index in range(most)]

    def blocks(self, image, fitted=None):
        """(start, stop, float32 C x rows x W logits) of a uint8 RGB HxWx3 image at its size, top to bottom.
        `fitted`: the image's (input, Letterbox) made by `fit` already (detect.py's frame loaders fit frames in
        their reader thread), used by whole-image models; a tiled one tiles the image itself."""
        return self.blocks_of_each([image], None if fitted is None else [fitted])[0]

    def blocks_of_each(self, images, fitted=None):
        """`blocks` of several images, one generator each (each at its image's size), their forward passes
        shared: the fitted patches of whole-image models in one pass; the tiles of tiled ones --tile-batch at a
        time across the images (TilePasses). The one path for one image or many (detect.py --batch-size, val.py):
        read the generators in order. `fitted`: each image's (input, Letterbox), as for `blocks`."""
        if self.tiled:
            return self.tile_blocks([scaled(image, self.scale) for image in images],
                                    [image.shape[:2] for image in images])
        fitted = fitted or [self.fit(image) for image in images]
        return self.fitted_blocks(torch.stack([tensor for tensor, _ in fitted]), [box for _, box in fitted])[1]

    def fitted_blocks(self, batch, boxes):
        """(patch logits N x C x P x P, each image's blocks at its size) of a batch of images already fitted into
        the patch (`fit`, detect.py's frame loader, an evaluation dataset), in one forward pass."""
        logits = self.predictor(batch)
        return logits, [restore(image_logits, box) for image_logits, box in zip(logits, boxes)]

    def tile_blocks(self, images, sizes, seen=None):
        """The blocks at `sizes` (the original heights, widths) of images already shrunk by --scale, by sliding
        window, one generator each (Tiler.rows_of_each: read them in order); `seen`, one callable per image or
        None, gets each block at the shrunk size first (start, stop, logits: the loss's)."""
        rows = self.tiler.rows_of_each(images)
        return [upsample_rows(rows if see is None else watched(rows, see), image.shape[:2], size)
                for rows, image, size, see in zip(rows, images, sizes, seen or [None] * len(images))]

    def logits(self, image):
        """float32 CxHxW logits of a uint8 RGB image at its size (all of them in memory: prefer blocks)."""
        return torch.cat([logits for _, _, logits in self.blocks(image)], 1)

    def mask(self, image):
        """The uint8 HxW mask of a uint8 RGB image at its size."""
        return collect(self.blocks(image), image.shape[:2], self.conf_thres)[0]

    def mask_and_probabilities(self, image):
        """(mask, float16 HxWxC probabilities) at the image's size (detect.py --save-probs)."""
        return collect(self.blocks(image), image.shape[:2], self.conf_thres, probabilities=True)

    def labels(self, logits):
        """to_labels with this predictor's conf_thres."""
        return to_labels(logits, self.conf_thres)



def watched(blocks, seen):
    """The blocks unchanged, each shown to `seen(start, stop, logits)` first."""
    for block in blocks:
        seen(*block)
        yield block
