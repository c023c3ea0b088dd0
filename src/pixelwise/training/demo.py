"""The built-in demo: synthetic data -> train a small U-Net -> evaluate -> predict -> overlays.

It runs the same pipeline a user's data goes through (dataset spec, run config, trainer,
evaluation, prediction), so a green demo means the whole path works on this machine.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..data.synthetic import write_synthetic_dataset
from ..io.config import parse_config
from ..io.files import atomic_write_bytes, atomic_write_json
from ..io.outputs import Recorder, check_output_folder, read_records, refuse_foreign
from ..metrics import SUMMARY_METRICS

# The demo's own files directly in its output folder (the rest goes into its sub-folders).
DEMO_FILES = ("metrics.json", "checkpoint.pt")


def demo_config(spec_path: Path, output: Path, epochs: int, seed: int) -> dict[str, Any]:
    """The run config of the demo: a U-Net of base width 16 trained with AdamW + cosine."""
    return {
        "model": {"name": "unet", "kwargs": {"base_channels": 16, "depth": 4, "batch_norm": True}},
        "data": {"spec": str(spec_path), "batch_size": 8, "val_batch_size": 8, "workers": 0},
        "augment": {"hflip": 0.5, "vflip": 0.5, "seed": seed},
        "optim": {"name": "adamw", "lr": 3e-3, "weight_decay": 1e-4, "schedule": "cosine",
                  "warmup_epochs": 1},
        "loss": {"name": "ce"},
        "train": {"epochs": epochs, "seed": seed, "device": "cpu", "best_metric": "mean_iou",
                  "tensorboard": False},
        "output": {"dir": str(output), "name": "run", "overwrite": True},
    }


def run_demo(output: str | Path, epochs: int = 15, n_train: int = 160, n_val: int = 40,
             size: int = 128, seed: int = 0, n_overlays: int = 8) -> dict[str, Any]:
    """Run the demo into ``output`` and return its headline metrics.

    Writes ``output/data`` (images, masks, spec.yaml), ``output/run`` (config, checkpoints,
    metrics per epoch, curves), ``output/evaluation`` (metrics and report),
    ``output/predictions`` (masks and overlays of held-out images), ``output/metrics.json``
    and ``output/checkpoint.pt``.
    """
    from ..inference.evaluate import evaluate
    from ..inference.batch import predict_paths
    from ..inference.predict import Predictor
    from .resume import best_checkpoint
    from .train import train

    output = check_output_folder(output, "--output")
    refuse_foreign(output, DEMO_FILES, read_records(output), overwrite=False, option="--output",
                   overwrite_flag=None)
    output.mkdir(parents=True, exist_ok=True)
    Recorder(output).claim(DEMO_FILES)
    spec_path = write_synthetic_dataset(output / "data", n_train, n_val, size, seed)
    cfg = parse_config(demo_config(spec_path, output, epochs, seed), source="demo")
    run_dir = train(cfg)

    best = best_checkpoint(run_dir)
    checkpoint = output / "checkpoint.pt"
    atomic_write_bytes(checkpoint, best.read_bytes())
    metrics = evaluate(checkpoint, str(spec_path), "val", output / "evaluation")

    held_out = sorted((output / "data" / "val" / "images").glob("*.png"))[:n_overlays]
    predict_paths(Predictor(checkpoint), [str(p) for p in held_out], output / "predictions")

    summary = {
        **{k: metrics[k] for k in SUMMARY_METRICS},
        "per_class_iou": {row["class"]: row["iou"] for row in metrics["per_class"]},
        "split": "val",
        "num_images": n_val,
    }
    atomic_write_json(output / "metrics.json", summary)
    return summary

