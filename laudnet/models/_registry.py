"""Model registry: `@register_model` functions, `list_models`, `create_model`, `model_info`.

Every registered model has a `ModelInfo` row (`laudnet.model_table`, torch-free): `register_model` takes it from the
table by the builder's name, or from its ``info`` argument for a model defined elsewhere.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from typing import Any

from torch import nn

from laudnet.model_table import MODEL_TABLE, ModelInfo

_MODELS: dict[str, Callable[..., nn.Module]] = {}
_INFO: dict[str, ModelInfo] = {}


def register_model(fn: Callable[..., nn.Module] | None = None, *, info: ModelInfo | None = None):
    """Register a model builder under its function name; a duplicate name is an error.

    Used bare (``@register_model``) for the models of `laudnet.model_table.MODEL_TABLE`, or as
    ``@register_model(info=ModelInfo(...))`` for another model.

    Raises:
        ValueError: a duplicate name, a model without a table row, or an ``info`` of another name.
    """

    def register(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        name = fn.__name__
        if name in _MODELS:
            raise ValueError(f"model {name!r} is already registered")
        row = info if info is not None else MODEL_TABLE.get(name)
        if row is None:
            raise ValueError(f"model {name!r} has no row in laudnet.model_table: register it with "
                             "@register_model(info=ModelInfo(...))")
        if row.name != name:
            raise ValueError(f"model {name!r} is registered with the ModelInfo of {row.name!r}")
        _MODELS[name] = fn
        _INFO[name] = row
        return fn

    return register if fn is None else register(fn)


def list_models(pattern: str | None = None) -> list[str]:
    """Sorted names of the registered models, optionally filtered by a shell-style pattern (e.g. ``laud_resnet*``)."""
    names = sorted(_MODELS)
    return [n for n in names if pattern is None or fnmatch.fnmatch(n, pattern)]


def model_info(name: str) -> ModelInfo:
    """The architecture facts of a registered model (family, depths and widths or dim/heads, constructor options).

    Raises:
        ValueError: for an unknown model name (the message lists the choices).
    """
    if name not in _INFO:
        raise ValueError(f"unknown model {name!r}; choose from: {', '.join(list_models())}")
    return _INFO[name]


def create_model(
    name: str,
    *,
    paradigm: str = "layer",
    granularity: int | str | tuple[int, ...] | None = None,
    num_classes: int = 1000,
    **kwargs,
) -> nn.Module:
    """Build a registered model.

    The model records its arguments in ``model.model_args`` (granularity resolved to one value per stage), so that
    ``create_model(**model.model_args)`` builds the same architecture; training checkpoints store them.

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
    model = _MODELS[name](paradigm=paradigm, granularity=granularity, num_classes=num_classes, **kwargs)
    model.model_args = {"name": name, "paradigm": paradigm, "granularity": _resolved_granularity(model, granularity),
                        "num_classes": num_classes, **kwargs}
    return model


def _resolved_granularity(model: nn.Module, given: Any) -> Any:
    # The model's per-stage values pin the default of the time: a later default does not change a rebuilt checkpoint.
    per_stage = getattr(model, "granularity", None)
    if isinstance(per_stage, tuple) and per_stage and all(isinstance(g, int) for g in per_stage):
        return list(per_stage)
    return given
