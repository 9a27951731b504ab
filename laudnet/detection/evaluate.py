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
    dataset: Dataset | DataLoader,
    *,
    iou_types: Sequence[str] | None = None,
    batch_size: int = 2,
    device: str | torch.device = "cpu",
    max_images: int | None = None,
    num_workers: int = 0,
    mask_threshold: float = 0.5,
    amp: bool = False,
    progress: bool = False,
    adaptivity: bool = True,
) -> dict[str, Any]:
    """Run ``model`` (eval mode) over ``dataset`` and score it with COCOeval.

    Args:
        model: a torchvision detector (from `create_detector` for the backbone FLOPs, rates and adaptivity).
        dataset: gives ``(image, target)`` (`CocoDetection`, `FashionCanvasDetection`, ...); or a DataLoader of
            `collate_detection` batches (``laudnet.data.build_loader(..., collate_fn=collate_detection)``, sharded
            under DDP): then every process runs its batches, the results are gathered (an image that two shards
            hold is scored once) and every process returns the numbers of the whole set (a collective).
        iou_types: ``bbox`` and/or ``segm`` (default: both for a model with a mask head, else ``bbox``).
        batch_size: images per forward (a dataset only).
        device: where the model runs.
        max_images: evaluate only the first images (a dataset only).
        num_workers: DataLoader workers (a dataset only).
        mask_threshold: binarisation of predicted mask probabilities.
        amp: bf16 autocast on CUDA (the predicted boxes then have 8 significant bits: 2 px steps from 256 px on;
            ``laudnet train`` and ``laudnet eval`` evaluate in fp32).
        progress: a tqdm bar (on rank 0).
        adaptivity: measure how the backbone's decisions depend on the image (`laudnet.train.adaptivity`), with the
            localisation lift of spatial masks on the ground-truth boxes.

    Returns:
        ``{iou_type: {AP, AP50, AP75, AP_S, AP_M, AP_L}, "images": n, "backbone": {"gmacs_dense", "gmacs_dynamic",
        "flops_ratio"}, "block_names": [...], "block_rates": [...], "adaptivity": AdaptivityResult | None}``
        (``backbone`` None and the block lists empty for a backbone that is not a LAUD body; ``adaptivity`` None for
        a static one). FLOPs are means over the images (each at its resized size, in its padded batch); rates and
        adaptivity over the images run (an image on two shards counts twice, as in `laudnet.train.evaluate`).
    """
    from laudnet.train import distributed as dist_utils
    from laudnet.train.adaptivity import AdaptivityMeter, patch_sizes
    from laudnet.train.evaluation import autocast, progress_bar

    has_masks = getattr(getattr(model, "roi_heads", None), "has_mask", lambda: False)()
    iou_types = tuple(iou_types) if iou_types is not None else (("bbox", "segm") if has_masks else ("bbox",))
    for t in iou_types:
        if t not in IOU_TYPES:
            raise ValueError(f"unknown IoU type {t!r}; choose from: {', '.join(IOU_TYPES)}")
    if "segm" in iou_types and not has_masks:
        raise ValueError("segm evaluation needs a model with a mask head (maskrcnn)")
    if isinstance(dataset, DataLoader):
        loader, base = dataset, dataset.dataset
    else:
        base = dataset
        if max_images is not None:
            dataset = Subset(dataset, range(min(max_images, len(dataset))))
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                            collate_fn=collate_detection)
    own_gt = getattr(base, "coco", None)
    categories = list(getattr(base, "categories", None) or [])
    device = torch.device(device)
    model.eval().to(device)
    body = getattr(getattr(model, "backbone", None), "body", None)
    laud = body is not None and hasattr(body, "dynamic_flops")
    # per image: its detections, ground truth (None with a COCO index) and backbone MACs (dynamic, dense) or None
    records: dict[int, tuple[list[dict[str, Any]], dict[str, Any] | None, tuple[float, float] | None]] = {}
    runs = 0  # images run (for the rates)
    rate_sums: Tensor | None = None
    names: list[str] = []
    meter = AdaptivityMeter(1, patch_sizes(body)) if laud and adaptivity else None
    show = progress and dist_utils.is_main_process()
    for images, targets in progress_bar(loader, len(loader), "validate", show):
        with autocast(device, amp):
            outputs = model([im.to(device, non_blocking=True) for im in images])
        ids = [int(t["image_id"]) for t in targets]
        detections = predictions_to_coco(outputs, ids, mask_threshold)
        macs = [None] * len(images)
        if laud:
            per_image, dense = body.dynamic_flops()
            macs = [(float(v), float(dense)) for v in per_image.tolist()]
        for image, target, image_id, mac in zip(images, targets, ids, macs, strict=True):
            gt = None if own_gt is not None else targets_to_coco([(target, tuple(image.shape[-2:]))], categories)
            records.setdefault(image_id, ([d for d in detections if d["image_id"] == image_id], gt, mac))
        if not laud:
            continue
        runs += len(images)
        infos = body.collect_info()
        names = [i.name for i in infos]
        rates = torch.stack([i.flops.float().sum() / i.dense_flops for i in infos]).double().cpu()
        rate_sums = rates if rate_sums is None else rate_sums + rates
        if meter is not None:
            sizes = getattr(model.transform, "last_image_sizes", None) or [tuple(im.shape[-2:]) for im in images]
            boxes = [_scaled_boxes(t["boxes"], im.shape[-2:], hw) for im, t, hw in zip(images, targets, sizes,
                                                                                      strict=True)]
            meter.update(infos, torch.zeros(len(images), dtype=torch.long), boxes, image_hw=body._last_hw,
                         image_sizes=sizes)
    records, runs, rate_sums = _gathered(records, runs, rate_sums, meter, device)
    if not records:
        raise ValueError("no image to evaluate (every image was skipped or the dataset is empty)")
    image_ids = sorted(records)
    detections = [d for i in image_ids for d in records[i][0]]
    coco_gt = own_gt if own_gt is not None else coco_from_dict(_merge([records[i][1] for i in image_ids], categories))
    result: dict[str, Any] = {t: coco_eval(coco_gt, [d for d in detections if t == "bbox" or "segmentation" in d],
                                           t, image_ids) for t in iou_types}
    result["images"] = len(image_ids)
    macs = [records[i][2] for i in image_ids if records[i][2] is not None]
    dynamic, dense = sum(m[0] for m in macs), sum(m[1] for m in macs)
    result["backbone"] = None if not dense else {
        "gmacs_dense": dense / len(macs) / 1e9,
        "gmacs_dynamic": dynamic / len(macs) / 1e9,
        "flops_ratio": dynamic / dense,
    }
    result["block_names"] = names
    result["block_rates"] = [] if rate_sums is None else [float(r) / runs for r in rate_sums]
    result["adaptivity"] = None if meter is None else meter.result()
    return result


