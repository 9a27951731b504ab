"""COCO evaluation: AP against hand-computed values, and the evaluator over both datasets with an oracle and a real
(untrained) Mask R-CNN."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from detection_sizes import small_kwargs
from pycocotools import mask as mask_utils
from torch import nn

from laudnet.detection import CocoDetection, coco_eval, create_detector, evaluate_detector
from laudnet.detection.data import coco_from_dict

# pycocotools 2.0 decoding masks under numpy 2 (its own code, harmless)
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def _gt(boxes):
    """One 100×100 image holding ``boxes`` ([x, y, w, h]) of category 1, with their rectangle masks."""
    anns = []
    for k, (x, y, w, h) in enumerate(boxes, start=1):
        mask = np.zeros((100, 100), np.uint8)
        mask[y:y + h, x:x + w] = 1
        rle = mask_utils.encode(np.asfortranarray(mask))
        anns.append({"id": k, "image_id": 1, "category_id": 1, "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0,
                     "segmentation": {"size": rle["size"], "counts": rle["counts"].decode("ascii")}})
    return coco_from_dict({"images": [{"id": 1, "width": 100, "height": 100, "file_name": "x.png"}],
                           "annotations": anns, "categories": [{"id": 1, "name": "thing"}]})


def _det(box, score, gt=None):
    det = {"image_id": 1, "category_id": 1, "bbox": list(box), "score": score}
    if gt is not None:
        det["segmentation"] = gt["segmentation"]
    return det


def test_exact_predictions_give_ap_one():
    gt = _gt([(10, 10, 40, 40)])  # area 1600: a medium object (32² < a < 96²)
    ann = gt.anns[1]
    for iou_type in ("bbox", "segm"):
        result = coco_eval(gt, [_det(ann["bbox"], 0.9, ann)], iou_type)
        assert result == pytest.approx({"AP": 1.0, "AP50": 1.0, "AP75": 1.0, "AP_S": None, "AP_M": 1.0, "AP_L": None})


def test_one_false_positive_between_two_hits():
    # Ranked by score: hit (P 1, R 1/2), false positive (P 1/2, R 1/2), hit (P 2/3, R 1). COCO interpolates precision
    # as the best at any recall >= r over 101 recall points: r in [0, 0.5] (51 points) -> 1, r in (0.5, 1] (50) -> 2/3.
    gt = _gt([(10, 10, 40, 40), (55, 55, 40, 40)])
    dets = [_det((10, 10, 40, 40), 0.9), _det((0, 60, 20, 20), 0.8), _det((55, 55, 40, 40), 0.7)]
    expected = (51 * 1.0 + 50 * 2 / 3) / 101  # 0.8350
    result = coco_eval(gt, dets, "bbox")
    assert result["AP"] == pytest.approx(expected) and result["AP50"] == pytest.approx(expected)
    assert result["AP75"] == pytest.approx(expected) and result["AP_S"] is None
    assert result["AP_M"] == pytest.approx(1.0)  # the false positive (20×20) is small: outside the medium range
    # The false positive ranked last costs nothing: every hit comes first (precision 1 up to recall 1).
    dets[1]["score"] = 0.1
    assert coco_eval(gt, dets, "bbox")["AP"] == pytest.approx(1.0)
    assert coco_eval(gt, [], "bbox")["AP"] == 0.0  # no detection at all
    with pytest.raises(ValueError, match="unknown IoU type 'keypoints'"):
        coco_eval(gt, dets, "keypoints")


class Oracle(nn.Module):
    """A 'detector' that outputs each image's ground truth with score 1 (masks as probabilities)."""

    def __init__(self, dataset):
        super().__init__()
        self.dataset, self.next = dataset, 0
        self.roi_heads = nn.Module()
        self.roi_heads.has_mask = lambda: True

    def forward(self, images):
        out = []
        for _ in images:
            _, target = self.dataset[self.next]
            self.next += 1
            scores = torch.ones(len(target["boxes"]))
            out.append({"boxes": target["boxes"], "labels": target["labels"], "scores": scores,
                        "masks": target["masks"][:, None].float()})
        return out


def test_evaluator_on_both_datasets_with_an_oracle(fashion_root, tmp_path):
    from laudnet.detection import fashion_canvas_det

    ds = fashion_canvas_det(fashion_root, "val", height=64, width=96, num_samples=3)
    result = evaluate_detector(Oracle(ds), ds, batch_size=2)
    assert result["images"] == 3 and result["backbone"] is None
    for iou_type in ("bbox", "segm"):
        assert result[iou_type]["AP"] == pytest.approx(1.0) and result[iou_type]["AP50"] == pytest.approx(1.0)
    folder, path = ds.export(tmp_path / "coco")
    coco = CocoDetection(folder, path)
    result = evaluate_detector(Oracle(coco), coco, max_images=2)
    assert result["images"] == 2 and result["segm"]["AP"] == pytest.approx(1.0)


def test_evaluator_runs_a_mask_rcnn(canvases):
    model = create_detector("maskrcnn", "laud_resnet50", "spatial", num_classes=11, **small_kwargs("maskrcnn"))
    result = evaluate_detector(model, canvases, batch_size=2)
    assert set(result) == {"bbox", "segm", "images", "backbone", "block_names", "block_rates", "adaptivity"}
    assert result["images"] == 2
    assert all(v is None or 0 <= v <= 1 for t in ("bbox", "segm") for v in result[t].values())
    backbone = result["backbone"]
    assert backbone["gmacs_dense"] == pytest.approx(model.backbone.body.dense_flops((64, 96)) / 1e9)
    assert 0 < backbone["flops_ratio"] < 1.05
    # The backbone's blocks and decisions: 16 bottlenecks; the lift of its spatial masks on the objects' boxes.
    assert len(result["block_names"]) == len(result["block_rates"]) == 16
    adaptivity = result["adaptivity"]
    assert adaptivity.num_images == 2 and adaptivity.paradigm == "spatial" and len(adaptivity.blocks) == 16
    assert [s.stage for s in adaptivity.stages] == ["s1", "s2", "s3", "s4"]
    assert all(s.cells_in > 0 for s in adaptivity.stages)
    with pytest.raises(ValueError, match=r"segm evaluation needs a model with a mask head"):
        evaluate_detector(create_detector("retinanet", num_classes=11, **small_kwargs("retinanet")), canvases,
                          iou_types=["segm"])
