"""Option types that several subcommands share, so that each value is checked one way."""
from __future__ import annotations

import math

import click

DEVICE_HELP = "auto (cuda:LOCAL_RANK when CUDA is available, else cpu), cpu, cuda, cuda:N, mps."


def parse_device(ctx, param, value: str) -> str:
    """A ``--device`` callback: the name if this machine has that device, else a usage
    error (one line, exit 2). ``auto`` is resolved later, per process."""
    from ..devices import device_problem

    problem = device_problem(value)
    if problem is not None:
        raise click.BadParameter(problem)
    return value


class FiniteFloatRange(click.FloatRange):
    """A ``click.FloatRange`` that refuses nan and inf (a bound alone lets inf through, and
    every comparison with nan is false, so nan passes any range)."""

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


def finite_numbers(text: str, param_hint: str) -> tuple[float, ...]:
    """Comma-separated finite numbers (``--scales 0.75,1,1.25``)."""
    try:
        numbers = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated numbers, got {text!r}",
                                 param_hint=param_hint) from None
    if not all(math.isfinite(v) for v in numbers):
        raise click.BadParameter(f"expected finite numbers, got {text!r}", param_hint=param_hint)
    return numbers


CHECKPOINTS_HELP = ("Checkpoint (.pt) or exported ONNX model (.onnx); repeat for an ensemble "
                    "(probabilities averaged), or give a folder of folds (train --folds).")


def checkpoints_option(help: str = CHECKPOINTS_HELP, exists: bool = False):
    """``-c/--checkpoint``, repeatable: the members of an ensemble (files or fold folders).
    A missing one is a usage error with ``exists``; otherwise a one-line error once the
    command has checked its output folder (:func:`resolve_ensemble`)."""
    return click.option("--checkpoint", "-c", "checkpoints", required=True, multiple=True,
                        type=click.Path(exists=exists), help=help)


def postprocess_option():
    return click.option("--no-postprocess", is_flag=True,
                        help="Do not apply the post-processing stored with the model "
                             "(a checkpoint's, or a fold folder's crossval.json).")


def resolve_ensemble(checkpoints: tuple[str, ...], no_postprocess: bool, quiet: bool = False):
    """The :class:`~pixelwise.inference.ensemble.Ensemble` of ``-c``, its post-processing
    dropped with ``--no-postprocess``; says on stderr what it uses when there is anything to
    say (several members, or post-processing), unless ``quiet``."""
    from dataclasses import replace

    from ..inference.ensemble import resolve_checkpoints

    ensemble = resolve_checkpoints(checkpoints)
    if no_postprocess and ensemble.postprocess is not None:
        ensemble = replace(ensemble, postprocess=None, note="post-processing off "
                                                            "(--no-postprocess)")
    if not quiet and (len(ensemble.members) > 1 or ensemble.postprocess is not None
                      or no_postprocess):
        size = len(ensemble.members)
        click.echo(f"{'ensemble of ' + str(size) + ' members' if size > 1 else 'one model'}; "
                   f"{ensemble.note}", err=True)
    return ensemble
