"""A small model registry: ``@register_model``, ``build_model(name, **kwargs)``, ``list_models()``
and ``model_parameters(name)``."""
from __future__ import annotations

import inspect
from typing import Callable, Mapping

import torch.nn as nn

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register a builder under its function name; a duplicate name is an error."""
    name = fn.__name__
    if name in _MODELS:
        raise ValueError(f"model {name!r} is already registered")
    _MODELS[name] = fn
    return fn


def list_models() -> list[str]:
    """Names of all registered models, sorted."""
    return sorted(_MODELS)


def _builder(name: str) -> Callable[..., nn.Module]:
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(list_models())}")
    return _MODELS[name]


def model_parameters(name: str) -> Mapping[str, inspect.Parameter]:
    """The keyword parameters of a registered model's builder, in order, with their defaults.

    Callers read which arguments a model takes (``"in_channels" in model_parameters(name)``)
    without building it.

    Raises:
        ValueError: ``name`` is not registered.
    """
    return inspect.signature(_builder(name)).parameters


def build_model(name: str, **kwargs) -> nn.Module:
    """Build a registered model by name with its constructor keyword arguments."""
    return _builder(name)(**kwargs)
