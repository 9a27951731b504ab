"""`deploy(maskers=...)`: the fused masker chain (window sums from the previous block, Triton decisions and lists)
computes the eval-mode function, like the previous torch path; on CPU through the references, and through the Triton
kernels under the interpreter on a tiny ResNet."""

import pytest
import torch
from helpers import randomize_batchnorm
from torch import nn
from torchvision.models.resnet import Bottleneck

import laudnet
from laudnet.blocks.bottleneck import DynamicBottleneck
from laudnet.deploy import deploy, deploy_dense_masked
from laudnet.kernels import MAP_WINDOW
from laudnet.kernels._utils import triton_available
from laudnet.models._base import dynamic_stage

MODES = ("fused", "kernel", "torch")


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def _randomize_maskers(model, std=0.5):
    randomize_batchnorm(model)
    for n, p in model.named_parameters():
        if "masker" in n and p.dim() > 1:
            torch.nn.init.normal_(p, std=std)
    return model.eval()


def _tiny_resnet(paradigm, granularity=None):
    """A LAUD-ResNet with ResNet-50's structure (stem, 4 stages, projection and identity blocks) at tiny widths, so
    that the Triton kernels can run under the interpreter in seconds."""
    model = laudnet.create_model("laud_resnet50", paradigm=paradigm, granularity=granularity, num_classes=5)
    model.conv1, model.bn1 = nn.Conv2d(3, 8, 7, 2, 3, bias=False), nn.BatchNorm2d(8)
    inplanes = 8
    for i, (planes, blocks, stride) in enumerate([(4, 3, 1), (4, 2, 2), (8, 1, 2), (8, 2, 2)]):
        layers = []
        for j in range(blocks):
            st = stride if j == 0 else 1
            down = None
            if st != 1 or inplanes != planes * 4:
                down = nn.Sequential(nn.Conv2d(inplanes, planes * 4, 1, st, bias=False), nn.BatchNorm2d(planes * 4))
            layers.append(Bottleneck(inplanes, planes, st, down))
            inplanes = planes * 4
        stage = dynamic_stage(nn.Sequential(*layers), DynamicBottleneck, paradigm, model.granularity[i], i)
        setattr(model, f"layer{i + 1}", stage)
    model.fc = nn.Linear(inplanes, 5)
    return _randomize_maskers(model)


def _center_maskers(model, x):
    """Shift each masker's bias so that on `x` about half of its decisions execute (a tiny network's maskers are
    otherwise all-or-nothing), with a margin: the threshold lies halfway between two logits."""
    from laudnet.masks import pool_patches

    def center(masker, args):
        pooled = pool_patches(*args)
        logits = masker.conv(pooled if masker.norm is None else masker.norm(pooled))
        diff = (logits[:, 0] - logits[:, 1]).flatten().sort().values
        k = diff.numel() // 2
        with torch.no_grad():
            masker.conv.bias[0] -= (diff[k - 1] + diff[k]) / 2 if diff.numel() > 1 else diff[0] + 1

    hooks = [b.masker.register_forward_pre_hook(center) for b in model.dynamic_blocks()]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return model


@pytest.mark.parametrize(("paradigm", "granularity"), [("layer", None), ("spatial", "2-2-1-1"), ("channel", None)])
def test_masker_modes_agree_with_the_eval_model(paradigm, granularity):
    """Reference ops (CPU): every masker mode gives the eval model's output and decisions."""
    model = _randomize_maskers(laudnet.create_model("laud_resnet50", paradigm=paradigm, granularity=granularity,
                                                    num_classes=10))
    x = torch.randn(3, 3, 48, 40)
    with torch.no_grad():
        expected = model(x)
        expected_rates = [float(i.density["conv3"]) for i in model.collect_info()] if paradigm == "layer" else None
        for mode in MODES:
            deployed = deploy(model, torch.float32, maskers=mode)
            assert _rel(deployed(x), expected) < 1e-5, mode
            if paradigm == "layer":
                assert deployed.activation_rates() == pytest.approx(expected_rates, abs=1e-6), mode


