"""Losses: the design's defaults (BCE with logits for one class, cross-entropy for several) and, for
imbalanced data, smp's Dice, Jaccard, Focal, Lovasz and Tversky (`tversky:ALPHA,BETA`: the weights of false
positives and false negatives), or sums such as `ce+dice`; class weights given or computed from the training
split's pixel frequencies (median-frequency balancing).

Every loss leaves out the pixels whose target is IGNORE (letterbox padding, transform fill, --ignore-index).

Usage:
    criterion = make_loss("ce+dice", classes=4, class_weights=[0.5, 1.0, 2.0, 4.0])
    criterion = make_loss("bce+tversky:0.3,0.7", classes=1)   # false negatives weigh more than false positives
    loss = criterion(logits, target)         # logits NxCxHxW; target Nx1xHxW float (binary) or NxHxW int64
    weights = median_frequency_weights({0: 9000, 1: 800, 2: 200}, classes=3)
"""

import math

import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F

from segtoolkit.errors import UserError
from segtoolkit.data.masks import IGNORE

LOSS_NAMES = ("bce", "ce", "dice", "jaccard", "focal", "lovasz", "tversky")
# the terms class weights apply to: smp takes none in binary mode, and none for Lovasz
WEIGHTED = {"binary": ("bce",), "multiclass": ("ce", "dice", "jaccard", "focal", "tversky")}


def mode_of(classes):
    return "binary" if classes == 1 else "multiclass"


def default_loss(classes):
    return "bce" if classes == 1 else "ce"


def parse_loss(spec, classes):
    """The terms of a --loss spec ('dice', 'ce+dice', 'bce+tversky:0.3,0.7') as (name, parameters) pairs,
    checked against the number of classes."""
    terms = []
    for text in str(spec).split("+"):
        name, colon, arguments = text.strip().lower().partition(":")
        if name not in LOSS_NAMES:
            raise UserError(f"--loss {spec}: '{name}' is not a loss; use {', '.join(LOSS_NAMES)} or sums such as "
                            f"ce+dice")
        if colon and name != "tversky":
            raise UserError(f"--loss {spec}: {name} takes no parameters; drop ':{arguments}'")
        terms.append((name, tversky_weights(spec, arguments) if name == "tversky" else ()))
    names = [name for name, _ in terms]
    if "ce" in names and classes == 1:
        raise UserError(f"--loss {spec}: cross-entropy is for several classes; one class uses bce (e.g. bce+dice)")
    if "bce" in names and classes > 1:
        raise UserError(f"--loss {spec}: bce is for one class; several classes use ce (e.g. ce+dice)")
    return terms


def tversky_weights(spec, arguments):
    """(alpha, beta) of tversky:ALPHA,BETA: Tversky's index is tp / (tp + alpha fp + beta fn). There is no
    default: smp's 0.5,0.5 is exactly dice, which `--loss tversky` used to be without saying so."""
    fix = ("give tversky:ALPHA,BETA, the weights of false positives and false negatives, e.g. tversky:0.3,0.7 "
           "to miss less (0.5,0.5 is dice)")
    try:
        alpha, beta = (float(value) for value in arguments.split(","))
    except ValueError:
        raise UserError(f"--loss {spec}: {fix}") from None
    if not all(math.isfinite(value) and value >= 0 for value in (alpha, beta)) or alpha + beta == 0:
        raise UserError(f"--loss {spec}: ALPHA and BETA must be numbers of 0 or more, not both 0; {fix}")
    return alpha, beta


def stored_loss(spec):
    """A --loss stored by an older run, as this version spells it: a bare 'tversky' trained with smp's
    default weights, 0.5,0.5."""
    if spec is None:
        return None
    return "+".join("tversky:0.5,0.5" if term.strip().lower() == "tversky" else term for term in spec.split("+"))


