"""Int8 ONNX models: ONNX Runtime static quantization calibrated on a data set's own images.

The fp32 graph (:func:`pixelwise.export.onnx.onnx_bytes`) is quantized in QDQ form with
per-channel int8 weights and uint8 activations (ONNX Runtime's choice for x86 CPUs with VNNI),
activation ranges calibrated on N images of a split prepared exactly as
:class:`~pixelwise.inference.predict.Predictor` prepares them (channels adapted, the
checkpoint's normalisation, a valid-convolution U-Net's mirrored border). Some nodes stay in
fp32 (:data:`KEEP_FP32`, measured: README "int8 on CPU"). The pixelwise metadata is
copied into the quantized model, so predict, evaluate and serve take it like any ``.onnx``.

Parity is scored the way ``pixelwise evaluate`` scores: on the spec's val split, the int8
model's mIoU (foreground Dice for two classes) against the fp32 graph's; a loss over
``max_drop`` points is refused unless forced.
"""
from __future__ import annotations

import contextlib
import io
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import ConfigError, DataError, PixelwiseError
from ..io.checkpoint import Checkpoint

# --calibration names -> onnxruntime.quantization.CalibrationMethod members.
CALIBRATION_METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}
DEFAULT_CALIBRATION = "minmax"
DEFAULT_IMAGES = 32
DEFAULT_MAX_DROP = 1.0  # points of mIoU (or Dice) on the val split
# Which nodes may stay fp32: "first_conv" (reads the image), "last_conv" (writes the logits),
# "resize" (bilinear upsampling), "depthwise" (grouped convolutions). Measured on the trained
# Lite0 U-Nets (README "int8 on CPU"): only the last convolution is worth it; an fp32 first or
# depthwise convolution costs a point of CamVid mIoU (the logits' SQNR against fp32 drops from
# 30 to 20 and 17 dB), for a cause not established.
KEEP_CHOICES = ("first_conv", "last_conv", "resize", "depthwise")
KEEP_FP32: tuple[str, ...] = ("last_conv",)


# -- calibration data -------------------------------------------------------------------------

def calibration_indices(count: int, images: int) -> list[int]:
    """``images`` indices spread evenly over ``count`` samples (all of them when fewer):
    consecutive frames of a video data set would calibrate on one scene."""
    if images >= count:
        return list(range(count))
    return sorted({int(round(i)) for i in np.linspace(0, count - 1, images)})


def open_split(spec: Any, split: str, what: str):
    """The :class:`SegmentationDataset` of ``split``; one without images is a DataError
    naming ``what`` it was for."""
    from ..data import SegmentationDataset

    dataset = SegmentationDataset(spec, split)
    if len(dataset) == 0:
        raise DataError(f"split {split!r} of dataset {dataset.spec.name!r} has no images: "
                        f"nothing to {what}")
    return dataset


def calibration_inputs(ckpt: Checkpoint, dataset, images: int) -> list[np.ndarray]:
    """The model inputs of ``images`` samples of ``dataset``, one ``(1, C, H, W)`` array
    each, as ``ckpt``'s :class:`Predictor` feeds them for whole-image prediction.

    Raises:
        ConfigError: ``images`` below 1.
    """
    from ..inference.forward import whole_image_input
    from ..inference.predict import Predictor

    if images < 1:
        raise ConfigError(f"images: calibration needs at least 1 image, got {images}")
    predictor = Predictor(ckpt, device="cpu")
    inputs = []
    for i in calibration_indices(len(dataset), images):
        image, _ = dataset.read_raw(i)
        x = whole_image_input(predictor.prepare(image)[None], predictor.members[0].shape_model)
        inputs.append(x.numpy())
    return inputs


class _Reader:
    """A ``CalibrationDataReader`` over prepared inputs; ``set_range`` lets ONNX Runtime
    collect one image at a time (``CalibStridedMinMax``), so the histogram methods hold one
    image's activations, not all of them."""

    def __init__(self, name: str, inputs: Sequence[np.ndarray]):
        self.name, self.inputs = name, list(inputs)
        self.set_range(0, len(self.inputs))

    def __len__(self) -> int:
        return len(self.inputs)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._items = iter(self.inputs[start_index:end_index])

    def get_next(self) -> dict[str, np.ndarray] | None:
        x = next(self._items, None)
        return None if x is None else {self.name: x}


