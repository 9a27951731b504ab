"""Batched ViT inference (`laudnet.deploy` on a LAUD-ViT): equal to the masked training-form model in eval."""

import pytest
import torch
from helpers import impose_model_decisions, skipping_vit

import laudnet
from laudnet.deploy import DeployedViT, deploy, deploy_vit

pytest.importorskip("timm")


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize(
    "paradigm", ["static", "token", "head", "layer", "token+head", "token+layer", "head+layer", "token+head+layer"]
)
def test_deployed_equals_eval_model_fp32(paradigm):
    model = skipping_vit(paradigm)
    x = torch.randn(6, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
        deployed = deploy(model, torch.float32)
        out = deployed(x)
    assert isinstance(deployed, DeployedViT)
    assert _rel(out, expected) < 1e-5
    # The deployed decisions are the model's, and something is actually skipped in every masked part.
    densities = deployed.densities()
    for info, dens in zip(model.collect_info(), densities, strict=True):
        assert dens == pytest.approx({k: float(v) for k, v in info.density.items()}, abs=1e-6)
    for part in ("token", "head", "attn", "mlp"):
        rates = [d[part] for d in densities if part in d]
        if rates:
            assert min(rates) < 1, f"{paradigm}: nothing skipped in {part}"


@pytest.mark.parametrize("name", ["laud_deit_small", "laud_vit_base"])
def test_other_architectures(name):
    model = skipping_vit("token+head+layer", name, embed_dim=64, num_heads=4)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert _rel(deploy(model, torch.float32)(x), model(x)) < 1e-5


@pytest.mark.parametrize("bucket", [1, 5, 64])
def test_token_buckets_agree(bucket):
    model = skipping_vit("token+head")
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        assert _rel(deploy_vit(model, torch.float32, token_bucket=bucket)(x), model(x)) < 1e-5


def test_fixed_keep_ratio():
    model = skipping_vit("token+layer", token_keep_ratio=0.3)
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
        deployed = deploy(model, torch.float32)
        assert _rel(deployed(x), expected) < 1e-5
    assert all(d["token"] == pytest.approx(6 / 17) for d in deployed.densities())  # class token + ⌈0.3 · 16⌉


@pytest.mark.parametrize("value", [0, 1])
def test_all_or_nothing_decisions(value):
    """Every sample skips (or executes) everything: empty sample lists, no head pairs, class token alone."""
    model = skipping_vit("token+head+layer")
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "masker" in n:
                p.zero_()
                if p.dim() == 1:  # bias: execute logits first, then skip logits
                    p[: p.numel() // 2] = 1.0 if value else -1.0
    x = torch.randn(3, 3, 32, 32)
    deployed = deploy(model, torch.float32)
    with torch.no_grad(), laudnet.mask_override(model, value):
        assert _rel(deployed(x), model(x)) < 1e-5
    for d in deployed.densities():
        assert d["head"] == d["attn"] == d["mlp"] == value
        assert d["token"] == pytest.approx(1.0 if value else 1 / 17)


def test_deploy_leaves_the_model_unchanged_and_checks_input():
    model = skipping_vit("token+head+layer")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    deployed = deploy(model, torch.bfloat16)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert deployed.blocks[0].token_masker.fc.weight.dtype == torch.float32  # decisions in fp32
    assert deployed.blocks[0].qkv_w.dtype == torch.bfloat16
    with torch.no_grad():
        out = deployed(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 5) and out.dtype == torch.bfloat16
    with pytest.raises(ValueError, match=r"expected an input of shape \(B, 3, 32, 32\), got \(1, 3, 48, 48\)"):
        deployed(torch.randn(1, 3, 48, 48))
    with pytest.raises(ValueError, match="token_bucket must be a positive integer"):
        deploy_vit(model, token_bucket=0)
    with pytest.raises(ValueError, match="CNN options"):
        deploy(model, compile=True)
    with pytest.raises(TypeError, match="expects a LAUD-ViT"):
        deploy_vit(laudnet.create_model("laud_regnety_400mf"))


def test_forced_decisions():
    """Imposed decisions replace the maskers': the model's own eval decisions give the model's output."""
    model = skipping_vit("token+head+layer")
    deployed = deploy(model, torch.float32)
    for block in deployed.blocks:  # maskers that would decide otherwise
        torch.nn.init.normal_(block.token_masker.fc.weight, std=3.0)
        for name in ("token_score_w", "masker_pool_w"):  # the fused token masker; the head and sub-block maskers
            torch.nn.init.normal_(getattr(block, name), std=3.0)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
        assert _rel(deployed(x), expected) > 1e-3
        impose_model_decisions(deployed, model)
        assert _rel(deployed(x), expected) < 1e-5


@pytest.mark.gpu
@pytest.mark.parametrize("fuse_token_masker", [False, True])
def test_deployed_bf16_on_gpu(fuse_token_masker):
    """bf16 on the GPU (with the fused token masker: the Triton LayerNorm-and-score kernel) against the fp32 eval
    model holding the same decisions."""
    from laudnet.deploy import deploy_vit

    model = skipping_vit("token+head+layer", img_size=64, patch_size=16).cuda()
    x = torch.randn(8, 3, 64, 64, device="cuda")
    deployed = deploy_vit(model, torch.bfloat16, fuse_token_masker=fuse_token_masker)
    with torch.no_grad():
        expected = model(x)
        impose_model_decisions(deployed, model)
        out = deployed(x).float()
    assert _rel(out, expected) < 2e-2


def test_patch_embedding_as_one_gemm():
    """The deployed embedding (conv with kernel = stride as a GEMM over flattened patches) equals timm's."""
    from laudnet.deploy.vit import gemm_patch_embedding, patch_embed_gemm

    model = laudnet.create_model("laud_deit_tiny", paradigm="token", img_size=48, depth=2).eval()
    pe = model.patch_embed
    assert gemm_patch_embedding(pe)
    x = torch.randn(3, 3, 48, 48)
    with torch.no_grad():
        assert torch.allclose(patch_embed_gemm(x, pe.proj), pe(x), atol=1e-5, rtol=1e-5)
    pe.proj.padding = (1, 1)
    assert not gemm_patch_embedding(pe)
