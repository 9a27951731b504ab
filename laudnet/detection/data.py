"""Detection data: a COCO-format reader and ``fashion-canvas-det``, both giving torchvision detection targets.

A sample is ``(image, target)``: ``image`` a float ``(3, H, W)`` tensor in [0, 1] (torchvision's detectors normalise
and resize it themselves), ``target`` a dict of ``boxes`` (N, 4) float32 xyxy in pixels (x1, y1 end-exclusive, COCO's
``x + w``), ``labels`` (N,) int64 category ids (0 is the background), ``masks`` (N, H, W) uint8 instance masks,
``image_id``, ``area`` (N,) and ``iscrowd`` (N,). Batches are lists (`collate_detection`), since images differ in size.

- `CocoDetection` reads an image folder and an instances JSON with pycocotools: boxes, polygon, RLE or uncompressed
  RLE masks, crowd flags (crowd regions are left out of the training targets, as torchvision's references do; the
  evaluator reads them from the JSON), and images without annotations (empty targets). Bad input is a one-line error
  naming it: an unknown image id, a malformed box, an empty or missing image folder, files missing from it, and,
  when read, an undecodable image (``on_bad_image="skip"`` warns and gives ``None``, which `collate_detection` drops;
  ``"error"`` raises, as the classification folders' ``--on-bad-image skip|error``).
- `FashionCanvasDetection` (``fashion-canvas-det``) places several Fashion-MNIST items at random scales and positions on
  a black canvas of any height and width; each item is an instance with its class, its tight box and its mask (the
  item's own pixels above a threshold). Sample ``i`` depends only on ``(seed, split, i)``. `FashionCanvasDetection.
  to_coco` writes the ground truth as a COCO dict, and `FashionCanvasDetection.export` as an image folder plus JSON that
  `CocoDetection` reads back, so one evaluator serves both.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from laudnet.data.canvas import _BOX_THRESHOLD, _SPLIT_CODES, _resize
from laudnet.data.fashion import CLASSES, load_fashion_arrays
from laudnet.data.folder import IMAGE_EXTENSIONS, BadImages

Target = dict[str, Any]


def _pycocotools():
    try:
        from pycocotools import mask as mask_utils
        from pycocotools.coco import COCO
    except ImportError:
        raise ImportError("laudnet.detection needs pycocotools: pip install 'laudnet[detection]'") from None
    return COCO, mask_utils


def coco_from_dict(dataset: dict[str, Any]):
    """A pycocotools ``COCO`` index over an in-memory COCO dict (without pycocotools' progress prints)."""
    COCO, _ = _pycocotools()
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def collate_detection(samples: list) -> tuple[list[torch.Tensor], list[Target]]:
    """``(images, targets)`` lists of the samples that are not ``None`` (unreadable images a dataset skipped).

    Raises:
        ValueError: every sample of the batch was skipped.
    """
    kept = [s for s in samples if s is not None]
    if not kept:
        raise ValueError(f"all {len(samples)} images of a batch are unreadable (see the warnings naming them)")
    images, targets = zip(*kept, strict=True)
    return list(images), list(targets)


def empty_target(image_id: int, height: int, width: int, masks: bool = True) -> Target:
    """The target of an image without objects (torchvision's detectors train on such negatives)."""
    target = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64), "image_id": image_id,
              "area": torch.zeros(0), "iscrowd": torch.zeros(0, dtype=torch.int64)}
    if masks:
        target["masks"] = torch.zeros(0, height, width, dtype=torch.uint8)
    return target


