"""Trainer: schedules, data order, resume after SIGKILL, NaN stop, best checkpoint and early
stopping. (The valid-padding forward and the labels: tests/test_forward.py.)"""
from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from pixelwise.io.checkpoint import load_checkpoint, read_checkpoint
from pixelwise.io.config import load_config
from pixelwise.errors import PixelwiseError
from pixelwise.training import resume as R
from pixelwise.training import sampling as D
from pixelwise.training import schedule as S
from pixelwise.training import setup as U
from pixelwise.training import train as T


@pytest.fixture(scope="module")
def spec_path(tmp_path_factory) -> Path:
    from pixelwise.data.synthetic import write_synthetic_dataset

    return write_synthetic_dataset(tmp_path_factory.mktemp("shapes"), n_train=12, n_val=2,
                                   size=32, seed=1)


def tiny_config(spec: Path, out: Path, **sections) -> dict:
    raw = {
        "model": {"name": "unet", "kwargs": {"base_channels": 4, "depth": 2}},
        "data": {"spec": str(spec), "batch_size": 2, "workers": 0, "crop_size": 24},
        "augment": {"hflip": 0.5, "vflip": 0.5},
        "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "warmup_steps": 2,
                  "schedule": "poly"},
        "train": {"epochs": 2, "seed": 3, "deterministic": True, "progress": False},
        "output": {"dir": str(out), "name": "run"},
    }
    for key, value in sections.items():
        raw[key].update(value)
    return raw


# --- pure pieces ---------------------------------------------------------------------------

def test_lr_factor_warmup_poly_cosine():
    # warm-up: linear from 0.1 to 1 over 4 steps
    assert S.lr_factor(0, 100, 4, "poly", warmup_factor=0.1) == pytest.approx(0.1)
    assert S.lr_factor(2, 100, 4, "poly", warmup_factor=0.1) == pytest.approx(0.55)
    # poly after warm-up: t = (54 - 4) / (104 - 4) = 0.5
    assert S.lr_factor(54, 104, 4, "poly", power=0.9) == pytest.approx(0.5 ** 0.9)
    assert S.lr_factor(104, 104, 4, "poly") == 0.0
    # cosine with a floor of 0.1: at t = 0.5 -> 0.1 + 0.9 * 0.5
    assert S.lr_factor(50, 100, 0, "cosine", min_lr_ratio=0.1) == pytest.approx(0.55)
    assert S.lr_factor(100, 100, 0, "cosine", min_lr_ratio=0.1) == pytest.approx(0.1)
    assert S.lr_factor(70, 100, 0, "none") == 1.0


def test_two_ranks_draw_the_global_batch_of_one_process():
    data = list(range(10))
    one = D.EpochBatchSampler(data, batch_size=4, num_batches=2, seed=5)
    r0 = D.EpochBatchSampler(data, batch_size=2, num_batches=2, seed=5, rank=0, world_size=2)
    r1 = D.EpochBatchSampler(data, batch_size=2, num_batches=2, seed=5, rank=1, world_size=2)
    for s in (one, r0, r1):
        s.set_epoch(3)
    for b_one, b0, b1 in zip(one, r0, r1):
        assert sorted(b_one) == sorted(b0 + b1)
        assert all(e == 3 for e, _ in b_one)
    # another epoch, another order; the same epoch, the same order
    one.set_epoch(4)
    e4 = [i for b in one for _, i in b]
    one.set_epoch(3)
    assert e4 != [i for b in one for _, i in b]
    # skipping resumes inside the epoch
    one.set_epoch(3, skip=1)
    assert len(one) == 1 and len(list(one)) == 1


def test_batches_per_epoch_counts_whole_optimizer_steps():
    assert D.batches_per_epoch(12, 2, 1, 1, None) == 6
    assert D.batches_per_epoch(12, 2, 1, 4, None) == 4     # 6 batches -> 1 step of 4
    assert D.batches_per_epoch(12, 2, 2, 1, None) == 3     # 6 per rank
    assert D.batches_per_epoch(12, 2, 1, 1, 2) == 2


def test_rng_state_round_trips_through_weights_only_load(tmp_path):
    import random

    import numpy as np

    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    state = R.rng_state()
    torch.save(state, tmp_path / "rng.pt")
    expect = (torch.rand(3), np.random.rand(3), random.random())
    R.set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expect[0], again[0])
    assert (expect[1] == again[1]).all() and expect[2] == again[2]


# --- runs ----------------------------------------------------------------------------------

