"""``pixelwise bench``: run the inference (or tiling) benchmark from a source checkout."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import click

from ..errors import PixelwiseError
from .options import DEVICE_HELP, parse_device

BENCHMARKS = Path(__file__).resolve().parents[3] / "benchmarks"


@click.command("bench", context_settings={"ignore_unknown_options": True})
@click.option("--tiling", is_flag=True, help="Run benchmarks/tiling.py instead of inference.py.")
@click.option("--fps", "video", type=click.Path(dir_okay=False), default=None,
              help="Measure prediction frames/s on this video (needs --checkpoint).")
@click.option("--checkpoint", "-c", type=click.Path(dir_okay=False), default=None,
              help="With --fps: checkpoint (.pt) or ONNX model.")
@click.option("--frames-per-batch", type=click.IntRange(min=1), default=4, show_default=True,
              help="With --fps: frames per forward pass.")
@click.option("--max-frames", type=click.IntRange(min=1), default=None,
              help="With --fps: stop after this many frames.")
@click.option("--tile-size", type=click.IntRange(min=1), default=None,
              help="With --fps: predict in tiles of this size.")
@click.option("--tta", is_flag=True, help="With --fps: flip test-time augmentation.")
@click.option("--device", default="auto", show_default=True, callback=parse_device,
              help=f"With --fps: {DEVICE_HELP}")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def command(tiling: bool, video: str | None, checkpoint: str | None, frames_per_batch: int,
            max_frames: int | None, tile_size: int | None, tta: bool, device: str,
            args: tuple[str, ...]) -> None:
    """Benchmark CPU inference: eager PyTorch against each fast path, side by side; or, with
    --fps VIDEO, the frames/s of predicting a video.

    Runs benchmarks/inference.py (or benchmarks/tiling.py with --tiling); further arguments
    go to the script (see its --help). Each configuration runs in its own process, with the
    default and with a tuned glibc allocator. Results are written as JSON. The ort_int8
    configuration is the ONNX graph quantized to int8 with random calibration (speed only);
    --accuracy SPEC=CHECKPOINT adds fp32 against int8 on real data.

    \b
    Example:
      pixelwise bench --quick --models unet --configs eager,fold_bn,ort
      pixelwise bench --models unet --configs eager,ort,ort_int8 --threads 1
      pixelwise bench --tiling --output benchmarks/results/tiling.json
      pixelwise bench --fps clip.mp4 -c best.pt --frames-per-batch 8
    """
    if video is not None:
        if checkpoint is None:
            raise click.UsageError("--fps needs --checkpoint")
        if args:
            raise click.UsageError(f"unexpected arguments with --fps: {' '.join(args)}")
        _video_fps(video, checkpoint, frames_per_batch, max_frames, tile_size, tta, device)
        return
    script = BENCHMARKS / ("tiling.py" if tiling else "inference.py")
    if not script.is_file():
        raise PixelwiseError(f"{script}: not found; `pixelwise bench` runs from a source checkout")
    sys.exit(subprocess.call([sys.executable, str(script), *args]))


def _video_fps(video: str, checkpoint: str, frames_per_batch: int, max_frames: int | None,
               tile_size: int | None, tta: bool, device: str) -> None:
    from ..devices import resolve_device
    from ..inference.predict import Predictor
    from ..inference.video import measure_fps

    predictor = Predictor(checkpoint, tile_size=tile_size, tta=tta, fast=True,
                          device=resolve_device(device))
    r = measure_fps(predictor, video, frames_per_batch=frames_per_batch, max_frames=max_frames)
    click.echo(f"{video}: {r['frames']} frames of {r['width']}x{r['height']}, "
               f"{r['frames_per_s']:.2f} frames/s predicting "
               f"({r['end_to_end_frames_per_s']:.2f} frames/s with decoding), "
               f"{frames_per_batch} frames per batch on {predictor.device}")
