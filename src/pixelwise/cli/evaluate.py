"""``pixelwise evaluate --checkpoint CKPT --data SPEC [--split NAME] --output DIR``."""
from __future__ import annotations

from pathlib import Path

import click

from ..inference.forward import DEFAULT_THRESHOLD
from .options import (DEVICE_HELP, FiniteFloatRange, checkpoints_option, parse_device,
                      postprocess_option, resolve_ensemble)


@click.command(name="evaluate")
@checkpoints_option("Checkpoint (.pt) or exported model (.onnx, int8 included) to evaluate; "
                    "repeat for an ensemble, or give a folder of folds (train --folds).")
@click.option("--data", "-d", "spec", default=None,
              help="Dataset spec: a YAML file or a preset name (with --root). Default: the "
                   "dataset named in the checkpoint's training config.")
@click.option("--root", type=click.Path(file_okay=False), default=None,
              help="Data folder, overriding the spec's root (needed for presets).")
@click.option("--split", default="val", show_default=True, help="Split to score.")
@click.option("--output", "-o", required=True, type=click.Path(file_okay=False),
              help="Folder for metrics.json, report.html and the figures.")
@click.option("--device", default="auto", show_default=True, callback=parse_device,
              help=DEVICE_HELP)
@click.option("--tile-size", type=click.IntRange(min=1), default=None,
              help="Predict in tiles of this size (large images); default whole images.")
@click.option("--overlap", type=FiniteFloatRange(0, 1, max_open=True), default=0.25,
              show_default=True, help="Tile overlap fraction.")
@click.option("--threshold", type=FiniteFloatRange(0, 1), default=DEFAULT_THRESHOLD,
              show_default=True,
              help="Foreground probability threshold of a binary model (as train.val_threshold).")
@click.option("--tolerance", type=click.IntRange(min=0), default=2, show_default=True,
              help="Boundary F1 matching tolerance in pixels.")
@click.option("--examples", type=click.IntRange(min=0), default=3, show_default=True,
              help="Overlays of the first N images and of the N worst (lowest IoU).")
@click.option("--overwrite", is_flag=True,
              help="Replace files in the output folder that pixelwise did not write.")
@postprocess_option()
@click.option("--uncertainty", is_flag=True,
              help="Also report how well the uncertainty (entropy; variance across several "
                   "members) ranks the misclassified pixels: AUROC.")
def command(checkpoints: tuple[str, ...], spec: str | None, root: str | None, split: str,
            output: str, device: str, tile_size: int | None, overlap: float, threshold: float,
            tolerance: int, examples: int, overwrite: bool, no_postprocess: bool,
            uncertainty: bool) -> None:
    """Score a checkpoint on a dataset split: pixel accuracy, mean accuracy, mean IoU,
    frequency-weighted IoU, Dice, boundary F1 and per-class tables in DIR/metrics.json, and a
    self-contained DIR/report.html (confusion matrix, per-class IoU, overlays including the
    worst images, training curves when the run folder has them). Post-processing stored
    with the model is applied, and the metrics are printed with and without it.

    \b
    Examples:
      pixelwise evaluate --checkpoint runs/fcn8s_camvid/checkpoints/best.pt \\
          --data camvid.yaml --split val --output eval/camvid
      pixelwise evaluate -c best.pt -d drive --root ../shared/data/drive -o eval
      pixelwise evaluate -c runs/drive/checkpoints/best.pt -o eval   # its own data
      pixelwise evaluate -c runs/drive_folds -d drive --root ../shared/data/drive \\
          --split test -o eval_ens --uncertainty        # the 5-fold ensemble
    """
    from ..io.checkpoint import read_checkpoint
    from ..data import load_spec
    from ..inference.evaluate import evaluate, number_text
    from ..metrics import SUMMARY_METRICS
    from ..io.outputs import check_output_folder

    check_output_folder(output, "--output")  # before the evaluation, not after it
    ensemble = resolve_ensemble(checkpoints, no_postprocess)
    if spec is None:
        first = ensemble.members[0]
        if Path(first).suffix.lower() == ".onnx":
            raise click.UsageError("--data is needed: an ONNX model does not name its dataset")
        spec = ((read_checkpoint(first).get("config") or {}).get("data") or {}).get("spec")
        if spec is None:
            raise click.UsageError("--data is needed: the checkpoint does not name its dataset")
    if root is not None:
        spec = load_spec(spec, root=root)
    result = evaluate(ensemble.members, spec, split, output, device=device,
                      tile_size=tile_size, overlap=overlap, threshold=threshold,
                      boundary_tolerance=tolerance, num_examples=examples, num_worst=examples,
                      progress=True, overwrite=overwrite, postprocess=ensemble.postprocess,
                      uncertainty=uncertainty)
    without = result.get("without_postprocess")
    if without is not None:
        click.echo(f"{'':>15}  {'post-processed':>14}  {'without':>8}")
    for key in (*SUMMARY_METRICS, "boundary_f1", "hausdorff95"):
        if key not in result:
            continue
        value = number_text(result[key])
        if without is not None and key in without:
            value = f"{value:>14}  {number_text(without[key]):>8}"
        click.echo(f"{key:>15}: {value}")
    for kind, ranking in (result.get("uncertainty") or {}).items():
        if isinstance(ranking, dict):
            click.echo(f"{kind + ' AUROC':>15}: {number_text(ranking['auroc'])} (error ranking, "
                       f"{ranking['error_pixels']} of "
                       f"{ranking['error_pixels'] + ranking['correct_pixels']} pixels wrong)")
    click.echo(f"report: {output}/report.html")