def test_train_writes_run_folder(spec_path, tmp_path):
    cfg = load_config(raw=tiny_config(spec_path, tmp_path))
    run = T.train(cfg)
    for name in ("config.yaml", "metrics.csv", "curves.png", "checkpoints/last.pt",
                 "checkpoints/best.pt"):
        assert (run / name).is_file(), name
    ckpt = read_checkpoint(run / "checkpoints" / "last.pt")  # weights_only=True inside
    assert ckpt["training"]["progress"]["epoch"] == 2
    assert ckpt["training"]["progress"]["step"] == 12      # 12 images / batch 2 x 2 epochs
    assert ckpt["config"]["optim"]["lr"] == 0.05
    assert ckpt["model"]["kwargs"]["num_classes"] == 4     # filled from the dataset
    # the schedule ended at poly(t=1) = 0
    assert ckpt["training"]["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.0)
    lines = (run / "metrics.csv").read_text().splitlines()
    assert lines[0].startswith("epoch,step,lr,train_loss,val_loss,pixel_accuracy")
    assert len(lines) == 3
    loaded = load_checkpoint(run / "checkpoints" / "best.pt")
    assert loaded.class_names == ["background", "disc", "box", "triangle"]
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["epochs"] == 2
    # a second fresh run into the same folder is refused, not silently mixed
    with pytest.raises(PixelwiseError, match="--resume"):
        T.train(cfg)


def test_nan_loss_stops_naming_the_step_and_keeps_last_good_checkpoint(spec_path, tmp_path,
                                                                        monkeypatch):
    from pixelwise import losses

    real = losses.build_loss

    class NanAfter(torch.nn.Module):
        def __init__(self, inner, calls):
            super().__init__()
            self.inner, self.calls = inner, calls

        def forward(self, logits, target):
            self.calls -= 1
            loss = self.inner(logits, target)
            return loss * float("nan") if self.calls < 0 else loss

    # 6 training batches + 1 validation batch per epoch: call 8 is epoch 2's first batch
    monkeypatch.setattr(losses, "build_loss", lambda name, **kw: NanAfter(real(name, **kw), 7))
    cfg = load_config(raw=tiny_config(spec_path, tmp_path, train={"epochs": 3}))
    with pytest.raises(PixelwiseError, match=r"loss is nan at step 7 \(epoch 2, batch 1\)"):
        T.train(cfg)
    last = read_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert last["training"]["progress"]["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values()
               if v.is_floating_point())


def test_best_checkpoint_and_early_stopping(spec_path, tmp_path, monkeypatch):
    scores = iter([0.5, 0.7, 0.6, 0.65, 0.9, 0.95])

    def fake_validate(t):
        return {"val_loss": 1.0, "mean_iou": next(scores)}

    monkeypatch.setattr(T, "validate", fake_validate)
    cfg = load_config(raw=tiny_config(spec_path, tmp_path, train={
        "epochs": 6, "early_stopping_patience": 2, "best_metric": "mean_iou",
        "steps_per_epoch": 1}))
    run = T.train(cfg)
    rows = (run / "metrics.csv").read_text().splitlines()[1:]
    assert len(rows) == 4                       # stopped after epochs 3 and 4 did not beat 0.7
    best = read_checkpoint(run / "checkpoints" / "best.pt")["training"]["progress"]
    assert best["epoch"] == 2 and best["best_value"] == 0.7 and best["best_epoch"] == 2


# --- resume after SIGKILL ------------------------------------------------------------------

def _cli(config: Path, *args: str) -> list[str]:
    return [sys.executable, "-c", "from pixelwise.cli import main; main()", "train",
            str(config), "--quiet", *args]


def _env() -> dict:
    # One thread: the same kernels, the same summation order, in every run.
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def test_resume_after_sigkill_is_bitwise_identical(spec_path, tmp_path):
    def write(name: str) -> Path:
        raw = tiny_config(spec_path, tmp_path, train={"epochs": 4, "checkpoint_every_steps": 1},
                          optim={"grad_accum": 2, "clip_grad_norm": 1.0},
                          output={"name": name})
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(raw))
        return path

    ref_cfg, cut_cfg = write("ref"), write("cut")
    ref = subprocess.run(_cli(ref_cfg), env=_env(), capture_output=True, text=True, timeout=120)
    assert ref.returncode == 0, ref.stderr

    last = tmp_path / "cut" / "checkpoints" / "last.pt"
    proc = subprocess.Popen(_cli(cut_cfg), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    killed_at = read_checkpoint(last)["training"]["progress"]
    assert killed_at["epoch"] < 4

    res = subprocess.run(_cli(cut_cfg, "--resume"), env=_env(), capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr

    a = read_checkpoint(tmp_path / "ref" / "checkpoints" / "last.pt")
    b = read_checkpoint(last)
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
    assert (a["training"]["optimizer"]["state"][0]["momentum_buffer"]
            .equal(b["training"]["optimizer"]["state"][0]["momentum_buffer"]))
    losses_a = [h["train_loss"] for h in a["training"]["progress"]["history"]]
    losses_b = [h["train_loss"] for h in b["training"]["progress"]["history"]]
    assert losses_a == losses_b and len(losses_a) == 4


def test_model_kwargs_are_filled_from_the_dataset_where_the_builder_takes_them():
    from types import SimpleNamespace

    from pixelwise.errors import ConfigError

    rgb11 = SimpleNamespace(in_channels=3, num_classes=11)
    fcn = load_config(raw={"model": {"name": "fcn8s"}, "data": {"spec": "x"}})
    assert U.resolve_model_kwargs(fcn, rgb11) == {"num_classes": 11}   # fcn8s has no in_channels
    with pytest.raises(ConfigError, match="3-channel"):
        U.resolve_model_kwargs(fcn, SimpleNamespace(in_channels=1, num_classes=2))
    unet = load_config(raw={"model": {"name": "unet", "kwargs": {"num_classes": 1}},
                            "data": {"spec": "x"}})
    assert U.resolve_model_kwargs(unet, SimpleNamespace(in_channels=1, num_classes=2)) == \
        {"num_classes": 1, "in_channels": 1}                           # binary on two classes
    with pytest.raises(ConfigError, match="model.kwargs.num_classes"):
        U.resolve_model_kwargs(unet, rgb11)


def test_loaders_leave_the_global_torch_rng_alone(spec_path, tmp_path):
    # A resumed run restores the global RNG and then starts a new loader iterator mid-epoch;
    # if iter() drew from that RNG, every later dropout mask would shift.
    from pixelwise.training.distributed import DistInfo

    cfg = load_config(raw=tiny_config(spec_path, tmp_path))
    train_ds, val_ds, transform = U.build_datasets(cfg)
    train_loader, val_loader = D.build_loaders(cfg, train_ds, val_ds, transform, DistInfo())
    for loader in (train_loader, val_loader):
        before = torch.get_rng_state()
        next(iter(loader))
        assert torch.equal(before, torch.get_rng_state())


def recorded_saves(monkeypatch, key: str) -> list[tuple[str, int]]:
    """Checkpoint writes from now on, as (file name, its progress[key]), in order."""
    written = []
    real = R.atomic_torch_save

    def record(obj, path):
        written.append((Path(path).name, obj["training"]["progress"][key]))
        return real(obj, path)

    monkeypatch.setattr(R, "atomic_torch_save", record)
    return written


def test_best_checkpoint_is_written_before_last(spec_path, tmp_path, monkeypatch):
    # Killed between the two writes, a run must not resume past an epoch whose best.pt is
    # missing: best.pt goes first, so last.pt never runs ahead of it. Mid-epoch saves go
    # through the same writer: after steps 1 and 2 of 3 (the epoch's end saves step 3).
    written = recorded_saves(monkeypatch, "step")
    cfg = load_config(raw=tiny_config(spec_path, tmp_path, train={
        "epochs": 1, "steps_per_epoch": 3, "checkpoint_every_steps": 1}))
    T.train(cfg)
    assert written == [("last.pt", 1), ("last.pt", 2), ("best.pt", 3), ("last.pt", 3)]


def test_checkpoint_every_minutes_skips_last_pt_until_due_or_the_end(spec_path, tmp_path,
                                                                     monkeypatch):
    # Epochs of a few steps: a write per epoch costs ~5% of a short budget. Within the
    # interval only the run's end (here also its one validation, the best) writes.
    written = recorded_saves(monkeypatch, "epoch")
    for every, expected in [
            (60.0, [("best.pt", 3), ("last.pt", 3)]),
            (None, [("last.pt", 1), ("last.pt", 2), ("best.pt", 3), ("last.pt", 3)])]:
        written.clear()
        cfg = load_config(raw=tiny_config(spec_path, tmp_path / str(every), train={
            "epochs": 3, "steps_per_epoch": 1, "val_every": 10,
            "checkpoint_every_minutes": every}))
        T.train(cfg)
        assert written == expected


def test_training_samples_are_decoded_once_within_the_cache_budget(spec_path, monkeypatch):
    from pixelwise.data import SegmentationDataset
    from pixelwise.data import dataset as DS

    reads = []
    real = DS.load_sample
    monkeypatch.setattr(DS, "load_sample", lambda spec, s: reads.append(s.image) or real(spec, s))
    one = real(SegmentationDataset(spec_path, "train").spec,
               SegmentationDataset(spec_path, "train")._samples[0])
    size_mb = (one[0].nbytes + one[1].nbytes) / 2**20
    for cache_mb, expected in [(0, 24), (1, 12)]:  # 12 images of 32 x 32: ~0.02 MiB each
        reads.clear()
        ds = SegmentationDataset(spec_path, "train", cache_mb=cache_mb)
        for _ in range(2):
            for i in range(len(ds)):
                image, mask = ds[i]
        assert len(reads) == expected and 12 * size_mb < 1
    image, mask = ds.read_raw(0)
    assert not image.flags.writeable and not mask.flags.writeable  # shared by every epoch
    assert ds[0][1].numpy().flags.writeable  # the tensors handed out are copies


def test_without_validation_best_is_the_last_checkpoint(spec_path, tmp_path):
    cfg = load_config(raw=tiny_config(spec_path, tmp_path, data={"val_split": None},
                                      train={"epochs": 1, "steps_per_epoch": 1}))
    run = T.train(cfg)
    last = (run / "checkpoints" / "last.pt").read_bytes()
    assert (run / "checkpoints" / "best.pt").read_bytes() == last
    progress = read_checkpoint(run / "checkpoints" / "best.pt")["training"]["progress"]
    assert progress["step"] == 1 and progress["best_epoch"] is None
    assert "mean_iou" not in progress["history"][0]


def test_deeply_supervised_unet_plus_plus_trains_on_the_mean_of_its_heads(spec_path, tmp_path,
                                                                         one_thread):
    from pixelwise.losses import DeepSupervisionLoss, build_loss

    raw = tiny_config(spec_path, tmp_path, train={"epochs": 1})
    raw["model"] = {"name": "unet_plus_plus", "kwargs": {"base_channels": 4, "depth": 2,
                                                         "deep_supervision": True}}
    run = T.train(load_config(raw=raw))
    progress = read_checkpoint(run / "checkpoints" / "last.pt")["training"]["progress"]
    assert progress["step"] == 6                       # 12 images / batch 2, one epoch
    history = progress["history"][0]
    assert math.isfinite(history["train_loss"]) and history["train_loss"] > 0
    # Validated on the eval-mode tensor (the last head), so the logged score is the one an
    # evaluation of the same weights gives (a list of heads would not be).
    from pixelwise.inference.evaluate import evaluate

    scored = evaluate(run / "checkpoints" / "last.pt", str(spec_path), "val", device="cpu")
    assert history["mean_iou"] == pytest.approx(scored["mean_iou"], abs=1e-9)
    # What the trainer wraps its loss in: on a list, the mean of the heads' losses.
    ce = build_loss("ce")
    heads = [torch.randn(2, 4, 8, 8) for _ in range(3)]
    target = torch.randint(0, 4, (2, 8, 8))
    expected = sum(ce(h, target) for h in heads) / 3
    assert torch.allclose(DeepSupervisionLoss(ce)(heads, target), expected)


def test_val_batches_of_mixed_image_sizes_are_refused_before_training(tmp_path):
    from PIL import Image

    from pixelwise.errors import ConfigError

    root = tmp_path / "mixed"
    for split, sizes in (("train", [(32, 32)] * 4), ("val", [(32, 32), (40, 48)])):
        (root / split / "images").mkdir(parents=True)
        (root / split / "masks").mkdir(parents=True)
        for i, (h, w) in enumerate(sizes):
            Image.new("RGB", (w, h)).save(root / split / "images" / f"{i}.png")
            Image.new("L", (w, h)).save(root / split / "masks" / f"{i}.png")
    spec = {"name": "mixed", "root": str(root), "class_names": ["a", "b"],
            "mask": {"encoding": "indices"},
            "splits": {s: {"images": f"{s}/images/*.png", "masks": f"{s}/masks/{{name}}"}
                       for s in ("train", "val")}}
    raw = tiny_config(spec, tmp_path, data={"spec": spec, "val_batch_size": 2})
    with pytest.raises(ConfigError, match=r"data.val_batch_size: 2 needs validation images "
                                          r"of one size.*32x32 and 40x48"):
        T.train(load_config(raw=raw))
    assert not (tmp_path / "run" / "checkpoints" / "last.pt").exists()
