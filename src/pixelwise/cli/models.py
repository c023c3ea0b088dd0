"""``pixelwise models``: the model zoo with parameter counts."""
from __future__ import annotations

import click

from ..models import build_model, list_models
from ..models.registry import model_parameters


@click.command("models")
@click.option("--num-classes", type=click.IntRange(min=1), default=None,
              help="Count parameters for this many classes (default: each model's own).")
def command(num_classes: int | None) -> None:
    """List the registered models with their trainable parameter counts and defaults.

    \b
    Example:
      pixelwise models --num-classes 21
    """
    click.echo(f"{'model':<16}{'trainable params':>18}  defaults")
    for name in list_models():
        kwargs = {} if num_classes is None else {"num_classes": num_classes}
        model = build_model(name, **kwargs)
        count = sum(p.numel() for p in model.parameters() if p.requires_grad)
        params = model_parameters(name).values()
        defaults = ", ".join(f"{p.name}={kwargs.get(p.name, p.default)!r}" for p in params
                             if p.name != "pretrained")
        click.echo(f"{name:<16}{count:>18,}  {defaults}")