def targets_to_coco(
    samples: Iterable[tuple[Target, tuple[int, int]]],
    categories: Sequence[dict[str, Any]],
    file_names: Callable[[int], str] | None = None,
) -> dict[str, Any]:
    """A COCO instances dict from torchvision targets: ``samples`` yields ``(target, (height, width))``.

    Boxes become ``[x, y, w, h]``; with ``masks`` each annotation gets a compressed-RLE segmentation and the mask's
    area (the area COCOeval sorts into small/medium/large), else the box's area.

    Args:
        samples: targets with ``image_id``, ``boxes``, ``labels`` and optionally ``masks`` and ``iscrowd``.
        categories: COCO categories (``id``, ``name``).
        file_names: image id → file name (default ``{id:06d}.png``).
    """
    _, mask_utils = _pycocotools()
    file_names = file_names or (lambda image_id: f"{image_id:06d}.png")
    images, annotations = [], []
    for target, (height, width) in samples:
        image_id = int(target["image_id"])
        images.append({"id": image_id, "file_name": file_names(image_id), "height": int(height), "width": int(width)})
        boxes = target["boxes"].tolist()
        masks = target.get("masks")
        crowd = target.get("iscrowd", torch.zeros(len(boxes), dtype=torch.int64)).tolist()
        for k, (box, label) in enumerate(zip(boxes, target["labels"].tolist(), strict=True)):
            x0, y0, x1, y1 = box
            ann = {"id": len(annotations) + 1, "image_id": image_id, "category_id": int(label),
                   "bbox": [x0, y0, x1 - x0, y1 - y0], "iscrowd": int(crowd[k]), "area": (x1 - x0) * (y1 - y0)}
            if masks is not None:
                rle = mask_utils.encode(np.asfortranarray(masks[k].numpy().astype(np.uint8)))
                ann["area"] = float(mask_utils.area(rle))
                ann["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
            annotations.append(ann)
    return {"images": images, "annotations": annotations, "categories": [dict(c) for c in categories]}


# ------------------------------------------------------------------------------------------------------ COCO reader


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _open_rgb(path: Path) -> Any:
    from PIL import Image

    with Image.open(path) as im:
        return im.convert("RGB")


class CocoDetection(Dataset):
    """Images of a folder with their COCO instance annotations, as torchvision detection targets.

    Args:
        image_folder: the folder the ``file_name`` of each image is relative to.
        annotation_file: a COCO instances JSON (``images``, ``annotations``, ``categories``).
        image_ids: the images to use, in this order (default: every image of the JSON, sorted by id).
        masks: give instance masks (Mask R-CNN); every annotation then needs a ``segmentation``.
        keep_crowd: keep crowd annotations in the targets (default: left out, as torchvision's references do).
        on_bad_image: ``skip`` an undecodable image (a warning naming it; counted in `bad_images`; the sample is
            ``None``) or raise `laudnet.data.folder.BadImageError` naming it (``error``).
        transforms: optional ``(image, target) -> (image, target)``.

    Attributes:
        coco: the pycocotools index of the JSON (the evaluation ground truth, crowd regions included).
        ids: the image ids, in dataset order.
        num_classes: largest category id + 1 (the detector's ``num_classes``; label 0 is the background).
    """

    def __init__(
        self,
        image_folder: str | os.PathLike,
        annotation_file: str | os.PathLike,
        *,
        image_ids: Sequence[int] | None = None,
        masks: bool = True,
        keep_crowd: bool = False,
        on_bad_image: str = "skip",
        transforms: Callable[[torch.Tensor, Target], tuple[torch.Tensor, Target]] | None = None,
    ) -> None:
        self._bad = BadImages(on_bad_image)
        self.image_folder = Path(image_folder)
        self.annotation_file = Path(annotation_file)
        self.masks, self.keep_crowd, self.on_bad_image, self.transforms = masks, keep_crowd, on_bad_image, transforms
        dataset = self._read_json()
        self._check_folder()
        self._check_annotations(dataset)
        self.coco = coco_from_dict(dataset)
        known = sorted(self.coco.imgs)
        if image_ids is None:
            self.ids = known
        else:
            self.ids = [int(i) for i in image_ids]
            unknown = [i for i in self.ids if i not in self.coco.imgs]
            if unknown:
                raise ValueError(f"unknown image id(s) {', '.join(map(str, unknown[:5]))}"
                                 f"{' ...' if len(unknown) > 5 else ''}: not in {self.annotation_file} "
                                 f"({len(known)} images)")
        missing = [self.coco.imgs[i]["file_name"] for i in self.ids
                   if not (self.image_folder / self.coco.imgs[i]["file_name"]).is_file()]
        if missing:
            raise FileNotFoundError(f"{len(missing)} of the {len(self.ids)} images of {self.annotation_file} are "
                                    f"missing from {self.image_folder} (first: {missing[0]})")
        self.categories = [self.coco.cats[c] for c in sorted(self.coco.cats)]
        self.num_classes = max(self.coco.cats, default=0) + 1

    def _read_json(self) -> dict[str, Any]:
        path = self.annotation_file
        if not path.is_file():
            raise FileNotFoundError(f"annotation file {path} does not exist")
        try:
            dataset = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"annotation file {path} is not valid JSON ({err})") from None
        if not isinstance(dataset, dict) or not isinstance(dataset.get("images"), list):
            raise ValueError(f"annotation file {path} is not a COCO instances file: it has no 'images' list")
        dataset.setdefault("annotations", [])
        dataset.setdefault("categories", [])
        return dataset

    def _check_folder(self) -> None:
        folder = self.image_folder
        if not folder.is_dir():
            raise FileNotFoundError(f"image folder {folder} does not exist")
        if not any(f.suffix.lower() in IMAGE_EXTENSIONS for f in folder.rglob("*")):
            raise ValueError(f"image folder {folder} holds no images ({', '.join(IMAGE_EXTENSIONS)})")

    def _check_annotations(self, dataset: dict[str, Any]) -> None:
        path = self.annotation_file
        images: dict[int, dict] = {}
        for img in dataset["images"]:
            if not isinstance(img, dict) or not {"id", "file_name", "width", "height"} <= set(img):
                raise ValueError(f"{path}: image entry {img!r} lacks one of id, file_name, width, height")
            if img["id"] in images:
                raise ValueError(f"{path}: image id {img['id']} appears twice")
            images[img["id"]] = img
        categories = {c.get("id") for c in dataset["categories"] if isinstance(c, dict)}
        for ann in dataset["annotations"]:
            aid = ann.get("id") if isinstance(ann, dict) else None
            if not isinstance(ann, dict) or "image_id" not in ann or "category_id" not in ann:
                raise ValueError(f"{path}: annotation {ann!r} lacks image_id or category_id")
            if ann["image_id"] not in images:
                raise ValueError(f"{path}: annotation {aid} refers to unknown image id {ann['image_id']}")
            if ann["category_id"] not in categories:
                raise ValueError(f"{path}: annotation {aid} has unknown category id {ann['category_id']}")
            box = ann.get("bbox")
            if not (isinstance(box, list) and len(box) == 4 and all(_is_number(v) for v in box)) \
                    or box[2] < 0 or box[3] < 0:
                raise ValueError(f"{path}: annotation {aid} of image {ann['image_id']} has a malformed bbox {box!r} "
                                 "(expected [x, y, width, height], finite, width and height >= 0)")
            if self.masks and "segmentation" not in ann:
                raise ValueError(f"{path}: annotation {aid} of image {ann['image_id']} has no segmentation; pass "
                                 "masks=False for boxes only")

    @property
    def bad_images(self) -> int:
        """Undecodable images skipped so far, by this process and its DataLoader workers."""
        return self._bad.count

    def __len__(self) -> int:
        return len(self.ids)

    def _load_image(self, info: dict[str, Any]) -> torch.Tensor | None:
        from torchvision.transforms.functional import pil_to_tensor

        path = self.image_folder / info["file_name"]
        image = self._bad.read(path, _open_rgb, stacklevel=4)
        if image is None:
            return None
        if image.size != (info["width"], info["height"]):
            raise ValueError(f"image {path} is {image.size[0]}x{image.size[1]} pixels but {self.annotation_file} "
                             f"says {info['width']}x{info['height']}")
        return pil_to_tensor(image).float().div_(255)

    def target(self, image_id: int) -> Target:
        """The target of image ``image_id`` (without reading the image)."""
        if image_id not in self.coco.imgs:
            raise ValueError(f"unknown image id {image_id}: not in {self.annotation_file}")
        info = self.coco.imgs[image_id]
        h, w = info["height"], info["width"]
        anns = [a for a in self.coco.imgToAnns.get(image_id, []) if self.keep_crowd or not a.get("iscrowd", 0)]
        target = empty_target(image_id, h, w, self.masks)
        if not anns:
            return target
        boxes = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32)
        boxes[:, 2:] += boxes[:, :2]
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
        # Empty boxes (width or height 0 after clipping) would give NaN regression targets: left out.
        keep = ((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])).tolist()
        anns = [a for a, k in zip(anns, keep, strict=True) if k]
        target.update(
            boxes=boxes[torch.tensor(keep, dtype=torch.bool)],
            labels=torch.tensor([a["category_id"] for a in anns], dtype=torch.int64),
            area=torch.tensor([float(a.get("area", 0.0)) for a in anns], dtype=torch.float32),
            iscrowd=torch.tensor([int(a.get("iscrowd", 0)) for a in anns], dtype=torch.int64),
        )
        if self.masks:
            masks = [torch.from_numpy(self.coco.annToMask(a)) for a in anns]
            target["masks"] = torch.stack(masks) if masks else target["masks"]
        return target

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Target] | None:
        image_id = self.ids[index]
        image = self._load_image(self.coco.imgs[image_id])
        if image is None:
            return None
        target = self.target(image_id)
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target


