"""The demo runs the whole pipeline: synthetic data -> train -> evaluate -> predict."""
import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from pixelwise.cli import cli
from pixelwise.data import load_spec, SegmentationDataset
from pixelwise.data.synthetic import CLASS_NAMES, generate_sample, write_synthetic_dataset
from pixelwise.training.demo import run_demo


def test_synthetic_data_is_deterministic_and_multiclass(tmp_path):
    a = generate_sample(np.random.default_rng(3), 64)
    b = generate_sample(np.random.default_rng(3), 64)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    spec = load_spec(write_synthetic_dataset(tmp_path, n_train=6, n_val=2, size=48, seed=1))
    ds = SegmentationDataset(spec, "train")
    assert len(ds) == 6 and ds.class_names == CLASS_NAMES
    labels = np.unique(np.concatenate([ds.read_raw(i)[1].ravel() for i in range(6)]))
    assert set(labels) <= set(range(len(CLASS_NAMES))) and len(labels) >= 3


def test_demo_writes_metrics_overlays_and_checkpoint(tmp_path):
    out = tmp_path / "demo"
    result = CliRunner().invoke(cli, ["demo", "--output", str(out), "--epochs", "1",
                                      "--num-train", "8"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"pixel_accuracy", "mean_iou", "per_class_iou"} <= set(metrics)
    assert list(metrics["per_class_iou"]) == CLASS_NAMES
    assert metrics["split"] == "val" and metrics["num_images"] == 4     # a quarter of 8, >= 4
    # The reported numbers are those of the masks the demo predicted for the held-out images,
    # counted here pixel by pixel (no void pixels in the synthetic data).
    pred = np.stack([np.asarray(Image.open(out / "predictions" / f"{i:04d}_mask.png"))
                     for i in range(4)])
    truth = np.stack([np.asarray(Image.open(out / "data" / "val" / "masks" / f"{i:04d}.png"))
                      for i in range(4)])
    assert pred.shape == truth.shape == (4, 128, 128)
    assert metrics["pixel_accuracy"] == pytest.approx((pred == truth).mean(), abs=1e-12)
    for c, name in enumerate(CLASS_NAMES):
        union = np.sum((pred == c) | (truth == c))
        if union == 0:  # absent from truth and prediction: n/a
            assert metrics["per_class_iou"][name] is None, name
            continue
        iou = np.sum((pred == c) & (truth == c)) / union
        assert metrics["per_class_iou"][name] == pytest.approx(iou, abs=1e-12), name
    assert f"pixel accuracy {metrics['pixel_accuracy']:.4f}" in result.output
    assert (out / "checkpoint.pt").is_file()
    overlay = Image.open(out / "predictions" / "0000_overlay.png")
    assert overlay.size == (128, 128)
    assert str(out / "metrics.json") in result.output


@pytest.mark.slow
def test_full_demo_reaches_mean_iou_080(tmp_path):
    summary = run_demo(tmp_path / "demo")
    assert summary["mean_iou"] >= 0.80
