"""Figures and a self-contained HTML report for an evaluation or a training run.

Every figure is a PNG written with matplotlib's Agg backend (no display needed); the HTML
report embeds them as base64 so the one file can be mailed or archived, and the PNGs stay
beside it for use elsewhere.
"""
from __future__ import annotations

import base64
import csv
import html
import io
import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..io.files import atomic_write_bytes, atomic_write_text
from ..metrics import SUMMARY_METRICS
from ..metrics.confusion import mean_defined
from .visualize import overlay, to_rgb8


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)  # headless: never try to open a window
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | os.PathLike) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def _number(value: Any) -> float | None:
    if value is None or value == "":
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) else v


def read_metrics_csv(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Rows of a run's ``metrics.csv`` as dicts of floats (None for empty cells)."""
    with open(path, newline="", encoding="utf-8") as f:
        return [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(f)]


def plot_training_curves(history: Sequence[dict[str, Any]] | str | os.PathLike,
                         path: str | os.PathLike) -> Path | None:
    """Loss (train and val) and validation metrics per epoch, side by side.

    Args:
        history: per-epoch dicts (``epoch``, ``train_loss``, ``val_loss``, metric keys), or the
            path of a ``metrics.csv``.
        path: PNG to write.

    Returns:
        ``path``, or None when the history is empty.
    """
    rows = read_metrics_csv(history) if isinstance(history, (str, os.PathLike)) else list(history)
    if not rows:
        return None
    plt = _pyplot()
    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(11, 4))
    for key, label in (("train_loss", "train loss"), ("val_loss", "val loss")):
        pts = [(r["epoch"], _number(r.get(key))) for r in rows if _number(r.get(key)) is not None]
        if pts:
            ax_loss.plot(*zip(*pts), marker="o", markersize=3, label=label)
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("loss")
    ax_loss.set_title("loss")
    ax_loss.grid(alpha=0.3)
    ax_loss.legend()
    plotted = False
    for key in SUMMARY_METRICS:
        pts = [(r["epoch"], _number(r.get(key))) for r in rows if _number(r.get(key)) is not None]
        if pts:
            ax_metric.plot(*zip(*pts), marker="o", markersize=3, label=key)
            plotted = True
    ax_metric.set_xlabel("epoch")
    ax_metric.set_title("validation metrics")
    ax_metric.grid(alpha=0.3)
    if plotted:
        ax_metric.set_ylim(0, 1)
        ax_metric.legend()
    else:
        ax_metric.text(0.5, 0.5, "no validation", ha="center", va="center",
                       transform=ax_metric.transAxes)
    return _save(fig, path)


