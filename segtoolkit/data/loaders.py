"""How train.py feeds the model: DataLoaders with a resumable training sampler and an exact evaluation
sharder, and a wrapper that turns a failure while loading into one line naming the files to fix.

Usage:
    train_loader, val_loader, test_loader = make_loaders(train_set, val_set, test_set, batch_size=8, workers=2,
                                                         seed=0, process=Process(), pin_memory=False)
    for images, masks in guarded_batches(train_loader, "training", hint=lambda: "resume with ..."):
        ...
"""

import contextlib
import itertools
import signal
from typing import NamedTuple

import torch
from torch.utils.data import DataLoader, DistributedSampler

from segtoolkit.errors import RunFailure
from segtoolkit.data.imaging import Letterbox


class EvalSample(NamedTuple):
    """One image to score. Whole-image models: `image` the normalized float32 3xPxP input and `target` the
    patch's labels; crop-trained ones: `image` the uint8 HxWx3 image at the model's --scale and `target` its
    labels at that scale. `mask`: the integer labels HxW at the image's own size (IGNORE where they do not
    count), what Dice and IoU count; `box`: how the image was fitted into the patch (None for sliding window)."""
    image: torch.Tensor
    target: torch.Tensor
    mask: torch.Tensor
    box: Letterbox | None


class EvalBatch(NamedTuple):
    """EvalSamples batched: inputs and targets stacked for whole-image models (lists for sliding window, whose
    images differ in size); masks and boxes are lists, one per image, each at its own size."""
    images: torch.Tensor | list
    targets: torch.Tensor | list
    masks: list
    boxes: list


def collate(samples):
    """The DataLoader collate_fn of evaluation datasets."""
    combine = torch.stack if samples[0].box is not None else list
    return EvalBatch(combine([sample.image for sample in samples]), combine([sample.target for sample in samples]),
                     [sample.mask for sample in samples], [sample.box for sample in samples])


class ShardSampler(torch.utils.data.Sampler):
    """Evaluation: every index exactly once over all processes (DistributedSampler would pad with repeats)."""

    def __init__(self, dataset, process):
        self.indices = range(process.rank, len(dataset), process.world_size)

    def __iter__(self):
        return iter(self.indices)

    def __len__(self):
        return len(self.indices)


class ResumableSampler(DistributedSampler):
    """DistributedSampler (also for one process) that can skip the batches already done in an epoch, and
    yields (index, augmentation seed): the seed depends on the run's seed, the epoch and the sample only, so
    augmentation is the same with any number of DataLoader workers and after a resume.

    The order of epoch e is DistributedSampler's, a function of the seed and the epoch alone (so a resume
    draws it again): `torch.randperm(n, generator=torch.Generator().manual_seed(seed + e))`, process r taking
    every world_size-th entry from r, the last incomplete batch dropped. bench.quality's plain reference loop
    draws its batches by the same rule, so both see the same batches (tests/test_parity.py)."""

    def __init__(self, dataset, shuffle, seed, process, batch_size=1, repeats=1):
        # `repeats` (--crops-per-image) draws every sample that many times an epoch, each with its own seed
        # (so its own crop), shuffled among the others: entry v of the epoch is sample v % len(dataset)
        super().__init__(range(len(dataset) * repeats), num_replicas=process.world_size, rank=process.rank,
                         shuffle=shuffle, seed=seed, drop_last=shuffle)
        self.samples, self.batch_size, self.skip = len(dataset), batch_size, 0

    def __iter__(self):
        entries = list(super().__iter__())[self.skip * self.batch_size:]
        return iter([(entry % self.samples, sample_seed(self.seed, self.epoch, entry)) for entry in entries])

    def __len__(self):
        return self.num_samples - self.skip * self.batch_size


def sample_seed(seed, epoch, index):
    """A 32-bit seed for one sample's augmentation in one epoch (tuples of ints hash the same in every process)."""
    return hash((seed, epoch, index)) % 2 ** 32


