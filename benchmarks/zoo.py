"""The U-Net zoo compared, as the zoos compare their models: cost, speed, and one short,
equal-budget training run on the same real data set.

For every model (reference configuration: 3 input channels, 1 output, the README's
constructor arguments):

- ``params``: trainable parameters;
- ``gflops_512``: one forward pass at 512 x 512, batch 1 (multiply-add = 2 FLOPs), counted
  with ``torch.utils.flop_counter.FlopCounterMode`` on the meta device;
- ``latency_b1_ms``: median eval-mode forward at 512 x 512, batch 1, on the CPU;
- ``train_images_per_s``: forward + backward + AdamW step at the training crop and batch.

Latency and training speed are measured interleaved, one call of each model in turn, so a
busy neighbour slows every model alike instead of whichever happened to run at that moment.

Then, unless ``--skip-train``, each model is trained for ``--seconds`` of wall clock through
pixelwise's own trainer (``train.max_minutes``: the schedule is laid over the steps that fit)
with one recipe for all (ISBI 2012 or DRIVE from ``../shared/data``: 256 px crops, batch 2,
flips and 90-degree rotations, AdamW 1e-3 with cosine decay, Dice + cross-entropy, two-class
softmax), and the final checkpoint is scored on the validation split with
:func:`pixelwise.inference.evaluate.evaluate`: mean Dice, mean IoU and Hausdorff 95.

    python benchmarks/zoo.py --seconds 600                     # the full comparison
    python benchmarks/zoo.py --smoke --models unet_plus_plus,segnet --seconds 5

Writes ``benchmarks/results/zoo.json`` and ``zoo.png`` (val Dice against latency, area by
parameters); ``--output`` moves them.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from inference import count_flops

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"

# Reference configurations (3 in, 1 out; README "The U-Net zoo"). Training changes only
# in_channels / num_classes to the data set's.
ZOO = {
    "unet": dict(base_channels=64, batch_norm=True),
    # Deep supervision: trained on the mean of the four heads' losses, scored on the last.
    "unet_plus_plus": dict(base_channels=32, deep_supervision=True),
    "attention_unet": {},
    "r2unet": dict(t=2),
    "r2attention_unet": dict(t=2),
    "ce_net": {},
    "segnet": {},
    "resnet34_unet": {},
    "vgg16_unet": {},
    "resnet50_unet": {},
    "resnet34_unet_concat": {},
    "fcn8s": {},
}
DATASETS = ("isbi2012", "drive")


def build(name: str, kwargs: dict, num_classes: int = 1):
    """The model with 3 input channels (where it takes ``in_channels``) and ``num_classes``."""
    from pixelwise.models import build_model
    from pixelwise.models.registry import model_parameters

    full = dict(kwargs, num_classes=num_classes)
    if "in_channels" in model_parameters(name):
        full["in_channels"] = 3
    return build_model(name, **full), full


def static_costs(name: str, kwargs: dict) -> dict:
    """Parameters and GFLOPs at 512 x 512 (counted on the meta device: no compute, any run)."""
    model, full = build(name, kwargs)
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"kwargs": full, "params": params, "gflops_512": count_flops(name, full, 512) / 1e9}


def interleaved(fns: dict[str, callable], reps: int) -> dict[str, list[float]]:
    """Seconds per call of each function, called in turn ``reps`` times (after one warm-up)."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(reps):
        for key, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - start)
    return times


def speed(names: list[str], size: int, crop: int, batch: int, reps: int) -> dict[str, dict]:
    """Batch-1 eval latency at ``size`` and training images/s at ``crop`` x ``batch``."""
    infer, step = {}, {}
    for name in names:
        model, _ = build(name, ZOO[name])
        infer[name] = _infer_fn(model.eval(), size)
        trained, _ = build(name, ZOO[name], num_classes=2)
        step[name] = _train_fn(trained.train(), crop, batch)
    lat = interleaved(infer, reps)
    tr = interleaved(step, reps)
    return {n: {"latency_b1_ms": statistics.median(lat[n]) * 1e3,
                "train_images_per_s": batch / statistics.median(tr[n])} for n in names}


def _infer_fn(model, size: int):
    x = torch.randn(1, 3, size, size)

    def run():
        with torch.inference_mode():
            model(x)
    return run


def _train_fn(model, crop: int, batch: int):
    from pixelwise.losses import DeepSupervisionLoss, build_loss

    criterion = DeepSupervisionLoss(build_loss("dice_ce"))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(batch, 3, crop, crop)
    y = torch.randint(0, 2, (batch, crop, crop))

    def run():
        optimizer.zero_grad(set_to_none=True)
        criterion(model(x), y).backward()
        optimizer.step()
    return run


