"""Training-step speed: pixelwise's fast path against plain PyTorch code of the same network.

Batch 4, 256 x 256, fp32, Adam(W) lr 1e-3, cross-entropy, one thread per process. For each
model two worker processes run at the same time, one core each (``taskset``), and then swap
cores, so both sides always see the same machine:

- ``plain``: what a user writes in plain PyTorch. For U-Net and the ResNet34 U-Net this is
  the seed document's code, written out below (parameter counts asserted equal to
  pixelwise's); for every other zoo model it is the pixelwise module itself run the plain
  way. NCHW tensors, the default allocator, ``torch.optim.Adam``, ``F.cross_entropy``.
- ``pixelwise``: what ``pixelwise train`` does by default: ``tune_malloc`` (glibc keeps
  activation buffers instead of unmapping them), the trainer's model builder (channels_last,
  1x1 and fc-like convolutions as matrix products, deep 3x3 ones by Winograd's F(4x4, 3x3)),
  pixelwise's optimiser builder (fused kernels without layout copies), loss and full-size
  forward.
- ``smp`` (``--peer smp``, for the models in ``peers.SMP_UNETS``): smp's ``Unet`` of the same
  network (``efficientnet_lite0_unet``: ``Unet("tu-tf_efficientnet_lite0")``) trained the plain
  way as above, in the peers venv's python (smp does not import with pixelwise's torch).
  Without that venv the script prints a note and skips the smp pair; the other models keep
  their plain side.

Prints one line per model and writes JSON (``--out``) with both medians and their ratio.

    python benchmarks/train_step.py                   # unet, unet_small, resnet34_unet
    python benchmarks/train_step.py --models all --steps 8 --out benchmarks/results/train_step.json
    python benchmarks/train_step.py --models efficientnet_lite0_unet --peer smp --steps 6
    python benchmarks/train_step.py --models efficientnet_lite0_unet --peer smp --steps 1 \
        --size 64 --cores 0 --out /tmp/smoke.json  # smoke check: both workers on core 0
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from peers import SMP_UNETS, find_peers_python, smp_unet

BATCH, SIZE, CLASSES = 4, 256, 12


# ---------------------------------------------------------------------------------------------
# The seed document's networks in plain PyTorch (its final sigmoid dropped: logits for CE)

def double_conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(True),
                         nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(True))


class SeedUNet(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        w = [32, 64, 128, 256, 512]
        self.down = nn.ModuleList([double_conv(cin, w[0])] +
                                  [double_conv(w[i], w[i + 1]) for i in range(4)])
        self.ups = nn.ModuleList([nn.ConvTranspose2d(w[i + 1], w[i], 2, stride=2)
                                  for i in reversed(range(4))])
        self.convs = nn.ModuleList([double_conv(2 * w[i], w[i]) for i in reversed(range(4))])
        self.head = nn.Conv2d(w[0], cout, 1)

    def forward(self, x):
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        x = skips.pop()
        for up, conv in zip(self.ups, self.convs):
            x = conv(torch.cat([up(x), skips.pop()], 1))
        return self.head(x)


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                   nn.BatchNorm2d(cout)) if stride != 1 or cin != cout else None)

    def forward(self, x):
        y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(y + (x if self.down is None else self.down(x)))


def linknet_block(cin: int, cout: int) -> nn.Sequential:
    mid = cin // 4
    return nn.Sequential(
        nn.Conv2d(cin, mid, 1), nn.BatchNorm2d(mid), nn.ReLU(True),
        nn.ConvTranspose2d(mid, mid, 3, stride=2, padding=1, output_padding=1),
        nn.BatchNorm2d(mid), nn.ReLU(True),
        nn.Conv2d(mid, cout, 1), nn.BatchNorm2d(cout), nn.ReLU(True))


class SeedResNet34UNet(nn.Module):
    """The seed's "resnet34_unet": torchvision's ResNet34 layers and a LinkNet decoder."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(cin, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64),
                                  nn.ReLU(True), nn.MaxPool2d(3, 2, 1))
        layers, c = [], 64
        for width, n, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
            layers.append(nn.Sequential(*[BasicBlock(c if i == 0 else width, width,
                                                     stride if i == 0 else 1) for i in range(n)]))
            c = width
        self.layers = nn.ModuleList(layers)
        self.decoders = nn.ModuleList([linknet_block(512, 256), linknet_block(256, 128),
                                       linknet_block(128, 64), linknet_block(64, 64)])
        self.final = nn.Sequential(nn.ConvTranspose2d(64, 32, 4, 2, 1), nn.ReLU(True),
                                   nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(True),
                                   nn.Conv2d(32, cout, 3, padding=1))

    def forward(self, x):
        x = self.stem(x)
        e = []
        for layer in self.layers:
            x = layer(x)
            e.append(x)
        d = self.decoders[0](e[3]) + e[2]
        d = self.decoders[1](d) + e[1]
        d = self.decoders[2](d) + e[0]
        return self.final(self.decoders[3](d))


