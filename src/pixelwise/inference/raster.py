"""Huge rasters (aerial and satellite scenes, pathology slides) predicted block by block.

Neither the image nor the mask is ever held whole: blocks of the input are read from the TIFF's
own tiles or strips (or a memory map when it is uncompressed), each block is predicted with a
margin of real context around it, and the mask is written as a tiled TIFF, one row of blocks at
a time. Peak memory is set by the block size, not by the raster: a 20,000 x 20,000 RGB scene
stays well under 2 GB.

GeoTIFF georeferencing (pixel scale, tie points, transformation, GeoKey directory and its
double/ASCII parameters) is copied to the mask, so GIS tools place it over the scene.
"""
from __future__ import annotations

import os
import tempfile
from collections import OrderedDict
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from ..errors import DataError
from ..io.files import atomic_path
from .predict import Prediction, Predictor
from .uncertainty import to_uint16

# ModelPixelScale, ModelTiepoint, ModelTransformation, GeoKeyDirectory, GeoDoubleParams,
# GeoAsciiParams.
GEOTIFF_TAGS = (33550, 33922, 34264, 34735, 34736, 34737)


class TiffRegionReader:
    """Read rectangular regions of a TIFF's first image without decoding the rest.

    Args:
        path: a TIFF with an ``(H, W)`` or ``(H, W, S)`` (interleaved samples) first page.
        cache_segments: decoded tiles/strips kept for neighbouring reads (margins overlap).
    """

    def __init__(self, path: str | os.PathLike, cache_segments: int = 256):
        import tifffile

        self.path = Path(path)
        if not self.path.is_file():
            raise DataError(f"{self.path}: no such file")
        try:
            self._tif = tifffile.TiffFile(self.path)
        except Exception as e:  # tifffile raises several types for foreign files
            raise DataError(f"{self.path}: not a readable TIFF ({e})") from e
        page = self._tif.pages.first
        self.page = page
        if page.planarconfig == 2 and page.samplesperpixel > 1:
            raise DataError(f"{self.path}: planar (band-separate) TIFFs are not supported; "
                            f"convert to pixel-interleaved (e.g. gdal_translate -co INTERLEAVE=PIXEL)")
        if len(page.shape) not in (2, 3):
            raise DataError(f"{self.path}: expected a 2-D image, got shape {page.shape}")
        self.height, self.width = int(page.imagelength), int(page.imagewidth)
        self.channels = int(page.samplesperpixel)
        self.dtype = page.dtype
        # Uncompressed contiguous data is read through a memory map opened per read: a map
        # kept open would leave every page it touched in this process's resident set.
        self._contiguous = page.is_memmappable and page.dataoffsets[0] > 0
        self._chunk_h, self._chunk_w = int(page.chunks[0]), int(page.chunks[1])
        self._cols = int(page.chunked[1])
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._cache_size = cache_segments

    def close(self) -> None:
        self._tif.close()

    def __enter__(self) -> "TiffRegionReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def tags(self):
        return self.page.tags

    def _segment(self, index: int) -> np.ndarray:
        if index in self._cache:
            self._cache.move_to_end(index)
            return self._cache[index]
        fh = self._tif.filehandle
        fh.seek(self.page.dataoffsets[index])
        data = fh.read(self.page.databytecounts[index])
        segment, _, _ = self.page.decode(data, index)
        if segment is None:
            raise DataError(f"{self.path}: cannot decode segment {index}")
        segment = segment.reshape(segment.shape[-3:])  # (h, w, samples)
        self._cache[index] = segment
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return segment

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Pixels ``[y0:y1, x0:x1]`` as ``(h, w, channels)`` in the file's dtype."""
        y0, x0 = max(y0, 0), max(x0, 0)
        y1, x1 = min(y1, self.height), min(x1, self.width)
        if self._contiguous:
            shape = (self.height, self.width, self.channels)
            mapped = np.memmap(self.path, dtype=self.page.dtype.newbyteorder(self._tif.byteorder),
                               mode="r", offset=self.page.dataoffsets[0], shape=shape)
            region = np.array(mapped[y0:y1, x0:x1], dtype=self.dtype)
            del mapped
            return region
        out = np.empty((y1 - y0, x1 - x0, self.channels), dtype=self.dtype)
        ch, cw = self._chunk_h, self._chunk_w
        for row in range(y0 // ch, (y1 - 1) // ch + 1):
            for col in range(x0 // cw, (x1 - 1) // cw + 1):
                seg = self._segment(row * self._cols + col)
                sy, sx = row * ch, col * cw
                ya, yb = max(y0, sy), min(y1, sy + ch, sy + seg.shape[0])
                xa, xb = max(x0, sx), min(x1, sx + cw, sx + seg.shape[1])
                out[ya - y0:yb - y0, xa - x0:xb - x0] = seg[ya - sy:yb - sy, xa - sx:xb - sx]
        return out


def geotiff_extratags(tags) -> list[tuple]:
    """The GeoTIFF tags among ``tags`` (a tifffile ``TiffTags``) as ``extratags`` tuples."""
    extra = []
    for code in GEOTIFF_TAGS:
        tag = tags.get(code)
        if tag is None:
            continue
        value = tag.value
        if int(tag.dtype) == 2:  # ASCII: tifffile counts the terminating NUL itself
            extra.append((code, 2, 0, value, True))
        else:
            value = tuple(np.atleast_1d(np.asarray(value)).ravel().tolist())
            extra.append((code, int(tag.dtype), len(value), value, True))
    return extra


def _colormap(palette: list[tuple[int, int, int]]) -> np.ndarray:
    cmap = np.zeros((3, 256), dtype=np.uint16)
    colours = np.asarray(palette[:256], dtype=np.uint16)
    cmap[:, : len(colours)] = colours.T * 257  # 8-bit -> 16-bit TIFF colour map
    return cmap


def _mask_tiles(predictor: Predictor, reader: TiffRegionReader, src, block: int, margin: int,
                tile: int, progress: Callable[[int, int], None] | None,
                maps: Sequence[np.ndarray]) -> Iterator[np.ndarray]:
    """The mask's TIFF tiles in row-major order, predicting one row of blocks at a time (only
    that strip of the mask is in memory); the uncertainty goes into ``maps`` (entropy, then
    variance: uint16 memory maps of the raster's size) as it comes."""
    height, width = reader.height, reader.width
    rows, cols = -(-height // block), -(-width // block)
    done = 0
    for r in range(rows):
        y0, y1 = r * block, min((r + 1) * block, height)
        strip = np.zeros((y1 - y0, width), dtype=np.uint8)
        for c in range(cols):
            x0, x1 = c * block, min((c + 1) * block, width)
            pred = _predict_block(predictor, reader, y0, y1, x0, x1, margin, src)
            strip[:, x0:x1] = pred.mask
            for out, values in zip(maps, (pred.entropy, pred.variance)):
                out[y0:y1, x0:x1] = to_uint16(values)
            done += 1
            if progress is not None:
                progress(done, rows * cols)
        for ty in range(0, y1 - y0, tile):
            for tx in range(0, width, tile):
                yield strip[ty:ty + tile, tx:tx + tile]


def predict_raster(predictor: Predictor, src: str | os.PathLike, dst: str | os.PathLike,
                   block_size: int = 1024, margin: int | None = None, tile: int = 256,
                   progress: Callable[[int, int], None] | None = None,
                   uncertainty: Sequence[str | os.PathLike] = ()) -> Path:
    """Predict a (huge) TIFF block by block and write the mask as a tiled palette TIFF.

    Args:
        predictor: a :class:`~pixelwise.inference.predict.Predictor`; its own tiling, TTA and
            ensemble members apply inside each block (post-processing does not: it needs the
            whole mask).
        src: input TIFF (tiled, striped or uncompressed; GeoTIFF or plain).
        dst: output mask TIFF (uint8 class indices, palette colours, zlib, tiled).
        block_size: side of the square blocks predicted at once (rounded to ``tile``).
        margin: real image context read around each block (default: half the predictor's
            tile size, at least 64, plus a valid-convolution model's margin); pixels near a
            block edge then see the same neighbourhood as in a whole-image prediction.
        tile: side of the output TIFF's tiles.
        progress: called as ``progress(done_blocks, total_blocks)``.
        uncertainty: with a predictor that computes uncertainty, where to write the entropy
            and (several views) the variance as tiled uint16 TIFFs (``round(u * 65535)``),
            georeferenced like the mask.

    Returns:
        ``dst``. Memory: about ``(block_size + 2 * margin)**2 * (channels + 2 * classes) * 4``
        bytes for the block plus ``block_size * width`` bytes for one row of mask blocks; the
        uncertainty is gathered in a temporary memory-mapped file beside ``dst``.
    """
    if predictor.num_classes > 256:
        raise ValueError("a raster mask holds at most 256 classes (uint8)")
    block = max(tile, block_size // tile * tile)
    margin = _default_margin(predictor) if margin is None else margin
    dst = Path(dst)
    with TiffRegionReader(src) as reader, ExitStack() as stack:
        maps = [stack.enter_context(_scratch(Path(p), reader)) for p in uncertainty]
        tiles = _mask_tiles(predictor, reader, src, block, margin, tile, progress, maps)
        _write_tiled(dst, tiles, reader, tile, np.uint8, colormap=_colormap(predictor.palette),
                     description=f"pixelwise mask; classes: {predictor.class_names}")
        for path, values in zip(uncertainty, maps):
            rows = (values[y:y + tile, x:x + tile] for y in range(0, reader.height, tile)
                    for x in range(0, reader.width, tile))
            _write_tiled(Path(path), rows, reader, tile, np.uint16,
                         description=f"pixelwise {Path(path).stem}: uncertainty x 65535")
    return dst


@contextmanager
def _scratch(path: Path, reader: TiffRegionReader) -> Iterator[np.ndarray]:
    """A raster-sized uint16 memory map in a temporary file beside ``path``, deleted after."""
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.",
                                     suffix=".tmp") as f:
        values = np.memmap(f, dtype=np.uint16, mode="w+", shape=(reader.height, reader.width))
        try:
            yield values
        finally:
            del values


def _write_tiled(dst: Path, tiles: Iterator[np.ndarray], reader: TiffRegionReader, tile: int,
                 dtype, colormap: np.ndarray | None = None, description: str = "") -> None:
    """Write ``tiles`` (row-major) as a tiled zlib TIFF of the raster's size, atomically,
    with the source's GeoTIFF tags."""
    import tifffile

    height, width = reader.height, reader.width
    with atomic_path(dst) as tmp:
        with tifffile.TiffWriter(tmp, bigtiff=height * width * np.dtype(dtype).itemsize
                                 > 2**31) as writer:
            writer.write(tiles, shape=(height, width), dtype=dtype, tile=(tile, tile),
                         compression="zlib",
                         photometric="palette" if colormap is not None else "minisblack",
                         colormap=colormap, extratags=geotiff_extratags(reader.tags),
                         description=description, metadata=None)


def _default_margin(predictor: Predictor) -> int:
    return max(64, (predictor.tile_size or 0) // 2) + predictor.margin


def _predict_block(predictor: Predictor, reader: TiffRegionReader, y0: int, y1: int, x0: int,
                   x1: int, margin: int, src) -> Prediction:
    """The block ``[y0:y1, x0:x1]``'s mask (and uncertainty), predicted with ``margin``
    pixels of context around it."""
    ry0, rx0 = max(y0 - margin, 0), max(x0 - margin, 0)
    region = reader.read(ry0, y1 + margin, rx0, x1 + margin)
    channels = predictor.in_channels
    if region.shape[-1] > channels and channels in (1, 3) and region.shape[-1] in (2, 4):
        region = region[..., :channels]  # drop alpha, as read_image does
    try:
        x = predictor.prepare(region)[None]
    except ValueError as e:
        raise DataError(f"{src}: {e}") from e
    with torch.inference_mode():
        probs, squares = predictor.predict_with_squares(x)
    pred = predictor.to_prediction(probs[0], None if squares is None else squares[0])
    crop = (slice(y0 - ry0, y1 - ry0), slice(x0 - rx0, x1 - rx0))
    return Prediction(pred.mask[crop], pred.probs[:, crop[0], crop[1]],
                      None if pred.entropy is None else pred.entropy[crop],
                      None if pred.variance is None else pred.variance[crop])
