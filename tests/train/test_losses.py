"""The FLOPs-target, bounds and distillation terms, and their composition."""

import math

import pytest
import torch

import laudnet
from laudnet.train.losses import LaudLoss, bounds_loss, distillation_loss, flops_target_loss
from laudnet.train.schedules import flops_bounds, gumbel_temperature


def test_temperature_schedules():
    assert gumbel_temperature(0, 100) == pytest.approx(5.0)
    assert gumbel_temperature(100, 100) == pytest.approx(0.1)
    assert gumbel_temperature(50, 100) == pytest.approx(5.0 * (0.1 / 5.0) ** 0.5)
    assert gumbel_temperature(50, 100, kind="linear") == pytest.approx(2.55)
    assert gumbel_temperature(50, 100, kind="cosine") == pytest.approx(2.55)
    assert gumbel_temperature(25, 100, kind="cosine") > gumbel_temperature(25, 100, kind="linear")
    with pytest.raises(ValueError, match="unknown temperature schedule 'step'"):
        gumbel_temperature(0, 10, kind="step")


def test_bounds_schedule():
    assert flops_bounds(0, 100, 0.5) == pytest.approx((0.5, 0.5))
    lower, upper = flops_bounds(33, 100, 0.5)
    assert lower == pytest.approx(0.0, abs=1e-12) and upper == pytest.approx(1.0)
    lower, upper = flops_bounds(10, 100, 0.4)
    progress = math.cos(math.pi / 2 * 10 / 33) ** 2
    assert (lower, upper) == pytest.approx((progress * 0.4, 1 - progress * 0.6))


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
