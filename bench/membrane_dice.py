"""Real-data check: our trainer against a plain reference loop on ISBI-2012 membrane, side by side.

Both train Unet/resnet18 from random weights at 256x256, batch 4, AdamW + OneCycleLR (peak 1e-3),
10 epochs, on slices 0-23, and report the foreground Dice on slices 24-29 (the split the data's
README describes). The reference loop has no augmentation, no letterbox, no early stopping: it is the
loop the README of ../shared/data/membrane describes.

Usage:
    python3 -m bench.membrane_dice                 # both, prints one table
    python3 -m bench.membrane_dice --only trainer  # just train.py
"""

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import segmentation_models_pytorch as smp
import torch

REPO = Path(__file__).resolve().parents[1]
MEMBRANE = REPO.parent / "shared" / "data" / "membrane"
TRAIN, VAL = range(0, 24), range(24, 30)


def reference_loop(epochs=10, batch_size=4, size=256, lr=1e-3, seed=0):
    """The plain loop: resize, normalize to [0,1], BCE, AdamW + OneCycleLR; val Dice on the foreground."""
    torch.manual_seed(seed)

    def load(indices):
        images = np.stack([cv2.resize(cv2.imread(str(MEMBRANE / "imgs" / f"{i}.png"), 0), (size, size))
                           for i in indices])
        masks = np.stack([cv2.resize(cv2.imread(str(MEMBRANE / "masks" / f"{i}.png"), 0), (size, size),
                                     interpolation=cv2.INTER_NEAREST) for i in indices])
        return (torch.from_numpy(images).float().div(255).unsqueeze(1).repeat(1, 3, 1, 1),
                torch.from_numpy(masks > 127).float().unsqueeze(1))

    train_x, train_y = load(TRAIN)
    val_x, val_y = load(VAL)
    model = smp.Unet("resnet18", encoder_weights=None, classes=1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    steps = len(train_x) // batch_size
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=epochs * steps)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(train_x))
        for step in range(steps):
            index = order[step * batch_size:(step + 1) * batch_size]
            loss = loss_fn(model(train_x[index]), train_y[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
    model.eval()
    with torch.inference_mode():
        predicted = torch.cat([model(val_x[i:i + 2]) for i in range(0, len(val_x), 2)]) > 0
    tp = (predicted & (val_y > 0)).sum().item()
    return 2 * tp / (predicted.sum().item() + (val_y > 0).sum().item())


def trainer_run(epochs=10, batch_size=4, size=256, workers=2):
    """train.py on the same split; returns the best val Dice it printed."""
    with tempfile.TemporaryDirectory() as folder:
        lists = {}
        for name, indices in (("train", TRAIN), ("val", VAL)):
            lists[name] = Path(folder) / f"{name}.txt"
            lists[name].write_text("".join(f"imgs/{i}.png\n" for i in indices))
        command = [sys.executable, str(REPO / "train.py"), "--data-dir", str(MEMBRANE),
                   "--train-list", str(lists["train"]), "--val-list", str(lists["val"]),
                   "--test-list", str(Path(folder) / "none.txt"), "--model", "Unet", "--encoder", "resnet18",
                   "--encoder-weights", "none", "--patch-size", str(size), "--batch-size", str(batch_size),
                   "--epochs", str(epochs), "--workers", str(workers), "--wandb-mode", "disabled",
                   "--name", "membrane-check"]
        output = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    if output.returncode != 0:
        raise SystemExit(output.stderr[-2000:])
    run_dir = re.search(r"training in (\S+)", output.stdout).group(1)
    return float(re.search(r"best val Dice ([0-9.]+)", output.stdout).group(1)), run_dir


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=("trainer", "reference"), default=None, help="run just one side")
    parser.add_argument("--epochs", type=int, default=10)
    return parser.parse_args(argv)


def main(args):
    rows = []
    if args.only in (None, "trainer"):
        start = time.perf_counter()
        dice, run_dir = trainer_run(args.epochs)
        rows.append(("train.py (augmentation, letterbox)", dice, time.perf_counter() - start, run_dir))
    if args.only in (None, "reference"):
        start = time.perf_counter()
        rows.append(("plain reference loop", reference_loop(args.epochs), time.perf_counter() - start, ""))
    print(f"membrane 24/6 split, Unet/resnet18, no pretrained weights, 256x256, batch 4, {args.epochs} epochs")
    for name, dice, seconds, where in rows:
        print(f"  {name:<36} val Dice {dice:.4f}   {seconds:6.0f} s  {where}")


if __name__ == "__main__":
    main(parse_args())
