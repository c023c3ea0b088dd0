"""K-fold cross-validation: K runs on K seeded folds of the training data, their out-of-fold
predictions scored together, and post-processing chosen on them (nnU-Net's protocol).

Which images are folded: the config's training split. When a spec's ``holdout`` carves the
validation split out of it (DRIVE), the holdout is dropped and the whole source split is
folded: each fold validates on its own held-out fold, so a second validation set is not
needed. A spec's own validation split (CamVid's ``val``) is left out of the folds altogether
and stays untouched for scoring the ensemble (``pixelwise evaluate -c RUNDIR --split val``).
The folds are :func:`pixelwise.data.spec.fold_parts` of the split's images (sorted by path),
seeded by ``train.seed``.

Run folder (``output.dir/output.name``)::

    folds.json            what was folded: split, number of folds, seed (a resume must agree)
    fingerprint.json      planned runs (--data --minutes), as for one run
    fold0/ .. foldK-1/    ordinary run folders; each config.yaml names its fold in the data
                          spec (``folds:``), so `pixelwise train foldI/config.yaml --resume` works
    foldI/fold.json       written when fold I's training has ended: a resume skips that fold
    crossval.json         once every fold has ended (see :func:`write_crossval`)

A time budget (``train.max_minutes``) applies to each fold.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from ..errors import ConfigError
from ..io.config import RunConfig, config_to_dict, load_config
from ..io.files import atomic_write_json, read_text
from .postchoice import predicted_pairs
from .resume import best_checkpoint
from .setup import resolve_data_paths

log = logging.getLogger("pixelwise.train")

FOLD_SPLIT = "fold_val"  # the held-out fold's split name in each fold's spec


@dataclass
class Folding:
    """What a K-fold run folds, checked before any training (:func:`plan_folds`)."""

    cfg: RunConfig          # the run's config, data paths absolute
    spec_ref: dict          # the data spec as a mapping, without the folded split's holdout
    split: str              # the folded split
    num_images: int
    k: int
    seed: int
    only: int | None        # --fold i: train that fold alone
    note: str               # what happens to the validation split, in one sentence

    @property
    def run_dir(self) -> Path:
        return self.cfg.run_dir

    def describe(self) -> str:
        budget = self.cfg.train.max_minutes
        lines = [f"cross-validation: {self.k} folds of split {self.split!r} "
                 f"({self.num_images} images, about {self.num_images // self.k} held out per "
                 f"fold), seed {self.seed}; {self.note}"]
        if budget is not None:
            lines.append(f"time budget: {budget:g} min per fold ({self.k} folds: about "
                         f"{budget * self.k:g} min of training in all)")
        if self.only is not None:
            lines.append(f"training fold {self.only} only (crossval.json once all "
                         f"{self.k} have ended)")
        return "\n".join(lines)


def _spec_mapping(spec: str | dict) -> dict:
    """The data spec as a mapping that :func:`pixelwise.data.load_spec` reads back alike."""
    from ..data import load_spec

    if isinstance(spec, dict):
        return dict(spec)
    if Path(spec).is_file():
        raw = yaml.safe_load(read_text(Path(spec), ConfigError)) or {}
        # relative paths in the file are relative to it: pin the resolved root
        return {**raw, "root": str(load_spec(spec).root)}
    return {"preset": spec}


def check_fold_options(k: int, only: int | None) -> None:
    """``--folds k`` / ``--fold only`` make sense on their own (before any data is read)."""
    if k < 2:
        raise ConfigError(f"--folds {k}: cross-validation needs at least 2 folds")
    if only is not None and not 0 <= only < k:
        raise ConfigError(f"--fold {only}: outside 0..{k - 1} (--folds {k})")


def plan_folds(cfg: RunConfig, k: int, only: int | None = None) -> Folding:
    """Check ``--folds k`` / ``--fold only`` against the data and say what is folded.

    Raises:
        ConfigError: fewer than 2 folds, ``only`` outside ``0..k-1``, more folds than images,
            or a run folder folded otherwise before (each names the option or file).
    """
    from ..data import load_spec

    check_fold_options(k, only)
    cfg = resolve_data_paths(cfg)
    ref = _spec_mapping(cfg.data.spec)
    spec = load_spec(ref)
    split, val = cfg.data.train_split, cfg.data.val_split
    if spec.folds is not None:
        raise ConfigError("data.spec: already names a fold (folds:); train it without --folds")
    if split not in spec.splits:
        raise ConfigError(f"data.train_split: --folds folds a split of the spec, and "
                          f"{split!r} is not one (have {', '.join(spec.splits)})")
    if spec.holdout is not None and spec.holdout.source == split:
        ref["holdout"] = None
        note = (f"the holdout {spec.holdout.target!r} is folded back in; each fold "
                f"validates on its held-out images")
    elif val:
        note = (f"split {val!r} is not used (each fold validates on its held-out images); "
                f"score the ensemble on it with pixelwise evaluate -c RUNDIR --split {val}")
    else:
        note = "each fold validates on its held-out images"
    n = len(load_spec(ref).resolve(split))
    if n < k:
        raise ConfigError(f"--folds {k}: split {split!r} of {spec.name!r} has {n} images; "
                          f"at most {n} folds")
    folding = Folding(cfg, ref, split, n, k, cfg.train.seed, only, note)
    _check_earlier_folding(folding)
    return folding


def _folds_record(f: Folding) -> dict[str, Any]:
    return {"split": f.split, "folds": f.k, "seed": f.seed, "num_images": f.num_images}


def _check_earlier_folding(f: Folding) -> None:
    import json

    path = f.run_dir / "folds.json"
    if path.is_file():
        try:
            earlier = json.loads(read_text(path, ConfigError))
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}: not valid JSON ({e}); delete it to fold anew") from None
        if not isinstance(earlier, dict):
            raise ConfigError(f"{path}: not a folds record; delete it to fold anew")
        if earlier != _folds_record(f):
            raise ConfigError(f"{path}: this run folder holds {earlier.get('folds')} folds of "
                              f"{earlier.get('split')!r} (seed {earlier.get('seed')}), not "
                              f"{f.k} of {f.split!r} (seed {f.seed}); set output.name=... "
                              f"for a new one")


def fold_config(f: Folding, index: int) -> RunConfig:
    """Fold ``index``'s run: ``RUNDIR/fold<index>``, trained on the other folds and validated
    on this one (the spec's ``folds:`` entry, split ``fold_val``)."""
    raw = config_to_dict(f.cfg)
    folds = {"from": f.split, "to": FOLD_SPLIT, "k": f.k, "index": index, "seed": f.seed}
    raw["data"].update(spec={**f.spec_ref, "folds": folds}, val_split=FOLD_SPLIT)
    raw["output"].update(dir=str(f.run_dir), name=f"fold{index}")
    return load_config(raw=raw)


def fold_finished(f: Folding, index: int) -> bool:
    return (f.run_dir / f"fold{index}" / "fold.json").is_file()


def train_folds(f: Folding, resume: bool = False) -> dict[str, Any] | None:
    """Train the folds (each as :func:`pixelwise.training.train.train` would), then, once all
    have ended, write ``crossval.json``.

    With ``resume``, folds that have ended are skipped and an interrupted one continues from
    its ``last.pt``. Returns the crossval dict, or None while folds are missing (``--fold``).
    """
    from .train import train

    main = os.environ.get("RANK", "0") == "0"  # under torchrun, rank 0 writes
    if main:
        f.run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(f.run_dir / "folds.json", _folds_record(f))
    for i in range(f.k) if f.only is None else [f.only]:
        if resume and fold_finished(f, i):
            log.info("fold %d of %d has ended already: skipped", i, f.k)
            continue
        log.info("fold %d of %d", i, f.k)
        run = train(fold_config(f, i), resume=resume, choose_postprocess=False)
        if main:
            atomic_write_json(run / "fold.json", {"fold": i, **_folds_record(f)})
    if not main:
        return None
    missing = [i for i in range(f.k) if not fold_finished(f, i)]
    if missing:
        log.info("folds %s not trained yet: crossval.json once they are",
                 ", ".join(map(str, missing)))
        return None
    return write_crossval(f)


# ---------------------------------------------------------------------------------------------
# Scoring: out-of-fold predictions and post-processing chosen on them

def _metrics(mat: torch.Tensor) -> dict[str, Any]:
    from ..metrics import SUMMARY_METRICS
    from ..metrics.confusion import compute_metrics

    m = compute_metrics(mat)
    return {**{k: m[k] for k in SUMMARY_METRICS}, "per_class_dice": m["per_class_dice"],
            "per_class_iou": m["per_class_iou"]}


def _image_names(dataset) -> list[str]:
    root = Path(dataset.spec.root)
    return [str(p.relative_to(root)) if p.is_relative_to(root) else str(p)
            for p, _ in dataset.samples]


def write_crossval(f: Folding) -> dict[str, Any]:
    """Score every fold's best.pt on its held-out images and write ``RUNDIR/crossval.json``
    atomically.

    Returns:
        ``{"dataset", "split", "folds", "seed", "num_images", "max_minutes_per_fold",
        "note", "class_names", "members": ["fold0/checkpoints/best.pt", ...] (relative to
        RUNDIR), "per_fold": [{"fold", "num_images", "images", <metrics>}], "pooled":
        {<metrics>, "confusion_matrix"}, "postprocess": {"classes", "report"}}``, where
        <metrics> are the summary metrics and per-class Dice / IoU of the folds' confusion
        matrices (pooled: their sum), predictions not post-processed; the report gives each
        class's pooled Dice with the candidates (inference/postprocess.py).
    """
    from ..data import SegmentationDataset
    from ..metrics import ConfusionMatrix
    from ..inference.postprocess import choose_postprocessing

    cfgs = [fold_config(f, i) for i in range(f.k)]
    sets = [SegmentationDataset(c.data.spec, FOLD_SPLIT) for c in cfgs]
    first = sets[0]
    cms = [ConfusionMatrix(first.num_classes, ignore_index=first.ignore_index) for _ in cfgs]

    def oof_pairs():
        for c, ds, cm in zip(cfgs, sets, cms):
            yield from predicted_pairs(best_checkpoint(c.run_dir), ds, c.train.device,
                                       c.train.val_threshold, cm)

    chosen = choose_postprocessing(oof_pairs(), first.num_classes, first.ignore_index,
                                   first.class_names)
    members = [str(best_checkpoint(c.run_dir).relative_to(f.run_dir)) for c in cfgs]
    pooled = sum(cm.mat.cpu() for cm in cms)
    result = {
        "dataset": first.spec.name, **_folds_record(f),
        "max_minutes_per_fold": f.cfg.train.max_minutes, "note": f.note,
        "class_names": first.class_names, "members": members,
        "per_fold": [{"fold": i, "num_images": len(ds), "images": _image_names(ds),
                      **_metrics(cm.mat.cpu())} for i, (ds, cm) in enumerate(zip(sets, cms))],
        "pooled": {**_metrics(pooled), "confusion_matrix": pooled.tolist()},
        "postprocess": chosen,
    }
    atomic_write_json(f.run_dir / "crossval.json", result)
    return result
