"""models/gemm.py: convolutions as matrix products compute what nn.Conv2d computes."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from pixelwise.models import build_model
from pixelwise.fast.gemm import GemmConv2d, gemm_conv2d, gemm_eligible, use_gemm_convs
from pixelwise.fast.winograd import WinogradConv2d

CL = torch.channels_last


@pytest.mark.parametrize("layout", [CL, torch.contiguous_format])
@pytest.mark.parametrize("kernel,bias", [(1, True), (1, False), (3, True), (7, False)])
def test_values_and_gradients_match_conv2d(layout, kernel, bias):
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(2, 6, 11, 9, generator=gen).contiguous(memory_format=layout)
    w0 = torch.randn(5, 6, kernel, kernel, generator=gen).contiguous(memory_format=layout)
    b0 = torch.randn(5, generator=gen) if bias else None
    results = []
    for fn in (F.conv2d, gemm_conv2d):
        x, w = x0.clone().requires_grad_(), w0.clone().requires_grad_()
        b = b0.clone().requires_grad_() if bias else None
        y = fn(x, w, b)
        (y * torch.arange(y.numel()).view_as(y).sin()).sum().backward()
        results.append([y, x.grad, w.grad] + ([b.grad] if bias else []))
    for ref, got in zip(*results):
        assert got.shape == ref.shape
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    assert results[1][0].is_contiguous(memory_format=CL)


def test_eligible_convolutions():
    assert gemm_eligible(nn.Conv2d(64, 256, 1))
    assert gemm_eligible(nn.Conv2d(64, 1, 1, padding="same"))
    assert gemm_eligible(nn.Conv2d(512, 4096, 7))  # FCN's fc6
    assert not gemm_eligible(nn.Conv2d(512, 4096, 7, padding=3))
    assert not gemm_eligible(nn.Conv2d(64, 64, 3))  # the valid U-Net's convs: oneDNN's job
    assert not gemm_eligible(nn.Conv2d(64, 64, 3, padding=1))
    assert not gemm_eligible(nn.Conv2d(64, 128, 1, stride=2))  # ResNet's downsample
    assert not gemm_eligible(nn.Conv2d(64, 64, 1, groups=4))
    assert not gemm_eligible(nn.Conv2d(64, 64, 1, dilation=2))
    assert not gemm_eligible(GemmConv2d(64, 64, 1))
    assert not gemm_eligible(nn.ConvTranspose2d(64, 64, 1))


def test_fcn_swaps_keep_parameters_and_outputs():
    torch.manual_seed(0)
    model = build_model("fcn32s", num_classes=3).eval().to(memory_format=CL)
    nn.init.normal_(model.score_fr.weight, std=0.01)  # zero-initialised: make it count
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params = list(model.parameters())
    x = torch.randn(1, 3, 64, 64).contiguous(memory_format=CL)
    with torch.no_grad():
        ref = model(x)
        assert use_gemm_convs(model) == 13  # and VGG's 10 convolutions with >= 128 channels
        out = model(x)
    swapped = sorted(n for n, m in model.named_modules() if isinstance(m, GemmConv2d))
    assert swapped == ["backbone.fc6", "backbone.fc7", "score_fr"]
    assert sum(isinstance(m, WinogradConv2d) for m in model.modules()) == 10
    assert all(p is q for p, q in zip(model.parameters(), params, strict=True))
    state = model.state_dict()
    assert state.keys() == before.keys() and all(torch.equal(state[k], before[k]) for k in state)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    assert use_gemm_convs(model) == 0  # idempotent


def test_gradients_match():
    """A bottleneck ResNet U-Net gets the same gradients with its 1x1 convolutions as GEMMs.

    BatchNorm in eval mode: with batch statistics over 2 x 2 maps, float rounding in any
    layer (a change of layout does the same) is amplified past any useful tolerance.
    """
    grads = []
    for swap in (False, True):
        torch.manual_seed(0)
        model = build_model("resnet50_unet", num_classes=2).eval().to(memory_format=CL)
        n = use_gemm_convs(model) if swap else 0
        x = torch.randn(2, 3, 64, 64).contiguous(memory_format=CL)
        target = torch.randint(0, 2, (2, 64, 64), generator=torch.Generator().manual_seed(0))
        F.cross_entropy(model(x), target).backward()
        grads.append([p.grad for p in model.parameters()])
    # 16 bottlenecks x 2 stride-1 1x1s, layer1's projection, the head; and 14 3x3s by
    # Winograd (their maps, 8 x 8 and less here, fall back to the direct convolution)
    assert n == 48
    for ref, got in zip(*grads):
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())


def test_tracing_and_export_see_the_plain_convolution():
    conv = GemmConv2d(4, 3, 1)
    graph = str(torch.jit.trace(conv, torch.randn(1, 4, 5, 5)).graph)
    assert "aten::_convolution" in graph and "aten::addmm" not in graph


def test_models_off_the_cpu_are_left_alone():
    model = nn.Sequential(nn.Conv2d(4, 3, 1)).to("meta")
    assert use_gemm_convs(model) == 0 and type(model[0]) is nn.Conv2d
