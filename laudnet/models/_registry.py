"""Model registry: `@register_model` functions, `list_models`, `create_model`."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable

from torch import nn

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register a model builder under its function name; a duplicate name is an error."""
    name = fn.__name__
    if name in _MODELS:
        raise ValueError(f"model {name!r} is already registered")
    _MODELS[name] = fn
    return fn


def list_models(pattern: str | None = None) -> list[str]:
    """Sorted names of the registered models, optionally filtered by a shell-style pattern (e.g. ``laud_resnet*``)."""
    names = sorted(_MODELS)
    return [n for n in names if pattern is None or fnmatch.fnmatch(n, pattern)]


def create_model(
    name: str,
    *,
    paradigm: str = "layer",
    granularity: int | str | tuple[int, ...] | None = None,
    num_classes: int = 1000,
    **kwargs,
) -> nn.Module:
    """Build a registered model.

    Args:
        name: a name from `list_models()`.
        paradigm: ``static``, ``spatial``, ``channel`` or ``layer``.
        granularity: per-stage patch size S (spatial) or channel group size G (channel): one int for all stages, a
            sequence of four, or a string such as ``"4-4-2-1"`` or ``"4,4,2,1"`` (`laudnet.paradigms`). None takes
            the paradigm's default (`laudnet.paradigms.DEFAULT_GRANULARITY`: spatial 4-4-2-1, channel 8-8-8-8).
        num_classes: classifier outputs.
        **kwargs: passed to the model builder (e.g. ``masker_reduction``).

    Raises:
        ValueError: for an unknown model name (the message lists the choices) or a bad paradigm/granularity.
    """
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; choose from: {', '.join(list_models())}")
    return _MODELS[name](paradigm=paradigm, granularity=granularity, num_classes=num_classes, **kwargs)
