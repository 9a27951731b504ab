"""The model table against the built models, and registration through it (no guess from a model's name)."""

import pytest
import torch

import laudnet
from laudnet.model_table import MODEL_TABLE, ModelInfo
from laudnet.models import _registry
from laudnet.models.resnet import LaudResNet, ResNetCfg


def test_every_registered_model_has_its_table_row():
    assert set(laudnet.list_models()) == set(MODEL_TABLE)
    for name in laudnet.list_models():
        assert laudnet.model_info(name) is MODEL_TABLE[name]
    with pytest.raises(ValueError, match="unknown model 'resnet50'; choose from"):
        laudnet.model_info("resnet50")


@pytest.mark.parametrize("name", laudnet.list_models())
def test_table_matches_the_built_model(name):
    info = laudnet.model_info(name)
    if info.is_vit:
        pytest.importorskip("timm")
    model = laudnet.create_model(name, paradigm="static")
    stages = model.stages()
    assert tuple(len(s) for s in stages) == info.depths
    if info.is_vit:
        assert (model.embed_dim, model.patch_size, model.img_size) == (info.dim, info.patch_size, (info.img_size,) * 2)
        assert {b.num_heads for b in model.blocks} == {info.heads}
        return
    assert tuple(s[-1].out_channels for s in stages) == info.widths
    assert tuple({b.width for b in s}.pop() for s in stages) == info.bottleneck_widths
    assert stages[0][0].in_channels == info.stem_width
    groups = tuple(s[0].width // s[0].groups for s in stages)
    assert groups == ((info.group_width,) * 4 if info.group_width else tuple(s[0].width for s in stages))


@pytest.fixture
def scratch_registry(monkeypatch):
    """Registrations made in the test vanish after it."""
    monkeypatch.setattr(_registry, "_MODELS", dict(_registry._MODELS))
    monkeypatch.setattr(_registry, "_INFO", dict(_registry._INFO))


def _vitamin_info():
    return ModelInfo("laud_vitamin50", "resnet", "vitamin50", "resnet50", depths=(1, 1, 1, 1),
                     widths=(256, 512, 1024, 2048), bottleneck_widths=(64, 128, 256, 512), stem_width=64,
                     options=("masker_reduction", "masker_norm"))


def test_register_needs_a_table_row(scratch_registry):
    def laud_unlisted(**kwargs):
        raise AssertionError("not built")

    with pytest.raises(ValueError, match="'laud_unlisted' has no row in laudnet.model_table"):
        laudnet.models.register_model(laud_unlisted)
    with pytest.raises(ValueError, match="registered with the ModelInfo of 'laud_vitamin50'"):
        laudnet.models.register_model(info=_vitamin_info())(laud_unlisted)
    assert "laud_unlisted" not in laudnet.list_models()


def test_a_cnn_named_like_a_vit_is_a_cnn(scratch_registry):
    """A CNN whose name contains "vit" gets the CNN treatment everywhere: its table row decides, not its name."""
    from laudnet.inspect_cli import SHOWN_CNN, shown_paradigms
    from laudnet.latency.geometry import is_vit
    from laudnet.train.config import TrainConfig
    from laudnet.train.loop import build_model, size_kwargs

    @laudnet.models.register_model(info=_vitamin_info())
    def laud_vitamin50(**kwargs):
        return LaudResNet(ResNetCfg(layers=(1, 1, 1, 1)), **kwargs)

    assert not laudnet.model_info("laud_vitamin50").is_vit
    assert size_kwargs("laud_vitamin50", 64) == {}
    assert shown_paradigms("laud_vitamin50") == SHOWN_CNN
    model = build_model(TrainConfig(model="laud_vitamin50", paradigm="spatial", masker_norm=False), num_classes=3)
    assert model.model_args == {"name": "laud_vitamin50", "paradigm": "spatial", "granularity": [4, 4, 2, 1],
                                "num_classes": 3, "masker_norm": False}
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 3)
    # the latency predictor knows the table's models only; an unknown name is no ViT whatever it is called
    assert not is_vit("laud_vitamin50") and not is_vit("my_vit") and is_vit("laud_deit_tiny")


@pytest.mark.parametrize("name, kwargs", [
    ("laud_resnet50", dict(paradigm="channel", granularity=16, num_classes=7, masker_reduction=8)),
    ("laud_regnety_400mf", dict(paradigm="spatial", num_classes=4, masker_norm=False)),
    ("laud_deit_tiny", dict(paradigm="head+token", num_classes=5, img_size=32, patch_size=8, depth=2, embed_dim=48)),
])
def test_model_args_rebuild_the_model(name, kwargs):
    if laudnet.model_info(name).is_vit:
        pytest.importorskip("timm")
    model = laudnet.create_model(name, **kwargs).eval()
    args = model.model_args
    assert args["name"] == name and {k: v for k, v in args.items() if k not in ("name", "granularity")} == {
        k: v for k, v in kwargs.items() if k != "granularity"}
    rebuilt = laudnet.create_model(**args).eval()
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    assert rebuilt.model_args == args and rebuilt.granularity == model.granularity
    size = kwargs.get("img_size", 64)
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), model(x), rtol=0, atol=0)
