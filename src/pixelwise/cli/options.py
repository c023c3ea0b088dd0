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