# -------------------------------------------------------------------------------------------- fashion-canvas-det


def _iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    iw = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


class FashionCanvasDetection(Dataset):
    """``fashion-canvas-det``: several Fashion-MNIST items per canvas, each an instance (see the module docstring).

    Args:
        images: uint8 ``(M, h, w)`` source items (one Fashion-MNIST split).
        labels: ``(M,)`` their classes (0-9); the detection labels are class + 1 (0 is the background).
        split: ``train`` or ``test`` (alias ``val``); selects the random stream.
        height: canvas height in pixels.
        width: canvas width (default: ``height``).
        num_samples: dataset length (default ``M``).
        items_range: (min, max) items per canvas; fewer when no placement is found (see ``max_overlap``).
        scale_range: an item's side as a fraction of the canvas's shorter side.
        max_overlap: the largest IoU of an item's square with an earlier item's; a placement is drawn up to 10 times.
        mask_threshold: an item pixel belongs to its instance mask above this intensity in [0, 1].
        seed: the dataset seed; sample ``i`` is a function of ``(seed, split, i)``.
    """

    classes = CLASSES

    def __init__(
        self,
        images: np.ndarray | torch.Tensor,
        labels: np.ndarray | torch.Tensor,
        split: str = "train",
        height: int = 256,
        width: int | None = None,
        num_samples: int | None = None,
        items_range: tuple[int, int] = (2, 4),
        scale_range: tuple[float, float] = (0.15, 0.4),
        max_overlap: float = 0.2,
        mask_threshold: float = _BOX_THRESHOLD,
        seed: int = 0,
    ) -> None:
        images = torch.as_tensor(images)
        labels = torch.as_tensor(labels).long()
        width = height if width is None else width
        if images.ndim != 3 or images.dtype != torch.uint8 or len(images) == 0:
            raise ValueError(f"images must be uint8 (M, h, w), got {images.dtype} of shape {tuple(images.shape)}")
        if labels.shape != (len(images),):
            raise ValueError(f"labels must have shape ({len(images)},), got {tuple(labels.shape)}")
        if split not in _SPLIT_CODES:
            raise ValueError(f"unknown split {split!r}; choose from: {', '.join(_SPLIT_CODES)}")
        if min(height, width) < 16:
            raise ValueError(f"canvas height and width must be at least 16, got {height}x{width}")
        if not 1 <= items_range[0] <= items_range[1]:
            raise ValueError(f"items_range must satisfy 1 <= low <= high, got {tuple(items_range)}")
        if not 0 < scale_range[0] <= scale_range[1] <= 1:
            raise ValueError(f"scale_range must satisfy 0 < low <= high <= 1, got {tuple(scale_range)}")
        if not 0 <= max_overlap <= 1 or not 0 <= mask_threshold < 1:
            raise ValueError(f"max_overlap must be in [0, 1] and mask_threshold in [0, 1), got {max_overlap}, "
                             f"{mask_threshold}")
        if num_samples is not None and num_samples < 1:
            raise ValueError(f"num_samples must be positive, got {num_samples}")
        self.images = images.float().div_(255.0)
        self.labels = labels
        self.split, self.height, self.width, self.seed = split, height, width, seed
        self.num_samples = len(images) if num_samples is None else num_samples
        self.items_range, self.scale_range = tuple(items_range), tuple(scale_range)
        self.max_overlap, self.mask_threshold = max_overlap, mask_threshold
        self.categories = [{"id": k + 1, "name": name} for k, name in enumerate(CLASSES)]
        self.num_classes = len(CLASSES) + 1

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Target]:
        if not -self.num_samples <= index < self.num_samples:
            raise IndexError(f"index {index} out of range for fashion-canvas-det of {self.num_samples} samples")
        index %= self.num_samples
        rng = np.random.default_rng([self.seed, _SPLIT_CODES[self.split], 0xDE7, index])
        h, w = self.height, self.width
        canvas = torch.zeros(h, w)
        squares: list[tuple[int, int, int, int]] = []
        boxes, labels, masks = [], [], []
        for _ in range(int(rng.integers(self.items_range[0], self.items_range[1] + 1))):
            source = int(rng.integers(0, len(self.images)))
            side = int(np.clip(round(rng.uniform(*self.scale_range) * min(h, w)), 8, min(h, w)))
            for _try in range(10):
                x0, y0 = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
                square = (x0, y0, x0 + side, y0 + side)
                if all(_iou(square, s) <= self.max_overlap for s in squares):
                    break
            else:
                continue  # no room for this item
            item = _resize(self.images[source], side, side)
            own = item > self.mask_threshold
            if not own.any():  # a blank item: no instance
                continue
            squares.append(square)
            region = canvas[y0 : y0 + side, x0 : x0 + side]
            torch.maximum(region, item, out=region)
            mask = torch.zeros(h, w, dtype=torch.uint8)
            mask[y0 : y0 + side, x0 : x0 + side] = own.to(torch.uint8)
            rows = torch.nonzero(own.any(1)).flatten()
            cols = torch.nonzero(own.any(0)).flatten()
            boxes.append([x0 + int(cols[0]), y0 + int(rows[0]), x0 + int(cols[-1]) + 1, y0 + int(rows[-1]) + 1])
            labels.append(int(self.labels[source]) + 1)
            masks.append(mask)
        target = empty_target(index + 1, h, w)
        if boxes:
            stacked = torch.stack(masks)
            target.update(boxes=torch.tensor(boxes, dtype=torch.float32), labels=torch.tensor(labels),
                          masks=stacked, area=stacked.flatten(1).sum(1).float(),
                          iscrowd=torch.zeros(len(boxes), dtype=torch.int64))
        return canvas.expand(3, h, w).contiguous(), target

    def to_coco(self, indices: Iterable[int] | None = None) -> dict[str, Any]:
        """The ground truth of samples ``indices`` (default all) as a COCO instances dict (image id = index + 1)."""
        indices = range(self.num_samples) if indices is None else indices
        return targets_to_coco(((self[i][1], (self.height, self.width)) for i in indices), self.categories)

    def export(self, folder: str | os.PathLike, indices: Iterable[int] | None = None) -> tuple[Path, Path]:
        """Write samples ``indices`` (default all) as ``folder/images/<id>.png`` and ``folder/annotations.json``.

        Returns:
            (image folder, annotation file), as `CocoDetection` takes them.
        """
        from PIL import Image

        folder = Path(folder)
        image_dir = folder / "images"
        image_dir.mkdir(parents=True, exist_ok=True)
        samples = []
        for i in range(self.num_samples) if indices is None else indices:
            image, target = self[i]
            grey = (image[0] * 255).round().to(torch.uint8).numpy()
            Image.fromarray(grey).convert("RGB").save(image_dir / f"{target['image_id']:06d}.png")
            samples.append((target, (self.height, self.width)))
        path = folder / "annotations.json"
        path.write_text(json.dumps(targets_to_coco(samples, self.categories)))
        return image_dir, path


def fashion_canvas_det(
    root: str | os.PathLike | None = None, split: str = "train", download: bool = False, **kwargs
) -> FashionCanvasDetection:
    """Build ``fashion-canvas-det`` from the Fashion-MNIST IDX files in ``root``: ``root``, ``split`` and ``download``
    as for `laudnet.data.fashion_canvas`; ``kwargs`` are options of `FashionCanvasDetection` (``height``, ``width``,
    ``num_samples``, ``items_range``, ...)."""
    images, labels = load_fashion_arrays(root, split, download)
    return FashionCanvasDetection(images, labels, split=split, **kwargs)
