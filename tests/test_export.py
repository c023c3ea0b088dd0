"""ONNX and TorchScript export: parity with PyTorch on generated images (and on real CamVid
images where the data is present), dynamic sizes, metadata, the library's parity check."""

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

from pixelwise.io.checkpoint import load_checkpoint, save_checkpoint
from pixelwise.data.synthetic import generate_sample
from pixelwise.inference.backend import make_ort_session, read_onnx_metadata
from pixelwise.errors import CheckpointError, PixelwiseError
from pixelwise.export import TOLERANCE, export_onnx, export_torchscript, load_torchscript
from pixelwise.models import build_model, list_models
from pixelwise.data.preprocess import to_tensor

from common import TINY, absent_on_purpose, shared_data

pytestmark = pytest.mark.usefixtures("one_thread")


# FCN-16s/32s are FCN-8s minus skip branches, with the same 134 M-parameter VGG16: each export
# takes ~15 s here, so only FCN-8s runs in the default suite.
# fcn16s/32s: fcn8s's layers; Lite1/2: Lite0's blocks at other widths and depths (~40 s each)
SLOW = {"fcn16s", "fcn32s", "efficientnet_lite1_unet", "efficientnet_lite2_unet"}
MEAN, STD = (0.39, 0.41, 0.43), (0.30, 0.31, 0.31)
# Stated tolerance: max |ONNX Runtime - PyTorch| on logits (measured: below 1e-6).
ATOL = 1e-4


def make_checkpoint(path, name, kwargs):
    torch.manual_seed(0)
    model = build_model(name, **kwargs)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():  # FCN score layers start at zero: make the output informative
                p.copy_(torch.randn(p.shape, generator=g) * 0.01)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    c = kwargs.get("in_channels", 3)
    # One name per output (the checkpoint loader refuses names that contradict the model).
    names = ["fg"] if kwargs["num_classes"] == 1 else ["sky", "road", "car"][:kwargs["num_classes"]]
    return save_checkpoint(path, model, name, kwargs, names, mean=MEAN[:c], std=STD[:c],
                           palette=[(1, 2, 3), (4, 5, 6), (7, 8, 9)][:len(names)])


def camvid_batch(channels, size, batch=1):
    """Real CamVid images resized to ``size`` (h, w), normalised like the checkpoint."""
    files = sorted((shared_data("camvid") / "val").glob("*.png"))[:batch]
    tensors = []
    for f in files:
        im = Image.open(f).convert("RGB" if channels == 3 else "L").resize(size[::-1])
        tensors.append(to_tensor(np.asarray(im), MEAN[:channels], STD[:channels]))
    return torch.stack(tensors)


def generated_batch(channels, size, batch=1):
    """Synthetic scenes (textured shapes on clutter, ``pixelwise.data.synthetic``) of ``size``
    (h, w), normalised like the checkpoint: image statistics, not noise, on every machine."""
    rng = np.random.default_rng(7)
    tensors = []
    for _ in range(batch):
        image, _ = generate_sample(rng, max(size))
        image = image[:size[0], :size[1]]
        if channels == 1:
            image = image.mean(-1, keepdims=True).astype(np.uint8)
        tensors.append(to_tensor(image, MEAN[:channels], STD[:channels]))
    return torch.stack(tensors)


def image_sources() -> list:
    """Generated images everywhere; real CamVid images too (missing: see common.shared_data)."""
    return [generated_batch] + ([] if absent_on_purpose("camvid") else [camvid_batch])


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n
                                  for n in sorted(TINY)])
def test_onnx_matches_pytorch(name, tmp_path):
    assert sorted(TINY) == list_models()
    kwargs = TINY[name]
    ckpt = load_checkpoint(make_checkpoint(tmp_path / "m.pt", name, kwargs))
    path = export_onnx(ckpt, tmp_path / "m.onnx")  # traced at 64 x 64, batch 1; verified
    session = make_ort_session(path, threads=1)
    c = ckpt.in_channels
    # the export size, then another batch size and a size neither square nor a power of 2
    inputs = [x for batch in image_sources()
              for x in (batch(c, (64, 64)), batch(c, (45, 61), batch=2))]
    for x in inputs:
        with torch.no_grad():
            want = ckpt.model(x).numpy()
        got = session.run(None, {"image": x.numpy()})[0]
        assert got.shape == want.shape
        assert np.abs(want).max() > 1e-3  # not a model of zeros
        np.testing.assert_allclose(got, want, atol=ATOL, rtol=0)
    meta = read_onnx_metadata(path)
    assert meta["model_name"] == name and meta["model_kwargs"] == kwargs
    assert meta["mean"] == pytest.approx(MEAN[:c]) and meta["std"] == pytest.approx(STD[:c])
    assert meta["class_names"] == ckpt.class_names
    assert meta["palette"] == [list(p) for p in ckpt.palette]
    assert read_onnx_metadata(session) == meta


