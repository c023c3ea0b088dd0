"""The ``pixelwise`` command line: one click group, one module per subcommand.

Exit codes: 0 success, 1 error (a :class:`~pixelwise.errors.PixelwiseError`, message on stderr),
2 usage error (click's own).
"""
from __future__ import annotations

import importlib
import sys

import click

from ..errors import PixelwiseError

# subcommand name -> module under pixelwise.cli holding a click command named ``command``.
# Imported lazily so that `pixelwise --help` stays fast and an optional extra (serve, export)
# that is not installed only breaks its own subcommand.
SUBCOMMANDS = {
    "train": "train", "evaluate": "evaluate", "predict": "predict", "export": "export",
    "serve": "serve", "data": "data", "bench": "bench", "demo": "demo", "models": "models",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return sorted(SUBCOMMANDS)

    def get_command(self, ctx, name):
        if name not in SUBCOMMANDS:
            return None
        module = importlib.import_module(f"{__name__}.{SUBCOMMANDS[name]}")
        return module.command


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="pixelwise")
def cli() -> None:
    """pixelwise: semantic segmentation on PyTorch (FCN, U-Net)."""


def main(argv: list[str] | None = None) -> None:
    try:
        cli.main(args=argv, prog_name="pixelwise", standalone_mode=True)
    except PixelwiseError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(1)
