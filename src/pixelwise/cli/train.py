"""``pixelwise train CONFIG [--set key=value ...] [--resume]``."""
from __future__ import annotations

import logging
import os

import click


@click.command(name="train")
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", metavar="KEY=VALUE", multiple=True,
              help="Override a config field (value parsed as YAML); repeatable.")
@click.option("--resume", is_flag=True,
              help="Continue the run folder's checkpoints/last.pt (a fresh start if absent).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar or per-epoch lines.")
def command(config: str, overrides: tuple[str, ...], resume: bool, quiet: bool) -> None:
    """Train a model from a YAML run config; writes a run folder (config.yaml,
    checkpoints/last.pt and best.pt, metrics.csv, curves.png).

    Under torchrun each process takes one GPU (or CPU with gloo) and only rank 0 writes.

    \b
    Examples:
      pixelwise train recipes/unet_isbi2012.yaml
      pixelwise train recipes/fcn8s_camvid.yaml --set optim.lr=1e-4 --set train.epochs=5
      pixelwise train recipes/fcn8s_camvid.yaml --resume
      torchrun --standalone --nproc_per_node 2 --no-python pixelwise train recipe.yaml
    """
    from ..config import load_config
    from ..engine.train import train

    cfg = load_config(config, list(overrides))
    if quiet:
        cfg.train.progress = False
    else:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
        logging.getLogger("pixelwise").setLevel(logging.INFO)
    run_dir = train(cfg, resume=resume)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, one line rather than one per process
        click.echo(f"run folder: {run_dir}")
