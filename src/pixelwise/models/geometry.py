"""Shapes of a model's input and output, read from what the model declares.

A model may declare two things (``models/unet.py`` does both):

- ``output_shape(h, w)``: the logits' size for an ``h x w`` input. Models without it keep the
  input's size. A valid-convolution U-Net returns less (the paper's 572 -> 388), and whoever
  wants logits for every pixel must mirror the image outwards first (``inference.forward``,
  ``inference.tiling``).
- ``total_stride``: the product of every downsampling step (``2**depth`` for a U-Net, 32 for
  FCN and the ResNet encoders). Tiles whose offsets are multiples of it see the same pooling
  grid, so overlapping tiles agree where they overlap.

Everything here takes a model or any object with those attributes (a model built on the meta
device answers them without weights), never a backend's name.
"""
from __future__ import annotations

# How far the search of :func:`valid_input_size` looks past ``min_output`` for models that
# only answer ``output_shape``: far beyond any margin of the zoo (the paper U-Net's is 184).
SEARCH_SPAN = 4096


def output_shape(model: object, height: int, width: int) -> tuple[int, int]:
    """The logits' spatial size for a ``height x width`` input (the input's own by default).

    Raises:
        ValueError: the model cannot take that size (valid convolutions on too small an input).
    """
    declared = getattr(model, "output_shape", None)
    if declared is None:
        return height, width
    h, w = declared(height, width)
    return int(h), int(w)


def total_stride(model: object) -> int:
    """The model's declared downsampling factor; 1 for a module that declares none (every
    registered model declares one: the model contract test checks it)."""
    return int(getattr(model, "total_stride", 1))


def shrinks(model: object) -> bool:
    """Whether ``model`` returns a smaller map than its input (valid convolutions)."""
    if getattr(model, "output_shape", None) is None:
        return False
    size = valid_input_size(model, 1)
    return output_shape(model, size, size) != (size, size)


def margin(model: object) -> int:
    """Pixels a valid-convolution model loses on each side (0 for a padded model)."""
    if not shrinks(model):
        return 0
    size = valid_input_size(model, 1)
    return (size - output_shape(model, size, size)[0]) // 2


def valid_input_size(model: object, min_output: int) -> int:
    """Smallest input size whose output is at least ``min_output`` with a centred, even margin.

    Uses the model's own ``valid_input_size`` when it answers, else searches with
    ``output_shape``; for a model without ``output_shape`` this is ``min_output``. Among sizes
    with the same output the one with the smallest margin is taken: for a U-Net those are the
    sizes at which every pooling sees an even map (the paper's 572 -> 388).

    Raises:
        ValueError: no input size up to ``min_output + SEARCH_SPAN`` gives that output.
    """
    if getattr(model, "output_shape", None) is None:
        return min_output
    declared = getattr(model, "valid_input_size", None)
    if declared is not None:
        try:
            return int(declared(min_output))
        except ValueError:
            pass  # fall back to the search below
    margins = {}
    start = max(min_output, 1)
    for n in range(start, start + SEARCH_SPAN):
        try:
            out = output_shape(model, n, n)[0]
        except ValueError:
            continue
        if out >= min_output and (n - out) % 2 == 0:
            margins[n] = n - out
            if len(margins) >= 64:
                break
    if not margins:
        raise ValueError(f"no input size gives an output of {min_output} pixels")
    smallest = min(margins.values())
    return min(n for n, m in margins.items() if m == smallest)


def largest_valid_input(model: object, limit: int) -> int:
    """The largest exact input size of a valid-convolution model that is at most ``limit``.

    Raises:
        ValueError: ``limit`` is under the model's smallest input.
    """
    out = output_shape(model, limit, limit)[0]
    size = valid_input_size(model, out)
    while size > limit:  # an inexact size may give the same output from a larger input
        out -= 1
        size = valid_input_size(model, out)
    return size
