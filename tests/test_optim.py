"""fast/optim.py: the same updates as torch.optim, bit for bit, without layout copies."""
import copy

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from pixelwise.fast.optim import SGD, AdamW

CL = torch.channels_last


def _params(layout: torch.memory_format) -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(0)
    shapes = [(8, 5, 3, 3), (8, 5, 1, 1), (8,), (6, 4)]
    return [torch.nn.Parameter(torch.randn(s, generator=gen).contiguous(
        memory_format=layout if len(s) == 4 else torch.contiguous_format)) for s in shapes]


def _run(opt_class, layout, steps=3, **kwargs):
    params = _params(layout)
    opt = opt_class(params, **kwargs)
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen).contiguous(
                memory_format=layout if p.dim() == 4 else torch.contiguous_format)
        opt.step()
    return params, opt


CASES = [(AdamW, torch.optim.AdamW, {"lr": 1e-2, "weight_decay": 0.1, "fused": True}),
         (AdamW, torch.optim.AdamW, {"lr": 1e-2, "amsgrad": True, "fused": True}),
         (AdamW, torch.optim.AdamW, {"lr": 1e-2, "foreach": False}),
         (SGD, torch.optim.SGD, {"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-3, "fused": True}),
         (SGD, torch.optim.SGD, {"lr": 0.1, "momentum": 0.9, "nesterov": True, "fused": True}),
         (SGD, torch.optim.SGD, {"lr": 0.1, "fused": True}),
         (SGD, torch.optim.SGD, {"lr": 0.1, "momentum": 0.9, "foreach": False})]


@pytest.mark.parametrize("ours,theirs,kwargs", CASES)
@pytest.mark.parametrize("layout", [CL, torch.contiguous_format])
def test_same_update_as_torch(ours, theirs, kwargs, layout):
    mine, opt = _run(ours, layout, **kwargs)
    ref, ref_opt = _run(theirs, layout, **kwargs)
    for p, q in zip(mine, ref):
        assert torch.equal(p, q)
        assert p.stride() == q.stride()  # parameters keep their layout
    # the state is torch's: keyed by the parameters, shaped and laid out like them
    assert set(opt.state) <= set(mine) and len(opt.state) == len(ref_opt.state)
    for p, q in zip(mine, ref):
        for key, value in ref_opt.state[q].items():
            assert torch.equal(opt.state[p][key], value), key
            assert opt.state[p][key].shape == value.shape


def test_state_dict_interchangeable_with_torch():
    mine, opt = _run(SGD, CL, lr=0.1, momentum=0.9, fused=True)
    ref, ref_opt = _run(torch.optim.SGD, CL, lr=0.1, momentum=0.9, fused=True)
    resumed = SGD(_params(CL), lr=0.1, momentum=0.9, fused=True)
    resumed.load_state_dict(ref_opt.state_dict())
    for key in ("state", "param_groups"):
        assert str(resumed.state_dict()[key]) == str(opt.state_dict()[key])


@pytest.mark.parametrize("ours,theirs,kwargs", [CASES[0], CASES[3]])
def test_no_layout_copy_in_the_step(ours, theirs, kwargs):
    """torch's fused kernels copy channels_last tensors to NCHW and back; ours do not."""
    def copies(opt_class):
        params, opt = _run(opt_class, CL, steps=1, **kwargs)  # state exists from here on
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            opt.step()
        # tensor copies only (the step counters are scalars)
        return sum(1 for e in prof.events() if e.name == "aten::copy_" and e.input_shapes[0])
    assert copies(theirs) > 0
    assert copies(ours) == 0


def test_a_channels_last_model_steps_as_torch_adamw_on_nchw():
    """The fast path's AdamW (channels_last weights, fused, the _init_group override) against
    plain torch.optim.AdamW on the NCHW model: the same weights after a few steps, to 1e-6.
    Fails if a torch release changes what the override relies on."""
    torch.manual_seed(0)
    plain = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8),
                                torch.nn.Conv2d(8, 4, 1))
    fast = copy.deepcopy(plain).to(memory_format=CL)
    ours = AdamW(fast.parameters(), lr=1e-2, weight_decay=0.05, fused=True)
    theirs = torch.optim.AdamW(plain.parameters(), lr=1e-2, weight_decay=0.05)
    before = [p.detach().clone() for p in plain.parameters()]
    gen = torch.Generator().manual_seed(1)
    for _ in range(4):
        for p, q in zip(plain.parameters(), fast.parameters()):
            p.grad = torch.randn(p.shape, generator=gen)
            q.grad = p.grad.clone().contiguous(memory_format=CL if q.dim() == 4
                                               else torch.contiguous_format)
        theirs.step()
        ours.step()
    for p, q, p0 in zip(plain.parameters(), fast.parameters(), before):
        torch.testing.assert_close(q, p, rtol=0, atol=1e-6)
        assert (p - p0).abs().mean() > 5e-3  # the weights moved: 4 steps of lr 1e-2
    assert fast[0].weight.is_contiguous(memory_format=CL)
