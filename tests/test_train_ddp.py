"""DDP on CPU with gloo: two processes of batch 2 follow one process of batch 4."""
from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from pixelwise.checkpoint import read_checkpoint


def _config(spec: Path, out: Path, name: str, batch: int) -> Path:
    raw = {
        # no BatchNorm: its statistics would differ between one batch of 4 and two of 2
        "model": {"name": "unet", "kwargs": {"base_channels": 4, "depth": 2, "batch_norm": False}},
        "data": {"spec": str(spec), "batch_size": batch, "workers": 0, "crop_size": 24},
        "augment": {"hflip": 0.5, "rotate90": True},
        "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "warmup_steps": 1},
        "train": {"epochs": 2, "seed": 7, "deterministic": True, "progress": False},
        "output": {"dir": str(out), "name": name},
    }
    path = out / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _rows(run: Path) -> list[dict]:
    with open(run / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_two_gloo_processes_match_one_process_with_the_same_global_batch(tmp_path):
    from pixelwise.data.synthetic import write_synthetic_dataset

    spec = write_synthetic_dataset(tmp_path / "data", n_train=12, n_val=3, size=32, seed=2)
    launcher = tmp_path / "launch.py"
    launcher.write_text("from pixelwise.cli import main\nmain()\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, str(launcher), "train",
                          str(_config(spec, tmp_path, "one", 4)), "--quiet"],
                         env=env, capture_output=True, text=True, timeout=120)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          "--nproc_per_node", "2", str(launcher), "train",
                          str(_config(spec, tmp_path, "two", 2)), "--quiet"],
                         env=env, capture_output=True, text=True, timeout=120)
    assert two.returncode == 0, two.stderr[-3000:]

    a, b = _rows(tmp_path / "one"), _rows(tmp_path / "two")
    assert len(a) == len(b) == 2
    for ra, rb in zip(a, b):
        assert ra["step"] == rb["step"] == str(3 * int(ra["epoch"]))   # 12 images / 4 per step
        assert float(ra["train_loss"]) == pytest.approx(float(rb["train_loss"]), rel=1e-5)
        assert float(ra["val_loss"]) == pytest.approx(float(rb["val_loss"]), rel=1e-5)
        # the validation confusion matrix is summed over both processes' images
        assert float(ra["pixel_accuracy"]) == pytest.approx(float(rb["pixel_accuracy"]), abs=1e-6)
    wa = read_checkpoint(tmp_path / "one" / "checkpoints" / "last.pt")["state_dict"]
    wb = read_checkpoint(tmp_path / "two" / "checkpoints" / "last.pt")["state_dict"]
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-6)
    # only rank 0 wrote: no stray files from rank 1
    written = sorted(p.name for p in (tmp_path / "two" / "checkpoints").iterdir())
    assert written == ["best.pt", "last.pt"]
