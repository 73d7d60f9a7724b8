"""The pieces of a training step that train.py's loop is built from: precision (autocast and gradient scaler),
the batch-size check and the train mode under --freeze-bn. Run folders: segtoolkit.outputs.files.make_run_dir.

Usage:
    autocast, scaler, described = resolve_precision(device, "auto")
"""

import contextlib

import torch

from segtoolkit.errors import UserError
from segtoolkit.inference.predictor import native_bfloat16


def amp_enabled(device, use_amp):
    """Whether --use-amp (auto, on, off; True and False as on and off) trains in mixed precision on `device`: auto
    is on for CUDA and for CPUs with native bfloat16, where it costs no time; on is on everywhere."""
    if use_amp in (True, "on"):
        return True
    if use_amp == "auto":
        return device.type == "cuda" or (device.type == "cpu" and bool(native_bfloat16()))
    return False


def resolve_precision(device, use_amp):
    """(autocast context factory, GradScaler, description) for --use-amp: float16 + scaler on CUDA, bfloat16
    autocast on the CPU, else plain float32."""
    if not amp_enabled(device, use_amp):
        why = " (auto: the CPU has no native bfloat16)" if use_amp == "auto" else ""
        return contextlib.nullcontext, torch.amp.GradScaler(device.type, enabled=False), f"off{why}"
    how = f" ({use_amp})" if use_amp == "auto" else ""
    if device.type == "cuda":
        return (lambda: torch.autocast("cuda", dtype=torch.float16)), torch.amp.GradScaler("cuda"), f"float16{how}"
    scaler = torch.amp.GradScaler(device.type, enabled=False)  # bfloat16 keeps float32's range: nothing to scale
    return (lambda: torch.autocast(device.type, dtype=torch.bfloat16)), scaler, f"bfloat16{how}"


def check_batch_size(train_size, batch_size, world_size):
    if train_size < batch_size * world_size:
        raise UserError(f"--batch-size {batch_size} x {world_size} process(es) is larger than the training set "
                        f"({train_size} images) and incomplete batches are dropped; lower --batch-size or add images")


def set_train_mode(model, freeze_bn=False):
    """model.train(), except BatchNorm layers under --freeze-bn, which keep their running statistics."""
    model.train()
    if freeze_bn:
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.eval()
