"""torchvision's detectors and Mask R-CNN on LAUD backbones (LAUDNet, Han et al., TPAMI 2024, dense prediction).

`create_detector` builds torchvision's own ``FasterRCNN``, ``RetinaNet`` or ``MaskRCNN`` with `laud_fpn_backbone` in
place of the ResNet-FPN, laid out as torchvision's ``*_resnet50_fpn`` builders: Faster and Mask R-CNN take stages 1-4
plus a max-pooled level; RetinaNet takes stages 2-4 plus P6/P7 computed from P5 (``retinanet_resnet50_fpn``). The
detector's transform records each image's size inside the padded batch, so `backbone_masks` gives every image its
own masks.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from torch import Tensor, nn
from torchvision.models.detection import FasterRCNN, MaskRCNN, RetinaNet
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from laudnet.detection.backbone import DETECTION_TEMPERATURE, check_backbone_name, image_masks, laud_fpn_backbone

DETECTORS: dict[str, type[nn.Module]] = {"fasterrcnn": FasterRCNN, "retinanet": RetinaNet, "maskrcnn": MaskRCNN}


def list_detectors() -> list[str]:
    """The detector kinds `create_detector` builds."""
    return list(DETECTORS)


def _record_image_sizes(transform: nn.Module, args, output) -> None:
    # Forward hook of GeneralizedRCNNTransform: output = (ImageList, targets).
    images = output[0]
    transform.last_image_sizes = [tuple(int(v) for v in s) for s in images.image_sizes]


def create_detector(
    kind: str,
    backbone: str = "laud_resnet50",
    paradigm: str = "spatial",
    granularity: int | str | Sequence[int] | None = None,
    *,
    target: float | None = None,
    num_classes: int = 91,
    weights_backbone: Mapping[str, Tensor] | str | os.PathLike | None = None,
    trainable_layers: int = 3,
    temperature: float = DETECTION_TEMPERATURE,
    frozen_bn: bool = True,
    freeze_masker_norm: bool = True,
    masker_norm: bool = True,
    **detector_kwargs,
) -> nn.Module:
    """A torchvision detector on a LAUD backbone.

    Args:
        kind: ``fasterrcnn``, ``retinanet`` or ``maskrcnn``.
        backbone: a LAUD CNN (`laudnet.detection.BACKBONES`).
        paradigm: ``static``, ``spatial``, ``channel`` or ``layer``.
        granularity: per-stage S or G (None: the paradigm's default).
        target: the backbone's target FLOPs ratio t, kept as ``model.flops_target`` for `detection_step`.
        num_classes: classes including the background (label 0), torchvision's convention (91 for COCO's ids).
        weights_backbone: classification weights of the backbone: a laudnet checkpoint, a torchvision weights file
            or a state dict (see `laud_fpn_backbone`).
        trainable_layers: backbone stages trained, counted from the last (3: stem and stage 1 frozen).
        temperature, frozen_bn, freeze_masker_norm, masker_norm: see `laud_fpn_backbone`.
        **detector_kwargs: passed to the torchvision class (``min_size``, ``max_size``, ``box_detections_per_img``,
            ``rpn_batch_size_per_image``, ...).

    The model records its architecture in ``model.model_args`` (these arguments without ``weights_backbone`` and
    ``target``, the granularity resolved), which `laudnet train` checkpoints store and ``create_detector(**model_args)``
    rebuilds from; the target is a training setting (a checkpoint keeps it in its ``config``).

    Raises:
        ValueError: an unknown detector kind or backbone (one line listing the choices), a bad paradigm or
            granularity, a target outside (0, 1], or backbone weights that do not fit.
    """
    if kind not in DETECTORS:
        raise ValueError(f"unknown detector {kind!r}; choose from: {', '.join(DETECTORS)}")
    check_backbone_name(backbone)
    if target is not None and not 0 < target <= 1:
        raise ValueError(f"target FLOPs ratio must be in (0, 1], got {target}")
    if kind == "retinanet":
        layout = {"returned_layers": (2, 3, 4), "extra_blocks": LastLevelP6P7(256, 256)}
    else:
        layout = {"returned_layers": (1, 2, 3, 4)}
    fpn = laud_fpn_backbone(
        backbone,
        paradigm=paradigm,
        granularity=granularity,
        weights=weights_backbone,
        trainable_layers=trainable_layers,
        frozen_bn=frozen_bn,
        freeze_masker_norm=freeze_masker_norm,
        temperature=temperature,
        masker_norm=masker_norm,
        **layout,
    )
    model = DETECTORS[kind](fpn, num_classes=num_classes, **detector_kwargs)
    body = fpn.body
    model.model_args = dict(
        kind=kind, backbone=backbone, paradigm=paradigm,
        granularity=None if body.granularity[0] is None else list(body.granularity), num_classes=num_classes,
        trainable_layers=trainable_layers, temperature=temperature, frozen_bn=frozen_bn,
        freeze_masker_norm=freeze_masker_norm, masker_norm=masker_norm, **detector_kwargs,
    )
    model.flops_target = target
    model.backbone_name = backbone
    model.transform.register_forward_hook(_record_image_sizes)
    return model


def backbone_masks(detector: nn.Module) -> list[dict[str, dict[str, Tensor]]]:
    """The backbone masks of the detector's last forward, one dict per image (``{block: {kind: mask}}``), each
    cropped to the image's extent inside the padded batch (see `laudnet.detection.backbone.image_masks`)."""
    sizes = getattr(detector.transform, "last_image_sizes", None)
    return image_masks(detector.backbone.body, sizes)
