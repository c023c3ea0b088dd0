"""models/winograd.py: F(4x4, 3x3) computes what a padded 3x3 nn.Conv2d computes, both ways."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from pixelwise.models import build_model
from pixelwise.fast.gemm import use_gemm_convs
from pixelwise.fast.winograd import (_AT, _BT, _G, WinogradConv2d, winograd_conv3x3,
                                       winograd_eligible)

CL = torch.channels_last


def test_transforms_give_the_1d_correlation_exactly():
    """Lavin & Gray's F(4, 3): A^T [(G g) * (B^T d)] = the 4 outputs of correlating d with g."""
    bt, g, at = (torch.tensor(m, dtype=torch.float64) for m in (_BT, _G, _AT))
    gen = torch.Generator().manual_seed(0)
    d, k = torch.randn(6, generator=gen, dtype=torch.float64), torch.randn(3, generator=gen,
                                                                           dtype=torch.float64)
    direct = torch.stack([d[i:i + 3] @ k for i in range(4)])
    torch.testing.assert_close(at @ ((g @ k) * (bt @ d)), direct, rtol=1e-12, atol=1e-12)


def _run(fn, x0, w0, b0):
    x, w = x0.clone().requires_grad_(), w0.clone().requires_grad_()
    b = None if b0 is None else b0.clone().requires_grad_()
    y = fn(x, w, b)
    (y * torch.arange(y.numel(), dtype=y.dtype).view_as(y).sin()).sum().backward()
    return [y, x.grad, w.grad] + ([] if b is None else [b.grad])


