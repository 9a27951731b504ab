"""LAUD models: registry, builders and weight loading. Importing this package registers every model."""

from laudnet.model_table import ModelInfo as ModelInfo
from laudnet.models import regnet as regnet
from laudnet.models import resnet as resnet
from laudnet.models import vit as vit
from laudnet.models._base import DynamicModel as DynamicModel
from laudnet.models._base import ModelFlops as ModelFlops
from laudnet.models._registry import create_model as create_model
from laudnet.models._registry import list_models as list_models
from laudnet.models._registry import model_info as model_info
from laudnet.models._registry import register_model as register_model
from laudnet.models.vit import load_timm_weights as load_timm_weights
from laudnet.models.weights import load_torchvision_weights as load_torchvision_weights
