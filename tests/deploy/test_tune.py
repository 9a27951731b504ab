"""`laudnet.deploy.tune.deploy_fastest`: the measured choice between whole deployment forms."""

import pytest
import torch
from helpers import impose_model_decisions, randomize_batchnorm, skipping_vit

import laudnet
from laudnet.deploy import DeployedModel, DeployedViT, deploy_fastest
from laudnet.deploy.tune import FORMS


def _model(paradigm):
    model = laudnet.create_model("laud_resnet50", paradigm=paradigm, num_classes=10,
                                 granularity="2-2-1-1" if paradigm == "spatial" else None)
    randomize_batchnorm(model)
    for n, p in model.named_parameters():
        if "masker" in n and p.dim() > 1:
            torch.nn.init.normal_(p, std=0.5)
    return model.eval()


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def _dense(run):
    if isinstance(run, DeployedViT):
        return all(b.path == "dense" for b in run.blocks)
    return all(b.path == "dense" and b.maskers == "reduce" for b in run.blocks())


def _form_timer(costs):
    """A timer charging each whole form its fixed cost (by the deployed model the timed call runs) and 1 s per
    block call of `tune_paths`."""
    def timer(fn, device, repeats=10):
        run = (fn.__defaults__ or (None,))[0]
        if isinstance(run, DeployedModel | DeployedViT):
            return costs["dense-masked" if _dense(run) else "sparse"]
        return 1.0
    return timer


@pytest.mark.parametrize("paradigm", ["layer", "channel", "spatial"])
@pytest.mark.parametrize("faster", FORMS)
def test_keeps_the_faster_form_and_the_function(paradigm, faster):
    model = _model(paradigm)
    x = torch.randn(3, 3, 48, 40)
    costs = {form: (1.0 if form == faster else 2.0) for form in FORMS}
    with torch.no_grad():
        expected = model(x)
        chosen = deploy_fastest(model, x, torch.float32, compile=False, timer=_form_timer(costs))
        assert chosen.form == faster and chosen.times_ms == {f: 1e3 * c for f, c in costs.items()}
        assert not chosen.errors
        assert _rel(chosen(x), expected) < 1e-5
        assert isinstance(chosen.run, DeployedModel) and _dense(chosen.run) == (faster == "dense-masked")


@pytest.mark.parametrize("faster", FORMS)
def test_vit_forms(faster):
    pytest.importorskip("timm")
    model = skipping_vit("token+head+layer")
    x = torch.randn(4, 3, 32, 32)
    costs = {form: (1.0 if form == faster else 2.0) for form in FORMS}
    with torch.no_grad():
        expected = model(x)
        chosen = deploy_fastest(model, x, torch.float32, compile=False, timer=_form_timer(costs))
        assert chosen.form == faster and not chosen.errors
        assert isinstance(chosen.run, DeployedViT) and _dense(chosen.run) == (faster == "dense-masked")
        assert _rel(chosen(x), expected) < 1e-5
    with pytest.raises(ValueError, match="this model takes 32x32 images"):
        deploy_fastest(model, torch.randn(2, 3, 40, 40))
    with pytest.raises(ValueError, match="stem and conditional are CNN options"):
        deploy_fastest(model, x, stem="triton")
    with pytest.raises(ValueError, match="stem and conditional are CNN options"):
        deploy_fastest(model, x, conditional=True)


def test_a_form_that_fails_is_left_out_with_its_error():
    model = _model("layer")
    x = torch.randn(2, 3, 32, 32)

    def setup(deployed):
        if any(b.maskers != "reduce" for b in deployed.blocks()):
            raise RuntimeError("cannot capture this one")

    with torch.no_grad():
        chosen = deploy_fastest(model, x, torch.float32, compile=False, setup=setup)
        assert chosen.form == "dense-masked" and list(chosen.times_ms) == ["dense-masked"]
        assert chosen.errors == {"sparse": "RuntimeError: cannot capture this one"}
        assert _rel(chosen(x), model(x)) < 1e-5
        with pytest.raises(RuntimeError, match="no deployment form could be built"):
            deploy_fastest(model, x, torch.float32, compile=False, setup=setup, forms=("sparse",))


def test_setup_runs_on_each_form_before_timing():
    """Decisions imposed by `setup` (as benchmarks do) are what the chosen form computes."""
    model = _model("layer")
    x = torch.randn(4, 3, 32, 32)
    seen = []

    def setup(deployed):
        seen.append(deployed)
        for b in deployed.blocks():
            b.forced_keep = torch.zeros(4, dtype=torch.bool)  # every block skipped

    with torch.no_grad():
        chosen = deploy_fastest(model, x, torch.float32, compile=False, setup=setup)
        assert len(seen) == 2 and chosen.run in seen
        chosen(x)
        assert chosen.run.activation_rates() == [0.0] * len(chosen.run.blocks())


def test_bad_arguments():
    model = _model("layer")
    x = torch.randn(2, 3, 32, 32)
    with pytest.raises(ValueError, match="forms must be a non-empty subset"):
        deploy_fastest(model, x, forms=("fast",))
    with pytest.raises(ValueError, match=r"expected an input of shape \(B, 3, H, W\)"):
        deploy_fastest(model, torch.randn(2, 1, 32, 32))
    with pytest.raises(ValueError, match="eval mode"):
        deploy_fastest(model.train(), x)


@pytest.mark.gpu
@pytest.mark.parametrize("paradigm", ["layer", "token+head+layer"])
def test_deploy_fastest_graphs_both_forms_on_gpu(paradigm):
    """On a GPU both forms are built and captured as CUDA graphs (the ViT's dense-masked form compiled whole), and the
    chosen one computes the eval function in bf16 (with the eval model's decisions imposed: bf16 rounding can flip a
    borderline decision, which is not what this test is about)."""
    vit = "token" in paradigm
    model = (skipping_vit(paradigm) if vit else _model(paradigm)).cuda()
    x = torch.randn(8, 3, 32, 32, device="cuda")

    def setup(deployed):
        if vit:
            impose_model_decisions(deployed, model)
            return
        for block, info in zip(deployed.blocks(), model.collect_info(), strict=True):
            block.forced_keep = info.masks["patch"].view(-1) > 0.5

    with torch.no_grad():
        expected = model(x)
        chosen = deploy_fastest(model, x, compile=vit, repeats=5, setup=setup)
        assert not chosen.errors and set(chosen.times_ms) == set(FORMS)
        assert _rel(chosen(x).float(), expected) < 2e-2
