"""BN recalibration: after it, a BN layer's running statistics are the batch statistics of what it sees under the
decisions eval makes; the maskers (their input normalisation included) are left as trained."""

from __future__ import annotations

import copy

import pytest
import torch

from laudnet.models import create_model
from laudnet.train.recalibration import recalibrate_bn, recalibrated_norms

# Stage 3's first conv-BN: its input is the output of stage 2's masked blocks, so it depends on their decisions.
LAYER = "trunk_output.block3.block3-0.f.a.1"


@pytest.fixture
def trained():
    """A small spatial model whose maskers skip part of the patches (random weights, no execute bias) and whose
    running statistics come from training-mode forwards with Gumbel noise."""
    torch.manual_seed(0)
    model = create_model("laud_regnety_400mf", paradigm="spatial", granularity=[2, 2, 1, 1], num_classes=10)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "masker.conv" in name:
                p.copy_(torch.randn_like(p) * 0.5 if name.endswith("weight") else torch.zeros_like(p))
    model.train()
    model.set_gate_noise(1.0)
    with torch.no_grad():
        for _ in range(3):
            model(torch.rand(16, 3, 64, 64) * 2)
    return model


def _masks(model):
    return [info.masks["patch"].clone() for info in model.collect_info()]


def _input_of(model, name, images):
    seen = []
    handle = dict(model.named_modules())[name].register_forward_hook(lambda _m, args, _out: seen.append(args[0]))
    with torch.no_grad():
        model(images)
    handle.remove()
    return seen[0]


def test_running_stats_are_the_batch_statistics_under_eval_decisions(trained):
    model = trained
    bn = dict(model.named_modules())[LAYER]
    norms_before = {n: copy.deepcopy(m.state_dict()) for n, m in model.named_modules() if n.endswith("masker.norm")}
    stale = bn.running_mean.clone(), bn.running_var.clone()
    images = torch.rand(32, 3, 64, 64) * 2
    during = []
    done = recalibrate_bn(model, [images], lambda m, batch: (m(batch), during.append(_masks(m))))
    assert done == 1 and model.training and bn.momentum == 0.1  # modes and momenta restored
    assert int(bn.num_batches_tracked) == 1

    model.eval()
    x = _input_of(model, LAYER, images).double()
    eval_masks = _masks(model)
    # The decisions upstream of the layer (stages 1 and 2) during the recalibration are the ones eval makes now; some
    # patches are skipped, some computed. (Further down a few decisions near their threshold may flip: eval
    # normalises with the running statistics, the recalibration with the batch's, ~1/(8·8·32) apart.)
    upstream = [i for i, info in enumerate(model.collect_info()) if "block1-" in info.name or "block2-" in info.name]
    assert len(upstream) == 4
    for i in upstream:
        assert torch.equal(during[0][i], eval_masks[i])
    decided = torch.cat([eval_masks[i].flatten() for i in upstream[1:]])
    assert 0.2 < float(decided.mean()) < 0.8
    # By hand: the per-channel mean and (unbiased) variance of the layer's input under those decisions, in units of
    # the channel's standard deviation.
    mean, var = x.mean((0, 2, 3)), x.var((0, 2, 3), unbiased=True)
    std = var.sqrt()

    def off(stats):
        return float(((stats[0].double() - mean) / std).abs().max()), float((stats[1].double() / var - 1).abs().max())

    got = off((bn.running_mean, bn.running_var))
    assert got[0] < 5e-3 and got[1] < 1e-2, got
    before = off(stale)
    assert before[0] > 0.3 and before[1] > 0.3, before  # the training statistics were far from them
    # The maskers' input normalisation keeps its trained statistics.
    for name, state in norms_before.items():
        for key, value in dict(model.named_modules())[name].state_dict().items():
            assert torch.equal(value, state[key]), (name, key)


def test_several_batches_give_the_mean_of_their_statistics(trained):
    model = trained
    model.set_gate_noise(1.0)  # the maskers must decide without it
    batches = [torch.rand(8, 3, 64, 64) * (1 + k) for k in range(3)]
    twin = copy.deepcopy(model)
    seen = []
    bn = dict(model.named_modules())[LAYER]
    handle = bn.register_forward_hook(lambda _m, args, _out: seen.append(args[0].double()))
    assert recalibrate_bn(model, batches, lambda m, batch: m(batch)) == 3
    handle.remove()
    assert int(bn.num_batches_tracked) == 3
    means = torch.stack([x.mean((0, 2, 3)) for x in seen]).mean(0)
    variances = torch.stack([x.var((0, 2, 3), unbiased=True) for x in seen]).mean(0)
    torch.testing.assert_close(bn.running_mean.double(), means, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(bn.running_var.double(), variances, rtol=1e-5, atol=1e-6)
    # Deterministic: the same batches give the same statistics again (no Gumbel noise, no dependence on the old ones).
    with torch.no_grad():
        for m in recalibrated_norms(twin):
            m.running_mean.add_(3.0)
    recalibrate_bn(twin, batches, lambda m, batch: m(batch))
    for (name, a), b in zip(model.state_dict().items(), twin.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_recalibrated_norms_leave_out_the_maskers(trained):
    names = {id(m): n for n, m in trained.named_modules()}
    picked = [names[id(m)] for m in recalibrated_norms(trained)]
    assert "stem.1" in picked and LAYER in picked and not [n for n in picked if "masker" in n]
    vit = create_model("laud_deit_tiny", paradigm="token", num_classes=10)
    assert recalibrated_norms(vit) == []
    assert recalibrate_bn(vit, [torch.zeros(1)], lambda m, batch: pytest.fail("no BN layer: nothing to run")) == 0
