"""`laudnet.deploy.graphs`: conditional CUDA-graph nodes around a block's kernels, in a captured deployed model."""

import pytest
import torch
from helpers import randomize_batchnorm

import laudnet
from laudnet.deploy import deploy
from laudnet.deploy.graphs import conditional_capture, conditional_nodes_available, if_node


def test_if_node_outside_a_capture_runs_its_body_without_evaluating_the_predicate():
    ran = []

    def predicate():
        raise AssertionError("evaluated outside a conditional capture")

    with if_node(predicate):
        ran.append(1)
    with conditional_capture(object()), if_node(predicate):  # not capturing a CUDA graph: still just runs
        ran.append(2)
    assert ran == [1, 2]
    assert isinstance(conditional_nodes_available(), bool)


def _layer_model(paradigm="layer"):
    model = laudnet.create_model("laud_resnet50", paradigm=paradigm, num_classes=10,
                                 granularity="2-2-1-1" if paradigm == "spatial" else None)
    randomize_batchnorm(model)
    return model.eval()


@pytest.mark.gpu
@pytest.mark.parametrize(("paradigm", "batch"), [("layer", 1), ("layer", 4), ("spatial", 2)])
def test_conditional_graph_equals_the_plain_graph_on_gpu(paradigm, batch):
    """Blocks that no sample executes are skipped by their IF node; blocks that some sample executes run as in the
    plain graph: the same outputs, for inputs replayed with other decisions too."""
    if not conditional_nodes_available():
        pytest.skip("this PyTorch has no conditional CUDA-graph capture")
    model = _layer_model(paradigm).cuda()
    deployed = deploy(model, torch.bfloat16)
    gen = torch.Generator().manual_seed(0)
    if paradigm == "layer":  # every third block executes for no sample; spatial decisions come from the maskers
        for i, block in enumerate(deployed.blocks()):
            keep = torch.rand(batch, generator=gen) < 0.5 if i % 3 else torch.zeros(batch, dtype=torch.bool)
            block.forced_keep = keep.cuda()
    x = torch.randn(batch, 3, 64, 64, device="cuda")
    with torch.no_grad():
        plain = deployed.graphed(x)(x).clone()
        cond = deployed.graphed(x, conditional=True)
        torch.testing.assert_close(cond(x), plain)
        x2 = torch.randn_like(x)
        torch.testing.assert_close(cond(x2).clone(), deployed.graphed(x2)(x2))


def test_conditional_graph_needs_a_cuda_input():
    deployed = deploy(_layer_model(), torch.float32)
    with pytest.raises(ValueError, match="CUDA graphs need a CUDA input"):
        deployed.graphed(torch.randn(1, 3, 32, 32), conditional=True)


@pytest.mark.gpu
@pytest.mark.parametrize(("paradigm", "batch"), [("layer", 1), ("token+layer", 3)])
def test_conditional_vit_graph_equals_the_plain_graph_on_gpu(paradigm, batch):
    """ViT sub-blocks that no sample runs are skipped by their IF node: the same outputs as the plain graph."""
    pytest.importorskip("timm")
    if not conditional_nodes_available():
        pytest.skip("this PyTorch has no conditional CUDA-graph capture")
    from helpers import skipping_vit

    from laudnet.deploy import deploy_vit

    model = skipping_vit(paradigm).cuda()
    deployed = deploy_vit(model, torch.bfloat16, attention="varlen", capturable=True)
    gen = torch.Generator().manual_seed(0)
    for i, block in enumerate(deployed.blocks):
        layers = torch.rand(batch, 2, generator=gen) < 0.5
        if i % 2 == 0:
            layers[:, 0] = False  # an attention sub-block that no sample runs
        tokens = torch.rand(batch, 17, generator=gen) < 0.6 if "token" in paradigm else None
        if tokens is not None:
            tokens[:, 0] = True
        block.forced = (tokens.cuda() if tokens is not None else None, None, layers.cuda())
    x = torch.randn(batch, 3, 32, 32, device="cuda")
    with torch.no_grad():
        plain = deployed.graphed(x)(x).clone()
        torch.testing.assert_close(deployed.graphed(x, conditional=True)(x), plain)
