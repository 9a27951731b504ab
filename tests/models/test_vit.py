"""LAUD-ViT: timm equivalence with masks on, gradients to every masker, the class token, attention masking, FLOPs,
a short training run, bad input. Tiny configurations (17 tokens) keep it fast."""

import sys

import pytest
import torch

import laudnet
from laudnet.blocks.vit import DynamicViTBlock
from laudnet.models.vit import MODEL_CFGS, load_timm_weights
from laudnet.train.losses import LaudLoss

timm = pytest.importorskip("timm")

VITS = {"laud_deit_tiny": "deit_tiny", "laud_deit_small": "deit_small", "laud_vit_base": "vit_base"}
# 32×32 images in 8×8 patches: 16 patch tokens and the class token.
TINY = dict(img_size=32, patch_size=8, depth=2, embed_dim=48, num_heads=3)
PARADIGMS = ["static", "token", "head", "layer", "token+head+layer"]


def _timm_reference(name, **kw):
    """timm's model with non-trivial norms and class token, so that a mapping error cannot hide behind an identity."""
    model = timm.create_model(MODEL_CFGS[VITS[name]].timm_name, pretrained=False, **kw)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.LayerNorm):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.bias.shape, generator=g) - 0.5)
        model.cls_token.copy_(torch.randn(model.cls_token.shape, generator=g))
    return model.eval()


def _tiny(paradigm="token+head+layer", name="laud_deit_tiny", **kw):
    return laudnet.create_model(name, paradigm=paradigm, num_classes=5, **{**TINY, **kw})


def test_registered_names():
    assert set(VITS) <= set(laudnet.list_models())
    assert laudnet.list_models("laud_deit*") == ["laud_deit_small", "laud_deit_tiny"]


@pytest.mark.parametrize("name", list(VITS))
def test_masks_on_equals_timm(name):
    """With every mask forced to one, each paradigm computes timm's network with the same weights."""
    reference = _timm_reference(name, num_classes=5, **TINY)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected = reference(x)
    for paradigm in PARADIGMS:
        model = laudnet.create_model(name, paradigm=paradigm, num_classes=5, **TINY)
        load_timm_weights(model, reference.state_dict())
        model.eval()
        with torch.no_grad(), laudnet.mask_override(model, 1):
            out = model(x)
        rel = ((out - expected).norm() / expected.norm()).item()
        assert rel < 1e-5, f"{name}/{paradigm}: relative error {rel}"


def test_state_dict_keys_are_timms_plus_maskers():
    reference = timm.create_model("deit_tiny_patch16_224", pretrained=False, num_classes=5, **TINY)
    static = _tiny("static")
    assert list(static.state_dict()) == list(reference.state_dict())
    extra = set(_tiny().state_dict()) - set(reference.state_dict())
    assert extra and all("masker" in k for k in extra)
    assert len(_tiny().masker_parameters()) == len([k for k in extra if "masker" in k])


@pytest.mark.parametrize(
    ("paradigm", "keep_ratio"),
    [("token", None), ("head", None), ("layer", None), ("token+head+layer", None), ("token", 0.5),
     ("token+head+layer", 0.5)],
)
def test_gradients_reach_every_masker(paradigm, keep_ratio):
    model = _tiny(paradigm, token_keep_ratio=keep_ratio).train()
    model.set_temperature(1.0)
    logits = model(torch.randn(4, 3, 32, 32))
    loss = LaudLoss(target=0.5, total_epochs=10)(logits, torch.tensor([0, 3, 1, 4]), model)["loss"]
    loss.backward()
    for n, p in model.named_parameters():
        assert p.grad is not None, f"no gradient for {n}"
        assert torch.isfinite(p.grad).all(), f"non-finite gradient for {n}"
    maskers = [(n, m) for n, m in model.named_modules() if n.endswith("masker")]
    assert len(maskers) == len(paradigm.split("+")) * 2
    for n, m in maskers:
        assert m.fc.weight.grad.abs().sum() > 0, f"masker {n} got only zero gradients"


@pytest.mark.parametrize("keep_ratio", [None, 0.25])
def test_class_token_survives(keep_ratio):
    model = _tiny("token", token_keep_ratio=keep_ratio)
    with torch.no_grad():  # logits that drop everything, the class token included, even with Gumbel noise
        for block in model.blocks:
            block.token_masker.fc.weight.zero_()
            block.token_masker.fc.bias.copy_(torch.tensor([-15.0, 15.0]))
    x = torch.randn(3, 3, 32, 32)
    for train in (True, False):
        model.train(train)
        model(x)
        for info in model.collect_info():
            tokens = info.masks["token"]
            assert torch.equal(tokens[:, 0], torch.ones(3))
            assert tokens.shape == (3, 17)
            if keep_ratio is not None:  # ⌈0.25 · 16⌉ = 4 patch tokens per sample
                assert torch.equal(tokens[:, 1:].sum(1), torch.full((3,), 4.0))
            else:
                assert tokens[:, 1:].sum() == 0