def plot_confusion_matrix(mat: np.ndarray, class_names: Sequence[str],
                          path: str | os.PathLike) -> Path:
    """Row-normalised confusion matrix heat map (rows = truth), with the row shares printed.

    Shape:
        mat ``(C, C)`` counts.
    """
    plt = _pyplot()
    m = np.asarray(mat, dtype=np.float64)
    rows = m.sum(1, keepdims=True)
    norm = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
    n = len(class_names)
    size = max(4.0, 0.55 * n + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), class_names, rotation=45, ha="right")
    ax.set_yticks(range(n), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("ground truth")
    if n <= 25:
        for i in range(n):
            for j in range(n):
                if rows[i, 0] > 0:
                    ax.text(j, i, f"{norm[i, j]:.2f}", ha="center", va="center", fontsize=7,
                            color="white" if norm[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, label="share of the true class")
    ax.set_title("confusion matrix (rows sum to 1)")
    return _save(fig, path)


def plot_class_iou(per_class_iou: Sequence[float | None], class_names: Sequence[str],
                   path: str | os.PathLike) -> Path:
    """Horizontal bars of per-class IoU; classes without a value are marked ``n/a``."""
    plt = _pyplot()
    n = len(class_names)
    fig, ax = plt.subplots(figsize=(7, max(2.5, 0.35 * n + 1)))
    values = [v if v is not None else 0.0 for v in per_class_iou]
    colors = ["#4c72b0" if v is not None else "#cccccc" for v in per_class_iou]
    ax.barh(range(n), values, color=colors)
    ax.set_yticks(range(n), class_names)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("IoU")
    for i, v in enumerate(per_class_iou):
        ax.text((v or 0.0) + 0.01, i, "n/a" if v is None else f"{v:.3f}", va="center", fontsize=8)
    mean_iou = mean_defined(per_class_iou)
    if mean_iou is not None:
        ax.axvline(mean_iou, color="k", linestyle="--", linewidth=1, label="mean IoU")
        ax.legend(loc="lower right")
    ax.set_title("per-class IoU")
    return _save(fig, path)


def plot_overlay_grid(samples: Sequence[dict[str, Any]], palette: Sequence[Sequence[int]],
                      path: str | os.PathLike, alpha: float = 0.5) -> Path:
    """One row per sample: image, ground-truth overlay, prediction overlay.

    Args:
        samples: dicts with ``image`` (H, W[, C]), ``target`` (H, W), ``pred`` (H, W) and
            ``title`` (e.g. the file name and its IoU).
        palette: class colours; pixels whose target is ignored are drawn without colour in
            both overlays.
    """
    plt = _pyplot()
    fig, axes = plt.subplots(len(samples), 3, figsize=(10, 3.2 * len(samples)), squeeze=False)
    for row, s in zip(axes, samples):
        rgb = to_rgb8(s["image"])
        target = np.asarray(s["target"])
        ignored = target >= len(palette)
        gt = overlay(rgb, np.where(ignored, 0, target), palette, alpha)
        pred = overlay(rgb, s["pred"], palette, alpha)
        # No colour where the truth is unknown (void, outside a field of view): the metrics
        # skip those pixels, so the picture does too.
        gt[ignored] = rgb[ignored]
        pred[ignored] = rgb[ignored]
        panels = (rgb, gt, pred)
        for ax, img, label in zip(row, panels, ("image", "ground truth", "prediction")):
            ax.imshow(img)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{label}: {s['title']}" if label == "image" else label, fontsize=8)
    return _save(fig, path)


def legend_html(class_names: Sequence[str], palette: Sequence[Sequence[int]]) -> str:
    items = "".join(
        f'<span class="sw" style="background:rgb({c[0]},{c[1]},{c[2]})"></span>'
        f"{html.escape(name)}&nbsp;&nbsp;" for name, c in zip(class_names, palette))
    return f'<p class="legend">{items}</p>'


def _img_tag(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _fmt(v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.4f}"
    return html.escape(str(v))


def write_html_report(path: str | os.PathLike, title: str, summary: dict[str, Any],
                      class_table: list[dict[str, Any]], figures: Sequence[tuple[str, Path]],
                      notes: Sequence[str] = (), legend: str = "") -> Path:
    """A single HTML file with a summary table, a per-class table and embedded figures.

    Args:
        path: the HTML file.
        title: page heading.
        summary: metric name -> value.
        class_table: one dict per class (same keys in each), e.g. name, iou, dice...
        figures: ``(caption, png path)`` pairs, embedded as base64.
        notes: lines shown under the heading (data, checkpoint, settings).
        legend: extra HTML (e.g. :func:`legend_html`) shown before the figures.
    """
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>",
        "body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px}",
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;"
        "padding:3px 8px;text-align:right}th{background:#f3f3f3}td:first-child{text-align:left}",
        "img{max-width:100%;border:1px solid #eee}.sw{display:inline-block;width:12px;"
        "height:12px;margin-right:4px;border:1px solid #888}",
        "</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    parts += [f"<p>{html.escape(n)}</p>" for n in notes]
    parts.append("<h2>Summary</h2><table>")
    parts += [f"<tr><td>{html.escape(k)}</td><td>{_fmt(v)}</td></tr>" for k, v in summary.items()]
    parts.append("</table>")
    if class_table:
        keys = list(class_table[0])
        parts.append("<h2>Per class</h2><table><tr>"
                     + "".join(f"<th>{html.escape(k)}</th>" for k in keys) + "</tr>")
        for row in class_table:
            parts.append("<tr>" + "".join(f"<td>{_fmt(row[k])}</td>" for k in keys) + "</tr>")
        parts.append("</table>")
    parts.append(legend)
    for caption, fig in figures:
        parts.append(f"<h2>{html.escape(caption)}</h2>{_img_tag(Path(fig), caption)}")
    parts.append("</body></html>")
    return atomic_write_text(path, "\n".join(parts))
