"""`laudnet.deploy.blocks`: one deployed block class per paradigm, chosen once by `deploy_block`."""

import pytest
import torch

import laudnet
from laudnet.deploy import DeployedBlock, deploy, deploy_block
from laudnet.deploy.blocks import BLOCK_CLASSES, ChannelBlock, LayerBlock, SpatialBlock, StaticBlock
from laudnet.paradigms import CNN_PARADIGMS

CLASSES = {"static": StaticBlock, "spatial": SpatialBlock, "channel": ChannelBlock, "layer": LayerBlock}


def test_every_cnn_paradigm_has_a_block_class():
    assert BLOCK_CLASSES == CLASSES and set(BLOCK_CLASSES) == set(CNN_PARADIGMS)


@pytest.mark.parametrize("paradigm", CNN_PARADIGMS)
@pytest.mark.parametrize(("name", "plain"), [("laud_resnet50", True), ("laud_regnety_400mf", False)])
def test_deploy_picks_the_paradigm_class(name, plain, paradigm):
    """Each block becomes its paradigm's class; the fused kernels cover plain bottlenecks (not RegNetY's SE blocks)."""
    blocks = deploy(laudnet.create_model(name, paradigm=paradigm), torch.float32).blocks()
    assert all(type(b) is CLASSES[paradigm] and b.paradigm == paradigm for b in blocks)
    assert all(b.patch_kernels == (plain and paradigm in ("spatial", "layer")) for b in blocks)
    assert all(b.channel_kernels == (plain and paradigm == "channel") for b in blocks)


def test_unknown_paradigm_is_a_one_line_error():
    block = laudnet.create_model("laud_regnety_400mf", paradigm="layer").dynamic_blocks()[0]
    block.paradigm = "token"
    with pytest.raises(ValueError) as err:
        deploy_block(block)
    message = "deploy has no block class for paradigm 'token'; it deploys static, spatial, channel, layer"
    assert str(err.value) == message


def test_block_classes_check_what_they_deploy():
    block = laudnet.create_model("laud_regnety_400mf", paradigm="layer").dynamic_blocks()[0]
    assert type(deploy_block(block)) is LayerBlock
    with pytest.raises(ValueError, match="SpatialBlock deploys spatial blocks, got a layer block"):
        SpatialBlock(block)
    with pytest.raises(TypeError, match=r"deploy_block\(block\) picks one"):
        DeployedBlock(block)
