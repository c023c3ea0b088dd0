"""CPU inference benchmark: plain eager PyTorch against each fast path, side by side.

For each model (``unet`` base 32 with BatchNorm, ``resnet34_unet``, ``fcn8s``) at 512 x 512:
median latency at batch 1, images/s at batch 4, peak memory, and achieved GFLOP/s (FLOPs
counted with ``torch.utils.flop_counter.FlopCounterMode``) against this machine's fp32 matmul
rate, measured in the same run on a 2048 x 2048 matmul.

Configurations: ``eager`` (plain model), ``fold_bn`` (BatchNorm folded into the convolutions),
``channels_last`` (folded + NHWC), ``compile`` (folded + NHWC + torch.compile with inductor and
freezing) and ``ort`` (ONNX Runtime, all graph optimisations).

Every (model, configuration, allocator) runs in its own process, so that glibc's allocator
can be tuned per process (its ``MALLOC_*`` variables are read at process start) and so that
peak memory (VmHWM) belongs to one configuration. ``default`` is glibc as is; ``tuned``
keeps freed activations instead of unmapping them (see PERF-NOTES.md).

    python benchmarks/inference.py                       # the full run, JSON to benchmarks/results/
    python benchmarks/inference.py --quick --models unet --configs eager,fold_bn,ort
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

MODELS = {
    "unet": dict(in_channels=3, num_classes=2, base_channels=32, batch_norm=True),
    "resnet34_unet": dict(in_channels=3, num_classes=2),
    "fcn8s": dict(num_classes=21),
}
CONFIGS = ("eager", "fold_bn", "channels_last", "compile", "ort")
TUNED = {"MALLOC_MMAP_THRESHOLD_": "4294967296", "MALLOC_TRIM_THRESHOLD_": "4294967296",
         "MALLOC_TOP_PAD_": "1073741824"}
ALLOCATORS = {"default": {}, "tuned": TUNED}
ROOT = Path(__file__).resolve().parent


# -- worker side (one configuration per process) ---------------------------------------------

def _rusage() -> resource.struct_rusage:
    return resource.getrusage(resource.RUSAGE_SELF)


def memory_mb() -> dict:
    """Peak and current resident memory of this process, in MB.

    ``/proc/self/status`` rather than ``ru_maxrss``: Linux keeps ``ru_maxrss`` across
    ``execve``, so a worker would report its parent's peak if that were higher.
    """
    fields = {}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                fields[key] = int(value.split()[0]) / 1024
    except OSError:
        fields["VmHWM"] = _rusage().ru_maxrss / 1024
    return {"peak_rss_mb": fields.get("VmHWM"), "rss_mb": fields.get("VmRSS")}


def build_runner(spec: dict):
    """A callable ``f(x: Tensor) -> Tensor`` for the spec's model and configuration."""
    from pixelwise.fast.optimize import optimize_for_inference
    from pixelwise.models import build_model

    config = spec["config"]
    if config == "ort":
        import numpy as np

        from pixelwise.inference.backend import make_ort_session

        session = make_ort_session(spec["onnx"], threads=spec["threads"])
        name = session.get_inputs()[0].name
        return lambda x: torch.from_numpy(np.asarray(session.run(None, {name: x.numpy()})[0]))
    torch.manual_seed(0)
    model = build_model(spec["model"], **spec["kwargs"]).eval()
    if config != "eager":
        model = optimize_for_inference(model, fold_bn=True,
                                       channels_last=config in ("channels_last", "compile"),
                                       compile=config == "compile")

    def run(x):
        with torch.inference_mode():
            return model(x)

    return run


def time_calls(fn, x, reps: int) -> list[float]:
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - start)
    return times


