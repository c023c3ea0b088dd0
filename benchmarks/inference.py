"""CPU inference benchmark: plain eager PyTorch against each fast path, side by side.

For each model (``unet`` base 32 with BatchNorm, ``resnet34_unet``, ``fcn8s``,
``efficientnet_lite0_unet``) at 512 x 512: median latency at batch 1, images/s at batch 4,
peak memory, and achieved GFLOP/s (FLOPs counted with
``torch.utils.flop_counter.FlopCounterMode``) against this machine's fp32 matmul rate,
measured in the same run on a 2048 x 2048 matmul.

Configurations: ``eager`` (plain model), ``fold_bn`` (BatchNorm folded into the convolutions),
``channels_last`` (folded + NHWC), ``compile`` (folded + NHWC + torch.compile with inductor and
freezing), ``ort`` (ONNX Runtime, all graph optimisations) and ``ort_int8`` (the ONNX
graph quantized to int8 for ONNX Runtime, random calibration: see ``int8.py``; with
``--accuracy SPEC=CHECKPOINT`` the int8 export's accuracy on real data too). ``smp`` is a peer, not a
pixelwise path: smp's ``Unet`` of the same network, eager, for the models in
``peers.SMP_UNETS`` (``efficientnet_lite0_unet``: ``Unet("tu-tf_efficientnet_lite0")``), run
by the peers venv's python (smp does not import with pixelwise's torch). Without that venv
the script prints a note and leaves the row out. The JSON's ``smp_peer`` puts smp's best
latency beside pixelwise's best path, and eager beside eager.

Every (model, configuration, allocator) runs in its own process, so that glibc's allocator
can be tuned per process (its ``MALLOC_*`` variables are read at process start) and so that
peak memory (VmHWM) belongs to one configuration. ``default`` is glibc as is; ``tuned``
keeps freed activations instead of unmapping them (see PERF-NOTES.md).

    python benchmarks/inference.py                       # the full run, JSON to benchmarks/results/
    python benchmarks/inference.py --quick --models unet --configs eager,fold_bn,ort
    taskset -c 1 python benchmarks/inference.py --models efficientnet_lite0_unet --threads 1
    python benchmarks/inference.py --models unet,resnet34_unet_concat,efficientnet_lite0_unet \
        --configs eager,ort,ort_int8 --allocators default --threads 1 \
        --accuracy camvid=runs/camvid/checkpoints/best.pt --data-root ../shared/data
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

from int8 import accuracy_rows, int8_speedups, markdown, quantize_onnx_file
from peers import SMP_UNETS, find_peers_python, smp_unet

MODELS = {
    "unet": dict(in_channels=3, num_classes=2, base_channels=32, batch_norm=True),
    "resnet34_unet": dict(in_channels=3, num_classes=2),
    "resnet34_unet_concat": dict(in_channels=3, num_classes=2),
    "fcn8s": dict(num_classes=21),
    "efficientnet_lite0_unet": dict(in_channels=3, num_classes=12),
}
CONFIGS = ("eager", "fold_bn", "channels_last", "compile", "ort", "ort_int8", "smp")
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
    config = spec["config"]
    if config in ("ort", "ort_int8"):  # spec["onnx"]: the fp32 or the int8 graph
        import numpy as np

        from pixelwise.inference.backend import make_ort_session

        session = make_ort_session(spec["onnx"], threads=spec["threads"])
        name = session.get_inputs()[0].name
        return lambda x: torch.from_numpy(np.asarray(session.run(None, {name: x.numpy()})[0]))
    torch.manual_seed(0)
    if config == "smp":  # under the peers venv's python, where pixelwise does not import
        model = smp_unet(spec["model"], spec["kwargs"]["num_classes"]).eval()
    else:
        from pixelwise.fast.optimize import optimize_for_inference
        from pixelwise.models import build_model

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

def run_subprocess(spec: dict, allocator: str, script: Path = Path(__file__),
                   python: str = sys.executable) -> dict:
    env = {**os.environ, **ALLOCATORS[allocator]}
    for key in TUNED:  # "default" must not inherit a tuned parent
        if key not in ALLOCATORS[allocator]:
            env.pop(key, None)
    proc = subprocess.run([python, str(script), "--worker", json.dumps(spec)], env=env,
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
    parser.add_argument("--peers-python", help="the peers venv's python, for the smp rows "
                        "(default $PIXELWISE_PEERS_PYTHON, else "
                        "/tmp/pixelwise-peers-venv/bin/python)")
    parser.add_argument("--accuracy", action="append", default=[], metavar="SPEC=CHECKPOINT",
                        help="int8 accuracy row: export CHECKPOINT to int8 calibrated on SPEC "
                        "(a spec file, or a preset with --data-root) and score fp32 and int8 on "
                        "its val split (repeatable)")
    parser.add_argument("--data-root", help="with --accuracy: a preset SPEC's data is "
                        "DATA_ROOT/SPEC")
    parser.add_argument("--calibration", default="minmax",
                        help="with --accuracy: minmax, entropy or percentile")
    parser.add_argument("--calibration-images", type=int, default=32,
                        help="with --accuracy: calibration images from the train split")
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
    smp_python = (find_peers_python(args.peers_python)
                  if "smp" in configs and any(m in SMP_UNETS for m in models) else None)
    with tempfile.TemporaryDirectory() as tmp:
        for model in models:
            runs = [c for c in configs if c != "smp" or (model in SMP_UNETS and smp_python)]
            report["results"] += run_model(model, runs, allocators, base, matmul.get("gflops"),
                                           Path(tmp), smp_python)
    _add_speedups(report)
    report["smp_peer"] = smp_comparison(report["results"])
    report["int8"] = int8_speedups(report["results"])
    report["int8_accuracy"] = accuracy_rows(args.accuracy, args.data_root,
                                            args.calibration_images, args.calibration)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".tmp").write_text(json.dumps(report, indent=2) + "\n")
    out.with_suffix(".tmp").replace(out)  # a stopped run leaves the previous file whole
    print(markdown_table(report))
    if report["int8"] or report["int8_accuracy"]:
        print("\n" + markdown(report["int8"], report["int8_accuracy"]))
    print(f"\nwrote {out}", file=sys.stderr)
    return 0


def run_model(model: str, configs: list[str], allocators: list[str], base: dict,
              matmul_gflops: float | None, tmp: Path, smp_python: str | None) -> list[dict]:
    """One row per (configuration, allocator) of ``model``, each from its own process."""
    kwargs = MODELS[model]
    flops = count_flops(model, kwargs, base["size"])
    onnx_path = (export_onnx_file(model, kwargs, tmp)
                 if {"ort", "ort_int8"} & set(configs) else None)
    graphs = {"ort": onnx_path, "ort_int8": (quantize_onnx_file(onnx_path, base["size"])
                                             if "ort_int8" in configs else None)}
    rows = []
    for config in configs:
        for allocator in allocators:
            graph = graphs.get(config)
            spec = {**base, "model": model, "kwargs": kwargs, "config": config,
                    "onnx": str(graph) if graph else None}
            result = run_subprocess(spec, allocator,
                                    python=smp_python if config == "smp" else sys.executable)
            row = {"model": model, "config": config, "allocator": allocator,
                   "gflop_per_image": flops / 1e9, **result}
            if "median_latency_b1_ms" in result:
                rate = flops / (result["median_latency_b1_ms"] / 1e3) / 1e9
                row["gflops_b1"] = rate
                row["gflops_batch"] = flops / (result["ms_per_image_batch"] / 1e3) / 1e9
                if matmul_gflops:
                    row["fraction_of_matmul_b1"] = rate / matmul_gflops
            rows.append(row)
            print(_row_text(row), file=sys.stderr)
    return rows


def smp_comparison(rows: list[dict]) -> list[dict]:
    """Per model with smp rows: smp's best batch-1 latency against pixelwise's best path, and
    eager against eager with glibc's default allocator (what a plain script gets)."""
    timed = [r for r in rows if "median_latency_b1_ms" in r]
    out = []
    for model in sorted({r["model"] for r in timed if r["config"] == "smp"}):
        ours = [r for r in timed if r["model"] == model and r["config"] != "smp"]
        smp = min((r for r in timed if r["model"] == model and r["config"] == "smp"),
                  key=lambda r: r["median_latency_b1_ms"])
        entry = {"model": model, "smp_b1_ms": smp["median_latency_b1_ms"],
                 "smp_allocator": smp["allocator"]}
        if ours:
            best = min(ours, key=lambda r: r["median_latency_b1_ms"])
            entry.update(best_config=best["config"], best_allocator=best["allocator"],
                         best_b1_ms=best["median_latency_b1_ms"],
                         speedup_vs_smp=smp["median_latency_b1_ms"] / best["median_latency_b1_ms"])
        eager = {r["config"]: r["median_latency_b1_ms"] for r in timed if r["model"] == model
                 and r["config"] in ("eager", "smp") and r["allocator"] == "default"}
        if len(eager) == 2:
            entry["eager_speedup_vs_smp_eager"] = eager["smp"] / eager["eager"]
        out.append(entry)
        print(f"{model}: smp {entry['smp_b1_ms']:.1f} ms, pixelwise best "
              f"{entry.get('best_b1_ms', float('nan')):.1f} ms ({entry.get('best_config')}), "
              f"{entry.get('speedup_vs_smp', float('nan')):.2f}x", file=sys.stderr)
    return out


def _row_text(row: dict) -> str:
    if "error" in row:
        return f"{row['model']:<24}{row['config']:<14}{row['allocator']:<8} error: {row['error']}"
    return (f"{row['model']:<24}{row['config']:<14}{row['allocator']:<8}"
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
