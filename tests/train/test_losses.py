"""The FLOPs-target, bounds and distillation terms, and their composition."""


import pytest
import torch

import laudnet
from laudnet.train.losses import LaudLoss, bounds_loss, distillation_loss, flops_target_loss


def test_per_sample_flops_loss():
    torch.manual_seed(0)
    model = laudnet.create_model("laud_regnety_400mf", paradigm="layer", num_classes=4).eval()
    x, y = torch.randn(8, 3, 32, 32), torch.arange(8) % 4
    for m in model.modules():  # unbiased random maskers: each sample decides otherwise
        if m.__class__.__name__ == "SpatialMasker":
            m.conv.bias.data.zero_()
    logits = model(x)
    per_sample, dense = model.dynamic_flops()
    ratios = per_sample / dense
    assert ratios.std() > 0.01
    batch = LaudLoss(0.5, 10)(logits, y, model)["loss_flops"]
    sample = LaudLoss(0.5, 10, flops_reduction="sample")(logits, y, model)["loss_flops"]
    assert batch.item() == pytest.approx(((ratios.mean() - 0.5) ** 2).item())
    assert sample.item() == pytest.approx(((ratios - 0.5) ** 2).mean().item())
    with pytest.raises(ValueError, match="unknown FLOPs reduction"):
        LaudLoss(0.5, 10, flops_reduction="median")


def test_terms():
    assert flops_target_loss(torch.tensor(0.8), 0.5).item() == pytest.approx(0.09)
    ratios = torch.tensor([0.2, 0.5, 0.9])
    assert bounds_loss(ratios, 0.3, 0.7).item() == pytest.approx((0.1**2 + 0.2**2) / 3)
    z = torch.randn(4, 10)
    assert distillation_loss(z, z).item() == pytest.approx(0.0, abs=1e-6)
    t = torch.randn(4, 10)
    manual = torch.nn.functional.kl_div(
        torch.log_softmax(z / 4, -1), torch.softmax(t / 4, -1), reduction="batchmean"
    ) * 16
    assert distillation_loss(z, t).item() == pytest.approx(manual.item())


def test_composed_loss_and_its_gradient_reaches_maskers():
    model = laudnet.create_model("laud_regnety_400mf", paradigm="layer", num_classes=4).train()
    x, y = torch.randn(3, 3, 32, 32), torch.tensor([0, 1, 2])
    logits = model(x)
    crit = LaudLoss(target=0.5, total_epochs=10, lambda_flops=10.0, alpha_kd=0.5)
    out = crit(logits, y, model, epoch=0, teacher_logits=torch.randn(3, 4))
    assert set(out) == {"loss", "loss_cls", "loss_flops", "loss_bounds", "loss_distill", "flops_ratio"}
    expected = out["loss_cls"] + 0.5 * out["loss_distill"] + 10.0 * (out["loss_flops"] + out["loss_bounds"])
    assert out["loss"].item() == pytest.approx(expected.item())
    per_sample, dense = model.dynamic_flops()
    assert out["flops_ratio"].item() == pytest.approx(per_sample.mean().item() / dense)
    assert out["flops_ratio"] > 0.9  # maskers start by executing everything
    out["loss_flops"].backward()
    assert all(p.grad is not None for p in model.masker_parameters())


def test_static_model_has_no_flops_terms():
    model = laudnet.create_model("laud_resnet50", paradigm="static", num_classes=3)
    out = LaudLoss(0.5, 10)(model(torch.randn(2, 3, 32, 32)), torch.tensor([0, 1]), model)
    assert out["loss_flops"] == 0 and out["loss_bounds"] == 0 and out["loss"] == out["loss_cls"]


@pytest.mark.parametrize("target", [0.0, 1.5, -0.1])
def test_target_outside_unit_interval(target):
    with pytest.raises(ValueError, match=r"target FLOPs ratio must be in \(0, 1\]"):
        LaudLoss(target, 10)


def test_target_warmup_moves_the_flops_term_and_the_bounds():
    """With a target warm-up the FLOPs term pulls to the current target and the bounds pin every block to it; after
    the warm-up both are the paper's."""
    torch.manual_seed(0)
    model = laudnet.create_model("laud_regnety_400mf", paradigm="layer", num_classes=4).eval()
    logits, y = model(torch.randn(4, 3, 32, 32)), torch.arange(4)
    ratio = model.dynamic_flops()[0].mean() / model.dynamic_flops()[1]
    block = torch.stack([i.mean_flops / i.dense_flops for i in model.collect_info() if i.paradigm != "static"])
    crit = LaudLoss(0.5, 10, target_warmup=0.5)
    for epoch, target in ((0, 1.0), (2.5, 0.75), (5, 0.5), (8, 0.5)):
        out = crit(logits, y, model, epoch=epoch)
        assert crit.target_at(epoch) == pytest.approx(target)
        assert out["loss_flops"].item() == pytest.approx(((ratio - target) ** 2).item(), rel=1e-5)
    at_start = crit(logits, y, model, epoch=0)["loss_bounds"]
    assert at_start.item() == pytest.approx(bounds_loss(block, 1.0, 1.0).item(), rel=1e-5)
    narrow = LaudLoss(0.5, 10, target_warmup=0.5, final_bounds=(0.2, 0.8))  # the pin stays inside the final bounds
    assert narrow(logits, y, model, epoch=0)["loss_bounds"].item() == pytest.approx(
        bounds_loss(block, 0.8, 0.8).item(), rel=1e-5)
    with pytest.raises(ValueError, match="target warm-up"):
        LaudLoss(0.5, 10, target_warmup=-0.1)
