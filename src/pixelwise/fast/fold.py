"""BatchNorm folding: in eval mode a BatchNorm after a convolution is a per-channel affine map,
which merges into the convolution's weights and bias; the BatchNorm becomes an Identity.

Pairs are found on a ``torch.fx`` trace (a convolution whose only consumer is a BatchNorm),
or, for models fx cannot trace, inside ``nn.Sequential`` containers. The model keeps its
class and methods (``output_shape`` and the like): only weights and submodules change. Used
by fast inference (``fast.optimize``) and by the exports (``export``).
"""
from __future__ import annotations

import copy
from typing import Iterator

import torch
import torch.nn as nn

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
          nn.ConvTranspose3d)
_BNS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@torch.no_grad()
def fold_conv_bn(conv: nn.Module, bn: nn.Module) -> None:
    """Fold ``bn`` (eval statistics) into ``conv`` in place; ``bn`` itself is left unchanged.

    Args:
        conv: a ``Conv*d`` or ``ConvTranspose*d`` whose output feeds ``bn`` only.
        bn: a ``BatchNorm*d`` with running statistics.
    """
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError(f"cannot fold {bn}: it tracks no running statistics")
    if bn.num_features != conv.out_channels:
        raise ValueError(f"cannot fold {bn} into {conv}: {bn.num_features} features vs "
                         f"{conv.out_channels} output channels")
    dtype = conv.weight.dtype
    # Fold in float64 so the folded weights round once, not twice.
    scale = bn.running_var.double().add(bn.eps).rsqrt()
    if bn.weight is not None:
        scale = scale * bn.weight.double()
    shift = -bn.running_mean.double() * scale
    if bn.bias is not None:
        shift = shift + bn.bias.double()
    weight = conv.weight.double()
    if isinstance(conv, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
        # weight: (in, out / groups, *k); output channel o = g * (out / groups) + j.
        groups = conv.groups
        w = weight.reshape(groups, weight.shape[0] // groups, weight.shape[1], *weight.shape[2:])
        s = scale.reshape(groups, 1, weight.shape[1], *([1] * (weight.ndim - 2)))
        weight = (w * s).reshape(weight.shape)
    else:
        weight = weight * scale.reshape(-1, *([1] * (weight.ndim - 1)))
    bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale)
    conv.weight.copy_(weight.to(dtype))
    new_bias = (bias * scale + shift).to(dtype)
    if conv.bias is None:
        conv.bias = nn.Parameter(new_bias, requires_grad=False)
    else:
        conv.bias.copy_(new_bias)


def _pairs_from_fx(model: nn.Module) -> list[tuple[str, str]]:
    import torch.fx as fx

    class Tracer(fx.Tracer):
        # Convolution subclasses (EfficientNet's TF "SAME" strided convs pad in forward)
        # stay single calls, so the BatchNorm after them is seen to follow a convolution.
        def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
            return isinstance(m, _CONVS + _BNS) or super().is_leaf_module(m, qualname)

    graph = Tracer().trace(model)
    modules = dict(model.named_modules())
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    seen: dict[tuple[str, str], int] = {}
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules[node.target], _BNS):
            continue
        prev = node.args[0]
        if (isinstance(prev, fx.Node) and prev.op == "call_module"
                and isinstance(modules[prev.target], _CONVS) and len(prev.users) == 1):
            seen[(prev.target, node.target)] = seen.get((prev.target, node.target), 0) + 1
    # A module called more than once (shared weights, as R2U-Net's recurrent convs) folds only
    # if every call of the conv feeds that BatchNorm and every call of the BatchNorm follows
    # that conv; otherwise folding would change its other calls too.
    return [(conv, bn) for (conv, bn), n in seen.items() if calls[conv] == n and calls[bn] == n]


def _pairs_from_sequentials(model: nn.Module) -> Iterator[tuple[str, str]]:
    for name, module in model.named_modules():
        if not isinstance(module, nn.Sequential):
            continue
        children = list(module.named_children())
        for (a, first), (b, second) in zip(children, children[1:]):
            if isinstance(first, _CONVS) and isinstance(second, _BNS):
                prefix = f"{name}." if name else ""
                yield prefix + a, prefix + b


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def fold_batchnorm(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Fold every BatchNorm that directly follows a convolution into it.

    Args:
        model: a model; it is put in eval mode (folding uses the running statistics).
        inplace: modify ``model`` itself instead of a deep copy.

    Returns:
        The model with folded convolutions and ``nn.Identity`` in place of the BatchNorms;
        same class, same outputs up to float rounding, in eval mode.
    """
    if not inplace:
        model = copy.deepcopy(model)
    model.eval()
    try:
        pairs = _pairs_from_fx(model)
    except Exception:  # fx cannot trace data-dependent control flow; fall back to the safe subset
        pairs = list(_pairs_from_sequentials(model))
    for conv_name, bn_name in pairs:
        if model.get_submodule(bn_name).running_mean is None:
            continue  # no running statistics: it normalises with each batch's own, no constant
        fold_conv_bn(model.get_submodule(conv_name), model.get_submodule(bn_name))
        _set_module(model, bn_name, nn.Identity())
    return model


def count_batchnorms(model: nn.Module) -> int:
    """Number of BatchNorm modules left in ``model``."""
    return sum(isinstance(m, _BNS) for m in model.modules())