def test_emit_windows_follow_the_next_masker():
    spatial = deploy(laudnet.create_model("laud_resnet50", paradigm="spatial", granularity="4-4-2-1"), torch.float32)
    emits = [b.emit_window for b in spatial.blocks()]
    # within a stage: the next block pools this block's own patches; at a stage boundary: windows of S_next x 2
    assert emits == [4, 4, 8, 4, 4, 4, 4, 2, 2, 2, 2, 2, 2, 1, 1, None]
    layer_model = laudnet.create_model("laud_resnet50", paradigm="layer")
    layer = deploy(layer_model, torch.float32)
    assert [b.emit_window for b in layer.blocks()] == [MAP_WINDOW] * 15 + [None]
    for mode in ("kernel", "torch"):
        assert all(b.emit_window is None for b in deploy(layer_model, torch.float32, maskers=mode).blocks())
    channel_model = laudnet.create_model("laud_resnet50", paradigm="channel")
    assert [b.emit_window for b in deploy(channel_model, torch.float32).blocks()] == [MAP_WINDOW] * 15 + [None]
    assert all(b.emit_window is None for b in deploy(channel_model, torch.float32, maskers="kernel").blocks())
    regnet = deploy(laudnet.create_model("laud_regnety_400mf", paradigm="layer"), torch.float32)
    assert all(b.emit_window is None and not b.fusable for b in regnet.blocks())  # SE blocks: the torch path
    with pytest.raises(ValueError, match="maskers must be one of"):
        deploy(layer_model, maskers="triton")


@pytest.fixture
def triton_interpreter(monkeypatch):
    if not triton_available():
        pytest.skip("triton is not installed")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setenv("LAUDNET_KERNELS", "triton")


@pytest.mark.parametrize(("paradigm", "granularity"), [("layer", None), ("spatial", "2-2-1-2")])
def test_fused_chain_through_triton_kernels_interpret(triton_interpreter, paradigm, granularity):
    """The Triton path end to end (interpreted): the fused chain equals the eval model and the torch masker path,
    with some, all and no windows executing."""
    x = torch.randn(2, 3, 36, 28)  # stages at 9x7, 5x4, 3x2, 2x1: partial border patches everywhere
    model = _center_maskers(_tiny_resnet(paradigm, granularity), x)
    fused = deploy(model, torch.float32)
    old = deploy(model, torch.float32, maskers="torch")
    assert any(b.emit_window is not None for b in fused.blocks())
    with torch.no_grad():
        expected = model(x)
        out = fused(x)
        assert _rel(out, expected) < 1e-5
        assert _rel(old(x), expected) < 1e-5
        rates = fused.activation_rates()
        assert rates == pytest.approx(old.activation_rates(), abs=1e-6)
        assert any(0 < r < 1 for r in rates)
        for value in (0, 1):
            for b in fused.blocks():
                b.masker_w.zero_()
                b.masker_b.fill_(1.0 if value else -1.0)
            with laudnet.mask_override(model, value):
                assert _rel(fused(x), model(x)) < 1e-5
            assert fused.activation_rates() == [float(value)] * len(fused.blocks())


def test_fused_chain_dense_path_and_tuning_interpret(triton_interpreter):
    """Blocks on the dense-masked path still hand the next block its sums (ReLU and pooling in one pass), and
    `tune_paths` records each block's input through the chain."""
    from laudnet.deploy import tune_paths

    model = _tiny_resnet("layer")
    x = torch.randn(3, 3, 20, 28)
    deployed = deploy(model, torch.float32)
    for i, b in enumerate(deployed.blocks()):
        b.path = "dense" if i % 2 else "sparse"
    with torch.no_grad():
        assert _rel(deployed(x), model(x)) < 1e-5
    calls = []

    def timer(fn, device, repeats):
        calls.append(fn.__defaults__[0])
        fn()
        return 1.0 if fn.__defaults__[0].path == "sparse" else 2.0

    assert tune_paths(deployed, x, timer=timer) == ["sparse"] * len(deployed.blocks())
    with torch.no_grad():
        assert _rel(deployed(x), model(x)) < 1e-5


@pytest.mark.gpu
@pytest.mark.parametrize("paradigm", ["layer", "spatial", "channel"])
def test_masker_modes_same_output_and_graph_on_gpu(paradigm):
    """Compiled kernels, bf16: with the eval model's decisions imposed, every masker mode computes the same network
    (the branch kernels are shared), eagerly and as a CUDA graph (the fused chain is sync-free)."""
    model = _randomize_maskers(laudnet.create_model("laud_resnet50", paradigm=paradigm)).cuda()
    x = torch.randn(8, 3, 96, 112, device="cuda")
    with torch.no_grad():
        expected = model(x)
    keeps = [(i.masks["channel" if paradigm == "channel" else "patch"] > 0.5) for i in model.collect_info()]
    keeps = [k if paradigm == "channel" else k[:, 0] for k in keeps]
    outs = {}
    for mode in MODES:
        deployed = deploy(model, torch.bfloat16, maskers=mode)
        for block, keep in zip(deployed.blocks(), keeps, strict=True):
            block.forced_keep = keep.view(-1) if paradigm == "layer" else keep
        with torch.no_grad():
            outs[mode] = deployed(x).float()
            graphed = deployed.graphed(x)(x).float()
        torch.testing.assert_close(graphed, outs[mode])
        assert _rel(outs[mode], expected) < 2e-2, mode
    assert _rel(outs["fused"], outs["torch"]) < 1e-3 and _rel(outs["kernel"], outs["torch"]) < 1e-3


