"""Loading torchvision (static) weights into LAUD models.

Every backbone key of the torchvision state dict must be used, with the same shape; the model's maskers are the only
keys the state dict may lack. Anything else is an error that names the offending keys.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch
from torch import Tensor, nn


def _read_state_dict(source: Mapping[str, Tensor] | str | os.PathLike) -> Mapping[str, Tensor]:
    if isinstance(source, Mapping):
        return source
    path = os.fspath(source)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights file not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, pickle garbage, ...
        raise ValueError(f"cannot read weights file {path}: {type(e).__name__}: {e}") from None
    for key in ("state_dict", "model"):  # common wrappers of a state dict
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ValueError(f"weights file {path} does not hold a state dict of tensors")
    return obj


def _preview(keys: list[str], n: int = 5) -> str:
    return ", ".join(keys[:n]) + (f", ... ({len(keys)} in all)" if len(keys) > n else "")


def load_torchvision_weights(
    model: nn.Module, state_dict: Mapping[str, Tensor] | str | os.PathLike, *, exclude_head: bool = False
) -> nn.Module:
    """Load a torchvision state dict (or a file holding one) into a LAUD model, in place.

    Args:
        model: a LAUD model of the same architecture (e.g. `laud_resnet50` for torchvision's `resnet50`).
        state_dict: the state dict, or a path to a file saved with `torch.save`.
        exclude_head: skip the classifier (``fc.*``) keys, to fine-tune on a dataset with other classes.

    Returns:
        The model.

    Raises:
        ValueError: the state dict does not fit: unexpected keys, missing backbone keys or shape mismatches (each
            named), or an unreadable file.
        FileNotFoundError: the file does not exist.
    """
    return load_backbone_weights(model, state_dict, exclude_head=exclude_head, head_prefix="fc.")


def load_backbone_weights(
    model: nn.Module,
    state_dict: Mapping[str, Tensor] | str | os.PathLike,
    *,
    exclude_head: bool = False,
    head_prefix: str = "fc.",
) -> nn.Module:
    """Load a state dict whose keys are the model's except its maskers; `head_prefix` names the classifier's keys.

    Shared by `load_torchvision_weights` (``fc.``) and the ViTs' `load_timm_weights` (``head.``).
    """
    sd = dict(_read_state_dict(state_dict))
    if sd and all(k.startswith("module.") for k in sd):  # saved from DistributedDataParallel
        sd = {k[len("module."):]: v for k, v in sd.items()}
    if exclude_head:
        sd = {k: v for k, v in sd.items() if not k.startswith(head_prefix)}
    own = model.state_dict()
    unexpected = [k for k in sd if k not in own]
    missing = [k for k in own
               if k not in sd and "masker" not in k and not (exclude_head and k.startswith(head_prefix))]
    mismatched = [f"{k}: {tuple(v.shape)} vs model {tuple(own[k].shape)}" for k, v in sd.items()
                  if k in own and v.shape != own[k].shape]
    problems = []
    if unexpected:
        problems.append(f"unexpected keys (not in the model): {_preview(unexpected)}")
    if missing:
        problems.append(f"missing backbone keys: {_preview(missing)}")
    if mismatched:
        problems.append(f"shape mismatches: {_preview(mismatched, 3)}")
    if problems:
        raise ValueError(f"state dict does not fit {type(model).__name__}: " + "; ".join(problems))
    model.load_state_dict(sd, strict=False)
    return model