REFERENCES = {"unet": SeedUNet, "resnet34_unet": SeedResNet34UNet}
PIXELWISE_KWARGS = {"unet": {"base_channels": 32, "batch_norm": True},
                    "unet_small": {"in_channels": 3}}


# ---------------------------------------------------------------------------------------------
# Workers: one process each, one thread, timed steps

def _pixelwise_model(name: str) -> nn.Module:
    from pixelwise.models import build_model

    return build_model(name, num_classes=CLASSES, **PIXELWISE_KWARGS.get(name, {}))


def peer_step(side: str, name: str):
    """The plain loop, on the seed's code, the pixelwise module, or smp's network (``side``)."""
    torch.manual_seed(0)
    if side == "smp":
        model = smp_unet(name, CLASSES)
    else:
        model = REFERENCES[name](3, CLASSES) if name in REFERENCES else _pixelwise_model(name)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()

    def step(x, y):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model, step


def pixelwise_step(name: str):
    from pixelwise.config import load_config
    from pixelwise.engine.allocator import tune_malloc
    from pixelwise.engine.forward import whole_image_logits
    from pixelwise.engine.schedule import build_optimizer
    from pixelwise.engine.setup import build_run_model
    from pixelwise.losses import build_loss

    tune_malloc()
    torch.manual_seed(0)
    cfg = load_config(raw={"model": {"name": name}, "data": {"spec": "unused"},
                           "optim": {"name": "adamw", "lr": 1e-3, "weight_decay": 0.0}})
    kwargs = {"num_classes": CLASSES, **PIXELWISE_KWARGS.get(name, {})}
    model = build_run_model(cfg, kwargs, torch.device("cpu"))  # layout and convs as in train
    opt = build_optimizer(model, cfg)
    criterion = build_loss("ce")
    model.train()

    def step(x, y):
        if cfg.train.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        loss = criterion(whole_image_logits(model, x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model, step


def worker(side: str, name: str, steps: int, size: int) -> dict:
    torch.set_num_threads(1)
    model, step = pixelwise_step(name) if side == "pixelwise" else peer_step(side, name)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(BATCH, 3, size, size, generator=gen)
    y = torch.randint(0, CLASSES, (BATCH, size, size), generator=gen)
    for _ in range(1):  # warm-up: first allocations
        step(x, y)
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step(x, y)
        times.append(time.perf_counter() - t)
    return {"median_s": statistics.median(times), "times_s": times, "torch": torch.__version__,
            "params": sum(p.numel() for p in model.parameters())}


# ---------------------------------------------------------------------------------------------
# Driver: pairs at the same time on cores 0 and 1, then swapped

def run_pair(name: str, steps: int, size: int, peer: str, python: str,
             cores: tuple[int, int]) -> dict:
    """``peer`` (run by ``python``) and pixelwise at the same time, one core each, then with
    the cores swapped (once when both share one core: a smoke check, not a measurement)."""
    pythons = {peer: python, "pixelwise": sys.executable}
    results: dict[str, list[dict]] = {peer: [], "pixelwise": []}
    first, second = cores
    for order in [(first, second)] if first == second else [(first, second), (second, first)]:
        procs = {}
        for (side, exe), core in zip(pythons.items(), order):
            cmd = ["taskset", "-c", str(core), exe, __file__, "--worker", side,
                   "--models", name, "--steps", str(steps), "--size", str(size)]
            env = {**os.environ, "OMP_NUM_THREADS": "1"}
            procs[side] = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                           text=True, env=env)
        for side, proc in procs.items():
            out, err = proc.communicate()
            if proc.returncode != 0:
                last = err.strip().splitlines()[-1] if err.strip() else "no message"
                raise SystemExit(f"{name} ({side}) worker failed with exit "
                                 f"{proc.returncode}: {last}")
            results[side].append(json.loads(out.strip().splitlines()[-1]))
    slow = statistics.mean(r["median_s"] for r in results[peer])
    fast = statistics.mean(r["median_s"] for r in results["pixelwise"])
    params = {side: r[0]["params"] for side, r in results.items()}
    if peer == "plain" and params["plain"] != params["pixelwise"]:
        raise SystemExit(f"{name}: reference has {params['plain']} parameters, pixelwise "
                         f"{params['pixelwise']}: not the same network")
    return {"model": name, "peer": peer, "params": params["pixelwise"],
            "peer_params": params[peer], "torch": {s: r[0]["torch"] for s, r in results.items()},
            f"{peer}_s": slow, "pixelwise_s": fast, "speedup": slow / fast,
            f"{peer}_images_per_s": BATCH / slow, "pixelwise_images_per_s": BATCH / fast,
            "cores": list(cores), "runs": results}


def parse_cores(text: str) -> tuple[int, int]:
    cores = [int(c) for c in text.split(",") if c.strip().isdigit()]
    if len(cores) not in (1, 2) or len(cores) != len(text.split(",")):
        raise argparse.ArgumentTypeError(f"want 'A,B' or 'A' (core numbers), "
                                         f"got {text!r}")
    return (cores[0], cores[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="unet,unet_small,resnet34_unet",
                    help="comma-separated registered names, or 'all'")
    ap.add_argument("--steps", type=int, default=6, help="timed steps per worker")
    ap.add_argument("--size", type=int, default=SIZE, help="crop side (256; smaller: smoke)")
    ap.add_argument("--peer", choices=["plain", "smp"], default="plain",
                    help="smp: pixelwise against smp's same network, where there is one")
    ap.add_argument("--peers-python", help="the peers venv's python (default "
                    "$PIXELWISE_PEERS_PYTHON or /tmp/pixelwise-peers-venv/bin/python)")
    ap.add_argument("--cores", type=parse_cores, default=(0, 1),
                    help="the two cores, 'A,B' (default 0,1); one core 'A' for a smoke check")
    ap.add_argument("--out", help="JSON (default benchmarks/results/train_step.json, "
                    "train_step_smp.json with --peer smp)")
    ap.add_argument("--worker", choices=["plain", "smp", "pixelwise"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.models, args.steps, args.size)))
        return
    from pixelwise.models import list_models

    names = list_models() if args.models == "all" else args.models.split(",")
    smp_python = (find_peers_python(args.peers_python)
                  if args.peer == "smp" and any(n in SMP_UNETS for n in names) else None)
    rows = []
    for name in names:
        peer = "smp" if args.peer == "smp" and name in SMP_UNETS else "plain"
        if peer == "smp" and smp_python is None:
            continue  # the note is printed once, above
        row = run_pair(name, args.steps, args.size, peer,
                       smp_python if peer == "smp" else sys.executable, args.cores)
        rows.append(row)
        print(f"{name:24s} {row['params'] / 1e6:7.2f} M  {peer} {row[f'{peer}_s']:.3f} s/step  "
              f"pixelwise {row['pixelwise_s']:.3f} s/step  speed-up {row['speedup']:.2f}x",
              flush=True)
    if rows:
        write_json(args.out or f"benchmarks/results/train_step{'_smp' * (args.peer == 'smp')}"
                   ".json", {"batch": BATCH, "size": args.size, "torch": torch.__version__,
                             "cpu": platform.processor() or platform.machine(),
                             "results": rows})


def write_json(path: str, report: dict) -> None:
    """Atomically: a run stopped half-way leaves the previous file whole."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(report, f, indent=2)
    os.replace(path + ".tmp", path)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
