"""Reproducible sampling: seeded augmentation, the sample order of an epoch, and the loaders.

Nothing random depends on the process's history: the sample order of epoch ``e`` comes from a
generator seeded with ``(seed, e)`` and the augmentation of sample ``i`` in epoch ``e`` from a
seed derived from ``(seed, e, i)``. So a run killed at any point and resumed draws the same
batches, augmented the same way, whichever worker, process or resumed run draws them.
"""
from __future__ import annotations

import contextlib
import inspect
import math
import random
from itertools import islice
from typing import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, Subset

from ..io.config import RunConfig
from ..errors import ConfigError
from ..data.preprocess import mask_tensor, to_tensor
from . import distributed as ddp


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The augmentation seed of sample ``index`` in ``epoch``: independent of workers and ranks."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed Python, NumPy and torch (CPU) RNGs inside the block; restore them afterwards."""
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


def seed_everything(seed: int, deterministic: bool, device: torch.device) -> None:
    """Seed all RNGs; in deterministic mode on CUDA also ask for deterministic kernels.

    CPU kernels are already deterministic for a fixed thread count, and
    ``torch.use_deterministic_algorithms`` costs seconds of imports, so CPU runs skip it.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic and device.type == "cuda":
        import os

        # cuBLAS needs this for deterministic matmuls (read when CUDA initialises).
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic


class SeededDataset(Dataset):
    """Item ``(epoch, i)``: sample ``i`` of a :class:`SegmentationDataset` augmented reproducibly.

    The augmentation gets a generator seeded from ``(seed, epoch, i)`` (passed as ``rng=`` to
    transforms that take one, as ``pixelwise.data`` transforms do), and the global RNGs are
    seeded the same way around the call for transforms that use them. So a sample looks the
    same whichever worker, process or resumed run draws it.

    Args:
        dataset: a dataset with ``read_raw(i)``, ``mean`` and ``std`` (its own transform unused).
        transform: ``(image, mask[, rng]) -> (image, mask)`` on numpy arrays, or None.
        seed: the run's seed.
    """

    def __init__(self, dataset, transform: Callable | None, seed: int):
        self.dataset = dataset
        self.transform = transform
        self.seed = seed
        self._takes_rng = transform is not None and _accepts_rng(transform)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, index = key
        image, mask = self.dataset.read_raw(index)
        if self.transform is not None:
            s = sample_seed(self.seed, epoch, index)
            with seeded(s):
                if self._takes_rng:
                    image, mask = self.transform(image, mask, rng=np.random.default_rng(s))
                else:
                    image, mask = self.transform(image, mask)
        return (to_tensor(image, self.dataset.mean, self.dataset.std),
                mask_tensor(mask))


def _accepts_rng(fn: Callable) -> bool:
    try:
        return "rng" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


class EpochBatchSampler(Sampler[list[tuple[int, int]]]):
    """Batches of ``(epoch, index)`` from a :class:`DistributedSampler` (also for one process).

    The order of an epoch depends only on ``(seed, epoch)``; ``skip`` drops the batches a
    resumed run has already trained on. Incomplete batches are dropped (BatchNorm needs > 1).
    """

    def __init__(self, dataset: Dataset, batch_size: int, num_batches: int, seed: int,
                 rank: int = 0, world_size: int = 1):
        self.sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank,
                                          shuffle=True, seed=seed, drop_last=False)
        self.batch_size = batch_size
        self.num_batches = num_batches
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip
        self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        indices = iter(self.sampler)
        for b in range(self.num_batches):
            batch = list(islice(indices, self.batch_size))
            if b >= self.skip:
                yield [(self.epoch, i) for i in batch]

    def __len__(self) -> int:
        return self.num_batches - self.skip


def batches_per_epoch(num_samples: int, batch_size: int, world_size: int, grad_accum: int,
                      steps_per_epoch: int | None) -> int:
    """Batches one process draws per epoch: whole optimiser steps only."""
    per_rank = math.ceil(num_samples / world_size)
    steps = (per_rank // batch_size) // grad_accum
    if steps_per_epoch is not None:
        steps = min(steps, steps_per_epoch)
    return steps * grad_accum


def check_batches(cfg: RunConfig, num_samples: int, world_size: int) -> int:
    """Batches per epoch of each process (:func:`batches_per_epoch`).

    Raises:
        ConfigError: the training set gives no complete optimiser step.
    """
    d, o = cfg.data, cfg.optim
    n_batches = batches_per_epoch(num_samples, d.batch_size, world_size, o.grad_accum,
                                  cfg.train.steps_per_epoch)
    if n_batches == 0:
        raise ConfigError(f"data.batch_size: {num_samples} training images give no complete "
                          f"step of batch_size={d.batch_size} x grad_accum={o.grad_accum} "
                          f"x {world_size} process(es)")
    return n_batches


def build_loaders(cfg: RunConfig, train_ds, val_ds, transform,
                  info: ddp.DistInfo) -> tuple[DataLoader, DataLoader | None]:
    """The training loader (an :class:`EpochBatchSampler` over a :class:`SeededDataset`) and
    this process's share of the validation set (None without one).

    Raises:
        ConfigError: the training set gives no complete optimiser step.
    """
    d = cfg.data
    n_batches = check_batches(cfg, len(train_ds), info.world_size)
    pin = info.device.type == "cuda"
    sampler = EpochBatchSampler(train_ds, d.batch_size, n_batches, cfg.train.seed,
                                info.rank, info.world_size)
    # Each loader gets its own generator: without one, every iter() draws its workers' base
    # seed from the global torch RNG, so a run resumed mid-epoch (which starts a new iterator
    # after restoring that RNG) would shift every later dropout mask. The samples themselves
    # are seeded per index by SeededDataset and do not need the workers' seeds.
    # Persistent workers keep their decoded-sample cache (data.cache_mb) from epoch to epoch.
    train_loader = DataLoader(SeededDataset(train_ds, transform, cfg.train.seed),
                              batch_sampler=sampler,
                              num_workers=d.workers, pin_memory=pin,
                              persistent_workers=d.workers > 0,
                              generator=torch.Generator().manual_seed(cfg.train.seed))
    val_loader = None
    if val_ds is not None and len(val_ds):
        # Every process validates a disjoint share (no padding, so nothing counts twice).
        share = Subset(val_ds, range(info.rank, len(val_ds), info.world_size))
        val_loader = DataLoader(share, batch_size=d.val_batch_size, shuffle=False,
                                num_workers=d.workers, pin_memory=pin,
                                generator=torch.Generator().manual_seed(cfg.train.seed))
    return train_loader, val_loader
