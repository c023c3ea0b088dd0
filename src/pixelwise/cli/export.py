"""``pixelwise export``: a checkpoint to ONNX (dynamic sizes) or TorchScript, with metadata."""
from __future__ import annotations

import click

from ..export.int8 import (CALIBRATION_METHODS, DEFAULT_CALIBRATION, DEFAULT_IMAGES,
                           DEFAULT_MAX_DROP)
from .options import FiniteFloatRange


@click.command("export")
@click.option("--checkpoint", "-c", required=True, type=click.Path(dir_okay=False),
              help="Checkpoint (.pt) to export.")
@click.option("--format", "fmt", type=click.Choice(["onnx", "torchscript"]), default="onnx",
              show_default=True, help="Export format.")
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False),
              help="Output file (.onnx or .pt).")
@click.option("--opset", type=click.IntRange(min=13), default=18, show_default=True,
              help="ONNX opset version.")
@click.option("--example-size", type=click.IntRange(min=1), default=None,
              help="Side of the square tracing input (default: smallest valid size >= 64).")
@click.option("--fold-bn/--no-fold-bn", default=True, show_default=True,
              help="Fold BatchNorm into convolutions first (same outputs, fewer nodes).")
@click.option("--verify/--no-verify", default=True, show_default=True,
              help="Run the export on two inputs and compare with PyTorch (nothing is written "
                   "when they differ).")
@click.option("--int8", is_flag=True,
              help="ONNX with int8 weights and activations (static quantization; needs "
                   "--calibrate).")
@click.option("--calibrate", "spec", default=None,
              help="With --int8: dataset spec (YAML file or preset name with --root) whose "
                   "images calibrate the activation ranges and whose val split scores parity.")
@click.option("--root", type=click.Path(file_okay=False), default=None,
              help="With --calibrate: data folder, overriding the spec's root (presets).")
@click.option("--split", default="train", show_default=True,
              help="With --int8: the split whose images calibrate.")
@click.option("--images", type=click.IntRange(min=1), default=DEFAULT_IMAGES,
              show_default=True, help="With --int8: calibration images, spread over the split.")
@click.option("--calibration", type=click.Choice(list(CALIBRATION_METHODS)),
              default=DEFAULT_CALIBRATION, show_default=True,
              help="With --int8: how activation ranges are chosen from the calibration images.")
@click.option("--max-drop", type=FiniteFloatRange(min=0), default=DEFAULT_MAX_DROP,
              show_default=True,
              help="With --int8: refuse (exit 1, nothing written) when the int8 model loses "
                   "more points of val mIoU (foreground Dice for two classes) than this.")
@click.option("--force", is_flag=True, help="With --int8: write the model over --max-drop.")
def command(checkpoint, fmt, output, opset, example_size, fold_bn, verify, int8, spec, root,
            split, images, calibration, max_drop, force) -> None:
    """Export a checkpoint to ONNX or TorchScript.

    ONNX models take "image" (N, C, H, W) with dynamic batch, height and width, normalised
    with the mean/std stored in the model's metadata (pixelwise.mean, pixelwise.std), and
    return "logits". Class names, palette and model name are in the metadata too.

    With --int8, the ONNX model is quantized (int8 weights per channel, uint8 activations)
    with activation ranges calibrated on --images images of --split, and scored against the
    fp32 model on the val split; predict, evaluate and serve take it like any .onnx.

    \b
    Examples:
      pixelwise export --checkpoint runs/camvid/checkpoints/best.pt \\
          --format onnx --output camvid.onnx
      pixelwise export -c best.pt --int8 --calibrate camvid --root data/camvid \\
          -o camvid.int8.onnx
    """
    from ..io.checkpoint import load_checkpoint
    from ..io.outputs import check_output_file

    check_output_file(output, "--output", inputs=[checkpoint])
    _check_int8_options(fmt, int8, spec, root)
    if fmt == "onnx":
        from ..export.onnx import opset_problem

        problem = opset_problem(opset)
        if problem is not None:
            raise click.BadParameter(problem, param_hint="--opset")
    ckpt = load_checkpoint(checkpoint)
    if example_size is not None:
        _check_example_size(ckpt, example_size)
    if int8:
        path = _export_int8(ckpt, output, spec, root, split, images, calibration, max_drop,
                            force, dict(opset=opset, example_size=example_size, fold_bn=fold_bn))
    elif fmt == "onnx":
        from ..export import TOLERANCE, export_onnx

        # The library compares ONNX Runtime with PyTorch before writing (and raises instead).
        path = export_onnx(ckpt, output, opset=opset, example_size=example_size,
                           fold_bn=fold_bn, check=True, verify=verify)
        if verify:
            click.echo(f"verified: ONNX Runtime matches PyTorch within {TOLERANCE:g} on 2 inputs")
    else:
        from ..export import export_torchscript

        path = export_torchscript(ckpt, output, fold_bn=fold_bn)  # verifies two sizes itself
    click.echo(f"wrote {path}")


def _check_int8_options(fmt: str, int8: bool, spec: str | None, root: str | None) -> None:
    """The int8 options go together, and only with ONNX."""
    if int8 and fmt != "onnx":
        raise click.UsageError("--int8 is an ONNX export: use it with --format onnx")
    if int8 and spec is None:
        raise click.UsageError("--int8 needs --calibrate SPEC (the images that calibrate it)")
    if not int8 and (spec is not None or root is not None):
        raise click.UsageError("--calibrate and --root go with --int8")


def _export_int8(ckpt, output, spec, root, split, images, calibration, max_drop, force,
                 graph: dict):
    from ..data import load_spec
    from ..export.int8 import export_int8

    if root is not None:
        spec = load_spec(spec, root=root)
    path, parity = export_int8(ckpt, output, spec, split=split, images=images,
                               calibration=calibration, max_drop=max_drop, force=force,
                               say=click.echo, **graph)
    if parity.drop > max_drop:
        click.echo(f"warning: written with --force although it loses {parity.drop:.2f} "
                   f"points, over --max-drop {max_drop:g}", err=True)
    return path


def _check_example_size(ckpt, size: int) -> None:
    """An example smaller than the model takes would fail deep inside the exporter."""
    from ..models.probe import meta_model, min_input_size

    minimum = min_input_size(meta_model(ckpt.model_name, ckpt.model_kwargs), ckpt.in_channels)
    if size < minimum:
        raise click.BadParameter(f"{size} is smaller than the {minimum} px side "
                                 f"{ckpt.model_name} takes", param_hint="--example-size")
