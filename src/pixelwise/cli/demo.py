"""``pixelwise demo``: train and evaluate on built-in synthetic data."""
from __future__ import annotations

from pathlib import Path

import click


@click.command("demo")
@click.option("--output", "-o", type=click.Path(file_okay=False, path_type=Path),
              default=Path("demo_output"), show_default=True, help="Folder for everything.")
@click.option("--epochs", type=click.IntRange(1), default=15, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--num-train", type=click.IntRange(8), default=160, show_default=True,
              help="Synthetic training images (held-out: a quarter of this).")
def command(output: Path, epochs: int, seed: int, num_train: int) -> None:
    """Generate synthetic shapes, train a small U-Net on the CPU, evaluate it on held-out
    images, and write overlays, metrics.json and the checkpoint into OUTPUT.

    \b
    Example:
      pixelwise demo --output demo_output
    """
    from ..training.demo import run_demo

    summary = run_demo(output, epochs=epochs, n_train=num_train, n_val=max(num_train // 4, 4),
                       seed=seed)
    click.echo("")
    click.echo(f"pixel accuracy {summary['pixel_accuracy']:.4f}   "
               f"mean IoU {summary['mean_iou']:.4f}")
    for name, iou in summary["per_class_iou"].items():
        click.echo(f"  {name:<12} IoU {iou:.4f}" if iou is not None else f"  {name:<12} IoU n/a")
    click.echo("")
    click.echo(f"metrics:     {output / 'metrics.json'}")
    click.echo(f"checkpoint:  {output / 'checkpoint.pt'}")
    click.echo(f"overlays:    {output / 'predictions'}")
    click.echo(f"report:      {output / 'evaluation'}")
    click.echo(f"run folder:  {output / 'run'}")
