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

from pixelwise.io.checkpoint import read_checkpoint


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


_BROADCAST = """
import os, sys, torch, torch.distributed as dist
from pixelwise.training import distributed as ddp
os.environ.update(RANK=sys.argv[1], WORLD_SIZE="2", LOCAL_RANK=sys.argv[1],
                  MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[2])
info = ddp.init_distributed("cpu")
bn = torch.nn.BatchNorm2d(3)
bn.running_mean.fill_(info.rank + 1.0)     # statistics drift apart between DDP broadcasts
bn.num_batches_tracked.fill_(10 * info.rank)
ddp.broadcast_buffers(bn, info)
assert bn.running_mean.tolist() == [1.0] * 3 and int(bn.num_batches_tracked) == 0, bn.running_mean
ddp.cleanup(info)
"""


def test_validation_sees_rank0_batchnorm_statistics_everywhere():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", _BROADCAST, str(rank), port], env=env,
                              stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err[-2000:]
