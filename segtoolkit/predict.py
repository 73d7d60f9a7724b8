"""A trained model behind one call, whatever its file: a train.py checkpoint (PyTorch) or an export.py ONNX
file (onnxruntime). detect.py and val.py use it the same way.

Usage:
    meta, predictor = load_predictor("checkpoints/exp/best-checkpoint.pth.tar", torch.device("cpu"))
    logits = predictor(batch)                       # float32 NCHW in, float32 logits NCHW out, on the CPU
    mask = logits_to_mask(logits[0], conf_thres=0.5)
"""

from pathlib import Path

import numpy as np
import torch

from segtoolkit.checkpoints import load_checkpoint
from segtoolkit.errors import UserError
from segtoolkit.models import model_from_checkpoint


class TorchPredictor:
    """Checkpoint from train.py: float32 NCHW batch in, float32 logits NCHW out (on the CPU)."""

    def __init__(self, model, device):
        self.model, self.device = model.to(device).eval(), device

    def __call__(self, batch):
        with torch.inference_mode():
            return self.model(batch.to(self.device)).float().cpu()


class OnnxPredictor:
    """ONNX model from export.py: the same call, run by onnx_runtime.load_onnx's predict function."""

    def __init__(self, predict):
        self.predict = predict

    def __call__(self, batch):
        return torch.from_numpy(np.asarray(self.predict(batch.numpy().astype(np.float32)), dtype=np.float32))


def load_predictor(model_path, device):
    """(meta, predictor) for a .pth.tar checkpoint or an .onnx file."""
    path = Path(model_path)
    if path.suffix.lower() == ".onnx":
        if not path.is_file():
            raise UserError(f"--model {path}: no such file")
        from segtoolkit.onnx_runtime import load_onnx  # only ONNX runs need onnxruntime
        meta, predict = load_onnx(path)
        return dict(meta), OnnxPredictor(predict)
    checkpoint = load_checkpoint(path)
    model = model_from_checkpoint(checkpoint, path)
    return dict(checkpoint["meta"]), TorchPredictor(model, device)


def check_model_flags(meta, classes, encoder, model_path):
    """--classes and --encoder come from the checkpoint; given in conflict with it, they are an error."""
    if classes is not None and classes != meta["classes"]:
        raise UserError(f"--classes {classes} conflicts with {model_path}, which was trained with "
                        f"{meta['classes']} class(es); drop --classes (it is read from the checkpoint)")
    if encoder is not None and encoder != meta["encoder"]:
        raise UserError(f"--encoder {encoder} conflicts with {model_path}, which uses encoder "
                        f"{meta['encoder']}; drop --encoder (it is read from the checkpoint)")


def logits_to_mask(logits, conf_thres):
    """CxHxW logits -> HxW uint8 class indices.

    One class: sigmoid > conf_thres gives 1. Several: argmax, and pixels whose top probability is below
    conf_thres fall back to class 0 (background).
    """
    if logits.shape[0] == 1:
        return (torch.sigmoid(logits[0]) > conf_thres).to(torch.uint8).numpy()
    probabilities = torch.softmax(logits, dim=0)
    top, labels = probabilities.max(dim=0)
    labels[top < conf_thres] = 0
    return labels.to(torch.uint8).numpy()
