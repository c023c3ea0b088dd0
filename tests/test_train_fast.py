"""The training fast path (channels_last, fused optimiser, tuned malloc) against the plain
NCHW / foreach path: the same loss, and the same gradients and optimiser step to rounding,
except where PyTorch's NHWC BatchNorm backward is measurably less exact (bounded below)."""
from __future__ import annotations

import copy

import pytest
import torch

from pixelwise.io.config import load_config
from pixelwise.fast.allocator import tune_malloc
from pixelwise.fast.layout import use_layout_modules
from pixelwise.training.schedule import build_optimizer
from pixelwise.losses import DeepSupervisionLoss, build_loss
from pixelwise.models import build_model, list_models

from common import TINY


def step(model, x, y, optimizer, channels_last: bool):
    criterion = DeepSupervisionLoss(build_loss("ce" if model_outputs(model) > 1 else "bce"))
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    loss = criterion(model(x), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    optimizer.step()
    return loss.item(), grads


def model_outputs(model) -> int:
    with torch.no_grad():
        was = model.training
        model.eval()
        out = model(torch.zeros(1, first_conv(model).in_channels, 64, 64)).shape[1]
        model.train(was)
    return out


def first_conv(model) -> torch.nn.Conv2d:
    return next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))


FAST = {"unet", "unet_small", "resnet34_unet", "resnet34_unet_concat", "unet_plus_plus"}


def close(a: torch.Tensor, b: torch.Tensor, rel: float, floor: float) -> bool:
    """||a - b|| within ``rel`` of ||b||, or under ``floor`` (a tensor that is zero in exact
    arithmetic, such as the gradient of a conv bias before BatchNorm, is pure rounding)."""
    err = (a - b).norm().item()
    return err <= rel * b.norm().item() or err <= floor


@pytest.mark.parametrize("name", [n if n in FAST else pytest.param(n, marks=pytest.mark.slow)
                                  for n in sorted(TINY)])
def test_fast_path_matches_the_plain_path(name, one_thread):
    assert sorted(TINY) == list_models()
    torch.manual_seed(0)
    plain = build_model(name, **TINY[name])
    fast = copy.deepcopy(plain).to(memory_format=torch.channels_last)
    use_layout_modules(fast)  # what optimize_for_training does, bar the convolution swaps
    cin = first_conv(plain).in_channels
    x = torch.randn(4, cin, 64, 64)
    y = torch.randint(0, max(model_outputs(plain), 2), (4, 64, 64))
    cfg = load_config(raw={"model": {"name": name}, "data": {"spec": "unused"},
                           "optim": {"name": "sgd", "lr": 0.1, "momentum": 0.9}})
    opt_fast = build_optimizer(fast, cfg)
    assert all(g.get("fused") for g in opt_fast.param_groups)
    opt_plain = torch.optim.SGD(plain.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4,
                                foreach=False)
    before = [p.detach().clone() for p in plain.parameters()]
    loss_p, grads_p = step(plain, x, y, opt_plain, channels_last=False)
    loss_f, grads_f = step(fast, x, y, opt_fast, channels_last=True)
    assert loss_f == pytest.approx(loss_p, rel=1e-5)
    # PyTorch's NHWC BatchNorm backward on CPU is less exact than its NCHW one: against a
    # float64 reference, a tiny BN U-Net's deep-layer gradients are off by ~1% in NHWC and
    # by 2e-6 in NCHW (without BatchNorm both 1e-6; see the test below). Whole tensors are
    # compared, relative to their size, within that measured bound.
    total = torch.cat([g.flatten() for g in grads_p]).norm().item()
    for (pname, _), gp, gf in zip(plain.named_parameters(), grads_p, grads_f):
        assert close(gf, gp, rel=3e-2, floor=1e-4 * total), f"gradient of {pname}"
    # One step of the fused optimiser moves every parameter as the plain one does.
    for (pname, pp), pf, p0 in zip(plain.named_parameters(), fast.parameters(), before):
        assert close(pf.detach() - p0, pp.detach() - p0, rel=3e-2, floor=1e-5 * total), pname


def test_without_batchnorm_the_fast_path_is_exact_to_rounding(one_thread):
    torch.manual_seed(0)
    plain = build_model("unet", **{**TINY["unet"], "batch_norm": False})
    fast = copy.deepcopy(plain).to(memory_format=torch.channels_last)
    x, y = torch.randn(4, 3, 64, 64), torch.randint(0, 3, (4, 64, 64))
    sgd = dict(lr=0.1, momentum=0.9)
    loss_p, grads_p = step(plain, x, y, torch.optim.SGD(plain.parameters(), foreach=False,
                                                        **sgd), channels_last=False)
    loss_f, grads_f = step(fast, x, y, torch.optim.SGD(fast.parameters(), fused=True, **sgd),
                           channels_last=True)
    assert loss_f == pytest.approx(loss_p, rel=1e-6)
    for gp, gf in zip(grads_p, grads_f):
        assert close(gf, gp, rel=2e-5, floor=0.0)


def test_tune_malloc_applies_on_linux():
    import sys

    assert tune_malloc() is sys.platform.startswith("linux")
    assert tune_malloc() is sys.platform.startswith("linux")  # twice is harmless


def _run_parts(fast: bool, **train):
    from pixelwise.training.setup import build_run_model

    cfg = load_config(raw={"model": {"name": "vgg16_unet"}, "data": {"spec": "unused"},
                           "optim": {"name": "adamw"}, "train": {"fast": fast, **train}})
    model = build_run_model(cfg, TINY["vgg16_unet"], torch.device("cpu"))
    return cfg, model, build_optimizer(model, cfg)


def test_train_fast_is_the_one_switch():
    from pixelwise.fast import optim as fast_optim
    from pixelwise.fast.gemm import GemmConv2d
    from pixelwise.fast.layout import DenseGradResize
    from pixelwise.fast.winograd import WinogradConv2d

    def kinds(model):
        return {type(m) for m in model.modules()} & {GemmConv2d, WinogradConv2d, DenseGradResize}

    cfg, model, opt = _run_parts(True)
    assert first_conv(model).weight.is_contiguous(memory_format=torch.channels_last)
    assert kinds(model) == {GemmConv2d, WinogradConv2d, DenseGradResize}
    assert type(opt) is fast_optim.AdamW
    # fast: false is plain PyTorch: NCHW, the model's own modules, torch's optimiser
    cfg, model, opt = _run_parts(False)
    assert all(p.is_contiguous() for p in model.parameters())
    assert kinds(model) == set()
    assert type(opt) is torch.optim.AdamW
    assert model.state_dict().keys() == _run_parts(True)[1].state_dict().keys()


@pytest.mark.parametrize("legacy,fast", [({"channels_last": False}, False),
                                         ({"tune_allocator": True}, True),
                                         ({"channels_last": True, "tune_allocator": False}, False)])
def test_the_old_switches_read_as_train_fast(legacy, fast):
    from pixelwise.io.config import config_to_dict

    cfg = load_config(raw={"model": {"name": "unet"}, "data": {"spec": "unused"},
                           "train": legacy})
    assert cfg.train.fast is fast
    assert "channels_last" not in config_to_dict(cfg)["train"]