def test_dropped_tokens_pass_through_unchanged():
    """With every patch token dropped, blocks change only the class token."""
    model = _tiny("token").eval()
    seen = []
    handles = [b.register_forward_hook(lambda b, i, o: seen.append((i[0], o))) for b in model.blocks]
    with torch.no_grad(), laudnet.mask_override(model, 0):
        model(torch.randn(2, 3, 32, 32))
    for h in handles:
        h.remove()
    for x, out in seen:
        torch.testing.assert_close(out[:, 1:], x[:, 1:], rtol=0, atol=0)
        assert not torch.allclose(out[:, 0], x[:, 0])


def _block():
    vit = timm.create_model("deit_tiny_patch16_224", pretrained=False, **TINY)
    return DynamicViTBlock(vit.blocks[0], "token+head").eval()


def test_dropped_tokens_are_neither_keys_nor_queries():
    block = _block()
    y = torch.randn(2, 17, 48)
    tokens = (torch.rand(2, 17) < 0.5).float()
    tokens[:, 0] = 1
    with torch.no_grad():
        out = block._attention(y, tokens, None)
        # Changing dropped tokens does not change the kept tokens' outputs (dropped keys have weight zero) ...
        y2 = torch.where(tokens[..., None] > 0, y, torch.randn_like(y) * 10)
        torch.testing.assert_close(block._attention(y2, tokens, None) * tokens[..., None], out * tokens[..., None])
        # ... and the kept tokens' outputs are plain attention among the kept tokens.
        for b in range(2):
            kept = tokens[b].bool()
            alone = block._attention(y[b : b + 1, kept], None, None)
            torch.testing.assert_close(out[b, kept], alone[0], rtol=1e-5, atol=1e-6)


def test_skipped_heads_contribute_exactly_zero():
    block = _block()
    y = torch.randn(2, 17, 48)
    heads = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    with torch.no_grad():
        out = block._attention(y, None, heads)
        for b in range(2):
            # the same as an attention whose projection ignores the skipped heads' 16 output channels
            cols = heads[b].repeat_interleave(16)
            proj = block.attn.proj
            saved = proj.weight.clone()
            proj.weight.mul_(cols)
            dense = block._attention(y[b : b + 1], None, None)
            proj.weight.copy_(saved)
            torch.testing.assert_close(out[b], dense[0], rtol=1e-5, atol=1e-6)
        # all heads skipped: only the projection bias remains
        none = block._attention(y, None, torch.zeros(2, 3))
        torch.testing.assert_close(none, block.attn.proj.bias.expand_as(none), rtol=0, atol=0)


def test_dense_flops_match_published_totals():
    """Per-image MACs at 224² against the published counts: DeiT-S 4.6 G, ViT-B/16 17.6 G (DeiT, timm), DeiT-Ti
    1.26 G (timm's measured count; the DeiT paper rounds it to 1.3 G)."""
    published = {"laud_deit_tiny": 1.26, "laud_deit_small": 4.6, "laud_vit_base": 17.6}
    for name, gmacs in published.items():
        dense = laudnet.model_flops(laudnet.create_model(name, paradigm="static")).dense / 1e9
        assert abs(dense / gmacs - 1) < 0.02, f"{name}: {dense:.3f} G vs published {gmacs} G"
    assert round(laudnet.create_model("laud_deit_tiny", paradigm="static").dense_flops() / 1e9, 1) == 1.3


def test_dynamic_flops_follow_the_masks():
    model = _tiny().eval()
    for p in model.masker_parameters():
        torch.nn.init.normal_(p, std=0.5)
    with torch.no_grad():
        model(torch.randn(4, 3, 32, 32))
    n, c, a, m = 17, 48, 48, 4 * 48
    for info in model.collect_info():
        k = info.masks["token"].sum(1)
        r = info.masks["head"].mean(1)
        la, lm = info.masks["layer"][:, 0], info.masks["layer"][:, 1]
        attn = la * r * (k * c * 3 * a + 2 * k * k * a + k * a * c)
        maskers = n * c * 2 + n * c + c * 2 * 3 + c * 4
        expected = attn + lm * 2 * k * c * m + maskers
        torch.testing.assert_close(info.flops, expected)
        assert info.dense_flops == n * c * 3 * a + 2 * n * n * a + n * a * c + 2 * n * c * m
    with torch.no_grad(), laudnet.mask_override(model, 0):
        model(torch.randn(2, 3, 32, 32))
    flops = laudnet.model_flops(model, (3, 32, 32))
    embed_head = 16 * 3 * 64 * 48 + 48 * 5
    assert flops.dynamic == pytest.approx(embed_head + 2 * maskers)
    assert flops.dense == pytest.approx(embed_head + 2 * info.dense_flops)


