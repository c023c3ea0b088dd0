"""Resume state: what ``last.pt`` holds beyond the weights, writing it, and loading it back.

A checkpoint's ``training`` entry carries the optimiser, scheduler, scaler, :class:`Progress`
and RNG states, all as plain types so that ``torch.load(weights_only=True)`` reads them. With
``train.deterministic`` a run killed at any point and resumed from it ends with the same
weights, bit for bit, as one never interrupted (the data order is seeded per epoch and sample,
see :mod:`pixelwise.training.sampling`).
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..io.checkpoint import make_checkpoint, state_dict_mismatch
from ..errors import CheckpointError, PixelwiseError
from ..io.files import atomic_torch_save
from .state import Progress, RunState


def last_checkpoint(run_dir: Path) -> Path:
    return run_dir / "checkpoints" / "last.pt"


def best_checkpoint(run_dir: Path) -> Path:
    return run_dir / "checkpoints" / "best.pt"


def rng_state() -> dict[str, Any]:
    """Python, NumPy, torch and CUDA RNG states as weights_only-loadable values."""
    _, key, pos, has_gauss, gauss = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {"key": torch.from_numpy(key.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(gauss)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`rng_state`."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def training_state(t: RunState) -> dict[str, Any]:
    """The checkpoint's ``training`` entry: everything but the weights that resuming needs."""
    if t.budget is not None:
        t.progress.elapsed_s = t.budget.elapsed()
        t.progress.budget_steps = t.budget.total_steps(t.progress.step)
    return {
        "optimizer": t.optimizer.state_dict(),
        "scheduler": t.scheduler.state_dict(),
        "scaler": t.scaler.state_dict(),
        "progress": t.progress.state_dict(),
        "best_metric": t.cfg.train.best_metric,
        "world_size": t.dist.world_size,
        "rng": rng_state(),
    }


def kept_message(run_dir: Path) -> str:
    """What is left to resume from, for the message of a run that stops on a non-finite value."""
    last = last_checkpoint(run_dir)
    return (f"the last good checkpoint {last} is kept" if last.is_file()
            else "no checkpoint had been written yet")


def check_weights_finite(t: RunState) -> None:
    """Refuse to checkpoint NaN/inf weights (a step can break them before the loss shows it)."""
    for name, param in getattr(t.model, "module", t.model).state_dict().items():
        if param.is_floating_point() and not bool(torch.isfinite(param).all()):
            raise PixelwiseError(
                f"weight {name} is not finite after step {t.progress.step}; training stopped "
                f"and {kept_message(t.cfg.run_dir)}. Lower optim.lr or set optim.clip_grad_norm")


def save_checkpoints(t: RunState, best: bool = False) -> None:
    """Write ``last.pt`` (nothing else writes it), and ``best.pt`` too when ``best``.

    Every process checks the weights (all stop together); rank 0 writes.

    Raises:
        PixelwiseError: a weight is not finite (the previous checkpoints are kept).
    """
    check_weights_finite(t)
    if not t.dist.is_main:
        return
    ckpt = make_checkpoint(t.model, **t.checkpoint_meta, training=training_state(t))
    if best:
        # best.pt first: a run killed between the two writes resumes from the previous
        # last.pt and redoes this epoch, instead of recording a best epoch whose
        # weights never reached best.pt.
        atomic_torch_save(ckpt, best_checkpoint(t.cfg.run_dir))
    atomic_torch_save(ckpt, last_checkpoint(t.cfg.run_dir))


def restore(t: RunState, ckpt: dict[str, Any], path: Path) -> None:
    """Load model, optimiser, scheduler, scaler, progress and RNG from a raw checkpoint.

    Raises:
        CheckpointError: no training state, or one that does not fit this run's model,
            optimiser or number of processes (named in the message).
    """
    training = ckpt.get("training")
    if not training:
        raise CheckpointError(f"{path}: has no training state to resume from")
    net = getattr(t.model, "module", t.model)
    mismatch = state_dict_mismatch(net, ckpt["state_dict"])
    if mismatch:
        raise CheckpointError(f"{path}: weights do not fit this config's model: {mismatch}")
    try:
        net.load_state_dict(ckpt["state_dict"], strict=True)
        t.optimizer.load_state_dict(training["optimizer"])
    except (RuntimeError, ValueError, KeyError) as e:
        raise CheckpointError(f"{path}: does not match this config's model/optimiser: {e}") from e
    t.scheduler.load_state_dict(training["scheduler"])
    if training["scaler"]:
        t.scaler.load_state_dict(training["scaler"])
    progress = Progress(**training["progress"])
    if progress.batch and training.get("world_size", 1) != t.dist.world_size:
        raise CheckpointError(f"{path}: saved mid-epoch by {training.get('world_size')} "
                              f"process(es); resume it with the same number, not "
                              f"{t.dist.world_size}")
    t.progress = progress
    set_rng_state(training["rng"])
