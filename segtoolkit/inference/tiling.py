"""Sliding-window inference: an image of any size segmented at full resolution by tiles of the model's patch
size, overlapping by a fraction, their logits blended with Gaussian (or linear) weights where they overlap, as
MMSegmentation and nnU-Net do. Tiles go through the model in batches (across images too, for detect.py and
val.py --batch-size), and the image is normalized one tile at a time, so memory holds the uint8 image, the result
and one or two row bands of tiles, never a float copy of the whole image.

Bounded and stoppable: --tile-overlap above MAX_OVERLAP (each pixel inside more than MAX_TILES_PER_PIXEL tiles) is
refused, since 0.99 made a 1000x750 image 643,000 tiles of 64 px; a frame whose tiles take longer than
PROGRESS_DELAY seconds shows a progress bar (with `progress`); and with `stop` (a threading.Event, set by Ctrl-C or
SIGTERM through segtoolkit.cli.StopRequest) the frame is abandoned between two batches of tiles (cli.Stopped).

Usage:
    tiler = Tiler(predictor, tile=256, overlap=0.25, batch=4, mean=meta["mean"], std=meta["std"], stop=event)
    logits = tiler.logits(rgb)                 # float32 CxHxW at the image's size
    for start, stop, logits in tiler.finished_rows(rgb): ...   # C x rows x W, one band in memory at a time
    first, second = tiler.rows_of_each([rgb, other])          # finished_rows of each, tiles batched across both
Masks, and logits at the size of an image shrunk by --scale, come from segtoolkit.inference.full_size.
"""

import math
from collections import deque
from functools import lru_cache

import numpy as np
import torch
from tqdm import tqdm

from segtoolkit.cli import Stopped, setting
from segtoolkit.errors import UserError
from segtoolkit.data.imaging import normalize

WEIGHTINGS = ("gaussian", "linear")
MAX_OVERLAP = 0.875  # tiles move an eighth of a tile: each pixel is inside 8 x 8 tiles (the default 0.25: 1.8)
MAX_TILES_PER_PIXEL = round(1 / (1 - MAX_OVERLAP) ** 2)
PROGRESS_DELAY = 2.0  # seconds a frame's tiles run before the progress bar appears


def check_tile_settings(overlap=None, batch=None, weighting=None):
    """The tile settings given (None: not given), checked: --tile-overlap a fraction in [0, MAX_OVERLAP] (above
    it the tiles, and the time, grow as 1 / (1 - overlap)^2 for nothing a model can use; nnU-Net uses 0.5),
    --tile-batch at least 1, --tile-weighting one of WEIGHTINGS."""
    if overlap is not None and not 0 <= overlap < 1:
        raise UserError(f"--tile-overlap {overlap} must be a fraction in [0, {MAX_OVERLAP}]")
    if overlap is not None and overlap > MAX_OVERLAP:
        raise UserError(f"--tile-overlap {overlap} puts each pixel inside about {1 / (1 - overlap) ** 2:,.0f} tiles, "
                        f"each a forward pass; give at most {MAX_OVERLAP} ({MAX_TILES_PER_PIXEL} tiles over each "
                        f"pixel), e.g. 0.5")
    if batch is not None and batch < 1:
        raise UserError(f"--tile-batch {batch} must be at least 1")
    if weighting is not None and weighting not in WEIGHTINGS:
        raise UserError(f"--tile-weighting {weighting}: choose {' or '.join(WEIGHTINGS)}")


# the tile flags of train.py (its evaluation), detect.py and val.py: one definition each. A default of None
# (detect.py, val.py) is the model's run's value: what train.py evaluated it with (train.py's default for a
# model that stores no run)
RUN_DEFAULT = " (default: as train.py evaluated the model: its run's value, or train.py's default for an export)"


def tile_setting(group):
    return setting(False, group=group, help="segment whole images at full resolution by sliding window (tile = "
                   "the patch size); automatic for models trained with --crop")


