"""Tiled prediction benchmark: a 2048 x 2048 image in 256 x 256 tiles (overlap 0.25).

Times ``Predictor.predict`` (normalisation, tiles, Gaussian blending, argmax) for ``unet``
(base 32, BatchNorm) with eager PyTorch and each fast path, every configuration in its own
process with the default and the tuned glibc allocator (see ``inference.py``), and reports
median wall time, megapixels/s, peak memory (of the process, and of the predictions
alone: ``predict_peak_rss_mb``).

    python benchmarks/tiling.py
    python benchmarks/tiling.py --quick --configs eager,ort
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from inference import (ALLOCATORS, MODELS, ROOT, export_onnx_file,  # noqa: E402
                       machine_info, memory_mb, run_subprocess)

CONFIGS = ("eager", "channels_last", "compile", "ort")
MODEL = "unet"


def worker(spec: dict) -> dict:
    from pixelwise.io.checkpoint import Checkpoint
    from pixelwise.inference.predict import Predictor
    from pixelwise.models import build_model

    torch.set_num_threads(spec["threads"])
    start = time.perf_counter()
    common = dict(tile_size=spec["tile"], overlap=spec["overlap"], batch_size=spec["batch"])
    if spec["config"] == "ort":
        predictor = Predictor(spec["onnx"], backend="onnxruntime", threads=spec["threads"],
                              **common)
    else:
        torch.manual_seed(0)
        kwargs = MODELS[MODEL]
        ckpt = Checkpoint(model=build_model(MODEL, **kwargs).eval(), model_name=MODEL,
                          model_kwargs=kwargs, class_names=["0", "1"], mean=(0.5,) * 3,
                          std=(0.25,) * 3)
        predictor = Predictor(ckpt, fast=spec["config"] != "eager",
                              compile=spec["config"] == "compile", **common)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (spec["size"], spec["size"], 3), dtype=np.uint8)
    # Warm-up on a 3 x 3-tile image: compiles the full and the remainder batch shapes.
    warm = 3 * spec["tile"]
    predictor.predict(image[:warm, :warm])
    setup = time.perf_counter() - start
    peak_reset = _reset_peak_rss()
    times = []
    for _ in range(spec["reps"]):
        t = time.perf_counter()
        predictor.predict(image)
        times.append(time.perf_counter() - t)
    median = statistics.median(times)
    return {"seconds": times, "median_s": median,
            "megapixels_per_s": spec["size"] ** 2 / median / 1e6, "setup_s": setup,
            **memory_mb(), "image_mb": image.nbytes / 2**20,
            # Peak resident memory of the timed predictions alone (None where it cannot be
            # reset), against the image's own size.
            "predict_peak_rss_mb": memory_mb()["peak_rss_mb"] if peak_reset else None}


def _reset_peak_rss() -> bool:
    """Reset this process's peak RSS (Linux: "5" in /proc/self/clear_refs); False if not."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--allocators", default="default,tuned")
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--overlap", type=float, default=0.25)
    parser.add_argument("--batch", type=int, default=4, help="tiles per forward pass")
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--quick", action="store_true", help="smoke run: 256 px, 64 px tiles")
    parser.add_argument("--output", default=str(ROOT / "results" / "tiling.json"))
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0
    if args.quick:
        args.size, args.tile, args.reps = 256, 64, 1
    configs = [c for c in args.configs.split(",") if c]
    allocators = [a for a in args.allocators.split(",") if a]
    bad = [c for c in configs if c not in CONFIGS] + [a for a in allocators if a not in ALLOCATORS]
    if bad:
        parser.error(f"unknown configs/allocators {bad}")
    base = {"size": args.size, "tile": args.tile, "overlap": args.overlap, "batch": args.batch,
            "reps": args.reps, "threads": args.threads}
    report = {"machine": machine_info(args.threads), "settings": {**base, "model": MODEL,
              "model_kwargs": MODELS[MODEL]}, "results": []}
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = export_onnx_file(MODEL, MODELS[MODEL], Path(tmp)) if "ort" in configs else None
        for config in configs:
            for allocator in allocators:
                spec = {**base, "config": config, "onnx": str(onnx_path) if onnx_path else None}
                row = {"config": config, "allocator": allocator,
                       **run_subprocess(spec, allocator, script=Path(__file__))}
                report["results"].append(row)
                print(f"{config:<14}{allocator:<8}" + (f"error: {row['error']}" if "error" in row
                      else f"{row['median_s']:8.2f} s {row['megapixels_per_s']:7.3f} MP/s "
                           f"{row['peak_rss_mb']:7.0f} MB peak, "
                           f"{row['predict_peak_rss_mb'] or 0:7.0f} MB in predict"),
                      file=sys.stderr)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print("| config | allocator | seconds (median) | MP/s | peak MB | predict peak MB |\n"
          "|---|---|---|---|---|---|")
    for r in report["results"]:
        if "error" not in r:
            print(f"| {r['config']} | {r['allocator']} | {r['median_s']:.2f} | "
                  f"{r['megapixels_per_s']:.3f} | {r['peak_rss_mb']:.0f} | "
                  f"{r['predict_peak_rss_mb'] or 0:.0f} |")
    print(f"\nwrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
