"""``pixelwise data``: check a dataset, print its statistics, download public archives."""
from __future__ import annotations

import json
from pathlib import Path

import click


@click.group(name="data")
def command() -> None:
    """Check datasets, compute their statistics, download public archives.

    SPEC is a dataset spec YAML file or a preset name (camvid, isbi2012, drive, voc2012,
    voc2007, cityscapes, dsb2018, liver, esophagus, lung_ct, corn) given with --root.

    \b
    Example:
      pixelwise data check camvid --root ../shared/data/camvid
    """


def _spec(spec: str, root: str | None):
    from ..data import load_spec

    return load_spec(spec, root=root)


@command.command()
@click.argument("spec")
@click.option("--root", type=click.Path(file_okay=False), default=None,
              help="Data folder (overrides the spec's root; required for presets).")
@click.option("--split", "splits", multiple=True, help="Split to check (repeatable; default all).")
@click.option("--max-images", type=click.IntRange(min=0), default=None,
              help="Decode at most N samples per split for the statistics.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None,
              help="Also write the report as JSON to this file.")
@click.option("--min-size", type=click.IntRange(min=1), default=None,
              help="The smallest image side the model takes (a depth-d padded U-Net: 2**d); "
                   "smaller images are problems. `pixelwise train` checks this itself.")
def check(spec: str, root: str | None, splits: tuple[str, ...], max_images: int | None,
          json_path: str | None, min_size: int | None) -> None:
    """Check every file of a dataset and print statistics, then every problem found.

    Problems (each naming its file): missing or extra masks, size mismatches, label values
    not in the spec, unreadable or truncated files, images over the pixel limit, masks with
    no labelled pixel, files found twice through directory links, empty split lists, and
    with --min-size images smaller than the model takes. For annotation files (LabelMe,
    COCO, CVAT): the shapes per class, the images without annotations, and each bad shape
    (unknown label, degenerate, wrong size, unknown version).
    Exit code 0 when clean, 1 when a problem was found.

    \b
    Example:
      pixelwise data check drive --root ../shared/data/drive --split train
    """
    from ..data.check import check_dataset, format_report
    from ..io.files import atomic_write_json
    from ..io.outputs import check_output_file

    if json_path:  # before the whole dataset is read; never over the spec itself
        check_output_file(json_path, "--json", inputs=[spec] if Path(spec).is_file() else [])
    report = check_dataset(_spec(spec, root), splits=list(splits) or None, max_images=max_images,
                           min_size=min_size)
    click.echo(format_report(report))
    if json_path:
        atomic_write_json(json_path, report.to_dict())
    if not report.ok:
        raise click.exceptions.Exit(1)


@command.command()
@click.argument("spec")
@click.option("--root", type=click.Path(file_okay=False), default=None,
              help="Data folder (overrides the spec's root; required for presets).")
@click.option("--split", default="train", show_default=True, help="Split to measure.")
@click.option("--max-images", type=click.IntRange(min=0), default=None, help="Use at most N samples.")
def stats(spec: str, root: str | None, split: str, max_images: int | None) -> None:
    """Print a split's channel mean/std and median-frequency class weights as YAML lines
    ready to paste into a dataset spec.

    \b
    Example:
      pixelwise data stats isbi2012 --root ../shared/data/isbi2012
    """
    from ..data.check import check_dataset

    from ..errors import ConfigError, DataError

    loaded = _spec(spec, root)
    if split not in loaded.split_names:
        raise ConfigError(f"--split: no split {split!r} in dataset {loaded.name!r} (have "
                          f"{', '.join(loaded.split_names)})")
    report = check_dataset(loaded, splits=[split], max_images=max_images)
    st = report.splits[split]
    if not st.sizes:
        # Zeros (std 0 included) pasted into a spec would be wrong or rejected later.
        raise DataError(f"split {split!r}: no sample could be read, so no statistics:\n"
                        + "\n".join(f"  - {p}" for p in report.problems))
    click.echo(f"# {report.name} split {split}: {st.count} samples")
    click.echo(f"mean: {json.dumps([round(v, 4) for v in st.mean])}")
    click.echo(f"std: {json.dumps([round(v, 4) for v in st.std])}")
    click.echo(f"class_weights: {json.dumps([round(v, 4) for v in st.class_weights])}")
    click.echo(f"# class frequency: {json.dumps([round(v, 4) for v in st.class_frequency])}")
    for problem in report.problems:
        click.echo(f"warning: {problem}", err=True)


@command.command()
@click.argument("spec")
@click.option("--root", type=click.Path(file_okay=False), default=None,
              help="Data folder (overrides the spec's root; required for presets).")
@click.option("--output", "-o", required=True, type=click.Path(file_okay=False),
              help="Folder for the masks and spec.yaml (created if missing).")
def convert(spec: str, root: str | None, output: str) -> None:
    """Write a dataset's masks as PNG files of class indices, and a plain spec for them.

    For annotation files (LabelMe, COCO, CVAT) drawn once instead of every epoch, or for
    users who want mask files. The images stay where they are; OUTPUT/spec.yaml is written
    last.

    \b
    Example:
      pixelwise data convert coco_spec.yaml --output data/masks
      pixelwise data check data/masks/spec.yaml
    """
    from ..data.convert import convert_dataset

    path = convert_dataset(_spec(spec, root), output)
    click.echo(f"masks and spec -> {path}")


@command.command()
@click.argument("name", required=False)
@click.option("--root", type=click.Path(file_okay=False), default="data", show_default=True,
              help="Folder to download into and extract in.")
@click.option("--list", "list_only", is_flag=True, help="List the known datasets and exit.")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
def download(name: str | None, root: str, list_only: bool, no_progress: bool) -> None:
    """Download a public dataset archive: resumable, sha256-verified, safely extracted.

    An interrupted download resumes from its .part file when run again.

    \b
    Example:
      pixelwise data download voc2012 --root data/voc
      pixelwise data check voc2012 --root data/voc --split val
    """
    from ..data.download import download as fetch, list_downloads
    from ..io.outputs import check_output_folder

    if list_only or name is None:
        for key, text in list_downloads().items():
            click.echo(f"{key:<12}{text}")
        if name is None and not list_only:
            raise click.UsageError("give a dataset NAME (listed above)")
        return
    if name in list_downloads():  # an unknown name is reported by fetch, with no folder made
        check_output_folder(root, "--root")
    out = fetch(name, Path(root), progress=not no_progress)
    click.echo(f"{name}: ready in {out}")
