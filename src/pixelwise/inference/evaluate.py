"""Evaluate a checkpoint on a dataset split: ``metrics.json`` and a self-contained report.

Images are read untransformed (``read_raw``) and predicted by
:class:`~pixelwise.inference.predict.Predictor` with the *checkpoint's* normalisation: whole
(valid-convolution U-Nets get a mirrored border) or tile by tile with ``tile_size``. Whole
images are labelled by the same code as validation (``inference.forward``), so the metrics of
``best.pt`` equal those its training run logged for it (same split, same threshold).
All metrics come from one confusion matrix over the split, as in the FCN paper;
boundary F1 (SegNet's BF score) and, for two-class data, Hausdorff 95 are means over images.
An ensemble is scored through the same Predictor (members averaged). With a post-processing
spec the metrics are those of the post-processed masks, and those without it are reported
beside them; with uncertainty, how well the entropy (and the variance across members) ranks
the misclassified pixels (``metrics.ranking``).
"""
from __future__ import annotations

import heapq
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..errors import ConfigError, DataError
from ..io.files import atomic_write_json, remove_stale_temporaries
from ..metrics import SUMMARY_METRICS
from ..metrics.confusion import mean_defined
from ..metrics.ranking import ErrorRanking
from ..devices import resolve_device
from .backend import Source
from .forward import DEFAULT_THRESHOLD
from .postprocess import apply_postprocessing


def _predictor(checkpoints: list, device: torch.device, tile_size: int | None, overlap: float,
               threshold: float, uncertainty: bool):
    """The :class:`Predictor` that evaluation scores (no post-processing: evaluation applies
    it itself, to score the masks with and without it).

    It normalises with each checkpoint's statistics, mirrors the border of valid-convolution
    U-Nets and tiles when ``tile_size`` is given, exactly as ``pixelwise predict`` does, so
    evaluation scores what users will get; whole images get the labels validation gives
    (``inference.forward``). Exported models (``.onnx`` paths or bytes, int8 included) run on
    ONNX Runtime, checkpoints on PyTorch (a mix is refused by the backend, in one line).
    """
    from .backend import is_onnx
    from .predict import Predictor

    backend = "onnxruntime" if is_onnx(checkpoints[0]) else "torch"
    return Predictor(checkpoints, backend=backend, tile_size=tile_size, overlap=overlap,
                     threshold=threshold, device=device, uncertainty=uncertainty)


def _check_classes(predictor, dataset) -> None:
    names, where = predictor.meta["class_names"], predictor.members[0].name
    if len(names) != dataset.num_classes:
        raise ConfigError(f"data: the dataset has {dataset.num_classes} classes "
                          f"({', '.join(dataset.class_names)}) but checkpoint {where} was "
                          f"trained on {len(names)} ({', '.join(names)})")
    if predictor.in_channels != dataset.in_channels:
        raise ConfigError(f"data: the dataset has {dataset.in_channels}-channel images but "
                          f"checkpoint {where} expects {predictor.in_channels}")


def _image_iou(pred: np.ndarray, target: np.ndarray, num_classes: int,
               ignore_index: int) -> float | None:
    """Mean IoU of one image (classes in neither its truth nor its prediction left out)."""
    from ..metrics import ConfusionMatrix

    cm = ConfusionMatrix(num_classes, ignore_index=ignore_index)
    cm.update(torch.from_numpy(pred), torch.from_numpy(target))
    return cm.compute()["mean_iou"]


def _per_class_table(metrics: dict[str, Any], class_names: list[str],
                     mat: torch.Tensor) -> list[dict[str, Any]]:
    truth = mat.sum(1).tolist()
    return [{"class": name, "iou": metrics["per_class_iou"][i],
             "dice": metrics["per_class_dice"][i],
             "precision": metrics["per_class_precision"][i],
             "recall": metrics["per_class_recall"][i], "pixels": int(truth[i])}
            for i, name in enumerate(class_names)]


def _run_folder_curves(ckpt_path: Path) -> Path | None:
    for folder in (ckpt_path.parent, ckpt_path.parent.parent):
        if (folder / "metrics.csv").is_file():
            return folder / "metrics.csv"
    return None


