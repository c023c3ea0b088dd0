"""The int8 rows of the inference benchmark: the quantized graph's speed, and its accuracy on
real data.

Speed (configuration ``ort_int8``): the benchmark's random-weight model, exported as for
``ort``, quantized by :func:`pixelwise.export.int8.quantize_model` (QDQ, per-channel int8
weights, uint8 activations, the default fp32 nodes) with *random* calibration: two seeded
normal inputs at the benchmark's size. The graph, its int8 kernels and its fp32 nodes are
those of a calibrated export; only the ranges differ, and the speed does not depend on them.

Accuracy (``--accuracy SPEC=CHECKPOINT``): :func:`pixelwise.export.int8.export_int8` on a
trained checkpoint, calibrated on the spec's train split, scored on its val split as the
export prints it: mIoU, or the foreground class's Dice (F1) for two classes.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np


def quantize_onnx_file(fp32_path: Path, size: int, channels: int = 3) -> Path:
    """``fp32_path`` quantized with random calibration, beside it as ``NAME.int8.onnx``."""
    from pixelwise.export.int8 import quantize_model

    inputs = [np.random.default_rng(seed).standard_normal((1, channels, size, size),
                                                          dtype=np.float32)
              for seed in range(2)]
    out = fp32_path.with_suffix(".int8.onnx")
    out.write_bytes(quantize_model(fp32_path.read_bytes(), inputs))
    return out


def accuracy_rows(pairs: list[str], data_root: str | None, images: int,
                  calibration: str) -> list[dict]:
    """One row per ``SPEC=CHECKPOINT``: fp32 and int8 on the spec's val split, in points.

    A preset name as SPEC takes its data from ``data_root/SPEC`` (``--data-root``)."""
    from pixelwise.data import load_spec
    from pixelwise.data.spec import list_presets
    from pixelwise.export.int8 import export_int8

    rows = []
    for pair in pairs:
        spec, sep, checkpoint = pair.partition("=")
        if not sep:
            raise SystemExit(f"--accuracy {pair!r}: expected SPEC=CHECKPOINT")
        source = (load_spec(spec, root=Path(data_root) / spec)
                  if data_root and spec in list_presets() else spec)
        start = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            _, parity = export_int8(checkpoint, Path(tmp) / "model.onnx", source,
                                    images=images, calibration=calibration, force=True)
        rows.append({"spec": spec, "checkpoint": checkpoint, "metric": parity.metric,
                     "split": parity.split, "images": parity.images,
                     "calibration": calibration, "calibration_images": images,
                     "fp32": parity.fp32, "int8": parity.int8, "drop_points": parity.drop,
                     "export_s": time.perf_counter() - start})
        print(f"{spec}: {parity}", flush=True)
    return rows


def int8_speedups(rows: list[dict]) -> list[dict]:
    """Per model and allocator with both rows: fp32 ONNX Runtime against int8, batch 1."""
    timed = {(r["model"], r["config"], r["allocator"]): r["median_latency_b1_ms"]
             for r in rows if "median_latency_b1_ms" in r}
    out = []
    for (model, config, allocator), int8_ms in timed.items():
        fp32_ms = timed.get((model, "ort", allocator))
        if config != "ort_int8" or fp32_ms is None:
            continue
        eager_ms = timed.get((model, "eager", allocator))
        out.append({"model": model, "allocator": allocator, "eager_b1_ms": eager_ms,
                    "ort_b1_ms": fp32_ms, "ort_int8_b1_ms": int8_ms,
                    "int8_speedup_vs_ort": fp32_ms / int8_ms})
    return out


def markdown(speedups: list[dict], accuracy: list[dict]) -> str:
    lines = ["| model | allocator | eager ms | fp32 ORT ms | int8 ORT ms | int8 vs fp32 ORT |",
             "|---|---|---|---|---|---|"] if speedups else []
    for s in speedups:
        eager = "" if s["eager_b1_ms"] is None else f"{s['eager_b1_ms']:.1f}"
        lines.append(f"| {s['model']} | {s['allocator']} | {eager} | {s['ort_b1_ms']:.1f} | "
                     f"{s['ort_int8_b1_ms']:.1f} | {s['int8_speedup_vs_ort']:.2f}x |")
    if accuracy:
        lines += ["", "| data | metric (val) | fp32 | int8 | change (points) |",
                  "|---|---|---|---|---|"]
        lines += [f"| {a['spec']} | {a['metric']} | {a['fp32']:.2f} | {a['int8']:.2f} | "
                  f"{-a['drop_points']:+.2f} |" for a in accuracy]
    return "\n".join(lines)