@pytest.mark.parametrize("layout", [CL, torch.contiguous_format])
@pytest.mark.parametrize("shape", [(2, 5, 7, 11, 9), (1, 3, 4, 4, 4), (3, 8, 2, 1, 6), (1, 2, 3, 8, 12)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_values_and_gradients_match_conv2d(layout, shape, dtype):
    """Odd sizes (partial tiles), a 1-row map, both layouts; fp64 shows the algebra is exact."""
    n, c, o, h, w = shape
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(n, c, h, w, generator=gen, dtype=dtype).contiguous(memory_format=layout)
    w0 = torch.randn(o, c, 3, 3, generator=gen, dtype=dtype).contiguous(memory_format=layout)
    b0 = torch.randn(o, generator=gen, dtype=dtype)
    ref = _run(lambda x, w, b: F.conv2d(x, w, b, padding=1), x0, w0, b0)
    got = _run(winograd_conv3x3, x0, w0, b0)
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    for r, g in zip(ref, got, strict=True):
        assert g.shape == r.shape and g.dtype == r.dtype
        torch.testing.assert_close(g, r, rtol=tol, atol=tol * r.abs().max().item())
    assert got[0].is_contiguous(memory_format=CL)
    assert got[1].is_contiguous(memory_format=layout) and got[2].is_contiguous(memory_format=layout)


def test_gradcheck():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(1, 2, 5, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 2, 3, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(winograd_conv3x3, (x, w))


def test_only_input_or_only_weight_gradients():
    x = torch.randn(1, 4, 8, 8).contiguous(memory_format=CL)
    w = torch.randn(4, 4, 3, 3, requires_grad=True)
    (dw,) = torch.autograd.grad(winograd_conv3x3(x, w).sum(), w)
    torch.testing.assert_close(dw, torch.autograd.grad(F.conv2d(x, w, padding=1).sum(), w)[0],
                               rtol=1e-4, atol=1e-4)
    x.requires_grad_()
    w.requires_grad_(False)
    (dx,) = torch.autograd.grad(winograd_conv3x3(x, w).sum(), x)
    torch.testing.assert_close(dx, torch.autograd.grad(F.conv2d(x, w, padding=1).sum(), x)[0],
                               rtol=1e-4, atol=1e-4)


def test_eligible_convolutions():
    assert winograd_eligible(nn.Conv2d(128, 128, 3, padding=1))
    assert winograd_eligible(nn.Conv2d(256, 512, 3, padding="same", bias=False))
    assert not winograd_eligible(nn.Conv2d(64, 128, 3, padding=1))  # too few channels to win
    assert not winograd_eligible(nn.Conv2d(256, 64, 3, padding=1))
    assert not winograd_eligible(nn.Conv2d(256, 256, 3))  # valid: the paper U-Net's
    assert not winograd_eligible(nn.Conv2d(256, 256, 3, padding=1, stride=2))
    assert not winograd_eligible(nn.Conv2d(256, 256, 3, padding=2, dilation=2))
    assert not winograd_eligible(nn.Conv2d(256, 256, 3, padding=1, groups=2))
    assert not winograd_eligible(nn.Conv2d(256, 256, 3, padding=1, padding_mode="reflect"))
    assert not winograd_eligible(nn.Conv2d(256, 256, 5, padding=2))
    assert not winograd_eligible(WinogradConv2d(256, 256, 3, padding=1))


def test_module_uses_winograd_only_for_enough_tiles():
    conv = WinogradConv2d(4, 4, 3, padding=1, bias=False)
    big, small = torch.randn(4, 4, 16, 16), torch.randn(1, 4, 16, 16)  # 64 and 16 tiles
    assert type(conv(big).grad_fn).__name__ == "_Winograd3x3Backward"
    assert type(conv(small).grad_fn).__name__ != "_Winograd3x3Backward"
    torch.testing.assert_close(conv(big), F.conv2d(big, conv.weight, conv.bias, padding=1),
                               rtol=1e-4, atol=1e-4)
    graph = str(torch.jit.trace(conv, big).graph)
    assert "aten::_convolution" in graph and "aten::bmm" not in graph


def test_autocast_and_other_dtypes_run_the_plain_convolution():
    conv = WinogradConv2d(4, 4, 3, padding=1, bias=False)
    x = torch.randn(4, 4, 16, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert type(conv(x).grad_fn).__name__ != "_Winograd3x3Backward"
    assert type(conv.to(torch.bfloat16)(x.bfloat16()).grad_fn).__name__ != "_Winograd3x3Backward"


def test_double_backward_raises():
    x = torch.randn(1, 2, 8, 8, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    (dx,) = torch.autograd.grad(winograd_conv3x3(x, w).square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError):
        dx.sum().backward()


def test_segnet_swaps_keep_parameters_and_training_gradients():
    """SegNet's 20 convolutions with >= 128 channels on both sides run by Winograd; a training
    step (BatchNorm on batch statistics) gives the same loss and gradients.

    In float64: in float32 the direct convolution's own gradients move by up to 20% against
    float64 here (rounding flips which element a max-pool keeps), so only float64 can show
    that the two compute the same function.
    """
    grads, losses = [], []
    for swap in (False, True):
        torch.manual_seed(0)
        model = build_model("segnet", num_classes=3).to(torch.float64, memory_format=CL)
        keys = model.state_dict().keys()
        if swap:
            assert use_gemm_convs(model) == 20
            assert sum(isinstance(m, WinogradConv2d) for m in model.modules()) == 20
            assert model.state_dict().keys() == keys
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(4, 3, 64, 64, generator=gen, dtype=torch.float64)  # 16 x 16 at stage 3
        target = torch.randint(0, 3, (4, 64, 64), generator=gen)
        loss = F.cross_entropy(model(x.contiguous(memory_format=CL)), target)
        loss.backward()
        losses.append(loss.detach())
        grads.append([p.grad for p in model.parameters()])
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-12, atol=0)
    scale = max(g.abs().max().item() for g in grads[0])  # conv biases before BN get ~0
    for ref, got in zip(*grads, strict=True):
        torch.testing.assert_close(got, ref, rtol=1e-8, atol=1e-10 * scale)
