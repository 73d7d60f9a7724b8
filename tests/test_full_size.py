"""segtoolkit.inference.full_size and the band-by-band scoring of segtoolkit.evaluation.scoring: logits brought back
to each image's own size (bilinear, as torch's interpolate, the letterbox padding cut away), the same whatever the
bands, and a sliding-window image scored one band at a time, never holding its logits whole."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from segtoolkit.data.loaders import EvalBatch
from segtoolkit.evaluation.scoring import accumulate
from segtoolkit.inference.full_size import FullSizePredictor, restore, to_labels, upsample_rows
from segtoolkit.data.imaging import Letterbox, scaled
from segtoolkit.training.losses import make_loss
from segtoolkit.evaluation.metrics import ConfusionStats, confusion_matrix
from segtoolkit.inference.tiling import Tiler


def in_bands(logits, rows):
    """A C x H x W map as blocks of `rows` rows, top to bottom."""
    height = logits.shape[1]
    return [(start, min(start + rows, height), logits[:, start:start + rows]) for start in range(0, height, rows)]


@pytest.mark.parametrize("source, size", [((64, 64), (150, 203)), ((48, 64), (96, 128)), ((75, 100), (150, 203)),
                                          ((64, 64), (37, 53)), ((64, 64), (64, 200)), ((30, 40), (90, 40))])
def test_upsampling_is_bilinear_and_the_same_whatever_the_bands(source, size):
    """torch's bilinear interpolation (align_corners=False) to float32 rounding, enlarging or shrinking; and
    bit for bit the same blocks' values whether the source comes in one block or row by row, so a mask made
    band by band (detect.py, the confusion counts) is the mask made whole."""
    logits = torch.randn(3, *source, generator=torch.Generator().manual_seed(0)) * 4
    whole = torch.cat([block for _, _, block in upsample_rows(in_bands(logits, source[0]), source, size)], 1)
    expected = F.interpolate(logits[None], size=size, mode="bilinear", align_corners=False)[0]
    # torch rounds the sampling positions to float32 in another order: 1e-6 of a logit of up to ~16
    assert whole.shape == expected.shape and torch.allclose(whole, expected, atol=1e-4)
    assert not torch.allclose(whole, F.interpolate(logits[None], size=size, mode="nearest")[0], atol=1e-2)
    for rows in (1, 3, 7):
        blocks = list(upsample_rows(in_bands(logits, rows), source, size))
        assert blocks[0][0] == 0 and blocks[-1][1] == size[0]
        assert all(earlier[1] == later[0] for earlier, later in zip(blocks, blocks[1:]))  # contiguous, in order
        assert torch.equal(torch.cat([block for _, _, block in blocks], 1), whole), rows


def test_restore_cuts_the_letterbox_padding_away_before_upsampling():
    """A 40x100 image letterboxed into 64: its patch rows 26..63 are padding, whatever the model says there."""
    box = Letterbox(40, 100, 26, 64)
    logits = torch.randn(1, 64, 64, generator=torch.Generator().manual_seed(1))
    other = logits.clone()
    other[:, 26:] = 50.0  # the padding, sure of the foreground
    first, second = (torch.cat([block for _, _, block in restore(patch, box)], 1) for patch in (logits, other))
    assert first.shape == (1, 40, 100) and torch.equal(first, second)
    expected = F.interpolate(logits[None, :, :26], size=(40, 100), mode="bilinear", align_corners=False)[0]
    assert torch.allclose(first, expected, atol=1e-5)


class ThreeClasses(torch.nn.Module):
    """A stand-in model: 3 classes from a fixed 3x3 convolution of the input."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)
        torch.nn.init.normal_(self.conv.weight, generator=torch.Generator().manual_seed(2))

    @torch.inference_mode()
    def forward(self, batch):
        return self.conv(batch)


@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_a_tiled_image_is_counted_band_by_band_and_never_held_whole(scale, monkeypatch):
    """Without a loss, the confusion counts of a sliding-window image accumulate from one band of rows at a
    time: they equal the counts of the whole image's labels, and neither Tiler.logits nor a block of all the
    image's rows is ever made (Tiler.logits kept every band: 707 MB on a 3000x4000 3-class image)."""
    image = np.random.default_rng(3).integers(0, 255, (300, 203, 3), dtype=np.uint8)
    mask = torch.from_numpy(np.random.default_rng(4).integers(0, 3, (300, 203)))
    mask[:20] = -1  # IGNORE: not counted
    full_size = FullSizePredictor(ThreeClasses(), 64, resize="tile", scale=scale)
    expected = confusion_matrix(to_labels(full_size.logits(image)), mask, 3)  # the whole image's labels
    spans, assemble = [], Tiler.assemble

    def recording(bands, height, width, rows=None):
        spans.append(rows[1] - rows[0])
        return assemble(bands, height, width, rows)
    monkeypatch.setattr(Tiler, "assemble", staticmethod(recording))
    monkeypatch.setattr(Tiler, "logits", lambda *_: pytest.fail("the whole image's logits were assembled"))
    stored = torch.from_numpy(scaled(image, scale))  # as an evaluation dataset keeps it: at the model's scale
    stats = accumulate(full_size, [EvalBatch([stored], [None], [mask], [None])], ConfusionStats(3))
    assert torch.equal(stats.matrix.long(), expected) and stats.matrix.sum() == 280 * 203
    assert spans and max(spans) <= 64 < stored.shape[0]  # a band of rows at a time, at the model's scale


def test_with_a_loss_the_tiled_counts_are_the_same_and_the_loss_is_at_the_models_scale():
    image = np.random.default_rng(5).integers(0, 255, (150, 130, 3), dtype=np.uint8)
    mask = torch.from_numpy(np.random.default_rng(6).integers(0, 3, (150, 130)))
    full_size = FullSizePredictor(ThreeClasses(), 64, resize="tile")
    batch = EvalBatch([torch.from_numpy(image)], [mask], [mask], [None])
    criterion = make_loss("ce", 3)
    with_loss = accumulate(full_size, [batch], ConfusionStats(3), criterion=criterion)
    without = accumulate(full_size, [batch], ConfusionStats(3))
    assert torch.equal(with_loss.matrix, without.matrix)
    loss = float(criterion(full_size.tiler.logits(image)[None], mask[None]))
    assert with_loss.compute("val")["val/loss"] == pytest.approx(loss, rel=1e-6)
