"""LAUD backbones in torchvision's detection and instance-segmentation models (Faster R-CNN, RetinaNet, Mask R-CNN).

- `laud_fpn_backbone`: a LAUD CNN (any paradigm) with an FPN, frozen BN and frozen stem + stage 1.
- `create_detector`: torchvision's detector classes on that backbone.
- `detection_step`: the detector's losses plus λ·(F_dyn / F_dense − t)² of the backbone.
- `deploy_detector`, `deploy_backbone`: the backbone body in the inference engine's form (`laudnet.deploy`) inside
  the detector, FPN and heads as they are.
- `CocoDetection`, `fashion_canvas_det`: COCO-format data and the synthetic ``fashion-canvas-det``.
- `evaluate_detector`, `coco_eval`: COCO box and mask AP (pycocotools; ``pip install 'laudnet[detection]'``).
"""

from laudnet.detection.backbone import BACKBONES as BACKBONES
from laudnet.detection.backbone import LaudBackboneBody as LaudBackboneBody
from laudnet.detection.backbone import LaudBackboneWithFPN as LaudBackboneWithFPN
from laudnet.detection.backbone import freeze_batch_norm as freeze_batch_norm
from laudnet.detection.backbone import image_masks as image_masks
from laudnet.detection.backbone import laud_fpn_backbone as laud_fpn_backbone
from laudnet.detection.data import CocoDetection as CocoDetection
from laudnet.detection.data import FashionCanvasDetection as FashionCanvasDetection
from laudnet.detection.data import collate_detection as collate_detection
from laudnet.detection.data import fashion_canvas_det as fashion_canvas_det
from laudnet.detection.data import targets_to_coco as targets_to_coco
from laudnet.detection.deploy import AutocastModule as AutocastModule
from laudnet.detection.deploy import DeployedBody as DeployedBody
from laudnet.detection.deploy import autocast_heads as autocast_heads
from laudnet.detection.deploy import body_classifier as body_classifier
from laudnet.detection.deploy import deploy_backbone as deploy_backbone
from laudnet.detection.deploy import deploy_detector as deploy_detector
from laudnet.detection.deploy import head_modules as head_modules
from laudnet.detection.evaluate import coco_eval as coco_eval
from laudnet.detection.evaluate import evaluate_detector as evaluate_detector
from laudnet.detection.losses import backbone_flops_loss as backbone_flops_loss
from laudnet.detection.losses import detection_step as detection_step
from laudnet.detection.models import DETECTORS as DETECTORS
from laudnet.detection.models import backbone_masks as backbone_masks
from laudnet.detection.models import create_detector as create_detector
from laudnet.detection.models import list_detectors as list_detectors
