import pytest
import torch
from PIL import Image

from laudnet.data import ImageFolderDataset, build_dataset, build_transforms, num_classes


def write_images(folder, classes, per_class=3, size=(40, 30), ext="png"):
    for c, name in enumerate(classes):
        (folder / name).mkdir(parents=True, exist_ok=True)
        for k in range(per_class):
            colour = (40 * c + 10, 20 * k, 200 - 30 * c)
            Image.new("RGB", size, colour).save(folder / name / f"img{k}.{ext}")


@pytest.fixture
def image_root(tmp_path):
    write_images(tmp_path / "train", ["cat", "dog", "fox"])
    write_images(tmp_path / "val", ["cat", "fox"], per_class=2, ext="jpg")  # val lacks a class
    return tmp_path


def test_train_split(image_root):
    ds = build_dataset("imagefolder", image_root, "train", image_size=24)
    assert len(ds) == 9 and ds.classes == ["cat", "dog", "fox"]
    image, label = ds[4]
    assert image.shape == (3, 24, 24) and image.dtype == torch.float32 and label == 1
    assert num_classes("imagenet", image_root) == 3


def test_val_uses_train_indices_and_eval_transform(image_root):
    ds = build_dataset("imagenet", image_root, "val", image_size=16)
    assert [t for _, t in ds.samples] == [0, 0, 2, 2]
    a, b = ds[2][0], ds[2][0]
    assert torch.equal(a, b) and a.shape == (3, 16, 16)  # eval transform is deterministic
    # A uniform image stays uniform: its normalised value is (colour/255 - mean) / std.
    colour = torch.tensor([50, 0, 170]) / 255  # fox, its first image (see write_images)
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    torch.testing.assert_close(a[:, 8, 8], (colour - mean) / std, atol=0.05, rtol=0)  # JPEG


def test_test_split_falls_back_to_val(image_root):
    assert len(build_dataset("imagefolder", image_root, "test", image_size=16)) == 4


def test_subset_keeps_classes(image_root):
    ds = ImageFolderDataset(image_root, "train", image_size=16, num_samples=3)
    assert sorted(ds.targets) == [0, 1, 2]


def test_transforms():
    train = build_transforms(32, train=True)
    evaluation = build_transforms(32, train=False)
    image = Image.new("RGB", (50, 70), (10, 200, 30))
    assert train(image).shape == (3, 32, 32) and evaluation(image).shape == (3, 32, 32)
    names = [type(t).__name__ for t in evaluation.transforms]
    assert names[:2] == ["Resize", "CenterCrop"] and evaluation.transforms[0].size == round(32 * 256 / 224)
    assert [type(t).__name__ for t in train.transforms][:2] == ["RandomResizedCrop", "RandomHorizontalFlip"]


def test_missing_root(tmp_path):
    with pytest.raises(FileNotFoundError, match="root .*nothing does not exist"):
        build_dataset("imagefolder", tmp_path / "nothing")


def test_root_required():
    with pytest.raises(ValueError, match="needs a data root"):
        build_dataset("imagefolder", None)


def test_missing_split(tmp_path):
    write_images(tmp_path / "train", ["a"])
    with pytest.raises(FileNotFoundError, match="val .*or .*test does not exist"):
        build_dataset("imagefolder", tmp_path, "val")


def test_empty_split(tmp_path):
    (tmp_path / "train").mkdir()
    with pytest.raises(ValueError, match="has no class folders"):
        build_dataset("imagefolder", tmp_path, "train")


def test_class_without_images(tmp_path):
    write_images(tmp_path / "train", ["a"])
    (tmp_path / "train" / "b").mkdir()
    (tmp_path / "train" / "b" / "notes.txt").write_text("not an image")
    with pytest.raises(ValueError, match="class folders without images.*: b"):
        build_dataset("imagefolder", tmp_path, "train")


def test_val_class_unknown_to_train(tmp_path):
    write_images(tmp_path / "train", ["a"])
    write_images(tmp_path / "val", ["a", "z"])
    with pytest.raises(ValueError, match="absent from the train folder: z"):
        build_dataset("imagefolder", tmp_path, "val")


def test_unknown_dataset():
    with pytest.raises(ValueError, match="unknown dataset 'cifar'; choose from: imagefolder, fashion-mnist"):
        build_dataset("cifar")
