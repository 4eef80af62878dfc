"""A resumable, deterministic stream of training batches.

The data order and every random augmentation are functions of (seed, iteration) alone, so a
run resumed from a checkpoint at iteration k sees exactly the batches an uninterrupted run
would: each epoch is a permutation drawn from `seed + epoch`, and each item carries its own
augmentation seed, which `SeededDataset` installs before the transforms run (worker RNG state
then plays no part).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler


class ResumableBatchSampler(Sampler[list[tuple[int, int]]]):
    """Infinite batches of `(index, item_seed)`; this process's share of a global batch.

    The global batch of `batch_size` items at iteration i takes stream positions
    [i*batch_size, (i+1)*batch_size); process r keeps positions r, r+world, ... of it.
    """

    def __init__(
        self, num_items: int, batch_size: int, seed: int, start_iter: int = 0, rank: int = 0, world_size: int = 1
    ) -> None:
        if num_items <= 0:
            raise ValueError("cannot sample batches from an empty dataset")
        if batch_size % world_size:
            raise ValueError(f"batch size {batch_size} is not divisible by {world_size} processes")
        self.num_items, self.batch_size, self.seed = num_items, batch_size, seed
        self.start_iter, self.rank, self.world_size = start_iter, rank, world_size

    def _permutation(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.num_items, generator=g)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        pos = self.start_iter * self.batch_size
        epoch, offset = divmod(pos, self.num_items)
        perm = self._permutation(epoch)
        while True:
            batch = []
            for k in range(self.batch_size):
                if offset == self.num_items:
                    epoch, offset = epoch + 1, 0
                    perm = self._permutation(epoch)
                if k % self.world_size == self.rank:
                    # a distinct, reproducible augmentation seed per stream position
                    batch.append((int(perm[offset]), (self.seed * 7_919 + pos) % (2**31)))
                offset += 1
                pos += 1
            yield batch

    def __len__(self) -> int:  # infinite; DataLoader only needs it for progress estimates
        return 2**31


class SeededDataset(Dataset):
    """Wraps a dataset so that item `(index, seed)` is produced under that seed."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, seed = key
        # fork the RNGs so that, with num_workers=0, loading leaves the main process's streams alone
        np_state, py_state = np.random.get_state(), random.getstate()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            np.random.seed(seed)
            random.seed(seed)
            try:
                return self.dataset[index]
            finally:
                np.random.set_state(np_state)
                random.setstate(py_state)
