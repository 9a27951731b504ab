"""The latency package's geometry tables against torchvision's module shapes."""

import pytest

from laudnet.latency.geometry import get_geometry, list_models

torchvision = pytest.importorskip("torchvision")
nn = pytest.importorskip("torch.nn")


def _torchvision_blocks(name):
    """(in, width, out, stride, groups, se_squeeze, projection) per residual block, from torchvision's modules."""
    rows = []
    if name.startswith("resnet"):
        model = getattr(torchvision.models, name)()
        for layer in (model.layer1, model.layer2, model.layer3, model.layer4):
            for blk in layer:
                rows.append((blk.conv1.in_channels, blk.conv2.out_channels, blk.conv3.out_channels, blk.conv2.stride[0],
                             blk.conv2.groups, 0, blk.downsample is not None))
        return rows, model.conv1.out_channels
    model = getattr(torchvision.models, name.replace("regnety_", "regnet_y_"))()
    for stage in model.trunk_output:
        for blk in stage:
            conv_b = blk.f.b[0]
            rows.append((blk.f.a[0].in_channels, conv_b.out_channels, blk.f.c[0].out_channels, conv_b.stride[0],
                         conv_b.groups, blk.f.se.fc1.out_channels, blk.proj is not None))
    return rows, model.stem[0].out_channels


@pytest.mark.parametrize("name", list_models())
def test_geometry_matches_torchvision(name):
    geom = get_geometry(name)
    expected, stem = _torchvision_blocks(name)
    ours = [(b.in_channels, b.width, b.out_channels, b.stride, b.groups, b.se_squeeze, b.projection)
            for b in geom.blocks()]
    assert ours == expected
    assert geom.stem_channels == stem


def test_stage_sizes_follow_strides():
    for name in list_models():
        geom = get_geometry(name)
        size = 56 if geom.family == "resnet" else 112  # after the stem (+ max-pool for ResNet)
        for b in geom.blocks():
            assert b.in_size == size, (name, b)
            size //= b.stride
        assert [s.size for s in geom.stages] == [56, 28, 14, 7]


def test_unknown_model_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown model 'resnet18'"):
        get_geometry("resnet18")
    assert get_geometry("laud_resnet101").name == "resnet101"


def test_geometry_follows_the_model_table():
    from laudnet.latency.geometry import get_vit_geometry
    from laudnet.model_table import MODEL_TABLE

    for info in MODEL_TABLE.values():
        if info.is_vit:
            g = get_vit_geometry(info.name)
            assert (g.dim, g.heads, g.depth, g.patch, g.img_size) == (info.dim, info.heads, info.depth,
                                                                       info.patch_size, info.img_size)
            continue
        g = get_geometry(info.name)
        assert g.family == info.family and g.depths == info.depths and g.stem_channels == info.stem_width
        assert tuple(s.out_channels for s in g.stages) == info.widths
        assert tuple(s.width for s in g.stages) == info.bottleneck_widths
        assert all(s.group_width == info.group_width for s in g.stages)


def test_is_vit_reads_the_table_not_the_name(monkeypatch):
    """A CNN row whose name says "vit" is no ViT; a ViT row under any alias is one."""
    from laudnet import model_table
    from laudnet.latency.geometry import get_vit_geometry, is_vit

    cnn = model_table.ModelInfo("laud_vitamin50", "resnet", "vitamin50", "resnet50", depths=(1, 1, 1, 1),
                                widths=(256, 512, 1024, 2048), bottleneck_widths=(64, 128, 256, 512), stem_width=64)
    monkeypatch.setitem(model_table._BY_ALIAS, "laud_vitamin50", cnn)
    monkeypatch.setitem(model_table._BY_ALIAS, "tiny_transformer", model_table.MODEL_TABLE["laud_deit_tiny"])
    assert not is_vit("laud_vitamin50") and not is_vit("my_vit")
    assert is_vit("tiny_transformer") and get_vit_geometry("tiny_transformer").name == "deit_tiny"
    with pytest.raises(ValueError, match="unknown model 'laud_vitamin50'"):
        get_geometry("laud_vitamin50")