def run_config(name: str, dataset: str, seconds: float, crop: int, batch: int,
               out_dir: Path) -> dict:
    return {
        "model": {"name": name, "kwargs": dict(ZOO[name], num_classes=2)},
        "data": {"spec": {"preset": dataset, "root": str(DATA / dataset)}, "crop_size": crop,
                 "batch_size": batch, "workers": 1},
        "augment": {"hflip": 0.5, "vflip": 0.5, "rotate90": True},
        "optim": {"name": "adamw", "lr": 1e-3, "weight_decay": 1e-4, "schedule": "cosine"},
        "loss": {"name": "dice_ce"},
        "train": {"max_minutes": seconds / 60, "seed": 0, "device": "cpu", "progress": False,
                  "tensorboard": False},
        "output": {"dir": str(out_dir), "name": name, "overwrite": True},
    }


def train_and_score(name: str, dataset: str, seconds: float, crop: int, batch: int,
                    out_dir: Path) -> dict:
    """Train ``name`` for ``seconds`` with the shared recipe; score the last checkpoint."""
    from pixelwise.io.config import load_config
    from pixelwise.inference.evaluate import evaluate
    from pixelwise.training.train import train

    cfg = load_config(raw=run_config(name, dataset, seconds, crop, batch, out_dir))
    start = time.perf_counter()
    run_dir = train(cfg)
    train_s = time.perf_counter() - start
    metrics = evaluate(run_dir / "checkpoints" / "last.pt", cfg.data.spec, "val", device="cpu")
    return {"train_s": train_s, "val_dice": metrics.get("dice"),
            "val_mean_iou": metrics.get("mean_iou"), "val_hd95": metrics.get("hausdorff95")}


def plot(results: dict, path: Path, size: int) -> None:
    """Val Dice against latency (log), marker area by parameters; untrained models left out."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for name, r in results.items():
        x, y = r.get("latency_b1_ms"), r.get("val_dice")
        if x is None or y is None:
            continue
        ax.scatter(x, y, s=max(r["params"] / 2e5, 10), alpha=0.5)
        ax.annotate(name, (x, y), fontsize=8, xytext=(4, 4), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel(f"CPU latency, batch 1, {size} x {size} (ms, log)")
    ax.set_ylabel("val Dice after the equal-budget run")
    ax.set_title("pixelwise U-Net zoo (marker area ~ parameters)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=",".join(ZOO),
                    help="comma-separated, from: " + ", ".join(ZOO))
    ap.add_argument("--dataset", choices=DATASETS, default="isbi2012")
    ap.add_argument("--seconds", type=float, default=600, help="training budget per model")
    ap.add_argument("--size", type=int, default=512, help="latency input size")
    ap.add_argument("--crop", type=int, default=256)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--skip-train", action="store_true")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes and reps: checks it runs")
    ap.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args(argv)
    names = [n for n in args.models.split(",") if n]
    unknown = sorted(set(names) - set(ZOO))
    if unknown:
        ap.error(f"unknown models {unknown}; choose from {list(ZOO)}")
    if args.smoke:
        args.size, args.crop, args.reps = 64, 64, 1
    if args.threads:
        torch.set_num_threads(args.threads)
    args.output.mkdir(parents=True, exist_ok=True)

    results = {n: static_costs(n, ZOO[n]) for n in names}
    for n, r in speed(names, args.size, args.crop, args.batch, args.reps).items():
        results[n].update(r)
    if not args.skip_train:
        with tempfile.TemporaryDirectory() as tmp:
            for n in names:
                try:
                    results[n].update(train_and_score(n, args.dataset, args.seconds, args.crop,
                                                      args.batch, Path(tmp)))
                except Exception as e:  # one model's failure must not lose the others
                    results[n]["train_error"] = f"{type(e).__name__}: {e}"
                print(f"{n}: {json.dumps(results[n], default=str)}", file=sys.stderr)
    report = {"machine": {"python": platform.python_version(), "torch": torch.__version__,
                          "threads": torch.get_num_threads(), "cpu": platform.processor()},
              "settings": {k: (str(v) if isinstance(v, Path) else v)
                           for k, v in vars(args).items()},
              "measured": time.strftime("%Y-%m-%d %H:%M"), "models": results}
    (args.output / "zoo.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(results, args.output / "zoo.png", args.size)
    for n, r in results.items():
        dice = r.get("val_dice")
        print(f"{n:18s} {r['params'] / 1e6:7.2f} M {r['gflops_512']:8.1f} GFLOPs "
              f"{r['latency_b1_ms']:9.1f} ms {r['train_images_per_s']:7.2f} img/s "
              f"dice {dice if dice is None else round(dice, 4)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
