"""torchrun: a real 2-process job on the CPU (gloo), and proof that gradients are averaged."""

import csv
import subprocess
import sys

import cv2
import pytest
import torch

from helpers.paths import REPO, RUNS
from helpers.training import TINY
from segtoolkit.models.factory import build_model, model_from_checkpoint
from segtoolkit.models.checkpoints import load_checkpoint

# torchrun jobs (each process imports torch, then trains): among the suite's longest tests
pytestmark = pytest.mark.slow


def tiny_command(data, name, *extra):
    return ["train.py", "--data-dir", str(data), "--train-list", str(data / "train.txt"),
            "--val-list", str(data / "val.txt"), "--test-list", str(data / "test.txt"), *TINY, "--name", name, *extra]


# The timeouts only catch a hang: on a CPU shared three or four ways, each process takes 20-40 s just to import
# torch, and the two of a torchrun job then share what is left of it.
def torchrun(arguments, timeout=900):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *arguments]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=REPO)


def test_two_process_job_writes_one_run_that_loads_alone(tiny_data, run_name):
    result = torchrun(tiny_command(tiny_data, run_name, "--epochs", "2", "--batch-size", "2",
                                   "--wandb-mode", "offline"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("training in ") == 1  # only rank 0 speaks
    runs = sorted(RUNS.glob(f"{run_name}*"))
    assert [run.name for run in runs] == [run_name]
    run_dir = runs[0]
    with open(run_dir / "results.csv") as handle:
        assert [row["epoch"] for row in csv.DictReader(handle)] == ["1", "2"]
    assert len(list(run_dir.glob("wandb/offline-run-*"))) == 1
    checkpoint = load_checkpoint(run_dir / "best-checkpoint.pth.tar")
    assert not any(key.startswith("module.") for key in checkpoint["model"])
    assert checkpoint["config"]["batch_size"] == 2
    model_from_checkpoint(checkpoint)  # the unwrapped model's weights rebuild without DDP
    image = tiny_data / "imgs" / "sample_010.png"
    detected = subprocess.run([sys.executable, "detect.py", "--model", str(run_dir / "best-checkpoint.pth.tar"),
                               "--source", str(image), "--save-dir", str(run_dir / "detect")],
                              capture_output=True, text=True, timeout=600, cwd=REPO)
    assert detected.returncode == 0, detected.stderr[-3000:]
    mask = cv2.imread(str(run_dir / "detect" / "masks" / "sample_010.png"), cv2.IMREAD_UNCHANGED)
    assert mask.shape == cv2.imread(str(image)).shape[:2]
    resumed_alone = load_checkpoint(run_dir / "checkpoint.pth.tar")
    assert resumed_alone["epoch"] == 2 and resumed_alone["global_step"] == 4  # 8 images / (2 x 2) per step
    assert resumed_alone["world_size"] == 2  # what a resume by another number of processes is refused by


def square_copy(data, folder):
    """tiny_data with every image and mask resized to 96x96: letterboxing then pads nothing, so every process
    averages its loss over as many pixels as the others (padding never counts, and DDP averages the processes'
    gradients, each the mean over its own counted pixels)."""
    for path in data.rglob("*"):
        target = folder / path.relative_to(data)
        target.parent.mkdir(parents=True, exist_ok=True)
        if path.is_dir():
            target.mkdir(exist_ok=True)
        elif path.suffix == ".png":
            cv2.imwrite(str(target), cv2.resize(cv2.imread(str(path), cv2.IMREAD_UNCHANGED), (96, 96),
                                                interpolation=cv2.INTER_NEAREST))
        else:
            target.write_bytes(path.read_bytes())
    return folder


def test_two_processes_of_batch_b_equal_one_process_of_batch_2b(tiny_data, tmp_path, run_name):
    tiny_data = square_copy(tiny_data, tmp_path / "square")
    common = ("--epochs", "2", "--lr", "0.05", "--no-augment", "--freeze-bn", "--wandb-mode", "disabled", "--seed", "3",
              "--patience", "0", "--use-amp", "off")  # float32: bfloat16's rounding is not what this compares
    two = torchrun(tiny_command(tiny_data, f"{run_name}-ddp", "--batch-size", "2", *common))
    assert two.returncode == 0, two.stderr[-3000:]
    one = subprocess.run([sys.executable, *tiny_command(tiny_data, f"{run_name}-one", "--batch-size", "4", *common)],
                         capture_output=True, text=True, timeout=900, cwd=REPO)
    assert one.returncode == 0, one.stderr[-3000:]
    ddp = load_checkpoint(RUNS / f"{run_name}-ddp" / "checkpoint.pth.tar")
    single = load_checkpoint(RUNS / f"{run_name}-one" / "checkpoint.pth.tar")
    assert ddp["global_step"] == single["global_step"] == 4
    torch.manual_seed(3)  # train.py seeds, then builds the model: the same initial weights
    initial = build_model("Unet", "resnet18", 1).state_dict()
    largest_update = difference = update = 0.0  # difference and update: squared L2 norms over all weights
    for key, start in initial.items():
        a, b = ddp["model"][key].double(), single["model"][key].double()
        difference += (a - b).square().sum().item()
        update += (b - start.double()).square().sum().item()
        largest_update = max(largest_update, (b - start.double()).abs().max().item())
    assert largest_update > 1e-2  # the weights really moved...
    # ...and both runs moved them the same way. Whole-model norms, not the largest single weight: AdamW turns
    # rounding-level differences of near-zero gradients into full lr-sized steps on a few of the 14M weights.
    assert difference ** 0.5 < 1e-2 * update ** 0.5