def _scaled_boxes(boxes: Tensor, image_hw: Sequence[int], resized_hw: Sequence[int]) -> Tensor:
    """``boxes`` (xyxy, pixels of the image as read) in pixels of the image as the detector's transform resized it."""
    sy, sx = resized_hw[0] / image_hw[0], resized_hw[1] / image_hw[1]
    return boxes.detach().cpu().to(torch.float64) * torch.tensor([sx, sy, sx, sy], dtype=torch.float64)


def _gathered(records: dict, runs: int, rate_sums: Tensor | None, meter, device: torch.device):
    """The records of every process (the first kept where shards overlap), the images run and the rate sums over
    the processes, and the adaptivity counts reduced in place (collective under DDP; as it is without)."""
    from laudnet.train import distributed as dist_utils

    if not dist_utils.is_dist():
        return records, runs, rate_sums
    parts: list[Any] = [None] * dist_utils.get_world_size()
    torch.distributed.all_gather_object(parts, list(records.items()))
    merged: dict = {}
    for part in parts:
        for image_id, record in part:
            merged.setdefault(image_id, record)
    runs = int(dist_utils.all_reduce_sum(torch.tensor([float(runs)], device=device)).item())
    if rate_sums is not None:  # the same model on every rank: all or none hold rates
        rate_sums = dist_utils.all_reduce_sum(rate_sums.to(device)).cpu()
    if meter is not None and meter.measured:
        meter.all_reduce(dist_utils.all_reduce_sum)
    return merged, runs, rate_sums
