"""Paradigm names, the granularity grammar and the default granularities: the one definition that the models, the
blocks, training and the latency predictor read.

Torch-free (the latency predictor and the CLI's argument checks import it without torch).

- CNN paradigms: ``static``, ``spatial`` (one decision per S×S patch of a block's output), ``channel`` (one per group
  of G consecutive bottleneck channels) and ``layer`` (one per block).
- ViT paradigms: ``static`` or a ``+``-combination of ``token``, ``head`` and ``layer`` (``token+head+layer``).
- Granularity (spatial S or channel G per stage): one positive integer for every stage (``4``, ``"4"``) or one per
  stage (``"4-4-2-1"``, ``"4,4,2,1"``, ``[4, 4, 2, 1]``). Nothing else: ``"-1"`` is not 1, ``True`` is not 1, three
  values are not four.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations

CNN_PARADIGMS = ("static", "spatial", "channel", "layer")
GRANULAR_PARADIGMS = ("spatial", "channel")  # the paradigms that take a granularity
VIT_PARTS = ("token", "head", "layer")
VIT_PARADIGMS = ("static", *("+".join(c) for n in range(1, len(VIT_PARTS) + 1) for c in combinations(VIT_PARTS, n)))
# What the maskers of a dynamic model can skip (static networks are a training mode, not a paradigm there).
DYNAMIC_PARADIGMS = tuple(dict.fromkeys(p for p in CNN_PARADIGMS + VIT_PARADIGMS if p != "static"))

N_STAGES = 4  # every LAUD CNN (ResNet, RegNetY) has four stages

# Spatial: the paper's S^net = 4-4-2-1. Channel: G = 8, not the official scripts' G = 1: with G = 1 a channel-skipping
# block is slower than the static block, with G = 8 faster (the 3×3 weight gather gets 16-byte loads; chosen by
# measurement, see the README); G = 8 divides every stage width of the four CNNs.
DEFAULT_GRANULARITY = {"spatial": (4, 4, 2, 1), "channel": (8, 8, 8, 8)}

def check_cnn_paradigm(paradigm: str) -> str:
    """``paradigm`` if it is one of CNN_PARADIGMS, else a ValueError listing them."""
    if paradigm not in CNN_PARADIGMS:
        hint = "; token, head and layer combinations are for the ViTs" if isinstance(paradigm, str) and (
            "+" in paradigm or paradigm in VIT_PARTS[:2]) else ""
        raise ValueError(f"unknown paradigm {paradigm!r}; choose from: {', '.join(CNN_PARADIGMS)}{hint}")
    return paradigm


def parse_vit_paradigm(paradigm: str) -> tuple[str, frozenset[str]]:
    """Canonical name and parts of a ViT paradigm: ``static`` or a ``+``-combination of token, head and layer.

    Returns:
        (canonical name in the order token+head+layer, set of parts); ``static`` has no parts.
    """
    if not isinstance(paradigm, str):
        raise ValueError(f"paradigm must be a string, got {paradigm!r}")
    if paradigm == "static":
        return "static", frozenset()
    parts = paradigm.split("+")
    if any(p not in VIT_PARTS for p in parts) or len(set(parts)) != len(parts):
        raise ValueError(
            f"unknown ViT paradigm {paradigm!r}; choose 'static' or a '+'-combination of token, head, layer "
            "(e.g. 'token', 'head+layer', 'token+head+layer')"
        )
    return "+".join(p for p in VIT_PARTS if p in parts), frozenset(parts)


def _is_positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def parse_granularity(value: int | str | Sequence[int] | None, n_stages: int = N_STAGES) -> tuple[int, ...] | None:
    """One positive integer per stage from the granularity grammar (see the module docstring); None stays None.

    A single value (``4``, ``"4"``, ``[4]``) applies to every stage.

    Raises:
        ValueError: anything else, naming the value.
    """
    if value is None:
        return None
    if isinstance(value, str):
        # Every part must be a number: "-1" is not 1 (its empty first part would otherwise be skipped).
        parts: list = [p.strip() for p in value.strip().replace(",", "-").split("-")]
        values = [int(p) if p.isdecimal() else None for p in parts]
    elif isinstance(value, list | tuple):
        values = list(value)
    else:
        values = [value]
    if len(values) == 1:
        values = values * n_stages
    if len(values) != n_stages or not all(_is_positive_int(v) for v in values):
        raise ValueError(f"granularity must be one positive integer or {n_stages} of them (one per stage), e.g. 4, "
                         f"4-4-2-1, 4,4,2,1 or [4, 4, 2, 1]; got {value!r}")
    return tuple(values)


def stage_granularity(paradigm: str, value: int | str | Sequence[int] | None,
                      n_stages: int = N_STAGES) -> tuple[int | None, ...]:
    """Per-stage granularity of a CNN paradigm: the parsed value, the paradigm's default for None, and
    ``(None,) * n_stages`` for the paradigms without one (which refuse a value)."""
    check_cnn_paradigm(paradigm)
    if paradigm not in GRANULAR_PARADIGMS:
        if value is not None:
            raise ValueError(f"paradigm {paradigm!r} takes no granularity, got {value!r}")
        return (None,) * n_stages
    if value is None:
        return DEFAULT_GRANULARITY[paradigm]
    return parse_granularity(value, n_stages)


def check_block_granularity(paradigm: str, value: int | None) -> int | None:
    """One block's granularity: a positive integer for spatial (S) and channel (G), None for the others."""
    check_cnn_paradigm(paradigm)
    if paradigm not in GRANULAR_PARADIGMS:
        if value is not None:
            raise ValueError(f"paradigm {paradigm!r} takes no granularity, got {value!r}")
        return None
    if not _is_positive_int(value):
        what = "spatial patch size S" if paradigm == "spatial" else "channel group size G"
        raise ValueError(f"{what} must be a positive integer, got {value!r}")
    return value


def format_granularity(values: Sequence[int | None] | None) -> str:
    """``(4, 4, 2, 1)`` → ``"4-4-2-1"``; ``"-"`` for none."""
    return "-".join(map(str, values)) if values and values[0] is not None else "-"
