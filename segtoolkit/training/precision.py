"""The pieces of a training step that train.py's loop is built from: precision (autocast and gradient scaler),
the batch-size check and the train mode under --freeze-bn. Run folders: segtoolkit.outputs.files.make_run_dir.

Usage:
    autocast, scaler = resolve_precision(device, use_amp=True)
"""

import contextlib

import torch

from segtoolkit.errors import UserError


def resolve_precision(device, use_amp):
    """(autocast context factory, GradScaler): float16 + scaler on CUDA, bfloat16 on CPU, else plain fp32."""
    if use_amp and device.type == "cuda":
        return (lambda: torch.autocast("cuda", dtype=torch.float16)), torch.amp.GradScaler("cuda")
    if use_amp:
        return (lambda: torch.autocast(device.type, dtype=torch.bfloat16)), torch.amp.GradScaler(device.type,
                                                                                                 enabled=False)
    return contextlib.nullcontext, torch.amp.GradScaler(device.type, enabled=False)


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
