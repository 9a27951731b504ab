import numpy as np
import pytest
import torch
from fashion_items import make_items

from laudnet.data import build_dataset, build_loader
from laudnet.data.canvas import IMAGENET_MEAN, IMAGENET_STD, FashionCanvas, _resize, fashion_canvas
from laudnet.data.fashion import DEFAULT_ROOT

HAVE_REAL = any((DEFAULT_ROOT / f"train-images-idx3-ubyte{s}").is_file() for s in ("", ".gz"))


@pytest.fixture(scope="module")
def items():
    return make_items(40, seed=3)


def canvas(items, **kw):
    return FashionCanvas(*items, **{"canvas_size": 96, **kw})


def test_shapes_and_values(items):
    ds = canvas(items, num_samples=12)
    assert len(ds) == 12
    image, label = ds[0]
    assert image.shape == (3, 96, 96) and image.dtype == torch.float32
    assert isinstance(label, int) and 0 <= label < 10
    # Background (0) normalises to -mean/std per channel.
    expected_bg = torch.tensor([-m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD, strict=True)])
    s = ds.sample(0)
    y, x = torch.nonzero(s.grey == 0)[0]
    torch.testing.assert_close(image[:, y, x], expected_bg)
    torch.testing.assert_close(ds.denormalize(s.image), s.grey.expand(3, -1, -1))


def test_deterministic_and_order_free(items):
    a, b = canvas(items, seed=7), canvas(items, seed=7)
    for i in (5, 0, 39, 5):
        torch.testing.assert_close(a[i][0], b[i][0], rtol=0, atol=0)
    first = [a[i][0] for i in range(6)]
    again = [a[i][0] for i in reversed(range(6))][::-1]
    assert all(torch.equal(x, y) for x, y in zip(first, again, strict=True))
    other_seed = canvas(items, seed=8)
    assert not torch.equal(a[0][0], other_seed[0][0])
    test_split = canvas(items, seed=7, split="test")
    assert not torch.equal(a[0][0], test_split[0][0])


def test_loader_matches_direct_indexing(items):
    ds = canvas(items, num_samples=16)
    loader = build_loader(ds, 4, train=True, seed=1)
    loader.sampler.set_epoch(0)
    order = list(loader.sampler)
    images, labels = next(iter(loader))
    for k in range(4):
        torch.testing.assert_close(images[k], ds[order[k]][0], rtol=0, atol=0)
        assert labels[k] == ds[order[k]][1]


def test_label_is_the_item_class_and_item_is_drawn(items):
    images, labels = items
    ds = canvas(items, num_clutter=0, normalize=False)
    for i in range(len(ds)):
        s = ds.sample(i)
        assert s.label == labels[s.source_index]
        x0, y0, x1, y1 = s.placed_box
        expected = _resize(torch.from_numpy(images[s.source_index]).float() / 255, y1 - y0, x1 - x0)
        torch.testing.assert_close(s.grey[y0:y1, x0:x1], expected)
        # Without clutter nothing lies outside the item's square.
        outside = s.grey.clone()
        outside[y0:y1, x0:x1] = 0
        assert outside.max() == 0


def test_boxes_inside_canvas_and_tight(items):
    ds = canvas(items, num_clutter=0)
    n = ds.canvas_size
    for i in range(len(ds)):
        s = ds.sample(i)
        x0, y0, x1, y1 = s.box
        px0, py0, px1, py1 = s.placed_box
        assert 0 <= px0 <= x0 < x1 <= px1 <= n and 0 <= py0 <= y0 < y1 <= py1 <= n
        lo, hi = ds.scale_range
        assert lo * n - 1 <= px1 - px0 <= hi * n + 1 and px1 - px0 == py1 - py0
        mask = s.grey > 0.1
        inside = torch.zeros_like(mask)
        inside[y0:y1, x0:x1] = True
        assert not (mask & ~inside).any()
        # Tight: each edge row/column of the box touches the item.
        assert mask[y0, x0:x1].any() and mask[y1 - 1, x0:x1].any()
        assert mask[y0:y1, x0].any() and mask[y0:y1, x1 - 1].any()
    image, label, box = canvas(items, return_box=True)[3]
    assert box.dtype == torch.int64 and tuple(box.tolist()) == canvas(items).sample(3).box


def test_clutter(items):
    cluttered = canvas(items, num_clutter=8, normalize=False)
    plain = canvas(items, num_clutter=0, normalize=False)
    outside_pixels = 0
    for i in range(10):
        s, p = cluttered.sample(i), plain.sample(i)
        # Clutter does not move the item, and max-compositing keeps every item pixel visible.
        assert s.placed_box == p.placed_box and s.label == p.label
        x0, y0, x1, y1 = s.placed_box
        assert (s.grey[y0:y1, x0:x1] >= p.grey[y0:y1, x0:x1]).all()
        outside = s.grey.clone()
        outside[y0:y1, x0:x1] = 0
        outside_pixels += int((outside > 0.1).sum())
    assert outside_pixels > 0


def test_subset_and_repeats(items):
    sub = canvas(items, num_samples=10)
    sources = [sub.source_index(i) for i in range(10)]
    assert len(set(sources)) == 10
    assert sources != list(range(10))  # a seeded random subset, not the first ten
    more = canvas(items, num_samples=80)
    assert sorted(more.source_index(i) for i in range(80)) == sorted(list(range(40)) * 2)
    with pytest.raises(IndexError):
        sub.sample(10)


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"split": "dev"}, "unknown split"),
        ({"scale_range": (0.5, 0.2)}, "scale_range"),
        ({"fragment_range": (0.0, 0.5)}, "fragment_range"),
        ({"canvas_size": 4}, "canvas_size"),
        ({"num_clutter": -1}, "num_clutter"),
        ({"num_samples": 0}, "num_samples"),
    ],
)
def test_bad_options(items, kw, message):
    with pytest.raises(ValueError, match=message):
        canvas(items, **kw)


def test_bad_source():
    with pytest.raises(ValueError, match="uint8"):
        FashionCanvas(np.zeros((4, 28, 28), np.float32), np.zeros(4))
    with pytest.raises(ValueError, match="at least 2"):
        FashionCanvas(np.zeros((1, 28, 28), np.uint8), np.zeros(1))


def test_build_from_idx_files(tiny_fashion):
    train = build_dataset("fashion-canvas", tiny_fashion, "train", image_size=64, num_samples=8, num_clutter=2)
    test = fashion_canvas(tiny_fashion, "test", canvas_size=64)
    assert len(train) == 8 and len(test) == 20
    assert train[0][0].shape == (3, 64, 64)


def test_default_size_is_fast_enough(items):
    # 64 samples at 224² render in well under a second on one core; not timed, only kept cheap.
    ds = FashionCanvas(*items, canvas_size=224, num_samples=64)
    batch = torch.stack([ds[i][0] for i in range(64)])
    assert batch.shape == (64, 3, 224, 224)


@pytest.mark.skipif(not HAVE_REAL, reason=f"Fashion-MNIST not installed in {DEFAULT_ROOT}")
def test_real_fashion_canvas():
    ds = fashion_canvas(split="test", canvas_size=224, num_samples=50)
    counts = np.bincount([ds[i][1] for i in range(50)], minlength=10)
    assert counts.sum() == 50 and (counts > 0).sum() >= 8  # a random subset covers most classes
    s = ds.sample(0)
    x0, y0, x1, y1 = s.box
    assert s.grey[y0:y1, x0:x1].mean() > s.grey.mean()  # the item is brighter than the canvas on average
