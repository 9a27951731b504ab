"""laudnet: latency-aware unified dynamic networks (LAUDNet, Han et al., TPAMI 2024) that are fast in practice.

The public API is imported lazily (PEP 562), so that torch-free parts such as the latency predictor
(`laudnet latency`) start without importing torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from laudnet.version import __version__ as __version__

_EXPORTS = {
    "DynamicInfo": "laudnet.info",
    "collect_info": "laudnet.info",
    "mask_override": "laudnet.masks",
    "DynamicModel": "laudnet.models",
    "ModelFlops": "laudnet.models",
    "create_model": "laudnet.models",
    "list_models": "laudnet.models",
    "model_info": "laudnet.models",
    "ModelInfo": "laudnet.model_table",
    "load_torchvision_weights": "laudnet.models",
    "load_timm_weights": "laudnet.models",
    "model_flops": "laudnet.models._base",
    "deploy": "laudnet.deploy",
}

__all__ = sorted([*_EXPORTS, "__version__"])

if TYPE_CHECKING:
    from laudnet.deploy import deploy as deploy
    from laudnet.info import DynamicInfo as DynamicInfo
    from laudnet.info import collect_info as collect_info
    from laudnet.masks import mask_override as mask_override
    from laudnet.model_table import ModelInfo as ModelInfo
    from laudnet.models import DynamicModel as DynamicModel
    from laudnet.models import ModelFlops as ModelFlops
    from laudnet.models import create_model as create_model
    from laudnet.models import list_models as list_models
    from laudnet.models import load_timm_weights as load_timm_weights
    from laudnet.models import load_torchvision_weights as load_torchvision_weights
    from laudnet.models import model_info as model_info
    from laudnet.models._base import model_flops as model_flops


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'laudnet' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
