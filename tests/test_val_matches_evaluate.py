"""The issue's acceptance test: the validation metrics a training run logs for ``best.pt`` are
the ones ``pixelwise evaluate`` reports for it on the same split, at the default threshold and
at another one, for the three cases where validation and prediction used to differ:

- a binary padded U-Net (validation said ``logit > 0``, prediction ``sigmoid >= threshold``);
- a zero-initialised binary FCN, whose logits are all 0 (the two rules disagreed on every
  pixel); at a learning rate of 1e-50 every float32 update underflows to 0, so the score
  layers stay exactly zero through training;
- a valid-convolution U-Net (validation centred the mirrored image, prediction placed it at
  the top-left of a square tile).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from pixelwise.io.checkpoint import read_checkpoint
from pixelwise.io.config import load_config
from pixelwise.inference.evaluate import evaluate
from pixelwise.training.train import train

pytestmark = pytest.mark.usefixtures("one_thread")

# The Lovasz hinge keeps these tiny U-Nets' probabilities around 0.5 (measured on the val
# split: padded 0.44 / 0.51 / 0.53, valid 0.52 / 0.52 / 0.52 at the quartiles), so both
# thresholds below split their pixels into both classes; BCE pulls every pixel under 0.5.
LOSS = "lovasz"
THRESHOLDS = (0.5, 0.52)  # the default and another
METRICS = ("pixel_accuracy", "mean_accuracy", "mean_iou", "fw_iou", "dice")

# name, kwargs, learning rate, optimiser steps (two per epoch)
CASES = {
    "padded_unet": ("unet", dict(num_classes=1, base_channels=4, depth=2), 0.05, 6),
    "zero_fcn": ("fcn32s", dict(num_classes=1, dropout=0.0), 1e-50, 1),
    "valid_unet": ("unet", dict(num_classes=1, base_channels=4, depth=2, padding="valid",
                                batch_norm=False), 0.05, 6),
}


@pytest.fixture(scope="module")
def binary_spec(tmp_path_factory) -> Path:
    """Synthetic shapes as two classes (any shape = foreground), at odd sizes: 2 of 37x29."""
    from pixelwise.data.synthetic import generate_sample

    root = tmp_path_factory.mktemp("binary")
    rng = np.random.default_rng(4)
    for split, n in (("train", 4), ("val", 2)):
        for sub in ("images", "masks"):
            (root / split / sub).mkdir(parents=True)
        for i in range(n):
            image, mask = generate_sample(rng, 40)
            Image.fromarray(image[:37, :29]).save(root / split / "images" / f"{i}.png")
            Image.fromarray((mask[:37, :29] > 0).astype(np.uint8)).save(
                root / split / "masks" / f"{i}.png")
    spec = {"name": "binary-shapes", "root": str(root), "class_names": ["background", "shape"],
            "channels": 3, "mean": [0.5] * 3, "std": [0.25] * 3,
            "mask": {"encoding": "indices"},
            "splits": {s: {"images": f"{s}/images/*.png", "masks": f"{s}/masks/{{name}}"}
                       for s in ("train", "val")}}
    (root / "spec.yaml").write_text(yaml.safe_dump(spec))
    return root / "spec.yaml"


def _train(spec: Path, out: Path, name: str, kwargs: dict, lr: float, steps: int,
           threshold: float) -> Path:
    cfg = load_config(raw={
        "model": {"name": name, "kwargs": kwargs},
        "data": {"spec": str(spec), "batch_size": 2, "workers": 0, "crop_size": 24},
        "loss": {"name": LOSS, "kwargs": {"mode": "binary"}},
        # One step does not depend on momentum; without it the FCN's checkpoints do not
        # carry a 134 M-value momentum buffer.
        "optim": {"name": "sgd", "lr": lr, "momentum": 0.9 if steps > 1 else 0.0},
        "train": {"epochs": max(1, steps // 2), "steps_per_epoch": min(steps, 2), "seed": 0,
                  "progress": False,
                  "tensorboard": False, "val_threshold": threshold},
        "output": {"dir": str(out), "name": "run"},
    })
    return train(cfg) / "checkpoints" / "best.pt"


def _logged_for_best(best: Path) -> dict:
    progress = read_checkpoint(best)["training"]["progress"]
    (entry,) = [e for e in progress["history"] if e["epoch"] == progress["best_epoch"]]
    return entry


@pytest.mark.parametrize("threshold", THRESHOLDS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_logged_val_metrics_equal_evaluate(binary_spec, tmp_path, case, threshold):
    best = _train(binary_spec, tmp_path, *CASES[case], threshold)
    logged = _logged_for_best(best)
    scored = evaluate(best, str(binary_spec), "val", device="cpu", threshold=threshold)
    assert {k: scored[k] for k in METRICS} == {k: logged[k] for k in METRICS}
    if case == "zero_fcn":
        # Every logit is 0 and its sigmoid 0.5: all foreground at 0.5 (the old validation
        # rule, logit > 0, said all background), all background at 0.52. The pixel accuracy
        # is then the foreground share of the val masks, or the background share.
        masks = [np.asarray(Image.open(p)) for p in sorted(binary_spec.parent.glob("val/masks/*"))]
        share = float(np.mean([m.mean() for m in masks]))  # equal-sized masks
        assert 0.05 < share < 0.95  # both classes present: the rule decides every pixel
        want = share if threshold <= 0.5 else 1 - share
        assert logged["pixel_accuracy"] == pytest.approx(want)
    else:
        # The U-Nets predict both classes, so the threshold decides real pixels.
        predicted = np.asarray(scored["confusion_matrix"]).sum(0)
        assert predicted.min() > 0, predicted


def test_cli_evaluate_takes_the_threshold(binary_spec, tmp_path):
    from pixelwise.cli import main

    best = _train(binary_spec, tmp_path, *CASES["valid_unet"], THRESHOLDS[1])
    with pytest.raises(SystemExit) as e:
        main(["evaluate", "-c", str(best), "-d", str(binary_spec), "-o", str(tmp_path / "e"),
              "--threshold", str(THRESHOLDS[1]), "--examples", "0", "--device", "cpu"])
    assert e.value.code == 0
    import json

    scored = json.loads((tmp_path / "e" / "metrics.json").read_text())
    logged = _logged_for_best(best)
    assert scored["mean_iou"] == logged["mean_iou"]