def tile_overlap_setting(default, group):
    return setting(default, group=group, help=f"overlap of the sliding-window tiles (models trained with --crop; "
                   f"detect.py and val.py --tile), a fraction of a tile, at most {MAX_OVERLAP} (each pixel inside "
                   f"up to {MAX_TILES_PER_PIXEL} tiles)" + (RUN_DEFAULT if default is None else ""))


def tile_batch_setting(default, group):
    return setting(default, group=group, help="tiles per forward pass: memory is bounded by it, not by the image"
                   + (RUN_DEFAULT if default is None else ""))


def tile_weighting_setting(default, group):
    return setting(default, group=group, choices=WEIGHTINGS, help="how overlapping tiles' logits are blended: "
                   "gaussian (the middle of a tile counts most) or linear" + (RUN_DEFAULT if default is None else ""))


def tile_starts(length, tile, stride):
    """Starts of the tiles along one axis: every `stride`, the last one flush with the end; one tile (start 0)
    when the axis is not longer than a tile (it is padded then)."""
    if length <= tile:
        return [0]
    count = math.ceil((length - tile) / stride) + 1
    return sorted({min(index * stride, length - tile) for index in range(count)})


@lru_cache(maxsize=8)
def tile_weights(tile, weighting):
    """The blending weight of each pixel of a tile: highest in the middle, low (never 0) at the borders, where a
    model sees the least context."""
    position = (np.arange(tile, dtype=np.float64) + 0.5) / tile - 0.5  # -0.5..0.5 across the tile
    if weighting == "gaussian":
        profile = np.exp(-0.5 * (position / 0.125) ** 2)  # sigma 1/8 of the tile, as nnU-Net
    else:
        profile = 1.0 - 2 * np.abs(position)
    profile = np.maximum(profile, 1e-3 * profile.max())
    return torch.from_numpy(np.outer(profile, profile).astype(np.float32))