def evaluate(checkpoint: Source | Sequence[Source], spec: Any, split: str = "val",
             output: str | os.PathLike | None = None, *, device: str = "auto",
             tile_size: int | None = None, overlap: float = 0.25,
             threshold: float = DEFAULT_THRESHOLD, boundary_tolerance: int = 2,
             num_examples: int = 3, num_worst: int = 3, progress: bool = False,
             overwrite: bool = False, postprocess: dict | None = None,
             uncertainty: bool = False) -> dict[str, Any]:
    """Score a checkpoint (or an ensemble) on one split and (with ``output``) write
    metrics.json and report.html.

    Args:
        checkpoint: checkpoint path or a loaded :class:`Checkpoint` (run on PyTorch), or an
            exported ``.onnx`` file or its bytes (run on ONNX Runtime, int8 models included);
            a list of them is an ensemble (:class:`~pixelwise.inference.predict.Predictor`).
        spec: dataset spec (path, preset name, dict or ``DatasetSpec``).
        split: split name.
        output: folder for ``metrics.json``, ``report.html`` and the PNGs; None writes nothing.
        device: ``auto``, ``cpu``, ``cuda``...
        tile_size: predict in tiles of this size (with ``overlap``); None = whole images.
        threshold: foreground probability threshold of a binary (one-logit) model.
        boundary_tolerance: pixel tolerance of the boundary F1 score.
        num_examples, num_worst: overlays of the first images and of the lowest-IoU images.
        progress: show a progress bar.
        overwrite: replace files in ``output`` that pixelwise did not write (refused, before
            the evaluation, otherwise).
        postprocess: a post-processing spec (:mod:`pixelwise.inference.postprocess`): the
            metrics are those of the post-processed masks, and ``without_postprocess`` holds
            the ones without it.
        uncertainty: also report how well the uncertainty ranks the errors
            (:mod:`pixelwise.metrics.ranking`) under ``uncertainty``.

    Returns:
        The metrics dict written to ``metrics.json``: ``pixel_accuracy``, ``mean_accuracy``,
        ``mean_iou``, ``fw_iou``, ``dice``, ``boundary_f1``, (``hausdorff95`` for two
        classes), ``per_class`` (one row per class name), ``confusion_matrix``, ``per_image``;
        ``postprocess`` and ``without_postprocess`` with a spec; ``uncertainty``.
    """
    from ..data import SegmentationDataset

    checkpoints = list(checkpoint) if isinstance(checkpoint, (list, tuple)) else [checkpoint]
    if output is not None:  # a folder that cannot take the outputs fails before the work
        _claim_outputs(Path(output), overwrite)
    dataset = SegmentationDataset(spec, split)
    predictor = _predictor(checkpoints, resolve_device(device), tile_size, overlap, threshold,
                           uncertainty)
    _check_classes(predictor, dataset)
    if len(dataset) == 0:  # every metric would be n/a: not a result
        raise DataError(f"split {split!r} of dataset {dataset.spec.name!r} has no images: "
                        f"nothing to evaluate")
    extras = Extras.start(dataset, postprocess, uncertainty and predictor.views > 1,
                          uncertainty)
    cm, per_image, kept, worst = _score_split(dataset, predictor, extras, boundary_tolerance,
                                              num_examples, num_worst, progress)
    result = _summary(predictor, dataset, split, cm, per_image, boundary_tolerance)
    result.update(extras.summary(dataset))
    if output is not None:
        worst_sorted = sorted(((-neg, i, p) for neg, i, p in worst), key=lambda x: x[0])
        _write_outputs(Path(output), result, predictor, dataset, kept, worst_sorted,
                       cm.mat.cpu())
    return result


