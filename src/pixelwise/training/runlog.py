"""Run-folder output besides the checkpoints: ``metrics.csv``, TensorBoard, ``curves.png``,
the per-epoch log line and the progress bar.

Run folder (``output.dir/output.name``)::

    config.yaml           the resolved config
    checkpoints/last.pt   written every epoch (and every ``checkpoint_every_steps``)
    checkpoints/best.pt   the best epoch by ``train.best_metric``
    metrics.csv           one row per epoch
    curves.png            loss and metric curves, drawn at the end
    tensorboard/          when the tensorboard package is importable
    .lock                 held by the run writing here (pid, host, start time)

Only rank 0 writes here, and only while it holds the lock: a second run into the same folder
stops at once and names the one that holds it.
"""
from __future__ import annotations

import csv
import fcntl
import io
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

from ..io.config import RunConfig
from ..errors import PixelwiseError
from ..io.files import atomic_write_text, remove_stale_temporaries
from ..metrics import SUMMARY_METRICS
from .resume import best_checkpoint, last_checkpoint

log = logging.getLogger("pixelwise.train")

CSV_FIELDS = ("epoch", "step", "lr", "train_loss", "val_loss", *SUMMARY_METRICS,
              "time_s", "images_per_s")


def lock_run_dir(run_dir: Path):
    """Take the run folder's exclusive lock for as long as the returned file stays open (the
    kernel drops it when the process ends, however it ends).

    Raises:
        PixelwiseError: another run holds it; the message names its pid, host and start.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    handle = open(run_dir / ".lock", "a+", encoding="utf-8")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip() or "a run that has not yet said who it is"
        handle.close()
        raise PixelwiseError(f"{run_dir}: run folder is in use by {holder}; wait for it to "
                             f"end, or set output.name=... to train into another") from None
    handle.seek(0)
    handle.truncate()
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    handle.write(f"pid {os.getpid()} on {socket.gethostname()}, started {started}\n")
    handle.flush()
    return handle


def prepare_run_dir(cfg: RunConfig, resume: bool) -> Path:
    """Make ``checkpoints/``; refuse to start afresh over checkpoints unless told to. Call it
    holding the lock (:func:`lock_run_dir`).

    ``output.overwrite`` deletes the checkpoints a run writes (``last.pt``, ``best.pt``)
    and nothing else: other files in ``checkpoints/`` are the user's.

    Raises:
        PixelwiseError: the folder has checkpoints, and neither ``resume`` nor
            ``output.overwrite`` is set.
    """
    run_dir = cfg.run_dir
    if last_checkpoint(run_dir).exists() and not resume:
        if not cfg.output.overwrite:
            raise PixelwiseError(f"{run_dir}: run folder already has checkpoints; pass --resume to "
                                 f"continue it, or set output.name=... or output.overwrite=true")
        for own in (last_checkpoint(run_dir), best_checkpoint(run_dir)):
            own.unlink(missing_ok=True)
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    # A run killed during a write leaves its temporary behind; nothing else writes here.
    for folder in (run_dir, run_dir / "checkpoints"):
        for stale in remove_stale_temporaries(folder):
            log.info("removed %s, left by a write that was killed", stale)
    return run_dir


def _csv_row(entry: dict[str, Any]) -> dict[str, Any]:
    row = {k: entry.get(k) for k in CSV_FIELDS}
    return {k: ("" if v is None else v) for k, v in row.items()}


def write_metrics_csv(path: Path, history: list[dict[str, Any]]) -> None:
    """Rewrite the whole CSV from the history: a resumed run has exactly its checkpoint's rows."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS)
    writer.writeheader()
    for entry in history:
        writer.writerow(_csv_row(entry))
    atomic_write_text(path, buf.getvalue())


def open_tensorboard(cfg: RunConfig, run_dir: Path):
    """A SummaryWriter into ``run_dir/tensorboard``, or None (off, or not installed)."""
    if not cfg.train.tensorboard:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard not installed: the CSV and curves.png still have it all
        return None
    return SummaryWriter(str(run_dir / "tensorboard"))


def log_epoch(entry: dict[str, Any], writer) -> None:
    """One log line per epoch, and its numbers to TensorBoard (``writer`` may be None)."""
    parts = [f"{k}={entry[k]:.4f}" for k in ("train_loss", "val_loss", *SUMMARY_METRICS)
             if isinstance(entry.get(k), float)]
    log.info("epoch %d  step %d  %s  %.1f img/s", entry["epoch"], entry["step"], "  ".join(parts),
             entry.get("images_per_s", 0.0))
    if writer is not None:
        for k in ("train_loss", "val_loss", "lr", *SUMMARY_METRICS):
            if isinstance(entry.get(k), (int, float)):
                writer.add_scalar(k, entry[k], entry["step"])


def progress_bar(epoch: int, epochs: int | None, num_batches: int, done: int):
    """A tqdm bar over an epoch's batches, starting at the ``done`` already trained on."""
    from tqdm.auto import tqdm

    return tqdm(total=num_batches, initial=done, leave=False, dynamic_ncols=True,
                desc=f"epoch {epoch + 1}/{epochs or '?'}", unit="batch")


def write_curves(history: list[dict[str, Any]], run_dir: Path) -> None:
    """``curves.png`` from the per-epoch history."""
    from ..report.figures import plot_training_curves

    plot_training_curves(history, run_dir / "curves.png")
