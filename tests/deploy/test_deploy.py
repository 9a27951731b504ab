"""`laudnet.deploy`: the inference form computes the eval-mode function of the trained model."""

import functools

import pytest
import torch
from helpers import randomize_batchnorm

import laudnet
from laudnet.deploy import deploy, fold_conv_bn


def _trained_like(name, paradigm, std=0.5, **kw):
    """A model whose maskers actually skip (random masker weights) and whose BN is not the identity."""
    model = laudnet.create_model(name, paradigm=paradigm, num_classes=10, **kw)
    randomize_batchnorm(model)
    for n, p in model.named_parameters():
        if "masker" in n and p.dim() > 1:
            torch.nn.init.normal_(p, std=std)
    return model.eval()


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def test_fold_conv_bn():
    conv = torch.nn.Conv2d(4, 6, 3, padding=1, bias=False)
    bn = randomize_batchnorm(torch.nn.Sequential(torch.nn.BatchNorm2d(6)))[0].eval()
    x = torch.randn(2, 4, 5, 5)
    torch.testing.assert_close(fold_conv_bn(conv, bn)(x), bn(conv(x)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", [n for n in laudnet.list_models() if not laudnet.model_info(n).is_vit])
@pytest.mark.parametrize("paradigm", ["static", "spatial", "channel", "layer"])
def test_deployed_equals_eval_model_fp32(name, paradigm):
    model = _trained_like(name, paradigm)
    x = torch.randn(5, 3, 72, 88)
    with torch.no_grad():
        expected = model(x)
        deployed = deploy(model, torch.float32)
        out = deployed(x)
    assert _rel(out, expected) < 1e-5
    if paradigm != "static":
        rates = deployed.activation_rates()
        assert any(0 < r < 1 for r in rates) or (any(r == 0 for r in rates) and any(r == 1 for r in rates))
        expected_rates = [float(i.density.get("conv3", i.density.get("channel"))) for i in model.collect_info()]
        assert rates == pytest.approx(expected_rates, abs=1e-6) if paradigm != "spatial" else True


@pytest.mark.parametrize("dense_above", [0.0, 0.5, 1.0])
def test_layer_paths_agree_whatever_the_threshold(dense_above):
    model = _trained_like("laud_resnet50", "layer")
    x = torch.randn(7, 3, 64, 64)
    with torch.no_grad():
        out = deploy(model, torch.float32, dense_above=dense_above)(x)
        assert _rel(out, model(x)) < 1e-5


@pytest.mark.parametrize("value", [0, 1])
def test_all_or_nothing_layer_decisions(value):
    model = _trained_like("laud_regnety_400mf", "layer")
    deployed = deploy(model, torch.float32)
    for b in deployed.blocks():
        b.masker_w.zero_()
        b.masker_b.fill_(1.0 if value else -1.0)
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad(), laudnet.mask_override(model, value):
        assert _rel(deployed(x), model(x)) < 1e-5
    assert deployed.activation_rates() == [float(value)] * len(deployed.blocks())


def test_deploy_leaves_the_model_unchanged_and_checks_input():
    model = _trained_like("laud_resnet50", "spatial")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    deployed = deploy(model, torch.float32)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match=r"expected an input of shape \(B, 3, H, W\)"):
        deployed(torch.randn(1, 4, 32, 32))
    with pytest.raises(ValueError, match="dense_above has 2 values for 16 blocks"):
        deploy(model, dense_above=[0.5, 0.5])
    with pytest.raises(TypeError, match="expects a LAUD model"):
        deploy(torch.nn.Linear(2, 2))


def test_spatial_sparse_conv1_agrees():
    model = _trained_like("laud_resnet50", "spatial", granularity="2-2-2-1")
    x = torch.randn(3, 3, 60, 52)
    with torch.no_grad():
        out = deploy(model, torch.float32, spatial_conv1="sparse")(x)
        assert _rel(out, model(x)) < 1e-5
    with pytest.raises(ValueError, match="spatial_conv1 must be 'dense' or 'sparse'"):
        deploy(model, spatial_conv1="halo")


def test_compile_shape_modes():
    """`compile=True` is the dynamic-shape branch function, `"static"` the specialised one (not called here: Inductor
    on CPU needs a C++ toolchain); anything else is refused by name."""
    from laudnet.deploy.blocks import compiled_residual_branch

    model = _trained_like("laud_resnet50", "channel")
    for mode, shapes in ((True, "dynamic"), ("dynamic", "dynamic"), ("static", "static")):
        fn = compiled_residual_branch(shapes)
        assert all(b.branch_fn is fn for b in deploy(model, torch.float32, compile=mode).blocks())
    assert compiled_residual_branch("static") is not compiled_residual_branch("dynamic")
    with pytest.raises(ValueError, match="compile must be True, False or one of"):
        deploy(model, compile="max-autotune")


@pytest.mark.gpu
@pytest.mark.parametrize("paradigm", ["spatial", "channel", "layer"])
def test_deployed_bf16_kernels_and_graph_on_gpu(paradigm):
    """On a GPU the fused Triton kernels run: with the eval model's decisions imposed (bf16 rounding can flip a
    borderline decision, which is not what this test is about), the bf16 output and its CUDA-graph replay match the
    fp32 eval model."""
    model = _trained_like("laud_resnet50", paradigm).cuda()
    x = torch.randn(8, 3, 96, 112, device="cuda")
    deployed = deploy(model, torch.bfloat16)
    with torch.no_grad():
        expected = model(x)
    for block, info in zip(deployed.blocks(), model.collect_info(), strict=True):
        masks = info.masks
        keep = masks["channel"] if paradigm == "channel" else masks["patch"][:, 0]
        block.forced_keep = (keep.view(-1) if paradigm == "layer" else keep) > 0.5
    with torch.no_grad():
        out = deployed(x).float()
        graphed = deployed.graphed(x)(x).float()
    assert _rel(out, expected) < 2e-2
    torch.testing.assert_close(graphed, out)


@pytest.mark.parametrize("paradigm", ["spatial", "channel", "layer"])
def test_tuned_paths_are_measured_and_keep_the_function(paradigm):
    from laudnet.deploy import tune_paths

    model = _trained_like("laud_resnet50", paradigm)
    x = torch.randn(4, 3, 64, 64)
    deployed = deploy(model, torch.float32)
    timed = []

    def fake_timer(fn, device, repeats):
        block = fn.__defaults__[0]  # tune_paths times `lambda b=block, x=x, s=sums: b.forward_chained(...)`
        fn()
        timed.append(block.path)
        return 1.0 if block.path == "dense" else 2.0  # dense "measures" faster everywhere

    chosen = tune_paths(deployed, x, timer=fake_timer)
    assert chosen == ["dense"] * 16 and timed == ["sparse", "dense"] * 16
    with torch.no_grad():
        assert _rel(deployed(x), model(x)) < 1e-5
    real = tune_paths(deployed, x, repeats=1)  # the wall-clock timer on CPU: any choice, but a valid one
    assert set(real) <= {"sparse", "dense"}


def test_graphed_tuning_needs_a_gpu():
    from laudnet.deploy import tune_paths

    deployed = deploy(_trained_like("laud_resnet50", "layer"), torch.float32)
    with pytest.raises(ValueError, match="graphed=True.*CUDA input"):
        tune_paths(deployed, torch.randn(2, 3, 64, 64), graphed=True)


@pytest.mark.gpu
@pytest.mark.parametrize(("paradigm", "compile"), [("spatial", False), ("channel", False), ("layer", False),
                                                   ("spatial", True), ("channel", True), ("channel", "static")])
def test_graphed_tuning_on_gpu_keeps_the_function(paradigm, compile):
    """Each block and path is timed from its own CUDA graph; whatever is chosen, the graphed model still computes the
    same function (decisions imposed, as in the bf16 test above). With `compile`, the dense-masked path runs through
    the compiled functional bottleneck."""
    from laudnet.deploy import tune_paths

    model = _trained_like("laud_resnet50", paradigm).cuda()
    x = torch.randn(4, 3, 64, 64, device="cuda")
    deployed = deploy(model, torch.bfloat16, compile=compile)
    with torch.no_grad():
        expected = model(x)
    for block, info in zip(deployed.blocks(), model.collect_info(), strict=True):
        keep = info.masks["channel"] if paradigm == "channel" else info.masks["patch"][:, 0]
        block.forced_keep = (keep.view(-1) if paradigm == "layer" else keep) > 0.5
    timed = []

    def timer(fn, device, repeats):
        timed.append(fn)
        fn()
        return 1.0 if len(timed) % 2 == 0 else 2.0  # dense (timed second) "wins" everywhere

    chosen = tune_paths(deployed, x, timer=timer, graphed=True)
    assert chosen == ["dense"] * len(chosen) and all(getattr(f, "__self__", None) is not None for f in timed)
    with torch.no_grad():
        assert _rel(deployed.graphed(x)(x).float(), expected) < 2e-2
    assert set(tune_paths(deployed, x, repeats=2, graphed=True)) <= {"sparse", "dense"}  # real CUDA-event timings


def test_laudnet_deploy_is_callable_after_the_package_is_imported():
    # Importing any submodule binds the name `laudnet.deploy` to the package; the function must stay reachable.
    import laudnet.deploy.vit  # noqa: F401

    model = laudnet.create_model("laud_resnet50", paradigm="layer").eval()
    first, second = laudnet.deploy(model, torch.float32), laudnet.deploy(model, torch.float32)
    assert type(first).__name__ == type(second).__name__ == "DeployedModel"
    assert laudnet.deploy.DeployedModel is type(first)  # and it is still the package


@pytest.mark.parametrize("name", ["laud_resnet50", "laud_regnety_400mf"])
@pytest.mark.parametrize("impl", ["reference", "triton"])
def test_triton_stem_keeps_the_function(name, impl, monkeypatch):
    """`deploy(stem="triton")`: the stem's conv + ReLU as one kernel (interpreted on CPU) or its reference, the same
    function; RegNet's 3x3 stem too."""
    if impl == "triton":  # the stem kernel interpreted, the blocks on their (CPU) reference paths
        pytest.importorskip("triton")
        from laudnet.deploy import stem
        from laudnet.kernels import dispatch

        monkeypatch.setenv("TRITON_INTERPRET", "1")
        monkeypatch.setattr(stem.dispatch, "stem_conv", functools.partial(dispatch.stem_conv, impl="triton"))
    model = _trained_like(name, "layer")
    x = torch.randn(2, 3, 40, 36)
    with torch.no_grad():
        expected = model(x)
        deployed = deploy(model, torch.float32, stem="triton")
        assert type(deployed.stem[0]).__name__ == "TritonStemConv"
        assert _rel(deployed(x), expected) < 1e-5


def test_triton_stem_is_one_op_in_a_compiled_graph():
    """The stem kernel is a custom op: the dense-masked network still traces as one graph."""
    from laudnet.deploy import deploy_dense_masked

    deployed = deploy_dense_masked(_trained_like("laud_resnet50", "channel"), torch.float32, stem="triton")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        explained = torch._dynamo.explain(deployed)(x)
    torch._dynamo.reset()
    assert explained.graph_count == 1 and explained.graph_break_count == 0, explained.break_reasons


def test_stem_option_is_checked():
    model = _trained_like("laud_resnet50", "layer")
    with pytest.raises(ValueError, match="stem must be one of"):
        deploy(model, stem="fast")


def test_default_stem_is_cudnn_off_the_gpu():
    """stem="auto" (the default) takes the Triton kernel on a CUDA device only: on the CPU, PyTorch's conv."""
    deployed = deploy(_trained_like("laud_resnet50", "layer"), torch.float32)
    assert isinstance(deployed.stem[0], torch.nn.Conv2d)


@pytest.mark.gpu
def test_default_stem_is_triton_on_the_gpu():
    deployed = deploy(_trained_like("laud_resnet50", "layer").cuda(), torch.bfloat16)
    assert type(deployed.stem[0]).__name__ == "TritonStemConv"


@pytest.mark.gpu
@pytest.mark.parametrize("compile", [False, True])
def test_triton_stem_on_gpu(compile):
    """The stem kernel compiled for the GPU, eagerly, inside `torch.compile` (a custom op) and in a CUDA graph."""
    model = _trained_like("laud_resnet50", "static").cuda()
    x = torch.randn(8, 3, 96, 112, device="cuda")
    with torch.no_grad():
        expected = model(x)
        deployed = deploy(model, torch.bfloat16, stem="triton", compile=compile)
        out = deployed(x).float()
        graphed = deployed.graphed(x)(x).float()
    assert _rel(out, expected) < 2e-2
    torch.testing.assert_close(graphed, out)