def make_loss(spec, classes, class_weights=None):
    """A callable (logits, target) -> scalar loss: the sum of the spec's terms."""
    terms = parse_loss(spec, classes)
    if class_weights is not None and not {name for name, _ in terms} & set(WEIGHTED[mode_of(classes)]):
        raise UserError(f"--class-weights has no effect with --loss {spec}; add a weighted term such as "
                        f"{default_loss(classes)}")
    if class_weights is not None and len(class_weights) != max(classes, 2):
        raise UserError(f"--class-weights has {len(class_weights)} values for {max(classes, 2)} classes "
                        f"({'background, foreground' if classes == 1 else f'0..{classes - 1}'})")
    losses = [loss_term(name, parameters, classes, class_weights) for name, parameters in terms]
    return SumOfLosses(losses)


class SumOfLosses(torch.nn.Module):
    def __init__(self, losses):
        super().__init__()
        self.losses = torch.nn.ModuleList(losses)

    def forward(self, logits, target):
        return sum(loss(logits, target) for loss in self.losses)


def loss_term(term, parameters, classes, class_weights):
    weights = None if class_weights is None else torch.tensor(class_weights, dtype=torch.float32)
    if term == "bce":
        return MaskedBCE(weights)
    if term == "ce":
        return torch.nn.CrossEntropyLoss(weight=weights, ignore_index=IGNORE)
    mode = mode_of(classes)
    smp_weights = None if class_weights is None or mode == "binary" else list(class_weights)
    if term == "lovasz":
        return smp.losses.LovaszLoss(mode, ignore_index=IGNORE)
    if term == "tversky":
        alpha, beta = parameters
        return smp.losses.TverskyLoss(mode, ignore_index=IGNORE, class_weights=smp_weights, alpha=alpha, beta=beta)
    kind = {"dice": smp.losses.DiceLoss, "jaccard": smp.losses.JaccardLoss, "focal": smp.losses.FocalLoss}[term]
    return kind(mode, ignore_index=IGNORE, class_weights=smp_weights)


class MaskedBCE(torch.nn.Module):
    """BCE with logits over the pixels that count (target 0 or 1), weighted by class when weights are given:
    sum(w * loss) / sum(w), as cross-entropy weighs."""

    def __init__(self, weights=None):
        super().__init__()
        self.register_buffer("weights", weights, persistent=False)

    def forward(self, logits, target):
        target = target.reshape(logits.shape)
        counted = (target != IGNORE).to(logits.dtype)
        truth = target.clamp(min=0)
        weight = counted if self.weights is None else counted * self.weights.to(logits)[truth.long()]
        loss = F.binary_cross_entropy_with_logits(logits, truth, reduction="none")
        return (loss * weight).sum() / weight.sum().clamp_min(1e-12)


def median_frequency_weights(counts, classes):
    """Median-frequency balancing (Eigen and Fergus): weight_c = median(freq) / freq_c over the classes
    present in `counts` ({label: pixels} of the training masks); an absent class gets weight 1."""
    labels = range(max(classes, 2))
    frequencies = {label: counts.get(label, 0) for label in labels}
    total = sum(frequencies.values())
    present = sorted(value / total for value in frequencies.values() if value) if total else []
    if not present:
        return [1.0] * len(labels)
    median = present[len(present) // 2] if len(present) % 2 else (present[len(present) // 2 - 1]
                                                                   + present[len(present) // 2]) / 2
    return [round(median * total / frequencies[label], 4) if frequencies[label] else 1.0 for label in labels]


def parse_class_weights(text, classes):
    """--class-weights: None, 'auto' (computed from the training split) or a comma-separated list."""
    if text is None or str(text).lower() == "auto":
        return None if text is None else "auto"
    try:
        weights = [float(value) for value in str(text).split(",")]
    except ValueError:
        raise UserError(f"--class-weights {text}: give 'auto' or one number per class separated by commas, "
                        f"e.g. 0.5,2") from None
    if len(weights) != max(classes, 2) or any(weight < 0 for weight in weights) or not any(weights):
        raise UserError(f"--class-weights {text}: give {max(classes, 2)} non-negative numbers, not all 0 "
                        f"({'background, foreground' if classes == 1 else f'classes 0..{classes - 1}'}), or auto")
    return weights
