"""The ``pixelwise`` command line: one click group, one module per subcommand.

Exit codes: 0 success, 1 error (a :class:`~pixelwise.errors.PixelwiseError`, message on stderr),
2 usage error (click's own).
"""
from __future__ import annotations

import importlib
import sys

import click

from ..errors import PixelwiseError, worker_message

# subcommand -> one-line help. Each lives in ``pixelwise/cli/<name>.py`` as a click object
# named ``command``, imported only when run, so `pixelwise --help` stays fast and an optional
# extra that is not installed (serve, export) only affects its own subcommand.
SUBCOMMANDS = {
    "train": "Train a model from a run config.",
    "evaluate": "Evaluate a checkpoint on a dataset split and write a report.",
    "predict": "Predict masks for images of any size.",
    "export": "Export a checkpoint to ONNX or TorchScript.",
    "serve": "Serve a checkpoint over HTTP with a web page.",
    "data": "Check, download and describe datasets.",
    "bench": "Benchmark inference speed on this machine.",
    "demo": "Train and evaluate on built-in synthetic data (no download).",
    "models": "List the model zoo with parameter counts.",
}
# Modules an optional extra provides, and the extra that installs them.
EXTRAS = {"fastapi": "serve", "uvicorn": "serve", "multipart": "serve", "onnx": "export",
          "onnxruntime": "export", "onnxscript": "export"}


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return list(SUBCOMMANDS)

    def get_command(self, ctx, name):
        if name not in SUBCOMMANDS:
            return None
        try:
            module = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as e:
            extra = EXTRAS.get((e.name or "").split(".")[0])
            if extra is None:
                raise
            raise click.ClickException(
                f"'pixelwise {name}' needs the optional package {e.name!r}: "
                f"pip install 'pixelwise[{extra}]'") from e
        return module.command

    def format_commands(self, ctx, formatter):
        with formatter.section("Commands"):
            formatter.write_dl(list(SUBCOMMANDS.items()))


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="pixelwise")
def cli() -> None:
    """pixelwise: semantic segmentation on PyTorch (FCN, U-Net).

    \b
    Example:
      pixelwise demo --output demo_output
      pixelwise train recipes/drive.yaml --set optim.lr=0.01
    """


def main(argv: list[str] | None = None) -> None:
    try:
        cli.main(args=argv, prog_name="pixelwise", standalone_mode=True)
    except PixelwiseError as e:
        click.echo(f"error: {worker_message(str(e))}", err=True)
        sys.exit(1)
