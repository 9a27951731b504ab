"""Analytic latency predictor for dynamic networks (LAUDNet's hardware model and operator library).

Needs neither a GPU nor the model code: models are described by small geometry tables. Public API:

    from laudnet.latency import predict_model, load_hardware
    p = predict_model("resnet101", "layer", density=0.5, hardware="v100", batch=128)
    p.static_ms, p.dynamic_ms, p.ratio, p.blocks
    predict_model("deit_small", "token+head+layer", density=0.5, hardware="h100")  # the ViTs
"""

from laudnet.latency.blocks import block_cost as block_cost
from laudnet.latency.blocks import transformer_block as transformer_block
from laudnet.latency.geometry import BlockGeometry as BlockGeometry
from laudnet.latency.geometry import ModelGeometry as ModelGeometry
from laudnet.latency.geometry import ViTGeometry as ViTGeometry
from laudnet.latency.geometry import get_geometry as get_geometry
from laudnet.latency.geometry import get_vit_geometry as get_vit_geometry
from laudnet.latency.geometry import is_vit as is_vit
from laudnet.latency.geometry import list_models as list_models
from laudnet.latency.geometry import list_vit_models as list_vit_models
from laudnet.latency.hardware import PRESETS as PRESETS
from laudnet.latency.hardware import HardwareSpec as HardwareSpec
from laudnet.latency.hardware import list_hardware as list_hardware
from laudnet.latency.hardware import load_hardware as load_hardware
from laudnet.latency.hardware import save_hardware as save_hardware
from laudnet.latency.ops import Cost as Cost
from laudnet.latency.ops import OpModel as OpModel
from laudnet.latency.ops import get_op_model as get_op_model
from laudnet.latency.predictor import BlockPrediction as BlockPrediction
from laudnet.latency.predictor import Prediction as Prediction
from laudnet.latency.predictor import predict_model as predict_model
from laudnet.paradigms import CNN_PARADIGMS as PARADIGMS  # noqa: F401 (the CNN paradigms the predictor takes)
from laudnet.paradigms import parse_granularity as parse_granularity
