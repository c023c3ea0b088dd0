"""Tiled prediction of images of any size with any predictor callable.

Two schemes, chosen by whether the predictor keeps the tile size:

- **Padded models** (output tile = input tile): overlapping tiles are blended with a Gaussian
  importance window, so every pixel's result leans on the tiles that see it near their centre,
  where the context is complete (nnU-Net's sliding-window inference). The window is floored
  above zero: pixels at the image border and corners are covered only by a tile's edge, and a
  zero weight there would give 0 / 0 (nnU-Net's comment on ``gaussian_importance_map``).
- **Valid-convolution models** (output tile smaller than the input tile): the U-Net paper's
  overlap-tile strategy (Ronneberger et al. 2015, Fig. 2). The image is extended by mirroring
  so that every output tile, including those at the border, gets its full input context; the
  output tiles cover the image on a regular grid.

Results are accumulated in float64: blending an identity predictor then rounds back to the
input exactly, and sums over many tiles lose no precision. Only one band of rows, a tile
high, is held in float64 at a time (the tiles come row by row); the full-size result is in
``out_dtype`` (float32), so a 12000 x 12000 image with two classes needs about 1.2 GB for its
probabilities rather than 4.6 GB.
"""
from __future__ import annotations

import math
from typing import Callable, Iterator

import torch

TilePredictor = Callable[[torch.Tensor], torch.Tensor]

# Floor of the Gaussian window, relative to its peak of 1 (see module docstring).
MIN_WEIGHT = 1e-3


def gaussian_window(height: int, width: int, sigma_scale: float = 0.125,
                    min_weight: float = MIN_WEIGHT) -> torch.Tensor:
    """Separable Gaussian importance window, peak 1 at the centre, floored at ``min_weight``.

    Args:
        height: window height in pixels.
        width: window width in pixels.
        sigma_scale: standard deviation as a fraction of the window size (nnU-Net: 1/8).
        min_weight: lower bound of the weights; must be > 0.

    Returns:
        float64 tensor of shape ``(height, width)``.
    """
    if min_weight <= 0:
        raise ValueError(f"min_weight must be > 0, got {min_weight}")

    def axis(n: int) -> torch.Tensor:
        sigma = max(n * sigma_scale, 1e-6)
        pos = torch.arange(n, dtype=torch.float64) - (n - 1) / 2
        return torch.exp(-0.5 * (pos / sigma) ** 2)

    w = axis(height)[:, None] * axis(width)[None, :]
    return (w / w.max()).clamp_min(min_weight)


def mirror_indices(size: int, before: int, after: int) -> torch.Tensor:
    """Indices that extend ``range(size)`` by mirroring (without repeating the edge pixel).

    Unlike ``F.pad(mode="reflect")`` the pads may exceed the size: the image is reflected back
    and forth, as the U-Net paper's extrapolation needs for images smaller than the context.
    """
    idx = torch.arange(-before, size + after)
    if size == 1:
        return torch.zeros_like(idx)
    period = 2 * (size - 1)
    idx = idx.remainder(period)
    return torch.where(idx >= size, period - idx, idx)


def mirror_pad(image: torch.Tensor, top: int, bottom: int, left: int, right: int) -> torch.Tensor:
    """Mirror-extend the last two dimensions of ``image`` by the given amounts (any size)."""
    if top == bottom == left == right == 0:
        return image
    rows = mirror_indices(image.shape[-2], top, bottom).to(image.device)
    cols = mirror_indices(image.shape[-1], left, right).to(image.device)
    return image.index_select(-2, rows).index_select(-1, cols)


def tile_starts(size: int, tile: int, stride: int) -> list[int]:
    """Start offsets of tiles of length ``tile`` covering ``[0, size)``; the last ends at ``size``."""
    if tile >= size:
        return [0]
    n = math.ceil((size - tile) / stride) + 1
    starts = [min(i * stride, size - tile) for i in range(n)]
    return sorted(set(starts))