@dataclass
class Extras:
    """What evaluation measures besides the metrics of the final masks: the masks without
    post-processing, and how well the uncertainty maps rank the errors of the model's own
    masks (before post-processing, which does not look at the probabilities)."""

    postprocess: dict | None
    raw: Any                     # ConfusionMatrix of the masks without post-processing
    rankings: dict[str, ErrorRanking] = field(default_factory=dict)

    @classmethod
    def start(cls, dataset, postprocess: dict | None, variance: bool,
              uncertainty: bool) -> "Extras":
        from ..metrics import ConfusionMatrix

        raw = (ConfusionMatrix(dataset.num_classes, ignore_index=dataset.ignore_index)
               if postprocess is not None else None)
        kinds = ("entropy", "variance")[:(1 + variance)] if uncertainty else ()
        return cls(postprocess, raw, {k: ErrorRanking(dataset.ignore_index) for k in kinds})

    def final_mask(self, pred, target: np.ndarray) -> np.ndarray:
        """The mask scored (post-processed when there is a spec); accumulates the rest."""
        mask = pred.mask.astype(np.int64)
        for kind, ranking in self.rankings.items():
            ranking.update(getattr(pred, kind), mask, target)
        if self.postprocess is None:
            return mask
        self.raw.update(torch.from_numpy(mask), torch.from_numpy(target))
        return apply_postprocessing(mask, self.postprocess).astype(np.int64, copy=False)

    def summary(self, dataset) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.postprocess is not None:
            metrics = self.raw.compute()
            out["postprocess"] = self.postprocess.get("classes", {})
            out["without_postprocess"] = {
                **{k: metrics[k] for k in SUMMARY_METRICS},
                "per_class": _per_class_table(metrics, dataset.class_names, self.raw.mat.cpu())}
        if self.rankings:
            out["uncertainty"] = {
                "method": "AUROC of the uncertainty as a score of misclassified pixels "
                          "(before post-processing; ignore_index left out), exact on the "
                          "16-bit maps (65,536 bins, ties counted one half)",
                **{kind: r.summary() for kind, r in self.rankings.items()}}
        return out


def _summary(predictor, dataset, split: str, cm, per_image: list[dict[str, Any]],
             tolerance: int) -> dict[str, Any]:
    """The metrics dict of :func:`evaluate` from the split's confusion matrix and the
    per-image scores."""
    mat = cm.mat.cpu()
    if int(mat.sum()) == 0:
        raise DataError(f"split {split!r} of dataset {dataset.spec.name!r}: no labelled pixel "
                        f"in its {len(dataset)} mask(s) (all ignore_index "
                        f"{dataset.ignore_index}), so no metric; `pixelwise data check` names "
                        f"the files")
    metrics = cm.compute()
    result: dict[str, Any] = {
        "checkpoint": _checkpoint_names(predictor),
        "dataset": dataset.spec.name, "split": split, "num_images": len(dataset),
        **{k: metrics[k] for k in SUMMARY_METRICS},
        "boundary_f1": mean_defined([e["boundary_f1"] for e in per_image]),
        "boundary_tolerance": tolerance,
    }
    if dataset.num_classes == 2:
        finite = [e["hausdorff95"] for e in per_image
                  if e["hausdorff95"] is not None and np.isfinite(e["hausdorff95"])]
        result["hausdorff95"] = mean_defined(finite)
    result["per_class"] = _per_class_table(metrics, dataset.class_names, mat)
    result["confusion_matrix"] = mat.tolist()
    # JSON has no inf/nan (an empty mask's Hausdorff distance): write null
    result["per_image"] = [{k: (None if isinstance(v, float) and not np.isfinite(v) else v)
                            for k, v in e.items()} for e in per_image]
    return result


def _score_split(dataset, predictor, extras: Extras, tolerance: int, num_examples: int,
                 num_worst: int, progress: bool):
    """Predict every image of ``dataset``: the split's confusion matrix, each image's entry,
    the first ``num_examples`` predictions and a heap of the ``num_worst`` by IoU (of the
    final masks; ``extras`` gathers the rest)."""
    from ..metrics import ConfusionMatrix, boundary_f1, hausdorff95

    n, ignore = dataset.num_classes, dataset.ignore_index
    cm = ConfusionMatrix(n, ignore_index=ignore)
    per_image: list[dict[str, Any]] = []
    kept: dict[int, np.ndarray] = {}      # predictions of the first images, for the report
    worst: list[tuple[float, int, np.ndarray]] = []  # heap of (-iou, index, pred)
    indices = range(len(dataset))
    if progress:
        from tqdm.auto import tqdm

        indices = tqdm(indices, desc=f"evaluate {dataset.split}", unit="img")
    for i in indices:
        image, target = dataset.read_raw(i)
        pred = extras.final_mask(predictor.predict(image), target)
        cm.update(torch.from_numpy(pred), torch.from_numpy(target))
        iou = _image_iou(pred, target, n, ignore)
        entry = {"image": str(dataset.samples[i][0]), "mean_iou": iou,
                 "boundary_f1": boundary_f1(pred, target, tolerance=tolerance,
                                            classes=[1] if n == 2 else None,
                                            ignore_index=ignore)}
        if n == 2:
            entry["hausdorff95"] = hausdorff95(pred, target, ignore_index=ignore)
        per_image.append(entry)
        if i < num_examples:
            kept[i] = pred
        if num_worst and iou is not None:
            heapq.heappush(worst, (-iou, i, pred))
            if len(worst) > num_worst:
                heapq.heappop(worst)  # drops the best of the kept (largest iou)
    return cm, per_image, kept, worst


