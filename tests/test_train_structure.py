"""The trainer's structure holds: one registry lookup, one list of summary metrics, one writer
of last.pt, one AMP decision; each checked where it can break (in the source or in a run)."""
from __future__ import annotations

import ast
from pathlib import Path

import torch

from pixelwise.io.config import load_config
from pixelwise.training.distributed import DistInfo
from pixelwise.training.state import build_run_state
from pixelwise.metrics import SUMMARY_METRICS, compute_metrics

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src" / "pixelwise"


def sources(*folders: Path) -> dict[str, ast.AST]:
    return {str(p.relative_to(REPO)): ast.parse(p.read_text(encoding="utf-8"))
            for folder in folders for p in sorted(folder.rglob("*.py"))}


def where(trees: dict[str, ast.AST], hit) -> list[str]:
    return sorted({name for name, tree in trees.items() if any(hit(n) for n in ast.walk(tree))})


def test_only_the_registry_touches_its_private_table():
    def uses_models_table(node) -> bool:
        return ((isinstance(node, ast.Name) and node.id == "_MODELS")
                or (isinstance(node, ast.alias) and node.name == "_MODELS"))

    trees = sources(SRC, REPO / "benchmarks", REPO / "tests")
    assert where(trees, uses_models_table) == ["src/pixelwise/models/registry.py"]


def test_summary_metric_names_are_spelt_out_once():
    # The list in pixelwise.metrics is the scalar keys of compute_metrics, in its order ...
    scalars = [k for k, v in compute_metrics(torch.tensor([[3, 1], [0, 2]])).items()
               if not isinstance(v, list)]
    assert list(SUMMARY_METRICS) == scalars == ["pixel_accuracy", "mean_accuracy", "mean_iou",
                                                "fw_iou", "dice"]

    # ... and no other module writes the names out again.
    def names_fw_iou(node) -> bool:
        return isinstance(node, ast.Constant) and node.value == "fw_iou"

    assert where(sources(SRC), names_fw_iou) == ["src/pixelwise/metrics/__init__.py",
                                                 "src/pixelwise/metrics/confusion.py"]


def test_amp_is_decided_once(tmp_path):
    def reads_train_amp(node) -> bool:
        return (isinstance(node, ast.Attribute) and node.attr == "amp"
                and isinstance(node.value, ast.Attribute) and node.value.attr == "train")

    assert where(sources(SRC), reads_train_amp) == ["src/pixelwise/training/state.py"]
    # On the CPU, train.amp=true changes nothing: no loss scaling and no autocast.
    from pixelwise.data.synthetic import write_synthetic_dataset

    spec = write_synthetic_dataset(tmp_path / "shapes", n_train=4, n_val=1, size=32, seed=1)
    cfg = load_config(raw={"model": {"name": "unet", "kwargs": {"base_channels": 4, "depth": 2}},
                           "data": {"spec": str(spec), "batch_size": 2, "workers": 0},
                           "train": {"amp": True, "device": "cpu"},
                           "output": {"dir": str(tmp_path), "name": "run"}})
    t = build_run_state(cfg, DistInfo())
    assert t.amp is False and t.scaler.is_enabled() is False
    with t.autocast():
        assert not torch.is_autocast_enabled("cpu")


def test_one_module_names_the_checkpoint_files():
    # Everything else asks pixelwise.training.resume for the paths, and only its
    # save_checkpoints writes last.pt (tests/test_train.py records the writes of a run).
    def names_checkpoint(node) -> bool:
        return isinstance(node, ast.Constant) and node.value in ("last.pt", "best.pt")

    assert where(sources(SRC / "training"), names_checkpoint) == ["src/pixelwise/training/resume.py"]
