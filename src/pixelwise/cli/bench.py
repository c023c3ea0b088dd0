"""``pixelwise bench``: run the inference (or tiling) benchmark from a source checkout."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import click

from ..errors import PixelwiseError

BENCHMARKS = Path(__file__).resolve().parents[3] / "benchmarks"


@click.command("bench", context_settings={"ignore_unknown_options": True})
@click.option("--tiling", is_flag=True, help="Run benchmarks/tiling.py instead of inference.py.")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def command(tiling: bool, args: tuple[str, ...]) -> None:
    """Benchmark CPU inference: eager PyTorch against each fast path, side by side.

    Runs benchmarks/inference.py (or benchmarks/tiling.py with --tiling); further arguments
    go to the script (see its --help). Each configuration runs in its own process, with the
    default and with a tuned glibc allocator. Results are written as JSON.

    \b
    Example:
      pixelwise bench --quick --models unet --configs eager,fold_bn,ort
      pixelwise bench --tiling --output benchmarks/results/tiling.json
    """
    script = BENCHMARKS / ("tiling.py" if tiling else "inference.py")
    if not script.is_file():
        raise PixelwiseError(f"{script}: not found; `pixelwise bench` runs from a source checkout")
    sys.exit(subprocess.call([sys.executable, str(script), *args]))
