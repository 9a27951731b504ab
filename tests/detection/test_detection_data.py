"""Detection data: the COCO reader (boxes, polygons, RLE, crowd flags, empty images, every bad input named) and
fashion-canvas-det (deterministic, any aspect ratio, masks and tight boxes, COCO export read back)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from laudnet.data.folder import BadImageError
from laudnet.detection import CocoDetection, FashionCanvasDetection, collate_detection, fashion_canvas_det

# pycocotools 2.0 decoding masks under numpy 2 (its own code, harmless)
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def _rle(mask: np.ndarray, compressed: bool = True) -> dict:
    if compressed:
        rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
    flat = mask.astype(np.uint8).flatten(order="F")  # uncompressed RLE: run lengths, column-major, from a 0 run
    counts, value, run = [], 0, 0
    for v in flat:
        if v != value:
            counts.append(run)
            value, run = v, 0
        run += 1
    counts.append(run)
    return {"size": list(mask.shape), "counts": counts}


def _write_coco(root, annotations=None, images=None):
    """A folder of three real images (two PNG, one JPEG) and its instances JSON."""
    folder = root / "images"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name, (h, w) in {"a.png": (40, 60), "b.png": (30, 30), "c.jpg": (48, 32)}.items():
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / name)
    blob = np.zeros((40, 60), bool)
    blob[5:15, 30:50] = True  # a 10×20 region
    crowd = np.zeros((40, 60), bool)
    crowd[20:40, 0:30] = True
    data = {
        "images": images or [
            {"id": 1, "file_name": "a.png", "height": 40, "width": 60},
            {"id": 2, "file_name": "b.png", "height": 30, "width": 30},  # no annotations
            {"id": 7, "file_name": "c.jpg", "height": 48, "width": 32},
        ],
        "categories": [{"id": 1, "name": "square"}, {"id": 3, "name": "blob"}],
        "annotations": annotations if annotations is not None else [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 4, 10, 8], "area": 80, "iscrowd": 0,
             "segmentation": [[2, 4, 12, 4, 12, 12, 2, 12]]},  # polygon
            {"id": 2, "image_id": 1, "category_id": 3, "bbox": [30, 5, 20, 10], "area": 200, "iscrowd": 0,
             "segmentation": _rle(blob)},  # compressed RLE
            {"id": 3, "image_id": 1, "category_id": 3, "bbox": [0, 20, 30, 20], "area": 600, "iscrowd": 1,
             "segmentation": _rle(crowd, compressed=False)},  # a crowd region, uncompressed RLE
            {"id": 4, "image_id": 7, "category_id": 1, "bbox": [10, 10, 0, 5], "area": 0, "iscrowd": 0,
             "segmentation": [[10, 10, 10, 15, 10, 15]]},  # empty box: left out of the target
            {"id": 5, "image_id": 7, "category_id": 3, "bbox": [20, 30, 20, 30], "area": 300, "iscrowd": 0,
             "segmentation": [[20, 30, 40, 30, 40, 60, 20, 60]]},  # crosses the border: clipped to 12×18
        ],
    }
    path = root / "instances.json"
    path.write_text(json.dumps(data))
    return folder, path


def test_coco_targets(tmp_path):
    folder, ann = _write_coco(tmp_path)
    ds = CocoDetection(folder, ann)
    assert len(ds) == 3 and ds.ids == [1, 2, 7] and ds.num_classes == 4
    image, target = ds[0]
    assert image.shape == (3, 40, 60) and image.dtype == torch.float32 and 0 <= image.min() <= image.max() <= 1
    torch.testing.assert_close(target["boxes"], torch.tensor([[2.0, 4, 12, 12], [30, 5, 50, 15]]))
    assert target["labels"].tolist() == [1, 3] and target["iscrowd"].tolist() == [0, 0] and target["image_id"] == 1
    assert target["masks"].shape == (2, 40, 60) and target["masks"].dtype == torch.uint8
    assert target["masks"][1].sum() == 200 and target["masks"][1, 5:15, 30:50].all()  # RLE decoded
    assert 70 <= target["masks"][0].sum() <= 120 and target["masks"][0, 6:11, 4:11].all()  # the polygon filled
    _, empty = ds[1]  # an image without annotations: an empty target of the right shapes
    assert empty["boxes"].shape == (0, 4) and empty["labels"].shape == (0,) and empty["masks"].shape == (0, 30, 30)
    image, target = ds[2]  # the JPEG: the empty box is left out, the other is clipped to the image
    assert image.shape == (3, 48, 32)
    torch.testing.assert_close(target["boxes"], torch.tensor([[20.0, 30, 32, 48]]))
    crowd = CocoDetection(folder, ann, keep_crowd=True).target(1)
    assert crowd["iscrowd"].tolist() == [0, 0, 1] and crowd["masks"][2].sum() == 600  # uncompressed RLE decoded
    picked = CocoDetection(folder, ann, image_ids=[7, 1], masks=False)
    assert [t["image_id"] for _, t in [picked[0], picked[1]]] == [7, 1] and "masks" not in picked[0][1]


def test_coco_bad_input(tmp_path):
    folder, ann = _write_coco(tmp_path)
    with pytest.raises(ValueError, match=r"^unknown image id\(s\) 5: not in .*instances.json \(3 images\)$"):
        CocoDetection(folder, ann, image_ids=[1, 5])
    with pytest.raises(ValueError, match=r"^unknown image id 9: not in"):
        CocoDetection(folder, ann).target(9)
    for bbox in ([1, 2, -3, 4], [1, 2, 3], [1, 2, "x", 4], None):
        bad = [{"id": 11, "image_id": 1, "category_id": 1, "bbox": bbox, "segmentation": [[0, 0, 1, 0, 1, 1]]}]
        _, path = _write_coco(tmp_path / "bad", annotations=bad)
        with pytest.raises(ValueError, match=r"annotation 11 of image 1 has a malformed bbox"):
            CocoDetection(folder, path)
    _, path = _write_coco(tmp_path / "orphan", annotations=[{"id": 12, "image_id": 99, "category_id": 1,
                                                             "bbox": [0, 0, 1, 1]}])
    with pytest.raises(ValueError, match="annotation 12 refers to unknown image id 99"):
        CocoDetection(folder, path)
    _, path = _write_coco(tmp_path / "boxes", annotations=[{"id": 13, "image_id": 1, "category_id": 1,
                                                            "bbox": [0, 0, 4, 4]}])
    with pytest.raises(ValueError, match="annotation 13 of image 1 has no segmentation; pass masks=False"):
        CocoDetection(folder, path)
    assert len(CocoDetection(folder, path, masks=False)[0][1]["boxes"]) == 1
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"^image folder .*empty holds no images"):
        CocoDetection(tmp_path / "empty", ann)
    with pytest.raises(FileNotFoundError, match=r"^image folder .*nowhere does not exist"):
        CocoDetection(tmp_path / "nowhere", ann)
    (folder / "b.png").rename(folder / "moved.png")
    with pytest.raises(FileNotFoundError, match=r"^1 of the 3 images of .*instances.json are missing from .* \(first"):
        CocoDetection(folder, ann)
    (folder / "moved.png").rename(folder / "b.png")
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"^annotation file .*broken.json is not valid JSON"):
        CocoDetection(folder, tmp_path / "broken.json")
    with pytest.raises(ValueError, match="on_bad_image must be one of skip, error"):
        CocoDetection(folder, ann, on_bad_image="ignore")


def test_coco_undecodable_image_skip_or_error(tmp_path):
    folder, ann = _write_coco(tmp_path)
    (folder / "c.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")
    with pytest.raises(BadImageError, match=r"^unreadable image .*c.jpg \(.*\); .*--on-bad-image skip$"):
        CocoDetection(folder, ann, on_bad_image="error")[2]
    ds = CocoDetection(folder, ann, on_bad_image="skip")
    with pytest.warns(UserWarning, match=r"skipping unreadable image .*c.jpg"):
        assert ds[2] is None
    assert ds.bad_images == 1
    images, targets = collate_detection([ds[0], None])
    assert len(images) == len(targets) == 1
    with pytest.raises(ValueError, match="all 2 images of a batch are unreadable"):
        collate_detection([None, None])


def test_fashion_canvas_det(fashion_root):
    ds = fashion_canvas_det(fashion_root, "train", height=48, width=80, num_samples=6, items_range=(2, 3))
    again = fashion_canvas_det(fashion_root, "train", height=48, width=80, num_samples=6, items_range=(2, 3))
    other = fashion_canvas_det(fashion_root, "train", height=48, width=80, num_samples=6, items_range=(2, 3), seed=1)
    counts = []
    for i in range(len(ds)):
        image, target = ds[i]
        assert image.shape == (3, 48, 80) and 0 <= image.min() <= image.max() <= 1
        torch.testing.assert_close(image, again[i][0], rtol=0, atol=0)  # a function of (seed, split, index)
        assert target["image_id"] == i + 1 and set(target["labels"].tolist()) <= set(range(1, 11))
        for box, mask in zip(target["boxes"].long().tolist(), target["masks"], strict=True):
            ys, xs = torch.nonzero(mask, as_tuple=True)  # the box is the mask's tight box
            assert box == [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]
            assert torch.all(image[0][mask.bool()] > 0.1)  # the mask is the item's own bright pixels
        torch.testing.assert_close(target["area"], target["masks"].flatten(1).sum(1).float())
        counts.append(len(target["boxes"]))
    assert 2 <= max(counts) <= 3 and min(counts) >= 1
    assert any(not torch.equal(ds[i][0], other[i][0]) for i in range(3))
    assert not torch.equal(ds[0][0], fashion_canvas_det(fashion_root, "val", height=48, width=80)[0][0])
    with pytest.raises(ValueError, match="canvas height and width must be at least 16"):
        FashionCanvasDetection(np.zeros((2, 28, 28), np.uint8), np.zeros(2), height=8)


def test_fashion_canvas_det_to_coco_and_back(fashion_root, tmp_path):
    ds = fashion_canvas_det(fashion_root, "val", height=64, width=96, num_samples=3)
    coco = ds.to_coco()
    assert [im["id"] for im in coco["images"]] == [1, 2, 3]
    assert len(coco["annotations"]) == sum(len(ds[i][1]["boxes"]) for i in range(3))
    assert [c["id"] for c in coco["categories"]] == list(range(1, 11))
    folder, path = ds.export(tmp_path / "export")
    read = CocoDetection(folder, path)
    for i in range(3):
        image, target = read[i]
        ref_image, ref = ds[i]
        assert (image - ref_image).abs().max() <= 0.5 / 255 + 1e-6  # PNG holds 8 bits
        for key in ("boxes", "labels", "masks", "area"):
            torch.testing.assert_close(target[key], ref[key], rtol=0, atol=0)
