import numpy as np
import pytest
import torch

from laudnet.data import build_dataset, num_classes
from laudnet.data.fashion import DEFAULT_ROOT, MEAN, STD, FashionMNIST, load_fashion_arrays
from laudnet.data.idx import read_idx, write_idx

HAVE_REAL = any((DEFAULT_ROOT / f"train-images-idx3-ubyte{s}").is_file() for s in ("", ".gz"))


def test_load_arrays(tiny_fashion):
    images, labels = load_fashion_arrays(tiny_fashion, "train")
    assert images.shape == (40, 28, 28) and images.dtype == np.uint8
    assert labels.dtype == np.int64 and labels.tolist() == [i % 10 for i in range(40)]
    test_images, _ = load_fashion_arrays(tiny_fashion, "val")
    assert len(test_images) == 20
    np.testing.assert_array_equal(test_images, read_idx(tiny_fashion / "t10k-images-idx3-ubyte.gz"))


def test_uncompressed_and_torchvision_layout(tiny_fashion, tmp_path_factory):
    root = tmp_path_factory.mktemp("tv")
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for stem in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"):
        write_idx(raw / stem, read_idx(tiny_fashion / f"{stem}.gz"))
    images, labels = load_fashion_arrays(root, "train")
    assert images.shape == (40, 28, 28) and len(labels) == 40


def test_dataset_items(tiny_fashion):
    ds = FashionMNIST(tiny_fashion, "train", image_size=28)
    image, label = ds[3]
    assert image.shape == (3, 28, 28) and image.dtype == torch.float32 and label == 3
    raw = torch.from_numpy(read_idx(tiny_fashion / "train-images-idx3-ubyte.gz")[3]).float() / 255
    torch.testing.assert_close(image[1], (raw - MEAN) / STD)
    big = FashionMNIST(tiny_fashion, "test", image_size=64, num_samples=5)
    assert len(big) == 5 and big[0][0].shape == (3, 64, 64)


def test_build_dataset(tiny_fashion):
    ds = build_dataset("fashion-mnist", tiny_fashion, split="test", image_size=32)
    assert len(ds) == 20 and ds[0][0].shape == (3, 32, 32)
    assert num_classes("fashion-mnist") == 10


def test_missing_files_name_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"train-images-idx3-ubyte.*{tmp_path}"):
        load_fashion_arrays(tmp_path, "train")


def test_bad_split(tiny_fashion):
    with pytest.raises(ValueError, match="unknown Fashion-MNIST split 'dev'"):
        load_fashion_arrays(tiny_fashion, "dev")


def test_mismatched_labels(tiny_fashion):
    write_idx(tiny_fashion / "train-labels-idx1-ubyte.gz", np.zeros(39, np.uint8))
    with pytest.raises(ValueError, match="expected \\(40,\\)"):
        load_fashion_arrays(tiny_fashion, "train")


def test_bad_num_samples(tiny_fashion):
    with pytest.raises(ValueError, match="num_samples"):
        FashionMNIST(tiny_fashion, "train", num_samples=41)


@pytest.mark.skipif(not HAVE_REAL, reason=f"Fashion-MNIST not installed in {DEFAULT_ROOT}")
def test_real_files():
    train_images, train_labels = load_fashion_arrays(None, "train")
    test_images, test_labels = load_fashion_arrays(None, "test")
    assert train_images.shape == (60000, 28, 28) and test_images.shape == (10000, 28, 28)
    # Balanced classes: 6000 per class in train, 1000 in test (Xiao et al., 2017).
    assert np.bincount(train_labels).tolist() == [6000] * 10
    assert np.bincount(test_labels).tolist() == [1000] * 10
    assert train_labels[:10].tolist() == [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]
    mean = train_images.astype(np.float64).mean() / 255
    assert abs(mean - MEAN) < 1e-3