def test_onnx_dynamic_axes_declared(tmp_path):
    import onnx

    ckpt = make_checkpoint(tmp_path / "m.pt", "unet", TINY["unet"])
    proto = onnx.load(str(export_onnx(ckpt, tmp_path / "m.onnx")))
    dims = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, "height", "width"]
    out = [d.dim_param or d.dim_value for d in proto.graph.output[0].type.tensor_type.shape.dim]
    assert out == ["batch", 3, "height", "width"]
    assert proto.graph.input[0].name == "image" and proto.graph.output[0].name == "logits"


@pytest.mark.parametrize("kwargs", [TINY["unet"], dict(in_channels=1, num_classes=2,
                                                       base_channels=4, depth=2, padding="valid",
                                                       batch_norm=False)])
def test_torchscript_round_trip(tmp_path, kwargs):
    ckpt = load_checkpoint(make_checkpoint(tmp_path / "m.pt", "unet", kwargs))
    path = export_torchscript(ckpt, tmp_path / "m.ts")
    module, meta = load_torchscript(path)
    assert meta["class_names"] == ckpt.class_names and meta["mean"] == list(ckpt.mean)
    size = 61 if kwargs.get("padding") != "valid" else 108
    x = generated_batch(kwargs["in_channels"],
                        (size, size + 4 * (kwargs.get("padding") == "valid")))
    with torch.no_grad():
        torch.testing.assert_close(module(x), ckpt.model(x), atol=ATOL, rtol=0)


def test_foreign_files_raise_checkpoint_errors(tmp_path):
    (tmp_path / "x.onnx").write_bytes(b"not onnx")
    with pytest.raises(CheckpointError, match="x.onnx"):
        make_ort_session(tmp_path / "x.onnx")
    with pytest.raises(CheckpointError, match="not found"):
        read_onnx_metadata(tmp_path / "missing.onnx")
    with pytest.raises(CheckpointError, match="not a TorchScript"):
        load_torchscript(tmp_path / "x.onnx")


def test_cli_export_onnx_and_torchscript(tmp_path, capsys):
    from pixelwise.cli import main

    ckpt = make_checkpoint(tmp_path / "m.pt", "unet", TINY["unet"])
    for fmt, name in (("onnx", "m.onnx"), ("torchscript", "m.ts")):
        with pytest.raises(SystemExit) as exit_info:
            main(["export", "--checkpoint", str(ckpt), "--format", fmt, "--output",
                  str(tmp_path / name)])
        assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "verified: ONNX Runtime matches PyTorch within 0.0001 on 2 inputs" in out
    assert "wrote" in out
    assert read_onnx_metadata(tmp_path / "m.onnx")["class_names"] == ["sky", "road", "car"]
    assert load_torchscript(tmp_path / "m.ts")[1]["model_name"] == "unet"
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "--checkpoint", str(tmp_path / "none.pt"), "--output", "x.onnx"])
    assert exit_info.value.code == 1


def test_parity_is_checked_in_the_library_with_one_tolerance(tmp_path, monkeypatch):
    """Both exports go through export.parity.check_parity: a graph off by more than the
    tolerance is refused and nothing is written; within it, the export passes."""
    from pixelwise.inference import backend
    from pixelwise.export import parity

    ckpt = load_checkpoint(make_checkpoint(tmp_path / "m.pt", "unet", TINY["unet"]))
    real_call = backend.OnnxRuntimeBackend.__call__
    for offset, ok in ((TOLERANCE / 2, True), (TOLERANCE * 3, False)):
        # |PyTorch| of these logits is well under 1: the allowed error is about TOLERANCE.
        monkeypatch.setattr(backend.OnnxRuntimeBackend, "__call__",
                            lambda self, x, d=offset: real_call(self, x) + d)
        target = tmp_path / f"{ok}.onnx"
        if ok:
            export_onnx(ckpt, target)
            assert target.is_file()
        else:
            with pytest.raises(PixelwiseError, match=r"ONNX export of 'unet' does not reproduce "
                                                     r"the model on input \(2, 3, 64, 64\)"):
                export_onnx(ckpt, target)
            assert not target.exists()
    # The TorchScript export reads the same tolerance: folding BatchNorm moves its logits by
    # ~1e-7, which a tolerance of 1e-12 refuses.
    monkeypatch.setattr(parity, "TOLERANCE", 1e-12)
    with pytest.raises(PixelwiseError, match="TorchScript export of 'unet' does not reproduce"):
        export_torchscript(ckpt, tmp_path / "m.ts")
    assert not (tmp_path / "m.ts").exists()
