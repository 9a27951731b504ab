"""Deployed ViT attention modes (bucket / varlen) and the capturable sync-free mode: the same function as the eval
model; the capturable forward reads nothing on the host; CUDA-graph capture on a GPU."""

import copy

import pytest
import torch
from helpers import impose_model_decisions, skipping_vit
from torch._subclasses.fake_tensor import FakeTensorMode

import laudnet
from laudnet.deploy import deploy_dense_masked, deploy_vit, packed
from laudnet.kernels import dispatch
from laudnet.kernels._utils import interpreter_enabled

pytest.importorskip("timm")

PARADIGMS = ["static", "token", "head", "layer", "token+head", "token+layer", "head+layer", "token+head+layer"]
MODES = [("varlen", False), ("bucket", True), ("varlen", True)]


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("paradigm", PARADIGMS)
@pytest.mark.parametrize(("attention", "capturable"), MODES)
def test_mode_equals_eval_model_fp32(paradigm, attention, capturable):
    model = skipping_vit(paradigm)
    x = torch.randn(6, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
        deployed = deploy_vit(model, torch.float32, attention=attention, capturable=capturable)
        assert _rel(deployed(x), expected) < 1e-5
        assert _rel(deployed(x), deploy_vit(model, torch.float32)(x)) < 1e-5  # and the bucket path
    for info, dens in zip(model.collect_info(), deployed.densities(), strict=True):
        assert dens == pytest.approx({k: float(v) for k, v in info.density.items()}, abs=1e-6)


@pytest.mark.parametrize("paradigm", ["token", "head", "layer", "token+head+layer"])
def test_dense_masked_vit_equals_eval_model_and_is_one_graph(paradigm):
    """`deploy_dense_masked` of a ViT: every token, head and sub-block computed, the decisions as masks — the eval
    function, and the whole network one graph for torch.compile."""
    model = skipping_vit(paradigm)
    deployed = deploy_dense_masked(model, torch.float32)
    assert all(b.path == "dense" for b in deployed.blocks)
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        assert _rel(deployed(x), model(x)) < 1e-5
        for info, dens in zip(model.collect_info(), deployed.densities(), strict=True):
            assert dens == pytest.approx({k: float(v) for k, v in info.density.items()}, abs=1e-6)
        assert any(0 < v < 1 for dens in deployed.densities() for v in dens.values())  # something is skipped
        explained = torch._dynamo.explain(deployed)(x)
    torch._dynamo.reset()
    assert explained.graph_count == 1 and explained.graph_break_count == 0, explained.break_reasons


@pytest.mark.parametrize(("attention", "capturable"), MODES)
@pytest.mark.parametrize("case", ["all", "none", "mixed", "no heads"])
def test_edge_decisions(attention, capturable, case):
    """Every token / head / sub-block kept, none kept (class tokens alone, no heads, no sample runs), a batch
    mixing a sample that keeps everything with one that keeps nothing, and attention running with no head kept."""
    model = skipping_vit("token+head+layer")
    deployed = deploy_vit(model, torch.float32, attention=attention, capturable=capturable)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        model(x)
    for block in model.blocks:
        tokens = torch.ones(3, 17) if case != "none" else torch.zeros(3, 17)
        heads, layers = torch.ones(3, 3) * tokens[:, :1], torch.ones(3, 2) * tokens[:, :1]
        if case == "mixed":
            tokens[1], heads[1], layers[1] = 0, 0, 0
            heads[2, 1], tokens[2, 5:9] = 0, 0
        if case == "no heads":
            heads, tokens[1, 3:] = torch.zeros(3, 3), 0
        tokens[:, 0] = 1
        for masker, value in ((block.token_masker, tokens), (block.head_masker, heads), (block.layer_masker, layers)):
            masker.forward = lambda *a, _v=value, **k: _v
    with torch.no_grad():
        expected = model(x)
        impose_model_decisions(deployed, model)
        assert _rel(deployed(x), expected) < 1e-5


@pytest.mark.parametrize("attention", ["bucket", "varlen"])
def test_capturable_forward_reads_nothing_on_the_host(attention):
    """Under FakeTensorMode an op whose output depends on tensor values (nonzero, item, tolist, boolean indexing)
    raises: the capturable forward has none; the default one has (so the check can fail)."""
    model = skipping_vit("token+head+layer")
    x = torch.randn(4, 3, 32, 32)
    capturable = deploy_vit(model, torch.float32, attention=attention, capturable=True)
    synchronising = deploy_vit(model, torch.float32, attention=attention)
    with torch.no_grad(), FakeTensorMode(allow_non_fake_inputs=True):
        assert capturable(x).shape == (4, 5)
        with pytest.raises(Exception, match="nonzero|data-dependent|Dynamic|local_scalar_dense"):
            synchronising(x)


@pytest.mark.skipif(not interpreter_enabled(), reason="runs the Triton kernels on CPU under TRITON_INTERPRET=1")
@pytest.mark.parametrize("attention", ["bucket", "varlen"])
def test_capturable_triton_row_gemms(attention, monkeypatch):
    """The capturable GEMMs on packed rows through the Triton kernel (interpreted), unfused form: only the first
    `count` rows."""
    monkeypatch.setenv("LAUDNET_KERNELS", "triton")
    calls = []
    kernel = dispatch.pixel_conv1x1

    def counting(*args, **kwargs):
        calls.append(kwargs.get("count"))
        return kernel(*args, **kwargs)

    monkeypatch.setattr(dispatch, "pixel_conv1x1", counting)
    model = skipping_vit("token+head+layer", depth=2)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        out = deploy_vit(model, torch.float32, attention=attention, capturable=True, fuse_rows=False)(x)
        assert _rel(out, model(x)) < 1e-5
    assert calls and all(c is not None for c in calls)


@pytest.mark.parametrize(("attention", "capturable"), [("bucket", False), *MODES])
@pytest.mark.parametrize("keep_ratio", [None, 0.5])
def test_fused_token_masker_equals_eval_model_fp32(attention, capturable, keep_ratio):
    """Token decisions made inside norm1 (the fused masker, reference path on CPU): same function as the eval model,
    for learned decisions and for the fixed-ratio top-k baseline."""
    paradigm = "token+head+layer" if keep_ratio is None else "token"
    model = skipping_vit(paradigm, token_keep_ratio=keep_ratio)
    x = torch.randn(6, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
        fused = deploy_vit(model, torch.float32, attention=attention, capturable=capturable, fuse_token_masker=True)
        assert all(b.token_score_w.dtype == torch.float32 for b in fused.blocks)
        assert _rel(fused(x), expected) < 1e-5
    for info, dens in zip(model.collect_info(), fused.densities(), strict=True):
        assert dens["token"] == pytest.approx(float(info.density["token"]), abs=1e-6)


@pytest.mark.skipif(not interpreter_enabled(), reason="runs the Triton kernels on CPU under TRITON_INTERPRET=1")
def test_fused_token_masker_through_triton(monkeypatch):
    monkeypatch.setenv("LAUDNET_KERNELS", "triton")
    calls = []
    kernel = dispatch.layer_norm_score

    def counting(*args, **kwargs):
        calls.append(1)
        return kernel(*args, **kwargs)

    monkeypatch.setattr(dispatch, "layer_norm_score", counting)
    model = skipping_vit("token+layer", depth=2)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        out = deploy_vit(model, torch.float32, attention="varlen", capturable=True, fuse_token_masker=True)(x)
        assert _rel(out, model(x)) < 1e-5
    assert len(calls) == 2  # one per block


@pytest.mark.skipif(not interpreter_enabled(), reason="runs the Triton kernels on CPU under TRITON_INTERPRET=1")
@pytest.mark.parametrize(("layer_scale", "norm2"), [(None, True), (0.5, True), (None, False)])
def test_fused_rows_through_triton(monkeypatch, layer_scale, norm2):
    """fuse_rows: qkv in one row GEMM (kept heads only), norm2 on the packed rows, fc1 + GELU and the residual adds
    of the MLP and the attention in the row kernels; same function as the eval model, with and without LayerScale,
    and with a norm2 that is not a LayerNorm."""
    monkeypatch.setenv("LAUDNET_KERNELS", "triton")
    calls = []
    kernel = dispatch.rows_linear

    def counting(*args, **kwargs):
        calls.append(kwargs.get("out_idx") is not None)
        return kernel(*args, **kwargs)

    monkeypatch.setattr(dispatch, "rows_linear", counting)
    attention_calls = []
    attention = dispatch.varlen_attention

    def counting_attention(*args, **kwargs):
        attention_calls.append(args[6] is not None)  # the kept heads
        return attention(*args, **kwargs)

    monkeypatch.setattr(dispatch, "varlen_attention", counting_attention)
    model = skipping_vit("token+head+layer", depth=2, init_values=layer_scale)
    if not norm2:
        for block in model.blocks:
            block.norm2 = torch.nn.Identity()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
        deployed = deploy_vit(model, torch.float32, attention="varlen", capturable=True, fuse_rows=True)
        out = deployed(x)
        assert _rel(out, expected) < 1e-5
        for block in deployed.blocks:  # PyTorch's varlen attention over every head: the same function
            block.skip_head_attention = False
        assert _rel(deployed(x), expected) < 1e-5
    assert calls == [False, True, False, True] * 4  # per block: qkv, projection + add, fc1 + GELU, fc2 + add
    assert attention_calls == [True, True]  # laudnet's kernel, skipped heads not computed (first pass only)


@pytest.mark.skipif(not interpreter_enabled(), reason="runs the Triton kernels on CPU under TRITON_INTERPRET=1")
@pytest.mark.parametrize("paradigm", ["layer", "head"])
def test_capturable_layer_norms_through_triton(monkeypatch, paradigm):
    """Capturable blocks without a fused token masker normalise every token with the Triton LayerNorm (norm1; norm2
    too where the MLP is dense); same function as the eval model."""
    monkeypatch.setenv("LAUDNET_KERNELS", "triton")
    calls = []
    kernel = dispatch.rows_layer_norm

    def counting(*args, **kwargs):
        calls.append(args[1] is None)  # no row list: every token
        return kernel(*args, **kwargs)

    monkeypatch.setattr(dispatch, "rows_layer_norm", counting)
    model = skipping_vit(paradigm, depth=2)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert _rel(deploy_vit(model, torch.float32, attention="varlen", capturable=True)(x), model(x)) < 1e-5
    # per block: norm1 over every token; then norm2 on the packed rows (layer) or over every token (head, dense MLP)
    assert calls == ([True, False] if paradigm == "layer" else [True, True]) * 2


@pytest.mark.skipif(not interpreter_enabled(), reason="runs the Triton kernels on CPU under TRITON_INTERPRET=1")
def test_block_input_updated_in_place_only_inside_the_model(monkeypatch):
    """Inside `DeployedViT` a block's fused row kernels add the residual branches into its input (which the model
    made); a block on its own leaves the caller's tensor unchanged, with the same result."""
    monkeypatch.setenv("LAUDNET_KERNELS", "triton")
    model = skipping_vit("token+layer", depth=2)
    deployed = deploy_vit(model, torch.float32, attention="varlen", capturable=True)
    assert all(b.owns_input for b in deployed.blocks)
    block = copy.deepcopy(deployed.blocks[0])
    x = torch.randn(3, 17, 48)
    outs = {}
    for owns in (False, True):
        block.owns_input = owns
        xi = x.clone()
        with torch.no_grad():
            outs[owns] = block(xi)
        assert torch.equal(xi, x) != owns  # changed in place exactly when the block owns its input
    assert torch.allclose(outs[False], outs[True], atol=1e-6)


def test_fused_rows_needs_capturable():
    with pytest.raises(ValueError, match="fuse_rows fuses the capturable row GEMMs: it needs capturable=True"):
        deploy_vit(skipping_vit("token", depth=2), torch.float32, attention="varlen", fuse_rows=True)


def test_fused_rows_default_follows_capturable():
    model = skipping_vit("token", depth=2)
    assert all(b.fuse_rows for b in deploy_vit(model, torch.float32, attention="varlen", capturable=True).blocks)
    assert not any(b.fuse_rows for b in deploy_vit(model, torch.float32, attention="varlen").blocks)
    unfused = deploy_vit(model, torch.float32, attention="varlen", capturable=True, fuse_rows=False)
    assert not any(b.fuse_rows for b in unfused.blocks)


def test_fused_token_masker_needs_a_layer_norm():
    model = skipping_vit("token", depth=2)
    model.blocks[1].norm1 = torch.nn.Identity()
    with pytest.raises(ValueError, match="fuse_token_masker needs norm1 to be an affine nn.LayerNorm"):
        deploy_vit(model, torch.float32, fuse_token_masker=True)


def test_bad_arguments():
    model = skipping_vit("token+head+layer")
    with pytest.raises(ValueError, match="attention must be 'bucket' or 'varlen', got 'packed'"):
        deploy_vit(model, attention="packed")
    with pytest.raises(ValueError, match=r"capturable=True\)"):
        deploy_vit(model, torch.float32).graphed(torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match="CUDA graphs need a CUDA input"):
        deploy_vit(model, torch.float32, capturable=True).graphed(torch.randn(1, 3, 32, 32))
    deployed = deploy_vit(model, torch.float32)
    deployed.blocks[0].forced = (torch.ones(2, 17, dtype=torch.bool), None, None)
    with pytest.raises(ValueError, match=r"forced head decisions have shape None, the block's are \(2, 3\)"):
        deployed(torch.randn(2, 3, 32, 32))


def test_varlen_needs_the_varlen_kernel_on_gpu(monkeypatch):
    monkeypatch.setattr(packed, "_flash_varlen", lambda: None)
    model = skipping_vit("token")
    with pytest.raises(ValueError, match="PyTorch >= 2.9"):
        deploy_vit(model, torch.bfloat16, device="cuda", attention="varlen")


@pytest.mark.gpu
@pytest.mark.parametrize("attention", ["bucket", "varlen"])
def test_graphed_on_gpu(attention):
    """bf16 on the GPU: eager and graphed capturable forwards, no host synchronisation, close to the eval model."""
    model = skipping_vit("token+head+layer", img_size=64, patch_size=16, embed_dim=64, num_heads=4).cuda()
    x = torch.randn(8, 3, 64, 64, device="cuda")
    with torch.no_grad():
        expected = model(x)
    for capturable, fuse_rows in ((False, False), (True, True), (True, False)):
        deployed = deploy_vit(model, torch.bfloat16, attention=attention, capturable=capturable, fuse_rows=fuse_rows)
        impose_model_decisions(deployed, model)
        with torch.no_grad():
            assert _rel(deployed(x).float(), expected) < 2e-2
    with torch.no_grad():
        eager = deployed(x)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            deployed(x)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        graphed = deployed.graphed(x)
        assert _rel(graphed(x).clone(), eager) < 1e-3
        x2 = torch.randn_like(x)
        assert _rel(graphed(x2).clone(), deployed(x2)) < 1e-3  # a new input through the same graph


@pytest.mark.gpu
def test_laudnet_deploy_of_a_vit_on_gpu():
    model = skipping_vit("token", img_size=64, patch_size=16, embed_dim=64, num_heads=4).cuda()
    deployed = laudnet.deploy(model)
    assert deployed(torch.randn(2, 3, 64, 64, device="cuda")).dtype == torch.bfloat16
