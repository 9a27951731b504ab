"""laudnet: latency-aware unified dynamic networks (LAUDNet, Han et al., TPAMI 2024) that are fast in practice."""

from laudnet.info import DynamicInfo as DynamicInfo
from laudnet.info import collect_info as collect_info
from laudnet.masks import mask_override as mask_override
from laudnet.models import DynamicModel as DynamicModel
from laudnet.models import ModelFlops as ModelFlops
from laudnet.models import create_model as create_model
from laudnet.models import list_models as list_models
from laudnet.models import load_torchvision_weights as load_torchvision_weights
from laudnet.models._base import model_flops as model_flops
from laudnet.version import __version__ as __version__