def make_loaders(train_set, val_set, test_set, *, batch_size, workers, seed, process, pin_memory, repeats=1,
                 eval_batch_size=None):
    """(train, val, test) DataLoaders: training shuffled per epoch (every sample `repeats` times) and resumable
    mid-epoch, incomplete batches dropped; evaluation (datasets of EvalSamples, `eval_batch_size` of them a
    batch, batch_size by default) sharded exactly over the processes (None for an empty split)."""
    options = dict(num_workers=workers, pin_memory=pin_memory, persistent_workers=workers > 0,
                   worker_init_fn=ignore_sigint_in_worker if workers > 0 else None)
    sampler = ResumableSampler(train_set, True, seed, process, batch_size, repeats)
    train = DataLoader(train_set, batch_size, sampler=sampler, drop_last=True, **options)

    def evaluation(dataset, persistent):
        if dataset is None or len(dataset) == 0:
            return None
        return DataLoader(dataset, eval_batch_size or batch_size, sampler=ShardSampler(dataset, process),
                          collate_fn=collate, **dict(options, persistent_workers=persistent and workers > 0))

    return train, evaluation(val_set, True), evaluation(test_set, False)


def ignore_sigint_in_worker(_):
    """Ctrl-C goes to the whole process group; the main process handles it, workers must not die of it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def guarded_batches(loader, split, hint, bar=None):
    """Iterate a DataLoader (advancing a tqdm `bar` made with its total, if given); a failure while loading a
    batch becomes a one-line RunFailure naming the batch's files, so a crash hours in says what to fix.
    `hint()` says what is left (the checkpoint to resume from)."""
    iterator = None
    try:
        for number in itertools.count():
            try:
                if iterator is None:  # iter() starts or resumes the workers, and meets a dead one first
                    iterator = iter(loader)
                batch = next(iterator)
            except StopIteration:
                return
            except Exception as error:  # noqa: BLE001 - raised by the dataset, in this process or a worker
                shut_down_workers(iterator if iterator is not None else getattr(loader, "_iterator", None))
                raise RunFailure(loading_failure(error, loader, split, number, hint())) from None
            try:
                yield batch
            except GeneratorExit:  # the loop was left; if a worker died (worker_crash_as_error), end them now
                if any(not worker.is_alive() for worker in getattr(iterator, "_workers", [])):
                    shut_down_workers(iterator)
                raise
            if bar is not None:
                bar.update()
    finally:
        if bar is not None:  # before an error line, so that the bar's last state does not follow it
            bar.close()


def shut_down_workers(iterator):
    """Stop a DataLoader iterator's workers now, after a failure. Left to torch, this happens when the iterator
    is collected (often at exit), where torch's SIGCHLD check of the dead worker raises inside __del__ and
    prints "Exception ignored" and a traceback after our one-line error. Here that raise is expected: the
    clean-up (its `finally`) has run by then, and the later __del__ does nothing."""
    shutdown = getattr(iterator, "_shutdown_workers", None)
    if shutdown is None:  # no workers (num_workers=0) or not a DataLoader
        return
    try:
        shutdown()
    except RuntimeError:  # "DataLoader worker (pid N) is killed by signal": the failure being reported
        pass


def loading_failure(error, loader, split, number, hint):
    # a worker killed after the last batch fails the next() that would have ended the loop: no files then
    indices = dict(enumerate(loader.batch_sampler)).get(number, [])
    files = ", ".join(str(loader.dataset.pairs[index[0] if isinstance(index, tuple) else index][0])
                      for index in indices)
    what = f"{split} batch {number + 1} (images {files})" if files else f"{split} data after batch {number}"
    fix = "fix or remove those files (a killed worker: lower --workers or --batch-size)" if files else \
        "a killed worker? lower --workers or --batch-size"
    lines = [line for line in str(error).splitlines() if line.strip()] or [type(error).__name__]
    return f"loading {what} failed: {lines[-1].strip()}; {fix}; {hint}"


@contextlib.contextmanager
def worker_crash_as_error(hint):
    """torch reports a worker killed mid-step (often for memory) from a SIGCHLD handler, so the
    RuntimeError can surface anywhere in the loop; turn it into the one-line RunFailure."""
    try:
        yield
    except RuntimeError as error:
        if not str(error).startswith("DataLoader worker"):
            raise
        raise RunFailure(f"{str(error).splitlines()[0].strip()} (killed for memory? lower --workers or "
                         f"--batch-size); {hint()}") from None