class Tiler:
    """Segments whole images with a predictor (batch NCHW float32 -> logits NCHW float32) by tiles. `stop`: an
    event that abandons the image between two batches (raising cli.Stopped); `progress`: a bar on stderr for an
    image whose tiles take longer than PROGRESS_DELAY seconds."""

    def __init__(self, predictor, tile, overlap=0.25, batch=4, weighting="gaussian", mean=(0.485, 0.456, 0.406),
                 std=(0.229, 0.224, 0.225), stop=None, progress=False):
        check_tile_settings(overlap, batch, weighting)
        self.predictor, self.tile, self.batch, self.stop, self.progress = predictor, tile, batch, stop, progress
        self.stride = max(1, int(round(tile * (1 - overlap))))
        self.weights = tile_weights(tile, weighting)
        self.mean, self.std = tuple(mean), tuple(std)

    def logits(self, image):
        """float32 CxHxW logits of a uint8 RGB HxWx3 image, at its size: the finished rows written into the
        result as they come, so memory holds the result and a band, never every band at once."""
        out = None
        for start, stop, logits in self.finished_rows(image):
            if out is None:
                out = torch.empty(logits.shape[0], image.shape[0], image.shape[1])
            out[:, start:stop] = logits
        return out

    def finished_rows(self, image, tiles=None):
        """(start, stop, logits C x rows x W) of each block of rows once no later band of tiles overlaps it.
        `tiles`: the image's (top, left, logits) from TilePasses (default: passes of this image alone)."""
        height, width = image.shape[:2]
        pending, done = [], 0
        tops = tile_starts(height, self.tile, self.stride)
        tiles = TilePasses(self, [image]).tiles(0) if tiles is None else tiles
        for number, band in enumerate(self.bands(image, tiles)):
            pending.append(band)
            finished = height if number == len(tops) - 1 else tops[number + 1]
            if finished > done:
                yield done, finished, self.assemble(pending, height, width, rows=(done, finished))
                done = finished
                pending = [band for band in pending if band[0] + band[1].shape[1] > done]

    def rows_of_each(self, images):
        """finished_rows of several images, one generator each, their tiles through the model together
        (TilePasses); read them in order."""
        passes = TilePasses(self, images)
        return [self.finished_rows(image, passes.tiles(number)) for number, image in enumerate(images)]

    def bands(self, image, tiles):
        """(top, summed weighted logits CxTxW, summed weights TxW) of each row of tiles, top to bottom, from the
        image's tiles in reading order; a row is given as soon as its last tile is done, so memory holds one or
        two rows, never the image's logits."""
        height, width = image.shape[:2]
        lefts = tile_starts(width, self.tile, self.stride)
        rows = {}  # top: (summed weighted logits, summed weights) of the rows whose tiles are coming
        bar = tqdm(total=len(self.places(image)), desc=f"{width}x{height} image", unit="tile", leave=False,
                   dynamic_ncols=True, delay=PROGRESS_DELAY, disable=not self.progress)
        try:
            for top, left, tile_logits in tiles:
                bar.update()
                height_here, columns = min(self.tile, height - top), min(self.tile, width - left)
                if top not in rows:
                    rows[top] = torch.zeros(tile_logits.shape[0], height_here, width), torch.zeros(height_here, width)
                total, weight = rows[top]
                w = self.weights[:height_here, :columns]
                total[:, :, left:left + columns] += tile_logits[:, :height_here, :columns] * w
                weight[:, left:left + columns] += w
                if left == lefts[-1]:  # in reading order, the row's last tile
                    yield top, *rows.pop(top)
        finally:
            bar.close()

    def places(self, image):
        """(top, left) of every tile of an image (HxW...), in reading order."""
        return [(top, left) for top in tile_starts(image.shape[0], self.tile, self.stride)
                for left in tile_starts(image.shape[1], self.tile, self.stride)]

    def tile_input(self, image, top, left):
        """One normalized 3 x tile x tile input; a tile past the image's edge is padded with black (the value
        letterbox padding has, which training leaves out)."""
        crop = image[top:top + self.tile, left:left + self.tile]
        if crop.shape[:2] != (self.tile, self.tile):
            padded = np.zeros((self.tile, self.tile, 3), np.uint8)
            padded[:crop.shape[0], :crop.shape[1]] = crop
            crop = padded
        return normalize(crop, self.mean, self.std)

    @staticmethod
    def assemble(bands, height, width, rows=None):
        """Blend bands into logits for `rows` (start, stop) of the image (all rows by default)."""
        start, stop = rows or (0, height)
        channels = bands[0][1].shape[0]
        total = torch.zeros(channels, stop - start, width)
        weight = torch.zeros(stop - start, width)
        for top, band_total, band_weight in bands:
            low, high = max(start, top), min(stop, top + band_total.shape[1])
            if low < high:
                total[:, low - start:high - start] += band_total[:, low - top:high - top]
                weight[low - start:high - start] += band_weight[low - top:high - top]
        return total / weight


class TilePasses:
    """The tiles of several images through the model `batch` at a time in reading order, image after image, so
    every forward pass but the last is full, also across images (a row of 5 tiles in batches of 4 would make
    every other pass a single tile; so would images of one tile each). `tiles(number)` gives one image's
    (top, left, logits) in reading order, running passes as they are needed; tiles a pass made for a later
    image wait for it (at most a pass's). With the tiler's `stop` set, the next pass raises cli.Stopped."""

    def __init__(self, tiler, images):
        self.tiler, self.images = tiler, images
        self.places = [(number, top, left) for number, image in enumerate(images) for top, left in tiler.places(image)]
        self.sent, self.made = 0, {number: deque() for number in range(len(images))}

    def tiles(self, number):
        for _ in range(len(self.tiler.places(self.images[number]))):
            while not self.made[number]:
                self.run_pass()
            yield self.made[number].popleft()

    def run_pass(self):
        tiler = self.tiler
        if tiler.stop is not None and tiler.stop.is_set():  # Ctrl-C or SIGTERM: between two passes
            raise Stopped(f"stopped after {self.sent} of {len(self.places)} tiles")
        chunk = self.places[self.sent:self.sent + tiler.batch]
        logits = tiler.predictor(torch.stack([tiler.tile_input(self.images[number], top, left)
                                              for number, top, left in chunk]))
        self.sent += len(chunk)
        for (number, top, left), tile_logits in zip(chunk, logits):
            self.made[number].append((top, left, tile_logits))