def test_channel_chain_through_triton_kernels_interpret(triton_interpreter, monkeypatch):
    """Channel skipping end to end (interpreted): each sparse block's last kernel pools its output for the next
    masker; equal to the eval model and to the torch masker path, also with every block on the dense path."""
    from laudnet.kernels import channel as channel_ops

    pooled = []
    kernel = channel_ops.channel_conv1x1_in

    def counting(*args, **kwargs):
        pooled.append(kwargs.get("pool_out") is not None)
        return kernel(*args, **kwargs)

    monkeypatch.setattr(channel_ops, "channel_conv1x1_in", counting)
    x = torch.randn(2, 3, 36, 28)
    model = _tiny_resnet("channel", 2)
    with torch.no_grad():
        for b in model.dynamic_blocks():  # no execute bias: about half of the groups run
            b.channel_masker.fc2.bias.zero_()
    fused = deploy(model, torch.float32)
    old = deploy(model, torch.float32, maskers="torch")
    with torch.no_grad():
        expected = model(x)
        assert _rel(fused(x), expected) < 1e-5
        assert pooled == [True] * 7 + [False]  # every block but the last hands its sums on
        assert _rel(old(x), expected) < 1e-5
        rates = fused.activation_rates()
        assert rates == pytest.approx(old.activation_rates(), abs=1e-6) and any(0 < r < 1 for r in rates)
        for b in fused.blocks():
            b.path = "dense"  # the dense path pools its output in one pass for the next block
        assert _rel(fused(x), expected) < 1e-5


@pytest.mark.parametrize("maskers", ["reduce", "torch"])
@pytest.mark.parametrize("paradigm", ["layer", "spatial", "channel"])
def test_dense_masked_network_is_one_graph(paradigm, maskers):
    """`deploy_dense_masked`: the same function as the eval model, and the whole network one graph for
    torch.compile (no data-dependent shapes, no custom kernels: nothing breaks the trace)."""
    model = _randomize_maskers(laudnet.create_model("laud_resnet50", paradigm=paradigm,
                                                    granularity="2-2-1-1" if paradigm == "spatial" else None,
                                                    num_classes=10))
    deployed = deploy_dense_masked(model, torch.float32, maskers=maskers)
    assert all(b.path == "dense" and b.maskers == maskers for b in deployed.blocks())
    x = torch.randn(3, 3, 48, 40)
    with torch.no_grad():
        expected = model(x)
        assert _rel(deployed(x), expected) < 1e-5
        assert any(float(r) < 1 for r in deployed.activation_rates())  # some computation really is skipped
        explained = torch._dynamo.explain(deployed)(x)
    torch._dynamo.reset()
    assert explained.graph_count == 1 and explained.graph_break_count == 0, explained.break_reasons


@pytest.mark.parametrize("paradigm", ["spatial", "channel", "layer"])
def test_reduce_maskers_decide_as_the_torch_ones(paradigm):
    """``maskers="reduce"`` (`deploy_dense_masked`'s default: weigh the pixels, then pool; the channel MLP as
    multiply-and-sum) makes the decisions of the pooling-then-GEMM form, on maps that the patches do not divide."""
    model = _randomize_maskers(laudnet.create_model("laud_resnet50", paradigm=paradigm, num_classes=10))
    reduce, torch_form = deploy_dense_masked(model, torch.float32), deploy_dense_masked(model, torch.float32,
                                                                                       maskers="torch")
    torch.manual_seed(1)
    rates = []
    for a, b in zip(reduce.blocks(), torch_form.blocks(), strict=True):
        x = torch.randn(3, a.conv1.in_channels, 13, 11).relu()
        keep, expected = a.decide(x), b.decide(x)
        assert keep.shape == expected.shape and keep.dtype == torch.bool
        assert (keep == expected).float().mean() > 0.99  # equal but for ties at the threshold (summation order)
        rates.append(expected.float().mean())
    assert 0 < sum(rates) / len(rates) < 1  # the random maskers do decide, both ways


def test_dense_masked_maskers_are_torch_forms():
    model = laudnet.create_model("laud_resnet50", paradigm="spatial", num_classes=10).eval()
    with pytest.raises(ValueError, match="maskers are one of"):
        deploy_dense_masked(model, torch.float32, maskers="fused")
