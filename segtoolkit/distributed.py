"""torch.distributed plumbing for train.py, detect.py and val.py: torchrun's environment, device choice,
the CPU's cores and reductions.

A plain `python train.py` runs as a group of one: every helper here then does nothing special, so
the trainer has a single code path.

Usage:
    torchrun --nproc_per_node=2 train.py ...          # RANK, LOCAL_RANK, WORLD_SIZE come from torchrun
"""

import datetime
import os
import re
from dataclasses import dataclass

import torch
import torch.distributed as dist

from segtoolkit.errors import UserError


@dataclass(frozen=True)
class Process:
    """Where this process stands in the group (rank 0 of 1 without torchrun)."""
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self):
        return self.rank == 0

    @property
    def distributed(self):
        return self.world_size > 1


def resolve_device(name="auto", local_rank=0):
    """'auto' is CUDA (this process's GPU under torchrun) when available, else the CPU.

    Only the devices the toolkit runs on are accepted (torch would take 'mps' or 'xpu' and fail later in
    a kernel, and turns 'gpu' into a traceback)."""
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", name):
        raise UserError(f"--device {name} is not a device this toolkit runs on; use auto, cpu, cuda or cuda:N "
                        f"(N: the GPU's index)")
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    if device.type == "cuda" and device.index is None:
        device = torch.device(f"cuda:{local_rank}")
    return device


def launched_world_size():
    """The number of processes torchrun started (WORLD_SIZE; 1 without torchrun), before any group is joined."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def setup(device_name="auto", timeout_minutes=30):
    """Join the process group when launched by torchrun; return (Process, device)."""
    process = Process(int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0")), launched_world_size())
    device = resolve_device(device_name, process.local_rank)
    if process.distributed and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=timeout_minutes),
                                device_id=device if device.type == "cuda" else None)
    return process, device


def share_cores(device):
    """On the CPU under torchrun, this machine's cores split between its processes (LOCAL_WORLD_SIZE): torch's
    threads = cores // processes, unless OMP_NUM_THREADS says otherwise. torchrun sets OMP_NUM_THREADS=1 when
    it is not set, so 1 counts as not set; returns the threads used."""
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    given = os.environ.get("OMP_NUM_THREADS", "1")
    if device.type == "cpu" and local > 1 and given == "1":
        torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // local))
    return torch.get_num_threads()


def wrap(model, device, sync_bn=False):
    """DistributedDataParallel under torchrun (BatchNorm made SyncBatchNorm first with --sync-bn, which
    PyTorch runs on GPUs only); the model itself in a single process."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return model
    if sync_bn:
        if device.type != "cuda":
            raise UserError("--sync-bn needs CUDA (PyTorch's SyncBatchNorm runs on GPUs only); drop it on the CPU")
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                                     else None)


def teardown():
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(tensor):
    """Sum a tensor over all processes in place (no-op alone) and return it."""
    if dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def any_process(flag, device):
    """True on every process when `flag` is true on any of them (e.g. a stop request)."""
    if not dist.is_initialized():
        return bool(flag)
    return bool(all_reduce_sum(torch.tensor([int(flag)], device=device)).item())


def broadcast_object(value):
    """Rank 0's value on every process."""
    if not dist.is_initialized():
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def gather_objects(value):
    """Every process's value, in rank order (a list of one alone)."""
    if not dist.is_initialized():
        return [value]
    values = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return values


def barrier():
    if dist.is_initialized():
        dist.barrier()


def broadcast_buffers(model):
    """Rank 0's buffers (BatchNorm statistics) on every process, so all evaluate the same model."""
    if dist.is_initialized():
        for buffer in model.buffers():
            dist.broadcast(buffer.data, src=0)

def unwrap(model):
    """The bare model inside DistributedDataParallel / torch.compile wrappers."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)
