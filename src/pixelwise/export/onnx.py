"""ONNX export with dynamic batch, height and width, verified on ONNX Runtime.

The graph comes from the torch.export-based exporter (``torch.onnx.export(dynamo=True)``,
which needs ``onnxscript``); the checkpoint's metadata (class names, normalisation, model name
and arguments, palette) goes into the model's ``metadata_props``. Running the result is the
inference backend's job (:mod:`pixelwise.inference.backend`).
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from pathlib import Path

import torch

from ..io.checkpoint import Checkpoint, load_checkpoint, metadata_to_strings
from ..errors import PixelwiseError
from ..io.files import atomic_write_bytes
from ..fast.fold import count_batchnorms, fold_batchnorm
from ..models.geometry import shrinks
from .parity import check_parity, example_input

INPUT_NAME = "image"
OUTPUT_NAME = "logits"
DEFAULT_OPSET = 18
MIN_OPSET = 13  # the oldest the exporter writes with dynamic shapes


def opset_problem(opset: int) -> str | None:
    """Why ``opset`` cannot be exported, or None: outside MIN_OPSET up to the newest opset
    of the installed ``onnx`` (beyond it the exporter falls back to another opset)."""
    import onnx

    newest = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= opset <= newest:
        return f"opset {opset} is not in {MIN_OPSET}..{newest} (the installed onnx's range)"
    return None


def _as_checkpoint(checkpoint: str | os.PathLike | Checkpoint) -> Checkpoint:
    return checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)


def onnx_bytes(ckpt: Checkpoint, opset: int = DEFAULT_OPSET, example_size: int | None = None,
               fold_bn: bool = True, check: bool = False) -> bytes:
    """Export ``ckpt.model`` to a serialized ONNX model with metadata (see :func:`export_onnx`)."""
    import onnx

    model = fold_batchnorm(ckpt.model) if fold_bn and count_batchnorms(ckpt.model) else ckpt.model
    model.eval()
    x = example_input(ckpt, example_size)
    dims = {0: torch.export.Dim("batch"), 2: torch.export.Dim("height"),
            3: torch.export.Dim("width")}
    # The exporter reports progress with print(); keep library output quiet.
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch-internal deprecations
            program = torch.onnx.export(model, (x,), dynamo=True, opset_version=opset,
                                        input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                        dynamic_shapes={"x": dims}, verbose=False)
    except Exception as e:  # the exporter raises many types; name the model in one error
        raise PixelwiseError(f"ONNX export of {ckpt.model_name!r} failed: "
                             f"{type(e).__name__}: {e}") from e
    finally:
        quiet.setLevel(level)
    proto = program.model_proto
    made = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if made != opset:  # the exporter falls back to its default when it cannot convert
        raise PixelwiseError(f"ONNX export of {ckpt.model_name!r}: opset {opset} asked for, "
                             f"but the exporter produced opset {made}; nothing was written")
    # The exporter names output sizes by formulas of the input's ("Min(height + 31, ...)");
    # plain names read better in tools, and the sizes are checked at run time anyway.
    out_dims = proto.graph.output[0].type.tensor_type.shape.dim
    same = not shrinks(ckpt.model)
    for i, name in ((0, "batch"), (2, "height" if same else "out_height"),
                    (3, "width" if same else "out_width")):
        if out_dims[i].dim_param:
            out_dims[i].dim_param = name
    for key, value in metadata_to_strings(ckpt.metadata()).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name = "pixelwise"
    if check:
        onnx.checker.check_model(proto)
    return proto.SerializeToString()


def export_onnx(checkpoint: str | os.PathLike | Checkpoint, path: str | os.PathLike,
                opset: int = DEFAULT_OPSET, example_size: int | None = None,
                fold_bn: bool = True, check: bool = False, verify: bool = True) -> Path:
    """Export a checkpoint to ONNX with dynamic batch, height and width.

    Args:
        checkpoint: checkpoint path or loaded :class:`~pixelwise.io.checkpoint.Checkpoint`.
        path: output ``.onnx`` file (written atomically).
        opset: ONNX opset version.
        example_size: side of the square example input used for tracing (default: the
            smallest size >= 64 the model accepts); other sizes work at run time.
        fold_bn: fold BatchNorm into convolutions before export (same outputs, fewer nodes).
        check: run ``onnx.checker`` on the result (seconds for VGG-sized models; ONNX Runtime
            validates the graph again when it loads it).
        verify: run the graph on ONNX Runtime and compare it with PyTorch
            (:func:`verify_onnx`) before writing; nothing is written when they differ.

    Returns:
        ``path``. Input ``"image"`` ``(N, C, H, W)`` float32, normalised; output ``"logits"``
        ``(N, K, H', W')``. ``metadata_props`` carry ``pixelwise.class_names``,
        ``pixelwise.mean``, ``pixelwise.std``, ``pixelwise.model_name``,
        ``pixelwise.model_kwargs``, ``pixelwise.palette``, ... as JSON strings.

    Raises:
        PixelwiseError: the export failed, or ONNX Runtime does not reproduce the model.
    """
    ckpt = _as_checkpoint(checkpoint)
    model = onnx_bytes(ckpt, opset, example_size, fold_bn, check)
    if verify:
        verify_onnx(ckpt, model)
    return atomic_write_bytes(path, model)


def verify_onnx(ckpt: Checkpoint, model: str | os.PathLike | bytes) -> float:
    """ONNX Runtime against PyTorch on two inputs (``export.parity``); returns the largest
    absolute difference.

    Raises:
        PixelwiseError: another shape or a difference beyond ``export.parity.TOLERANCE``.
    """
    from ..inference.backend import OnnxRuntimeBackend

    run = OnnxRuntimeBackend(model, threads=None)
    return check_parity(f"ONNX export of {ckpt.model_name!r}", ckpt, run)
