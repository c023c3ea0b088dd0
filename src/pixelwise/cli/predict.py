"""``pixelwise predict``: masks, overlays and class areas for images, folders and globs."""
from __future__ import annotations

from pathlib import Path

import click

RASTER_PIXELS = 2**26  # TIFFs above this (about 8,000 x 8,000) are predicted block by block


def _parse_scales(ctx, param, value: str) -> tuple[float, ...]:
    try:
        scales = tuple(float(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated numbers, got {value!r}")
    if not scales or any(s <= 0 for s in scales):
        raise click.BadParameter(f"scales must be positive, got {value!r}")
    return scales


class _Bars:
    """tqdm bars: one over images, one over the tiles of the current image."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.images = self.tiles = None

    def image_done(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        if self.images is None:
            self.images = tqdm(total=total, desc="images", unit="img", position=0)
        self.images.update(done - self.images.n)

    def tile_done(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        if self.tiles is None:
            self.tiles = tqdm(total=total, desc="tiles", unit="tile", position=1, leave=False)
        if done <= self.tiles.n or total != self.tiles.total:  # a new pass (image, TTA view)
            self.tiles.reset(total=total)
        self.tiles.update(done - self.tiles.n)

    def close(self) -> None:
        for bar in (self.tiles, self.images):
            if bar is not None:
                bar.close()


@click.command("predict")
@click.argument("inputs", nargs=-1, required=True)
@click.option("--checkpoint", "-c", required=True, type=click.Path(dir_okay=False),
              help="Checkpoint (.pt) or exported ONNX model (.onnx).")
@click.option("--output", "-o", required=True, type=click.Path(file_okay=False),
              help="Output folder (created if missing).")
@click.option("--tile-size", type=click.IntRange(min=1), default=None,
              help="Predict in tiles of this size (default: whole images).")
@click.option("--overlap", type=click.FloatRange(0, 1, max_open=True), default=0.25,
              show_default=True, help="Tile overlap fraction.")
@click.option("--tta", is_flag=True, help="Average over horizontal and vertical flips.")
@click.option("--scales", default="1.0", callback=_parse_scales, show_default=True,
              help="Test-time scales, e.g. 0.75,1,1.25 (averaged with the flips).")
@click.option("--threshold", type=click.FloatRange(0, 1), default=0.5, show_default=True,
              help="Foreground probability threshold of a binary model.")
@click.option("--backend", type=click.Choice(["torch", "onnxruntime"]), default="torch",
              show_default=True, help="Inference engine (an .onnx checkpoint implies onnxruntime).")
@click.option("--probs", is_flag=True, help="Also write per-class probabilities.")
@click.option("--probs-format", type=click.Choice(["npy", "tiff16"]), default="npy",
              show_default=True, help="float32 .npy, or 16-bit TIFF (probability x 65535).")
@click.option("--batch-size", type=click.IntRange(min=1), default=1, show_default=True,
              help="Tiles per forward pass.")
@click.option("--device", default="cpu", show_default=True, help="Torch device.")
@click.option("--optimize/--no-optimize", default=True, show_default=True,
              help="Fold BatchNorm and use channels_last (same results, faster on CPU).")
@click.option("--raster", is_flag=True,
              help="Predict TIFF inputs block by block into tiled mask TIFFs (automatic for "
                   "TIFFs over 64 Mpixel); GeoTIFF georeferencing is kept.")
@click.option("--block-size", type=click.IntRange(min=64), default=1024, show_default=True,
              help="Block side for --raster.")
@click.option("--progress/--no-progress", default=True, show_default=True,
              help="Show progress bars (stderr).")
def command(inputs, checkpoint, output, tile_size, overlap, tta, scales, threshold, backend,
            probs, probs_format, batch_size, device, optimize, raster, block_size,
            progress) -> None:
    """Predict class masks for images, folders and glob patterns.

    Writes per image NAME_mask.png (palette PNG of class indices, class names in a text
    chunk), NAME_overlay.png, optionally NAME_probs.npy, and summary.json with class areas.
    Large TIFF scenes become NAME_mask.tif (tiled, georeferenced like the input).

    \b
    Example:
      pixelwise predict --checkpoint runs/camvid/checkpoints/best.pt \\
          data/street/*.png --output predictions --tile-size 512 --tta
    """
    from ..data import image_size
    from ..engine.predict import Predictor, collect_inputs, predict_paths
    from ..engine.raster import predict_raster

    bars = _Bars(progress)
    try:
        predictor = Predictor(checkpoint, backend=backend, tile_size=tile_size, overlap=overlap,
                              tta=tta, threshold=threshold, device=device, scales=scales,
                              batch_size=batch_size, optimize=optimize,
                              progress=bars.tile_done)
        paths = collect_inputs(inputs)
        rasters = [p for p in paths if p.suffix.lower() in (".tif", ".tiff")
                   and (raster or _pixels(image_size, p) > RASTER_PIXELS)]
        images = [p for p in paths if p not in rasters]
        out = Path(output)
        if images:
            summary = predict_paths(predictor, images, out, save_probs=probs,
                                    probs_format=probs_format, progress=bars.image_done)
        for path in rasters:
            predict_raster(predictor, path, out / f"{path.stem}_mask.tif", block_size=block_size)
    finally:
        bars.close()
    if images:
        click.echo(f"{len(summary['images'])} image(s) -> {out} (summary.json)")
    for path in rasters:
        click.echo(f"{path} -> {out / (path.stem + '_mask.tif')}")


def _pixels(image_size, path: Path) -> int:
    height, width = image_size(path, max_pixels=2**62)
    return height * width