def worker(spec: dict) -> dict:
    torch.set_num_threads(spec["threads"])
    size = spec["size"]
    if spec["config"] == "matmul":
        a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
        torch.mm(a, b)
        times = time_calls(lambda _: torch.mm(a, b), None, spec["reps"] * 4)
        return {"gflops": 2 * 2048**3 / statistics.median(times) / 1e9}
    start = time.perf_counter()
    run = build_runner(spec)
    x1 = torch.randn(1, 3, size, size)
    xb = torch.randn(spec["batch"], 3, size, size)
    first = time.perf_counter()
    run(x1)  # warm-up (and compilation) at both shapes
    first_call = time.perf_counter() - first
    run(xb)
    setup = time.perf_counter() - start
    ready = memory_mb()["rss_mb"]
    before = _rusage()
    lat1 = time_calls(run, x1, spec["reps"])
    latb = time_calls(run, xb, spec["reps_batch"])
    after = _rusage()
    return {
        "latency_b1_ms": [t * 1e3 for t in lat1],
        "median_latency_b1_ms": statistics.median(lat1) * 1e3,
        f"images_per_s_b{spec['batch']}": spec["batch"] / statistics.median(latb),
        "ms_per_image_batch": statistics.median(latb) * 1e3 / spec["batch"],
        "peak_rss_mb": memory_mb()["peak_rss_mb"],
        "rss_after_warmup_mb": ready,
        "page_faults": after.ru_minflt - before.ru_minflt + after.ru_majflt - before.ru_majflt,
        "system_s": after.ru_stime - before.ru_stime,
        "first_call_s": first_call,
        "setup_s": setup,
    }


# -- orchestrator -----------------------------------------------------------------------------

