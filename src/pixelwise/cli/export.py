"""``pixelwise export``: a checkpoint to ONNX (dynamic sizes) or TorchScript, with metadata."""
from __future__ import annotations

import click


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
def command(checkpoint, fmt, output, opset, example_size, fold_bn, verify) -> None:
    """Export a checkpoint to ONNX or TorchScript.

    ONNX models take "image" (N, C, H, W) with dynamic batch, height and width, normalised
    with the mean/std stored in the model's metadata (pixelwise.mean, pixelwise.std), and
    return "logits". Class names, palette and model name are in the metadata too.

    \b
    Example:
      pixelwise export --checkpoint runs/camvid/checkpoints/best.pt \\
          --format onnx --output camvid.onnx
    """
    from ..io.checkpoint import load_checkpoint
    from ..io.outputs import check_output_file

    check_output_file(output, "--output", inputs=[checkpoint])
    if fmt == "onnx":
        from ..export.onnx import opset_problem

        problem = opset_problem(opset)
        if problem is not None:
            raise click.BadParameter(problem, param_hint="--opset")
    ckpt = load_checkpoint(checkpoint)
    if example_size is not None:
        _check_example_size(ckpt, example_size)
    if fmt == "onnx":
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


def _check_example_size(ckpt, size: int) -> None:
    """An example smaller than the model takes would fail deep inside the exporter."""
    from ..models.probe import meta_model, min_input_size

    minimum = min_input_size(meta_model(ckpt.model_name, ckpt.model_kwargs), ckpt.in_channels)
    if size < minimum:
        raise click.BadParameter(f"{size} is smaller than the {minimum} px side "
                                 f"{ckpt.model_name} takes", param_hint="--example-size")
