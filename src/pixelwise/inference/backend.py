"""Inference backends: what turns a normalised batch into logits, on PyTorch or ONNX Runtime.

Both backends answer the same things, so :class:`~pixelwise.inference.predict.Predictor` never
asks which one it holds:

- ``name``: ``"torch"`` or ``"onnxruntime"``;
- ``metadata``: :meth:`pixelwise.io.checkpoint.Checkpoint.metadata` (class names,
  normalisation, model name and arguments), read back from the file for ONNX;
- ``shape_model``: the architecture, for its geometry (``models.geometry``); an ONNX file's is
  rebuilt on the meta device, without weights;
- ``backend(x)``: logits of a normalised ``(N, C, H, W)`` batch, float32 on the CPU.

The caller names the backend; a source it cannot run, or an option it does not have, is
refused with a one-line reason (:func:`backend_problem`) rather than silently overridden.
"""
from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Union

import torch

from ..io.checkpoint import Checkpoint, load_checkpoint, metadata_from_strings
from ..errors import CheckpointError, ConfigError
from ..models.probe import meta_model

BACKENDS = ("torch", "onnxruntime")
# What a backend runs: a checkpoint (path or loaded) for torch; an .onnx file or serialized
# ONNX model for onnxruntime.
Source = Union[str, os.PathLike, Checkpoint, bytes]


class TorchBackend:
    """A checkpoint's model on a torch device.

    Args:
        ckpt: the loaded checkpoint.
        device: where the model runs.
        fast: the fast path (:func:`pixelwise.fast.optimize.optimize_for_inference`: BatchNorm
            folded, channels_last; same results up to float rounding).
        compile: also ``torch.compile`` the model (inductor, freezing).
    """

    name = "torch"

    def __init__(self, ckpt: Checkpoint, device: torch.device, fast: bool = False,
                 compile: bool = False):
        self.metadata = ckpt.metadata()
        self.shape_model = ckpt.model
        self.device = device
        model = ckpt.model.eval()
        if fast or compile:
            from ..fast.optimize import optimize_for_inference

            # on the device first: the optimisations depend on it (CPU-only GEMMs)
            model = optimize_for_inference(copy.deepcopy(model).to(device), fold_bn=True,
                                           channels_last=True, compile=compile, inplace=True)
        self.model = model.to(device)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.model(x.to(self.device)).float().cpu()


class OnnxRuntimeBackend:
    """An exported ONNX model on ONNX Runtime's CPU provider.

    Args:
        model: an ``.onnx`` path or a serialized model (``pixelwise.export.onnx_bytes``);
            either carries the pixelwise metadata.
        threads: intra-op threads (default: one per core).
    """

    name = "onnxruntime"

    def __init__(self, model: str | os.PathLike | bytes, threads: int | None = None):
        self.session = make_ort_session(model, threads=threads)
        self.metadata = read_onnx_metadata(
            self.session, name="model bytes" if isinstance(model, bytes) else str(model))
        self.shape_model = meta_model(self.metadata["model_name"],
                                      self.metadata.get("model_kwargs", {}))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        name = self.session.get_inputs()[0].name
        return torch.from_numpy(self.session.run(None, {name: x.detach().cpu().numpy()})[0])


def is_onnx(source: Source) -> bool:
    """Whether ``source`` is an exported model (ONNX bytes, or a path ending in ``.onnx``)."""
    return isinstance(source, bytes) or (
        isinstance(source, (str, os.PathLike)) and Path(source).suffix.lower() == ".onnx")


def backend_problem(source: Source, backend: str, fast: bool = False,
                    compile: bool = False) -> str | None:
    """Why ``backend`` cannot run ``source`` with these options, in one line, or None."""
    if backend not in BACKENDS:
        return f"{backend!r} is not a backend; choose one of {', '.join(BACKENDS)}"
    if backend == "torch" and is_onnx(source):
        what = "the model bytes" if isinstance(source, bytes) else str(source)
        return f"{what} is an exported ONNX model: it runs on backend 'onnxruntime', not 'torch'"
    if backend == "onnxruntime" and (fast or compile):
        return ("fast and compile are options of the torch backend; ONNX Runtime "
                "optimises its graph itself")
    if backend == "onnxruntime" and not is_onnx(source):
        what = source.path if isinstance(source, Checkpoint) else source
        return (f"{what} is a checkpoint: backend 'onnxruntime' runs exported models (.onnx); "
                f"export it first (pixelwise export)")
    return None


def open_backend(source: Source, backend: str = "torch", *, device: torch.device | None = None,
                 fast: bool = False, compile: bool = False,
                 threads: int | None = None) -> TorchBackend | OnnxRuntimeBackend:
    """The named backend running ``source``.

    Args:
        source: a checkpoint path or :class:`Checkpoint` (torch); an ``.onnx`` path or ONNX
            bytes (onnxruntime).
        backend: ``"torch"`` or ``"onnxruntime"``.
        device: the torch backend's device (default CPU).
        fast, compile: torch options (see :class:`TorchBackend`).
        threads: ONNX Runtime intra-op threads.

    Raises:
        ConfigError: a backend that cannot run ``source``, or an option it lacks.
    """
    problem = backend_problem(source, backend, fast, compile)
    if problem is not None:
        raise ConfigError(f"backend: {problem}")
    if backend == "onnxruntime":
        return OnnxRuntimeBackend(source, threads=threads)  # type: ignore[arg-type]
    ckpt = source if isinstance(source, Checkpoint) else load_checkpoint(source)
    return TorchBackend(ckpt, device or torch.device("cpu"), fast=fast, compile=compile)


def make_ort_session(model: str | os.PathLike | bytes, threads: int | None = None):
    """An ONNX Runtime CPU session with all graph optimisations.

    Args:
        model: ``.onnx`` path or serialized model bytes.
        threads: intra-op threads (default: ONNX Runtime's choice, one per core).

    Raises:
        CheckpointError: ONNX Runtime cannot load the model (named).
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads is not None:
        options.intra_op_num_threads = threads
    source = model if isinstance(model, bytes) else str(model)
    try:
        return ort.InferenceSession(source, sess_options=options,
                                    providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types
        name = "model bytes" if isinstance(model, bytes) else str(model)
        raise CheckpointError(f"{name}: ONNX Runtime cannot load it ({e})") from e


def read_onnx_metadata(model: str | os.PathLike | Any,
                       name: str = "ONNX session") -> dict[str, Any]:
    """The pixelwise metadata of an ``.onnx`` file or an ONNX Runtime session (called
    ``name`` in errors: the file it was opened from).

    Raises:
        CheckpointError: the file is missing or lacks pixelwise metadata.
    """
    if isinstance(model, (str, os.PathLike)):
        import onnx

        path = Path(model)
        if not path.is_file():
            raise CheckpointError(f"{path}: ONNX file not found")
        proto = onnx.load(str(path), load_external_data=False)
        props = {p.key: p.value for p in proto.metadata_props}
        return metadata_from_strings(props, str(path))
    props = dict(model.get_modelmeta().custom_metadata_map)
    return metadata_from_strings(props, name)
