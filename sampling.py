"""Samplers for train.py: a resumable (Distributed) training sampler and an exact evaluation sharder."""

import torch
from torch.utils.data import DistributedSampler


class ShardSampler(torch.utils.data.Sampler):
    """Evaluation: every index exactly once over all processes (DistributedSampler would pad with repeats)."""

    def __init__(self, dataset, process):
        self.indices = range(process.rank, len(dataset), process.world_size)

    def __iter__(self):
        return iter(self.indices)

    def __len__(self):
        return len(self.indices)


class ResumableSampler(DistributedSampler):
    """DistributedSampler (also for one process) that can skip the batches already done in an epoch."""

    def __init__(self, dataset, shuffle, seed, process, batch_size=1):
        super().__init__(dataset, num_replicas=process.world_size, rank=process.rank, shuffle=shuffle,
                         seed=seed, drop_last=shuffle)
        self.batch_size, self.skip = batch_size, 0

    def __iter__(self):
        indices = list(super().__iter__())
        return iter(indices[self.skip * self.batch_size:])

    def __len__(self):
        return self.num_samples - self.skip * self.batch_size