# Every file an evaluation may write into its output folder.
OUTPUTS = ("metrics.json", "report.html", "confusion_matrix.png", "class_iou.png",
           "examples.png", "training_curves.png")


def _claim_outputs(out: Path, overwrite: bool) -> None:
    from ..io.outputs import Recorder, check_output_folder, read_records, refuse_foreign

    check_output_folder(out, "output")
    refuse_foreign(out, OUTPUTS, read_records(out), overwrite)
    remove_stale_temporaries(out, OUTPUTS)
    Recorder(out).claim(OUTPUTS)


def _checkpoint_names(predictor) -> str | list[str]:
    """The evaluated checkpoint's name, or the list of an ensemble's."""
    names = [m.name for m in predictor.members]
    return names[0] if len(names) == 1 else names


def _write_outputs(out: Path, result: dict[str, Any], predictor, dataset,
                   kept: dict[int, np.ndarray], worst: list[tuple[float, int, np.ndarray]],
                   mat: torch.Tensor) -> None:
    from ..report import figures as report

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "metrics.json", result)
    palette = predictor.palette
    figures = [
        ("Confusion matrix", report.plot_confusion_matrix(mat.numpy(), dataset.class_names,
                                                          out / "confusion_matrix.png")),
        ("Per-class IoU", report.plot_class_iou([r["iou"] for r in result["per_class"]],
                                                dataset.class_names, out / "class_iou.png")),
    ]
    samples = []
    worst_ids = {i for _, i, _ in worst}
    for title, chosen in (("example", [(i, p) for i, p in kept.items() if i not in worst_ids]),
                          ("worst", [(i, p) for _, i, p in worst])):
        for i, pred in chosen:
            image, target = dataset.read_raw(i)
            iou = result["per_image"][i]["mean_iou"]
            name = Path(dataset.samples[i][0]).name
            samples.append({"image": image, "target": target, "pred": pred,
                            "title": f"{title} {name} (IoU {iou:.3f})" if iou is not None
                            else f"{title} {name}"})
    if samples:
        figures.append(("Examples and worst cases (image / ground truth / prediction)",
                        report.plot_overlay_grid(samples, palette, out / "examples.png")))
    member = predictor.members[0]
    curves = (_run_folder_curves(Path(member.name)) if len(predictor.members) == 1
              and Path(member.name).is_file() else None)
    if curves is not None:
        png = report.plot_training_curves(curves, out / "training_curves.png")
        if png is not None:
            figures.append(("Training curves", png))
    summary = {k: result.get(k) for k in (*SUMMARY_METRICS, "boundary_f1", "hausdorff95")
               if k in result}
    notes = [f"checkpoint: {result['checkpoint']}",
             f"data: {result['dataset']} / {result['split']} ({result['num_images']} images)",
             f"boundary F1 tolerance: {result['boundary_tolerance']} px; classes absent from "
             "truth and prediction show n/a and are left out of the means"]
    notes += _extra_notes(result)
    report.write_html_report(out / "report.html", f"Evaluation: {predictor.meta['model_name']}",
                             summary,
                             result["per_class"], figures, notes,
                             legend=report.legend_html(dataset.class_names, palette))


def _extra_notes(result: dict[str, Any]) -> list[str]:
    """The report's lines on post-processing and uncertainty."""
    notes = []
    if "without_postprocess" in result:
        before, after = result["without_postprocess"]["mean_iou"], result["mean_iou"]
        notes.append(f"post-processing {result['postprocess']}: mean IoU {number_text(before)} "
                     f"without, {number_text(after)} with (the figures above)")
    for kind, ranking in (result.get("uncertainty") or {}).items():
        if isinstance(ranking, dict) and ranking.get("auroc") is not None:
            notes.append(f"{kind}: error-ranking AUROC {ranking['auroc']:.4f} over "
                         f"{ranking['error_pixels']} misclassified pixels")
    return notes


def number_text(value: float | None) -> str:
    """A metric for people: four decimals, or n/a."""
    return "n/a" if value is None else f"{value:.4f}"
