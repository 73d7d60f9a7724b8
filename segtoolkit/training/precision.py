"""The pieces of a training run that train.py's loop is built from: precision, run folders, batch checks.

Usage:
    autocast, scaler = resolve_precision(device, use_amp=True)
    run_dir = new_run_dir(Path("checkpoints"), "exp")        # exp, exp2, exp3...: never an old run
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


def new_run_dir(root, name):
    """root/<name>, or <name>2, <name>3... if taken: a new run never overwrites an old one."""
    root.mkdir(parents=True, exist_ok=True)
    for index in range(1, 10000):
        candidate = root / (name if index == 1 else f"{name}{index}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
    raise UserError(f"too many runs named {name} in {root}; choose another --name")


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
