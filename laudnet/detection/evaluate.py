"""COCO evaluation of detectors with pycocotools' COCOeval: box and mask AP, AP50, AP75, AP_S, AP_M, AP_L.

One evaluator for every dataset: a `laudnet.detection.data.CocoDetection` brings its JSON's index (crowd regions
included); any other dataset's ground truth is written from the targets it returns (`targets_to_coco`), which is
what ``fashion-canvas-det``'s `to_coco` gives. The backbone's FLOPs per image are averaged over the evaluated images.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset

from laudnet.detection.data import _pycocotools, coco_from_dict, collate_detection, targets_to_coco

# COCOeval's first six summary numbers, in its order (maxDets 100; areas small < 32², medium < 96², large).
AP_NAMES = ("AP", "AP50", "AP75", "AP_S", "AP_M", "AP_L")
IOU_TYPES = ("bbox", "segm")


def coco_eval(coco_gt, detections: list[dict[str, Any]], iou_type: str = "bbox",
              image_ids: Sequence[int] | None = None) -> dict[str, float | None]:
    """AP numbers of ``detections`` (COCO results: ``image_id``, ``category_id``, ``score``, and ``bbox`` [x, y, w, h]
    or ``segmentation`` RLE) against the ground truth ``coco_gt`` (a pycocotools COCO).

    Args:
        coco_gt: the ground-truth index.
        detections: the results (may be empty: AP 0 where there are objects).
        iou_type: ``bbox`` or ``segm``.
        image_ids: the images evaluated (default: every image of ``coco_gt``).

    Returns:
        ``{"AP", "AP50", "AP75", "AP_S", "AP_M", "AP_L"}`` in [0, 1]; None where undefined (no object of that size).
    """
    from pycocotools.cocoeval import COCOeval

    if iou_type not in IOU_TYPES:
        raise ValueError(f"unknown IoU type {iou_type!r}; choose from: {', '.join(IOU_TYPES)}")
    if iou_type == "segm" and any("segmentation" not in d for d in detections):
        raise ValueError("segm evaluation needs a 'segmentation' in every detection")
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        if detections:
            # loadRes takes a result with a 'bbox' as a box result (its segmentation becomes the box): keep one kind.
            drop = "segmentation" if iou_type == "bbox" else "bbox"
            coco_dt = coco_gt.loadRes([{k: v for k, v in d.items() if k != drop} for d in detections])
        else:
            coco_dt = coco_from_dict({"images": coco_gt.dataset["images"], "annotations": [],
                                      "categories": coco_gt.dataset["categories"]})
        evaluator = COCOeval(coco_gt, coco_dt, iou_type)
        if image_ids is not None:
            evaluator.params.imgIds = sorted(int(i) for i in image_ids)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {name: (float(v) if v >= 0 else None) for name, v in zip(AP_NAMES, evaluator.stats[:6], strict=True)}


def predictions_to_coco(outputs: Sequence[dict[str, Tensor]], image_ids: Sequence[int],
                        mask_threshold: float = 0.5) -> list[dict[str, Any]]:
    """COCO results from torchvision detector outputs (``boxes`` xyxy, ``scores``, ``labels``, optional ``masks``
    (N, 1, H, W) probabilities, binarised at ``mask_threshold``)."""
    _, mask_utils = _pycocotools()
    results = []
    for out, image_id in zip(outputs, image_ids, strict=True):
        boxes = out["boxes"].detach().cpu().float()
        boxes[:, 2:] -= boxes[:, :2]
        masks = out.get("masks")
        rles = None
        if masks is not None:
            binary = (masks.detach().cpu()[:, 0] > mask_threshold).numpy().astype(np.uint8)
            rles = [mask_utils.encode(np.asfortranarray(m)) for m in binary]
        for k, (box, score, label) in enumerate(zip(boxes.tolist(), out["scores"].tolist(), out["labels"].tolist(),
                                                    strict=True)):
            det = {"image_id": int(image_id), "category_id": int(label), "bbox": box, "score": float(score)}
            if rles is not None:
                det["segmentation"] = {"size": rles[k]["size"], "counts": rles[k]["counts"].decode("ascii")}
            results.append(det)
    return results


def _merge(parts: list[dict[str, Any]], categories: list[dict[str, Any]]) -> dict[str, Any]:
    images, annotations = [], []
    for part in parts:
        images += part["images"]
        for ann in part["annotations"]:
            annotations.append({**ann, "id": len(annotations) + 1})
    return {"images": images, "annotations": annotations, "categories": categories}


@torch.no_grad()
def evaluate_detector(
    model: nn.Module,
    dataset: Dataset,
    *,
    iou_types: Sequence[str] | None = None,
    batch_size: int = 2,
    device: str | torch.device = "cpu",
    max_images: int | None = None,
    num_workers: int = 0,
    mask_threshold: float = 0.5,
) -> dict[str, Any]:
    """Run ``model`` (eval mode) over ``dataset`` and score it with COCOeval.

    Args:
        model: a torchvision detector (from `create_detector` for the backbone FLOPs).
        dataset: gives ``(image, target)`` (`CocoDetection`, `FashionCanvasDetection`, ...).
        iou_types: ``bbox`` and/or ``segm`` (default: both for a model with a mask head, else ``bbox``).
        batch_size: images per forward.
        device: where the model runs.
        max_images: evaluate only the first images.
        num_workers: DataLoader workers.
        mask_threshold: binarisation of predicted mask probabilities.

    Returns:
        ``{iou_type: {AP, AP50, AP75, AP_S, AP_M, AP_L}, "images": n, "backbone": {"gmacs_dense", "gmacs_dynamic",
        "flops_ratio"}}`` (``backbone`` is None for a backbone that is not a LAUD body).
    """
    has_masks = getattr(getattr(model, "roi_heads", None), "has_mask", lambda: False)()
    iou_types = tuple(iou_types) if iou_types is not None else (("bbox", "segm") if has_masks else ("bbox",))
    for t in iou_types:
        if t not in IOU_TYPES:
            raise ValueError(f"unknown IoU type {t!r}; choose from: {', '.join(IOU_TYPES)}")
    if "segm" in iou_types and not has_masks:
        raise ValueError("segm evaluation needs a model with a mask head (maskrcnn)")
    own_gt = getattr(dataset, "coco", None)
    categories = list(getattr(dataset, "categories", None) or [])
    if max_images is not None:
        dataset = Subset(dataset, range(min(max_images, len(dataset))))
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=collate_detection)
    model.eval().to(device)
    body = getattr(getattr(model, "backbone", None), "body", None)
    detections, image_ids, gt_parts = [], [], []
    flops = torch.zeros(2, dtype=torch.float64)  # sums over images of dynamic and dense backbone MACs
    for images, targets in loader:
        outputs = model([im.to(device) for im in images])
        ids = [int(t["image_id"]) for t in targets]
        detections += predictions_to_coco(outputs, ids, mask_threshold)
        image_ids += ids
        if own_gt is None:
            gt_parts.append(targets_to_coco(((t, tuple(im.shape[-2:])) for im, t in zip(images, targets, strict=True)),
                                            categories))
        if body is not None and hasattr(body, "dynamic_flops"):
            per_image, dense = body.dynamic_flops()
            flops += torch.tensor([float(per_image.sum()), dense * len(images)], dtype=torch.float64)
    if not image_ids:
        raise ValueError("no image to evaluate (every image was skipped or the dataset is empty)")
    coco_gt = own_gt if own_gt is not None else coco_from_dict(_merge(gt_parts, categories))
    result: dict[str, Any] = {t: coco_eval(coco_gt, [d for d in detections if t == "bbox" or "segmentation" in d],
                                           t, image_ids) for t in iou_types}
    result["images"] = len(image_ids)
    result["backbone"] = None if not flops[1] else {
        "gmacs_dense": float(flops[1]) / len(image_ids) / 1e9,
        "gmacs_dynamic": float(flops[0]) / len(image_ids) / 1e9,
        "flops_ratio": float(flops[0] / flops[1]),
    }
    return result