def _stride(tile: int, overlap: float, multiple: int) -> int:
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    stride = int(tile * (1 - overlap))
    stride = (stride // multiple) * multiple
    return max(stride, multiple, 1)


def _pair(value: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    h, w = value
    return int(h), int(w)


def _batched(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def sliding_window(predictor: TilePredictor, image: torch.Tensor,
                   tile_size: int | tuple[int, int], overlap: float = 0.25, *,
                   output_size: int | tuple[int, int] | None = None,
                   blend: str = "gaussian", sigma_scale: float = 0.125,
                   stride_multiple: int = 1, batch_size: int = 1,
                   progress: Callable[[int, int], None] | None = None,
                   out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Predict a large image tile by tile and assemble the full-size output.

    Args:
        predictor: any callable mapping a batch of tiles ``(B, C, th, tw)`` to outputs
            ``(B, K, oh, ow)`` (logits, probabilities, features...).
        image: ``(N, C, H, W)`` tensor of any spatial size.
        tile_size: input tile size (an int for square tiles, or ``(th, tw)``).
        overlap: fraction of the tile shared by neighbouring tiles, in ``[0, 1)``.
        output_size: ``None`` for padded models (output tile = input tile). For
            valid-convolution models the output tile size (e.g. ``model.output_shape(572, 572)``
            = 388); the image is then mirror-extended so every output tile has full context.
        blend: ``"gaussian"`` (weights peak at tile centres, floored above zero) or
            ``"constant"`` (plain average).
        sigma_scale: Gaussian standard deviation as a fraction of the tile size.
        stride_multiple: tile offsets are multiples of this; pass the model's total stride
            (``models.geometry.total_stride``) so that every tile sees the same pooling grid.
        batch_size: tiles per predictor call.
        progress: called as ``progress(done_tiles, total_tiles)`` after each batch.
        out_dtype: dtype of the returned tensor.

    Returns:
        ``(N, K, H, W)`` tensor on ``image``'s device.

    Shape:
        image ``(N, C, H, W)`` -> output ``(N, K, H, W)``.
    """
    if image.ndim != 4:
        raise ValueError(f"image must be (N, C, H, W), got shape {tuple(image.shape)}")
    if blend not in ("gaussian", "constant"):
        raise ValueError(f"blend must be 'gaussian' or 'constant', got {blend!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    tile_h, tile_w = _pair(tile_size)
    if output_size is None:
        return _blend_padded(predictor, image, (tile_h, tile_w), overlap, blend, sigma_scale,
                             stride_multiple, batch_size, progress, out_dtype)
    return _overlap_tile_valid(predictor, image, (tile_h, tile_w), _pair(output_size), overlap,
                               blend, sigma_scale, stride_multiple, batch_size, progress,
                               out_dtype)


def _blend_padded(predictor, image, tile, overlap, blend, sigma_scale, stride_multiple,
                  batch_size, progress, out_dtype) -> torch.Tensor:
    _, _, height, width = image.shape
    # A padded model accepts any size, so a tile never needs to exceed the image.
    th, tw = min(tile[0], height), min(tile[1], width)
    ys = tile_starts(height, th, _stride(th, overlap, stride_multiple))
    xs = tile_starts(width, tw, _stride(tw, overlap, stride_multiple))
    windows = [(y, x, y, x) for y in ys for x in xs]
    return _assemble(predictor, image, windows, (th, tw), (th, tw), (height, width), blend,
                     sigma_scale, batch_size, progress, out_dtype)


def _overlap_tile_valid(predictor, image, tile, out_tile, overlap, blend, sigma_scale,
                        stride_multiple, batch_size, progress, out_dtype) -> torch.Tensor:
    _, _, height, width = image.shape
    (th, tw), (oh, ow) = tile, out_tile
    if oh > th or ow > tw or (th - oh) % 2 or (tw - ow) % 2:
        raise ValueError(f"output tile {out_tile} must be smaller than the input tile {tile} by "
                         f"an even margin (a centred valid-convolution output)")
    top, left = (th - oh) // 2, (tw - ow) // 2
    sy, sx = _stride(oh, overlap, stride_multiple), _stride(ow, overlap, stride_multiple)
    # A regular grid (no tile pulled back to the border) keeps every offset a multiple of the
    # stride, hence of ``stride_multiple``; the grid may overhang the image, and the overhang
    # is mirrored input like the margins.
    ny, nx = math.ceil(max(height - oh, 0) / sy) + 1, math.ceil(max(width - ow, 0) / sx) + 1
    cover_h, cover_w = (ny - 1) * sy + oh, (nx - 1) * sx + ow
    padded = mirror_pad(image, top, cover_h - height + top, left, cover_w - width + left)
    windows = [(iy * sy, ix * sx, iy * sy, ix * sx) for iy in range(ny) for ix in range(nx)]
    out = _assemble(predictor, padded, windows, (th, tw), (oh, ow), (cover_h, cover_w), blend,
                    sigma_scale, batch_size, progress, out_dtype)
    return out[..., :height, :width]


def _assemble(predictor, image, windows, tile, out_tile, out_hw, blend, sigma_scale,
              batch_size, progress, out_dtype) -> torch.Tensor:
    """Run ``predictor`` on each window and blend the outputs.

    ``windows`` holds ``(in_y, in_x, out_y, out_x)``: the tile's corner in ``image`` and its
    output's corner in the output canvas of size ``out_hw``, row by row (``out_y`` never
    decreases). Sums are kept in float64 for one band of rows, an output tile high, at the
    current row's ``out_y``: rows above it get no more tiles, so they are divided and stored
    in the ``out_dtype`` result as the band moves down.
    """
    n = image.shape[0]
    (th, tw), (oh, ow) = tile, out_tile
    if blend == "gaussian":
        weight = gaussian_window(oh, ow, sigma_scale).to(image.device)
    else:
        weight = torch.ones(oh, ow, dtype=torch.float64, device=image.device)
    result: torch.Tensor | None = None
    top = done = 0
    for group in _batched(windows, batch_size):
        tiles = torch.cat([image[:, :, y:y + th, x:x + tw] for y, x, _, _ in group])
        out = predictor(tiles)
        if out.ndim != 4 or out.shape[-2:] != (oh, ow) or out.shape[0] != n * len(group):
            raise ValueError(f"predictor returned shape {tuple(out.shape)} for tiles "
                             f"{tuple(tiles.shape)}; expected ({n * len(group)}, K, {oh}, {ow})")
        if result is None:
            result = torch.empty((n, out.shape[1], *out_hw), dtype=out_dtype, device=image.device)
            acc = torch.zeros((n, out.shape[1], oh, out_hw[1]), dtype=torch.float64,
                              device=image.device)
            norm = torch.zeros((oh, out_hw[1]), dtype=torch.float64, device=image.device)
        for k, (_, _, y, x) in enumerate(group):
            if y > top:  # rows top..y-1 are complete
                _store_rows(result, acc, norm, top, y - top)
                acc, norm, top = _shift_band(acc, y - top), _shift_band(norm, y - top), y
            part = out[k * n:(k + 1) * n].to(torch.float64)
            acc[:, :, :, x:x + ow] += part * weight
            norm[:, x:x + ow] += weight
        done += len(group)
        if progress is not None:
            progress(done, len(windows))
    assert result is not None  # windows is never empty
    _store_rows(result, acc, norm, top, out_hw[0] - top)
    return result


def _store_rows(result: torch.Tensor, acc: torch.Tensor, norm: torch.Tensor, top: int,
                rows: int) -> None:
    """Divide the band's first ``rows`` rows by their weights into ``result`` from ``top``."""
    rows = min(rows, acc.shape[-2])
    result[:, :, top:top + rows] = (acc[:, :, :rows] / norm[:rows]).to(result.dtype)


def _shift_band(band: torch.Tensor, rows: int) -> torch.Tensor:
    """The band moved down by ``rows``: its later rows first, zeros below them."""
    kept = band[..., rows:, :]
    fresh = band.new_zeros((*band.shape[:-2], min(rows, band.shape[-2]), band.shape[-1]))
    return torch.cat([kept, fresh], dim=-2)
