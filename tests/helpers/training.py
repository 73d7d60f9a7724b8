"""train.py at its smallest: the one tiny-model flag set, and trainers on tiny data."""

import torch

import train
from segtoolkit.data.splits import pair_masks, read_split_file
from dataset import make_dataset
from segtoolkit.models.factory import build_model, model_meta
from segtoolkit.training.config import RunConfig

from helpers.paths import RUNS

# The tiny model every test run of train.py starts from: Unet/resnet18 without pretrained weights at patch 64,
# batch 2, one epoch, no loader processes, no wandb, runs under RUNS. A test adds what it is about after these
# (a later flag wins: `*TINY, "--epochs", "3"` trains 3 epochs).
TINY = ["--encoder", "resnet18", "--encoder-weights", "none", "--patch-size", "64", "--batch-size", "2",
        "--epochs", "1", "--workers", "0", "--wandb-mode", "disabled", "--project", str(RUNS)]
# --search-files split of a small data folder: a quarter for validation, a quarter for the test split
SEARCH = ["--search-files", "--val-split", "0.25", "--test-split", "0.25", "--seed", "3"]


def train_in_one_thread(argv):
    """train.py's exit code for argv, run in this process with one intra-op thread, as the tests run (conftest's
    one_torch_thread covers a test, not a module or session fixture that trains before it; and another thread
    count may sum a convolution in another order, so a logit near 0 would flip a pixel against val.py's)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train.main(train.parse_args([str(arg) for arg in argv]))
    finally:
        torch.set_num_threads(threads)


def train_tiny(data_dir, name, *flags):
    """A finished TINY run on data_dir (split by SEARCH) in RUNS/name, trained in this process with one thread.
    Returns the run folder."""
    assert train_in_one_thread([*TINY, "--data-dir", data_dir, *SEARCH, "--name", name, *flags]) == 0
    return RUNS / name


def tiny_sets(root, patch=64, augment=False):
    """(train, val, test) datasets of a data folder with train.txt, val.txt and test.txt (tiny_data's)."""
    def pairs(name):
        return pair_masks(read_split_file(root / name, root), root / "masks")
    return (make_dataset(pairs("train.txt"), patch, 1, augment=augment),
            make_dataset(pairs("val.txt"), patch, 1, evaluation=True),
            make_dataset(pairs("test.txt"), patch, 1, evaluation=True))


def make_trainer(root, run_dir, epochs=3, **options):
    """An UnetTraining of a Unet/resnet18 on tiny_sets(root), seeded, writing to run_dir."""
    torch.manual_seed(0)
    train_set, val_set, test_set = tiny_sets(root)
    model = build_model("Unet", "resnet18", 1)
    meta = model_meta("Unet", "resnet18", 1, 64)
    config = RunConfig(**{**dict(epochs=epochs, batch_size=2, workers=0, lr=1e-3), **options})
    return train.UnetTraining(model, train_set, val_set, test_set, config=config, run_dir=run_dir, meta=meta)
