"""fast/layout.py: dense_grad changes where a gradient lives in memory, never its values."""
import torch
import torch.nn.functional as F

from pixelwise.models import build_model
from pixelwise.fast.layout import DenseGradResize, dense_grad, use_layout_modules

CL = torch.channels_last


def _decoder_backward(x: torch.Tensor, skip: torch.Tensor, use: bool) -> torch.Tensor:
    """Upsample, concatenate a skip, weight the channels, sum, backward (the decoder's
    pattern); returns the gradient that reached the upsampling's output."""
    seen = {}
    up = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
    up.register_hook(lambda g: seen.setdefault("grad", g))
    out = torch.cat([skip, dense_grad(up) if use else up], dim=1)
    (out * torch.arange(out.shape[1], dtype=out.dtype).view(1, -1, 1, 1)).sum().backward()
    return seen["grad"]


def test_gradient_values_unchanged_and_dense_in_channels_last():
    torch.manual_seed(0)
    base = torch.randn(2, 6, 5, 7)
    skip = torch.randn(2, 3, 10, 14).contiguous(memory_format=CL)
    grads, reached = [], []
    for use in (False, True):
        x = base.clone().contiguous(memory_format=CL).requires_grad_()
        reached.append(_decoder_backward(x, skip, use))
        grads.append(x.grad)
    assert torch.equal(grads[0], grads[1])
    # Without: a channel slice of cat's gradient, dense in neither layout. With: dense NHWC.
    assert not reached[0].is_contiguous() and not reached[0].is_contiguous(memory_format=CL)
    assert reached[1].is_contiguous(memory_format=CL)


def test_nchw_gradient_made_nchw_contiguous():
    x = torch.randn(1, 4, 3, 3, requires_grad=True)
    y = x * 2
    seen = {}
    y.register_hook(lambda g: seen.setdefault("grad", g))
    torch.cat([torch.zeros(1, 2, 3, 3), dense_grad(y)], dim=1).sum().backward()
    assert seen["grad"].is_contiguous()
    assert torch.equal(x.grad, torch.full_like(x, 2.0))


def test_no_graph_node_without_autograd():
    x = torch.randn(1, 2, 4, 4)
    assert dense_grad(x) is x
    with torch.no_grad():
        leaf = torch.randn(1, 2, 4, 4, requires_grad=True)
        assert dense_grad(leaf) is leaf


def test_decoder_gradients_equal_with_and_without(monkeypatch):
    """vgg16_unet's parameter gradients are the same with dense_grad switched off."""
    import pixelwise.fast.layout as layout

    torch.manual_seed(0)
    model = build_model("vgg16_unet", num_classes=3).to(memory_format=CL)
    assert use_layout_modules(model) == 1  # the decoder's upsampling to the skips
    assert isinstance(model.upsample_to_skip, DenseGradResize)
    x = torch.randn(1, 3, 32, 32).contiguous(memory_format=CL)
    y = torch.randint(0, 3, (1, 32, 32))
    runs = []
    for apply in (layout._DenseGrad.apply, lambda t: t):
        monkeypatch.setattr(layout._DenseGrad, "apply", apply)
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        runs.append([p.grad.clone() for p in model.parameters()])
    for with_, without in zip(*runs):
        torch.testing.assert_close(with_, without, rtol=0, atol=0)


def test_is_channels_last():
    from pixelwise.fast.layout import is_channels_last

    assert is_channels_last(torch.zeros(2, 3, 4, 5).contiguous(memory_format=CL))
    assert not is_channels_last(torch.zeros(2, 3, 4, 5))
    assert not is_channels_last(torch.zeros(2, 3, 1, 1).contiguous(memory_format=CL))  # both
    assert not is_channels_last(torch.zeros(3, 4))