# -- quantization -----------------------------------------------------------------------------

def fp32_nodes(proto, keep: Sequence[str]) -> list[str]:
    """Names of the nodes of ``proto`` that ``keep`` (:data:`KEEP_CHOICES`) leaves in fp32."""
    unknown = sorted(set(keep) - set(KEEP_CHOICES))
    if unknown:
        raise ConfigError(f"keep_fp32: unknown {unknown[0]!r}; choose from "
                          f"{', '.join(KEEP_CHOICES)}")
    convs = [n for n in proto.graph.node if n.op_type == "Conv"]
    names = []
    if "first_conv" in keep and convs:
        names.append(convs[0].name)
    if "last_conv" in keep and convs:
        names.append(convs[-1].name)
    if "resize" in keep:
        names += [n.name for n in proto.graph.node if n.op_type == "Resize"]
    if "depthwise" in keep:
        names += [n.name for n in convs
                  if any(a.name == "group" and a.i > 1 for a in n.attribute)]
    return sorted(set(names))


def quantize_model(fp32_model: bytes, inputs: Sequence[np.ndarray],
                   calibration: str = DEFAULT_CALIBRATION,
                   keep_fp32: Sequence[str] = KEEP_FP32) -> bytes:
    """Quantize a serialized fp32 pixelwise model with static calibration on ``inputs``.

    Args:
        fp32_model: serialized ONNX model with pixelwise metadata.
        inputs: calibration inputs, ``(1, C, H, W)`` float32 each (:func:`calibration_inputs`).
        calibration: ``"minmax"``, ``"entropy"`` or ``"percentile"``.
        keep_fp32: node kinds left in fp32 (:data:`KEEP_CHOICES`).

    Returns:
        The serialized QDQ model, metadata copied from ``fp32_model``.
    """
    import onnx
    from onnxruntime.quantization import (CalibrationMethod, QuantFormat, QuantType,
                                         quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if calibration not in CALIBRATION_METHODS:
        raise ConfigError(f"calibration: unknown method {calibration!r}; choose from "
                          f"{', '.join(CALIBRATION_METHODS)}")
    proto = onnx.load_from_string(fp32_model)
    with tempfile.TemporaryDirectory(prefix="pixelwise-int8-") as tmp:
        fp32, prepared, quantized = (Path(tmp) / f"{n}.onnx" for n in ("fp32", "prep", "int8"))
        fp32.write_bytes(fp32_model)  # from a ModelProto, quant_pre_process loses the weights
        # Shape inference first, so that every tensor the quantizer meets has a known type.
        with _named_failure("int8 quantization (shape inference)"):
            quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        prepared_proto = onnx.load(str(prepared))
        # The histogram calibrators report progress with print(); keep library output quiet.
        with contextlib.redirect_stdout(io.StringIO()), _named_failure("int8 quantization"):
            quantize_static(
                str(prepared), str(quantized), _Reader(proto.graph.input[0].name, inputs),
                quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=False,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                nodes_to_exclude=fp32_nodes(prepared_proto, keep_fp32),
                calibrate_method=getattr(CalibrationMethod, CALIBRATION_METHODS[calibration]),
                extra_options={"CalibStridedMinMax": 1})
        result = onnx.load(str(quantized))
    _copy_metadata(proto, result)
    return result.SerializeToString()


@contextlib.contextmanager
def _named_failure(what: str):
    """ONNX Runtime's quantizer raises many types (assertions included): one line instead."""
    try:
        yield
    except Exception as e:
        raise PixelwiseError(f"{what} failed: {type(e).__name__}: "
                             f"{str(e).strip().splitlines()[0] if str(e).strip() else ''}") from e


def _copy_metadata(source, target) -> None:
    """The pixelwise ``metadata_props`` of ``source`` onto ``target`` (replacing its own)."""
    props = {p.key: p.value for p in source.metadata_props if p.key.startswith("pixelwise.")}
    kept = [p for p in target.metadata_props if p.key not in props]
    del target.metadata_props[:]
    for p in kept:
        target.metadata_props.add(key=p.key, value=p.value)
    for key, value in props.items():
        target.metadata_props.add(key=key, value=value)
    target.producer_name = source.producer_name


# -- export with parity -----------------------------------------------------------------------

@dataclass
class Parity:
    """The fp32 and int8 models' score on one split, in points (0..100)."""

    metric: str  # "mIoU", or "<class> Dice" for two-class data
    split: str
    images: int
    fp32: float
    int8: float

    @property
    def drop(self) -> float:
        return self.fp32 - self.int8

    def __str__(self) -> str:
        return (f"{self.metric} on split {self.split!r} ({self.images} images): fp32 "
                f"{self.fp32:.2f}, int8 {self.int8:.2f} ({-self.drop:+.2f} points)")


def score(model: bytes, spec: Any, split: str) -> tuple[str, float, int]:
    """``(metric name, points, images)`` of an ONNX model on ``split``, scored by
    :func:`pixelwise.inference.evaluate.evaluate`: mIoU, or for two classes the foreground
    class's Dice (F1; a vessel map's mIoU is half background)."""
    from ..inference.evaluate import evaluate

    result = evaluate(model, spec, split, None, device="cpu", num_examples=0, num_worst=0)
    if len(result["per_class"]) == 2:
        row = result["per_class"][1]
        return f"{row['class']} Dice", 100 * (row["dice"] or 0.0), result["num_images"]
    return "mIoU", 100 * (result["mean_iou"] or 0.0), result["num_images"]


def export_int8(checkpoint: str | os.PathLike | Checkpoint, path: str | os.PathLike,
                spec: Any, split: str = "train", images: int = DEFAULT_IMAGES,
                calibration: str = DEFAULT_CALIBRATION, keep_fp32: Sequence[str] = KEEP_FP32,
                max_drop: float = DEFAULT_MAX_DROP, force: bool = False,
                val_split: str = "val", opset: int | None = None,
                example_size: int | None = None, fold_bn: bool = True,
                say: Callable[[str], None] = lambda line: None) -> tuple[Path, Parity]:
    """Export a checkpoint to an int8 ONNX model calibrated on ``spec``, parity checked.

    Args:
        checkpoint: checkpoint path or loaded :class:`Checkpoint`.
        path: output ``.onnx`` (written atomically, only when parity holds or ``force``).
        spec: dataset spec (path, preset name, dict or ``DatasetSpec``).
        split: the split whose images calibrate the activation ranges.
        images: how many of them (spread over the split).
        calibration: ``"minmax"``, ``"entropy"`` or ``"percentile"``.
        keep_fp32: node kinds left in fp32 (:data:`KEEP_CHOICES`).
        max_drop: the most points of mIoU (Dice for two classes) on ``val_split`` the int8
            model may lose against the fp32 graph.
        force: write the model even when it loses more.
        val_split: the split parity is scored on.
        opset, example_size, fold_bn: as for the fp32 export (:func:`export_onnx`).
        say: receives one line per stage (the command line prints them).

    Returns:
        ``(path, parity)``.

    Raises:
        PixelwiseError: bad arguments or data (before any work), a failed export, or a loss
            over ``max_drop`` without ``force`` (then nothing is written).
    """
    from ..io.checkpoint import load_checkpoint
    from ..io.files import atomic_write_bytes
    from .onnx import DEFAULT_OPSET, onnx_bytes, verify_onnx

    if not max_drop >= 0:
        raise ConfigError(f"max_drop: must be a number of points >= 0, got {max_drop}")
    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
    calibration_set = open_split(spec, split, "calibrate on")
    open_split(spec, val_split, "score parity on")
    inputs = calibration_inputs(ckpt, calibration_set, images)
    say(f"calibration: {len(inputs)} images of split {split!r}, {calibration}")
    fp32 = onnx_bytes(ckpt, opset or DEFAULT_OPSET, example_size, fold_bn)
    verify_onnx(ckpt, fp32)
    int8 = quantize_model(fp32, inputs, calibration, keep_fp32)
    name, before, count = score(fp32, spec, val_split)
    parity = Parity(name, val_split, count, before, score(int8, spec, val_split)[1])
    say(f"parity: {parity}")
    if parity.drop > max_drop and not force:
        raise PixelwiseError(f"int8 export of {ckpt.model_name!r} refused: it loses "
                             f"{parity.drop:.2f} points of {name} on split {val_split!r}, over "
                             f"max_drop {max_drop:g} (--max-drop); nothing written (--force "
                             f"writes it anyway)")
    return atomic_write_bytes(path, int8), parity
