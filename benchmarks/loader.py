"""Loader throughput vs. training step rate: is the data loader ever the bottleneck?

CamVid train split with augmentation (scale 0.5-2, crop, flip, elastic, colour jitter)
through a torch DataLoader at 0, 1 and 2 workers, beside the training step rate of
``unet`` (base 32, BatchNorm) at the same batch size and crop. Both in images/s.

    python benchmarks/loader.py --root ../shared/data/camvid --crop 128 --batch-size 4 \
        --batches 20 --steps 3
"""
from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import torch

from pixelwise.data import SegmentationDataset, build_transforms, load_spec
from pixelwise.io.files import atomic_write_json
from pixelwise.models import build_model


def loader_rate(ds, batch_size: int, workers: int, batches: int) -> dict:
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=True,
                                         num_workers=workers, drop_last=True,
                                         persistent_workers=False)
    start = time.perf_counter()
    it = iter(loader)
    next(it)  # the first batch includes worker start-up; time the steady state after it
    first = time.perf_counter()
    n = 0
    for _ in range(batches):
        try:
            next(it)
        except StopIteration:
            break
        n += 1
    end = time.perf_counter()
    del it
    return {"workers": workers, "batches": n, "images_per_s": n * batch_size / (end - first),
            "first_batch_s": first - start}


def train_rate(num_classes: int, batch_size: int, crop: int, steps: int) -> float:
    model = build_model("unet", in_channels=3, num_classes=num_classes, base_channels=32,
                        batch_norm=True)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch_size, 3, crop, crop)
    y = torch.randint(0, num_classes, (batch_size, crop, crop))
    loss_fn = torch.nn.CrossEntropyLoss(ignore_index=255)

    def step():
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()

    step()  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch_size / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", default=str(Path(__file__).resolve().parents[1].parent / "shared/data/camvid"))
    p.add_argument("--crop", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--batches", type=int, default=20, help="timed batches per worker setting")
    p.add_argument("--steps", type=int, default=3, help="timed training steps")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--output", default="benchmarks/results/loader.json")
    args = p.parse_args()

    torch.manual_seed(0)
    spec = load_spec("camvid", root=args.root)
    aug = {"scale": [0.5, 2.0], "crop": args.crop, "hflip": 0.5, "elastic": True,
           "color_jitter": 0.2}
    ds = SegmentationDataset(spec, "train", transform=build_transforms(aug, True, spec.ignore_index))
    rows = [loader_rate(ds, args.batch_size, w, args.batches) for w in args.workers]
    train = train_rate(spec.num_classes, args.batch_size, args.crop, args.steps)

    print(f"CamVid train, batch {args.batch_size}, crop {args.crop}, augment {aug}")
    print(f"{'':24}{'images/s':>10}{'vs train':>10}{'first batch s':>15}")
    for r in rows:
        print(f"{'loader, ' + str(r['workers']) + ' workers':<24}{r['images_per_s']:>10.1f}"
              f"{r['images_per_s'] / train:>9.1f}x{r['first_batch_s']:>15.2f}")
    print(f"{'unet-32-bn train step':<24}{train:>10.1f}")
    result = {"dataset": "camvid", "split": "train", "batch_size": args.batch_size,
              "crop": args.crop, "augment": aug, "loader": rows,
              "train_images_per_s": train, "model": "unet base_channels=32 batch_norm",
              "torch": torch.__version__, "threads": torch.get_num_threads(),
              "cpus": os.cpu_count(), "machine": platform.processor() or platform.machine()}
    atomic_write_json(args.output, result)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