def test_short_training_moves_the_flops_ratio_to_its_target():
    torch.manual_seed(0)
    model = _tiny(depth=3).train()
    model.set_temperature(1.0)
    loss_fn = LaudLoss(target=0.5, total_epochs=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, y = torch.randn(16, 3, 32, 32), torch.randint(0, 5, (16,))

    def eval_ratio():
        model.eval()
        with torch.no_grad():
            model(x)
        model.train()
        return laudnet.model_flops(model, (3, 32, 32)).ratio

    start = eval_ratio()
    for _ in range(25):
        loss = loss_fn(model(x), y, model)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    end = eval_ratio()
    assert start > 0.95
    assert abs(end - 0.5) < 0.15, f"FLOPs ratio {start:.3f} -> {end:.3f}, target 0.5"


class TestBadInput:
    def test_image_size_not_a_multiple_of_the_patch_size(self):
        with pytest.raises(ValueError, match="image size 30x30 is not a multiple of the patch size 16"):
            laudnet.create_model("laud_deit_small", img_size=30)
        model = _tiny()
        with pytest.raises(ValueError, match="image size 36x36 is not a multiple of the patch size 8"):
            model(torch.randn(1, 3, 36, 36))
        with pytest.raises(ValueError, match="takes 32x32 images.*got 40x40"):
            model(torch.randn(1, 3, 40, 40))
        with pytest.raises(ValueError, match=r"expected an input of shape \(B, 3, H, W\)"):
            model(torch.randn(1, 1, 32, 32))

    def test_heads_must_divide_the_width(self):
        with pytest.raises(ValueError, match="5 attention heads do not divide the embedding width 384"):
            laudnet.create_model("laud_deit_small", num_heads=5)

    @pytest.mark.parametrize("ratio", [0, -0.2, 1.5, True, "half"])
    def test_keep_ratio_outside_0_1(self, ratio):
        with pytest.raises(ValueError, match=r"keep ratio must be a number in \(0, 1\]"):
            _tiny("token", token_keep_ratio=ratio)

    def test_keep_ratio_needs_token_paradigm(self):
        with pytest.raises(ValueError, match="needs the token paradigm"):
            _tiny("head+layer", token_keep_ratio=0.5)

    @pytest.mark.parametrize("paradigm", ["spatial", "token+token", "token+channel", ""])
    def test_unknown_paradigm(self, paradigm):
        with pytest.raises(ValueError, match="unknown ViT paradigm.*token, head, layer"):
            _tiny(paradigm)

    def test_no_granularity(self):
        with pytest.raises(ValueError, match="take no granularity"):
            laudnet.create_model("laud_deit_tiny", paradigm="token", granularity=4, **TINY)

    def test_weights_that_do_not_fit(self):
        model = _tiny()
        sd = timm.create_model("deit_tiny_patch16_224", pretrained=False, **TINY).state_dict()
        del sd["norm.weight"]
        sd["extra.weight"] = torch.zeros(1)
        with pytest.raises(ValueError, match=r"unexpected keys.*extra\.weight.*missing backbone keys: norm\.weight"):
            load_timm_weights(model, sd)
        with pytest.raises(ValueError, match=r"shape mismatches: head\.weight"):
            load_timm_weights(model, timm.create_model("deit_tiny_patch16_224", pretrained=False, **TINY).state_dict())
        load_timm_weights(model, timm.create_model("deit_tiny_patch16_224", pretrained=False, **TINY).state_dict(),
                          exclude_head=True)

    def test_without_timm_the_names_stay_registered_and_building_says_what_to_install(self, monkeypatch):
        monkeypatch.setitem(sys.modules, "timm", None)  # import timm now raises ImportError
        assert "laud_deit_small" in laudnet.list_models()
        with pytest.raises(ImportError, match=r"laudnet\[vit\]"):
            laudnet.create_model("laud_deit_small")


def test_demo_and_training_config_take_the_vit_paradigms(capsys):
    from laudnet.cli import main
    from laudnet.train.config import TrainConfig

    assert main(["flops", "--models", "laud_deit_tiny", "--paradigms", "token+head", "--image-size", "32"]) == 0
    out = capsys.readouterr().out
    assert "laud_deit_tiny token+head" in out and "ratio" in out
    assert TrainConfig(model="laud_deit_small", paradigm="token+head+layer").paradigm == "token+head+layer"
