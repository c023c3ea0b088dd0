"""``pixelwise predict``: masks, overlays and class areas for images, folders and globs."""
from __future__ import annotations

import os
from pathlib import Path

import click

from ..errors import PixelwiseError
from ..inference.backend import BACKENDS
from ..inference.forward import DEFAULT_THRESHOLD
from .options import (DEVICE_HELP, FiniteFloatRange, checkpoints_option, finite_numbers,
                      parse_device, postprocess_option, resolve_ensemble)

RASTER_PIXELS = 2**26  # TIFFs above this (about 8,000 x 8,000) are predicted block by block


def _parse_scales(ctx, param, value: str) -> tuple[float, ...]:
    scales = finite_numbers(value, "--scales")
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


def _parse_shard(ctx, param, value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    try:
        index, count = (int(v) for v in value.split("/"))
    except ValueError:
        raise click.BadParameter(f"expected I/N (e.g. 3/16), got {value!r}")
    if not 0 <= index < count:
        raise click.BadParameter(f"I must be in 0..N-1, got {value!r}")
    return index, count


@click.command("predict")
@click.argument("inputs", nargs=-1)
@click.option("--files-from", type=click.File("r", encoding="utf-8"), default=None,
              help="Also read inputs from this file, one path per line ('-': stdin).")
@click.option("--shard", callback=_parse_shard, default=None, metavar="I/N",
              help="Predict only share I (0-based) of N of the inputs, without torchrun "
                   "(a scheduler's array task); the summary is summary-I-of-N.json.")
@checkpoints_option()
@click.option("--output", "-o", required=True, type=click.Path(file_okay=False),
              help="Output folder (created if missing).")
@click.option("--tile-size", type=click.IntRange(min=1), default=None,
              help="Predict in tiles of this size (default: whole images).")
@click.option("--overlap", type=FiniteFloatRange(0, 1, max_open=True), default=0.25,
              show_default=True, help="Tile overlap fraction.")
@click.option("--tta", is_flag=True, help="Average over horizontal and vertical flips.")
@click.option("--scales", default="1.0", callback=_parse_scales, show_default=True,
              help="Test-time scales, e.g. 0.75,1,1.25 (averaged with the flips).")
@click.option("--threshold", type=FiniteFloatRange(0, 1), default=DEFAULT_THRESHOLD,
              show_default=True,
              help="Foreground probability threshold of a binary model.")
@click.option("--backend", type=click.Choice(["auto", *BACKENDS]), default="auto",
              show_default=True, help="Inference engine; auto: onnxruntime for an .onnx file, "
                                      "torch for a checkpoint (onnxruntime exports it in memory).")
@click.option("--probs", is_flag=True, help="Also write per-class probabilities.")
@click.option("--uncertainty", is_flag=True,
              help="Also write NAME_entropy.png (normalised entropy of the averaged "
                   "probabilities) and, with several members or TTA views, NAME_variance.png "
                   "(their normalised variance): 16-bit, 0..65535 for 0..1; .tif for rasters.")
@postprocess_option()
@click.option("--probs-format", type=click.Choice(["npy", "tiff16"]), default="npy",
              show_default=True, help="float32 .npy, or 16-bit TIFF (probability x 65535).")
@click.option("--batch-size", type=click.IntRange(min=1), default=1, show_default=True,
              help="Tiles per forward pass.")
@click.option("--frames-per-batch", type=click.IntRange(min=1), default=4, show_default=True,
              help="Video frames per forward pass.")
@click.option("--mask-video", is_flag=True,
              help="Also write NAME_mask.mkv for videos (lossless class colours).")
@click.option("--device", default="auto", show_default=True, callback=parse_device,
              help=DEVICE_HELP)
@click.option("--fast/--no-fast", "--optimize/--no-optimize", "fast", default=None,
              help="The fast path: BatchNorm folded, channels_last, pixelwise.fast's "
                   "convolutions (same results, faster on CPU); torch only, on by default "
                   "there. --optimize is its old name.")
@click.option("--raster", is_flag=True,
              help="Predict TIFF inputs block by block into tiled mask TIFFs (automatic for "
                   "TIFFs over 64 Mpixel); GeoTIFF georeferencing is kept.")
@click.option("--block-size", type=click.IntRange(min=64), default=1024, show_default=True,
              help="Block side for --raster.")
@click.option("--skip-existing", is_flag=True,
              help="Leave inputs whose outputs are all there (resume a killed job).")
@click.option("--overwrite", is_flag=True,
              help="Replace files in the output folder that pixelwise did not write "
                   "(refused by default; its own earlier outputs are always replaced).")
@click.option("--fail-fast", is_flag=True,
              help="Stop at the first input that cannot be read (default: list it, go on, "
                   "exit 1 at the end).")
@click.option("--format", "polygons", type=click.Choice(["png", "labelme", "coco"]),
              default="png", show_default=True,
              help="Also write the masks as polygons the tools open: NAME.json per image "
                   "(labelme) or coco.json (coco); outlines simplified within 1 px.")
@click.option("--progress/--no-progress", default=True, show_default=True,
              help="Show progress bars (stderr; rank 0 only under torchrun).")
def command(inputs, files_from, shard, checkpoints, output, tile_size, overlap, tta, scales,
            threshold, backend, probs, uncertainty, no_postprocess, probs_format, batch_size,
            frames_per_batch, mask_video, device, fast, raster, block_size, skip_existing,
            overwrite, fail_fast, polygons, progress) -> None:
    """Predict class masks for images, videos, folders and glob patterns.

    Writes per image NAME_mask.png (palette PNG of class indices), NAME_overlay.png,
    optionally NAME_probs.npy, and summary.json (class areas, inputs that failed); large TIFF
    scenes become NAME_mask.tif, videos NAME_overlay.mp4 and NAME_areas.csv (`video` extra).
    NAME is the input's stem (+ 8 hex digits of its path's hash when stems collide). Several
    -c (or a folder of folds) average the members' probabilities; the post-processing stored
    with the model is applied to image and video masks (not to rasters). Files
    that pixelwise did not write are never replaced without --overwrite. Under torchrun each
    process predicts its share; --shard I/N predicts one share without it.

    \b
    Example:
      pixelwise predict --checkpoint runs/camvid/checkpoints/best.pt \\
          data/street/*.png --output predictions --tile-size 512 --tta
      torchrun --nproc_per_node 4 --no-python pixelwise predict -c best.pt scans/ -o preds \\
          --skip-existing
      pixelwise predict -c runs/polyp_folds scans/ -o preds --uncertainty   # 5-fold ensemble
    """
    from ..data.readers import IMAGE_SUFFIXES
    from ..devices import resolve_device
    from ..inference.batch import (OutputOptions, collect_inputs, gather, join_group,
                                   leave_group, plan_jobs, run_jobs, write_summary)
    from ..inference.batch import shard as shard_of
    from ..inference.predict import Predictor
    from ..inference.video import VIDEO_SUFFIXES
    from ..io.outputs import check_output_folder

    inputs = _given_inputs(inputs, files_from)
    out = check_output_folder(output, "--output")
    if shard is not None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise click.UsageError("--shard is for jobs without torchrun (torchrun shards itself)")
    group = join_group()
    rank, world_size = shard or (group.rank, group.world_size)
    summary_name = "summary.json" if shard is None else f"summary-{rank}-of-{world_size}.json"
    bars = _Bars(progress and group.rank == 0)
    try:
        ensemble = resolve_ensemble(checkpoints, no_postprocess, quiet=group.rank != 0)
        sources, backend, fast = choose_backends(ensemble.members, backend, fast)
        predictor = Predictor(sources, backend=backend, tile_size=tile_size, overlap=overlap,
                              tta=tta, threshold=threshold, scales=scales,
                              device=resolve_device(device, group.local_rank),
                              batch_size=batch_size, fast=fast, progress=bars.tile_done,
                              uncertainty=uncertainty, postprocess=ensemble.postprocess)
        paths = collect_inputs(inputs, suffixes=IMAGE_SUFFIXES + VIDEO_SUFFIXES)
        jobs = plan_jobs(paths, [_kind(p, raster) for p in paths])
        opts = OutputOptions(save_probs=probs, probs_format=probs_format,
                             mask_video=mask_video, frames_per_batch=frames_per_batch,
                             block_size=block_size, uncertainty=uncertainty,
                             variance=predictor.views > 1)
        if polygons != "png" and group.rank == 0:
            _claim_polygon_files(jobs, polygons, out, summary_name, overwrite)
        results = run_jobs(predictor, shard_of(jobs, rank, world_size), out, opts,
                           skip_existing=skip_existing, fail_fast=fail_fast,
                           on_failure=lambda path, msg: click.echo(f"error: {msg}", err=True),
                           progress=bars.image_done, overwrite=overwrite,
                           summary_name=summary_name if group.rank == 0 else None)
        results = gather(results, group)
    finally:
        bars.close()
        leave_group(group)
    summary = write_summary(predictor, results, out, summary_name) if group.rank == 0 else None
    _write_polygons(polygons, summary, out, summary_name)
    _report(group.rank, results, summary, out / summary_name)


def _write_polygons(polygons: str, summary: dict | None, out: Path, summary_name: str) -> None:
    """The predicted masks as LabelMe / COCO polygons (``--format``), by the summary's rank."""
    if summary is not None and polygons != "png":
        from ..data.annotations.export import write_predictions

        write_predictions(polygons, summary, out, summary_name.replace("summary", "coco"))


def _claim_polygon_files(jobs, polygons: str, out: Path, summary_name: str,
                         overwrite: bool) -> None:
    """The polygon files written after the summary are refused and claimed like the rest:
    a LabelMe NAME.json beside an image is often the user's ground truth."""
    from ..io.outputs import Recorder, read_records, refuse_foreign

    names = ([f"{job.stem}.json" for job in jobs if job.kind == "image"] if polygons == "labelme"
             else [summary_name.replace("summary", "coco")])
    refuse_foreign(out, names, read_records(out), overwrite)
    out.mkdir(parents=True, exist_ok=True)
    Recorder(out).claim(names)


def _given_inputs(inputs: tuple[str, ...], files_from) -> tuple[str, ...]:
    """The command line's inputs, then --files-from's lines (blank ones skipped)."""
    if files_from is not None:
        try:
            inputs = (*inputs, *(line.strip() for line in files_from if line.strip()))
        except UnicodeDecodeError as e:
            raise click.BadParameter(f"{files_from.name}: not a UTF-8 text file (byte {e.start} "
                                     f"is not UTF-8)", param_hint="--files-from") from None
    if not inputs:
        raise click.UsageError("give inputs (files, folders, globs) or --files-from")
    return inputs


def choose_backend(checkpoint: str | os.PathLike, backend: str,
                   fast: bool | None) -> tuple[str | os.PathLike | bytes, str, bool]:
    """``(source, backend, fast)`` for the Predictor from ``--checkpoint``, ``--backend``
    and ``--fast`` (shared with ``pixelwise serve``).

    ``auto`` picks the backend the file is for; ``--fast`` defaults to on for torch. A
    checkpoint on onnxruntime is exported in memory. A contradiction (an .onnx file on
    torch, --fast on onnxruntime) is a usage error: one line, exit 2.
    """
    from ..inference.backend import backend_problem

    onnx_file = Path(checkpoint).suffix.lower() == ".onnx"
    if backend == "auto":
        backend = "onnxruntime" if onnx_file else "torch"
    if fast is None:
        fast = backend == "torch"
    source: str | os.PathLike | bytes = checkpoint
    if backend == "onnxruntime" and not onnx_file:
        from ..io.checkpoint import load_checkpoint
        from ..export import onnx_bytes

        source = onnx_bytes(load_checkpoint(checkpoint))
    problem = backend_problem(source, backend, fast)
    if problem is not None:
        raise click.BadParameter(problem, param_hint="--backend")
    return source, backend, fast


def choose_backends(members, backend: str, fast: bool | None):
    """:func:`choose_backend` for every member of an ensemble, on one backend: ``auto`` is
    onnxruntime when any member is an ``.onnx`` file (checkpoints are then exported in memory).
    """
    if backend == "auto" and any(Path(m).suffix.lower() == ".onnx" for m in members):
        backend = "onnxruntime"
    chosen = [choose_backend(m, backend, fast) for m in members]
    return [source for source, _, _ in chosen], chosen[0][1], chosen[0][2]


def _report(rank: int, results, summary, summary_path: Path) -> None:
    from ..errors import DataError

    if summary is not None:
        counts = ", ".join(f"{len(summary[k])} {k}" for k in ("images", "videos", "rasters")
                           if summary[k])
        click.echo(f"{counts or 'nothing'} -> {summary_path.parent} ({summary_path.name})")
    if results.failed:
        if rank != 0:  # rank 0 says it once for the whole job
            raise click.exceptions.Exit(1)
        raise DataError(f"{len(results.failed)} input(s) could not be predicted "
                        f"(listed in {summary_path} under 'failed')")


def _kind(path: Path, raster: bool) -> str:
    from ..data import image_size
    from ..inference.video import VIDEO_SUFFIXES

    suffix = path.suffix.lower()
    if suffix in VIDEO_SUFFIXES:
        return "video"
    if suffix in (".tif", ".tiff"):
        try:
            if raster or _pixels(image_size, path) > RASTER_PIXELS:
                return "raster"
        except PixelwiseError:
            pass  # an unreadable TIFF: reported with the images
    return "image"


def _pixels(image_size, path: Path) -> int:
    height, width = image_size(path, max_pixels=2**62)
    return height * width