def run_subprocess(spec: dict, allocator: str, script: Path = Path(__file__)) -> dict:
    env = {**os.environ, **ALLOCATORS[allocator]}
    for key in TUNED:  # "default" must not inherit a tuned parent
        if key not in ALLOCATORS[allocator]:
            env.pop(key, None)
    proc = subprocess.run([sys.executable, str(script), "--worker", json.dumps(spec)], env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else
                f"exit {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def count_flops(model: str, kwargs: dict, size: int) -> float:
    """FLOPs of one forward pass at batch 1 (multiply-add = 2), counted on the meta device."""
    from torch.utils.flop_counter import FlopCounterMode

    from pixelwise.models import build_model

    with torch.device("meta"):
        net = build_model(model, **kwargs).eval()
        x = torch.empty(1, 3, size, size)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net(x)
    return float(counter.get_total_flops())


def export_onnx_file(model: str, kwargs: dict, folder: Path) -> Path:
    """Export the benchmark model (random weights, seed 0) once, outside the timed processes."""
    from pixelwise.io.checkpoint import Checkpoint
    from pixelwise.export import export_onnx
    from pixelwise.models import build_model

    torch.manual_seed(0)
    net = build_model(model, **kwargs).eval()
    classes = kwargs.get("num_classes", 2)
    ckpt = Checkpoint(model=net, model_name=model, model_kwargs=kwargs,
                      class_names=[str(i) for i in range(classes)], mean=(0.5,) * 3,
                      std=(0.25,) * 3)
    return export_onnx(ckpt, folder / f"{model}.onnx", example_size=64)


def machine_info(threads: int) -> dict:
    import onnxruntime

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "threads": threads,
            "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
            "python": platform.python_version()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--allocators", default="default,tuned")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--reps", type=int, default=5, help="timed batch-1 calls")
    parser.add_argument("--reps-batch", type=int, default=3, help="timed batch calls")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 64 x 64, 2 + 1 repetitions")
    parser.add_argument("--output", default=str(ROOT / "results" / "inference.json"))
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0
    if args.quick:
        args.size, args.reps, args.reps_batch = 64, 2, 1
    models = [m for m in args.models.split(",") if m]
    configs = [c for c in args.configs.split(",") if c]
    allocators = [a for a in args.allocators.split(",") if a]
    for name, known in (("model", MODELS), ("config", CONFIGS), ("allocator", ALLOCATORS)):
        chosen = {"model": models, "config": configs, "allocator": allocators}[name]
        unknown = [c for c in chosen if c not in known]
        if unknown:
            parser.error(f"unknown {name}(s) {unknown}; choose from {list(known)}")

    base = {"size": args.size, "batch": args.batch, "reps": args.reps,
            "reps_batch": args.reps_batch, "threads": args.threads}
    matmul = run_subprocess({**base, "config": "matmul"}, "default")
    report = {"machine": machine_info(args.threads), "settings": base,
              "matmul_2048_gflops": matmul.get("gflops"),
              "allocators": {k: ALLOCATORS[k] for k in allocators}, "results": []}
    print(f"fp32 matmul 2048x2048: {matmul.get('gflops', float('nan')):.1f} GFLOP/s",
          file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        for model in models:
            kwargs = MODELS[model]
            flops = count_flops(model, kwargs, args.size)
            onnx_path = export_onnx_file(model, kwargs, Path(tmp)) if "ort" in configs else None
            for config in configs:
                for allocator in allocators:
                    spec = {**base, "model": model, "kwargs": kwargs, "config": config,
                            "onnx": str(onnx_path) if onnx_path else None}
                    result = run_subprocess(spec, allocator)
                    row = {"model": model, "config": config, "allocator": allocator,
                           "gflop_per_image": flops / 1e9, **result}
                    if "median_latency_b1_ms" in result:
                        rate = flops / (result["median_latency_b1_ms"] / 1e3) / 1e9
                        row["gflops_b1"] = rate
                        row["gflops_batch"] = flops / (result["ms_per_image_batch"] / 1e3) / 1e9
                        if matmul.get("gflops"):
                            row["fraction_of_matmul_b1"] = rate / matmul["gflops"]
                    report["results"].append(row)
                    print(_row_text(row), file=sys.stderr)
    _add_speedups(report)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(markdown_table(report))
    print(f"\nwrote {out}", file=sys.stderr)
    return 0


def _row_text(row: dict) -> str:
    if "error" in row:
        return f"{row['model']:<14}{row['config']:<14}{row['allocator']:<8} error: {row['error']}"
    return (f"{row['model']:<14}{row['config']:<14}{row['allocator']:<8}"
            f"{row['median_latency_b1_ms']:9.1f} ms  {row['gflops_b1']:7.1f} GFLOP/s  "
            f"{row['peak_rss_mb']:7.0f} MB")


def _add_speedups(report: dict) -> None:
    """Speed-up of every row over eager PyTorch with the default allocator, same model."""
    eager = {r["model"]: r["median_latency_b1_ms"] for r in report["results"]
             if r["config"] == "eager" and r["allocator"] == "default"
             and "median_latency_b1_ms" in r}
    for row in report["results"]:
        if row["model"] in eager and "median_latency_b1_ms" in row:
            row["speedup_b1_vs_eager"] = eager[row["model"]] / row["median_latency_b1_ms"]


def markdown_table(report: dict) -> str:
    batch = report["settings"]["batch"]
    lines = [f"fp32 matmul 2048x2048: {report['matmul_2048_gflops'] or float('nan'):.1f} GFLOP/s; "
             f"{report['settings']['size']} x {report['settings']['size']}, "
             f"{report['machine']['threads']} threads",
             "",
             f"| model | config | allocator | batch 1 ms (median) | img/s batch {batch} | "
             f"peak MB | GFLOP/s b1 | % of matmul | speed-up b1 | page faults |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["results"]:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['config']} | {r['allocator']} | error: "
                         f"{r['error']} | | | | | | |")
            continue
        pct = r.get("fraction_of_matmul_b1")
        lines.append(
            f"| {r['model']} | {r['config']} | {r['allocator']} | "
            f"{r['median_latency_b1_ms']:.1f} | {r[f'images_per_s_b{batch}']:.2f} | "
            f"{r['peak_rss_mb']:.0f} | {r['gflops_b1']:.1f} | "
            f"{'' if pct is None else f'{100 * pct:.0f}%'} | "
            f"{r.get('speedup_b1_vs_eager', float('nan')):.2f}x | {r['page_faults']:,} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
