"""Schedules of a training run: the per-iteration lr (warm-up, cosine, the maskers' multiplier), the Gumbel
temperature and noise, the FLOPs target's warm-up and the per-block FLOPs bounds."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from laudnet.train.build import build_optimizer
from laudnet.train.config import TrainConfig
from laudnet.train.schedules import (
    LRSchedule,
    flops_bounds,
    flops_target,
    gate_noise,
    group_lr,
    gumbel_temperature,
    lr_factor,
)


def test_lr_factor_warmup_then_cosine():
    total, warm = 100, 10
    assert lr_factor(0, total, warm, 0.0) == pytest.approx(0.1)
    assert lr_factor(9, total, warm, 0.0) == pytest.approx(1.0)
    assert lr_factor(10, total, warm, 0.0) == pytest.approx(1.0)
    assert lr_factor(55, total, warm, 0.0) == pytest.approx(0.5)
    assert lr_factor(100, total, warm, 0.1) == pytest.approx(0.1)
    assert lr_factor(32, total, 0, 0.0) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.32)))


def test_group_lr_gives_the_maskers_their_multiplier():
    assert group_lr("backbone", 0.1, 5.0) == 0.1 and group_lr("backbone_no_decay", 0.1, 5.0) == 0.1
    assert group_lr("masker", 0.1, 5.0) == pytest.approx(0.5) and group_lr("masker_no_decay", 0.1, 5.0) == 0.1 * 5.0


def test_lr_schedule_warmup_cosine_and_end():
    schedule = LRSchedule(base_lr=0.2, total_steps=50, warmup_steps=5, min_lr=0.002, masker_lr_mult=3.0)
    lrs = [schedule.lr(s) for s in range(50)]
    assert lrs[0] == pytest.approx(0.2 / 5) and lrs[4] == pytest.approx(0.2)  # linear warm-up to the peak
    assert all(a <= b for a, b in zip(lrs[:5], lrs[1:5], strict=False))
    assert all(a >= b for a, b in zip(lrs[5:], lrs[6:], strict=False))  # then cosine, never rising
    assert schedule.lr(50) == pytest.approx(0.002) and schedule.lr(80) == pytest.approx(0.002)  # min_lr after the end
    for s in (0, 3, 27, 49):
        assert schedule.factor(s) == lr_factor(s, 50, 5, 0.002 / 0.2)
        assert schedule.lr(s, "masker") == pytest.approx(3.0 * schedule.lr(s))


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.masker = nn.Linear(4, 1)


def test_scheduler_sets_every_group_to_the_schedule():
    cfg = TrainConfig(masker_lr_mult=4.0, decay_all=False)
    schedule = LRSchedule(base_lr=0.1, total_steps=12, warmup_steps=3, min_lr=0.001, masker_lr_mult=4.0)
    optimizer = build_optimizer(cfg, _Net(), schedule.base_lr)
    assert [g["name"] for g in optimizer.param_groups] == ["backbone", "backbone_no_decay", "masker", "masker_no_decay"]
    scheduler = schedule.scheduler(optimizer)
    groups = optimizer.param_groups
    for step in range(12):
        # the lr a step uses, exactly as the schedule computes it (a resume's logged lr relies on it)
        assert [g["lr"] for g in groups] == [schedule.lr(step, g["name"]) for g in groups]
        optimizer.step()
        scheduler.step()


def test_scheduler_state_resumes_at_its_step():
    schedule = LRSchedule(base_lr=0.1, total_steps=20, warmup_steps=2, masker_lr_mult=2.0)
    cfg = TrainConfig(masker_lr_mult=2.0)
    first = build_optimizer(cfg, _Net(), 0.1)
    scheduler = schedule.scheduler(first)
    for _ in range(7):
        first.step()
        scheduler.step()
    state = scheduler.state_dict()
    assert state["last_epoch"] == 7 and state["lr_lambdas"] == [None, None]  # only the step count is saved
    again = build_optimizer(cfg, _Net(), 0.1)
    resumed = schedule.scheduler(again)  # as a restore does: build both, then load both
    again.load_state_dict(first.state_dict())
    resumed.load_state_dict(state)
    assert [g["lr"] for g in again.param_groups] == [g["lr"] for g in first.param_groups]
    assert again.param_groups[0]["lr"] == schedule.lr(7)
    again.step()
    resumed.step()
    assert again.param_groups[1]["lr"] == schedule.lr(8, "masker")


def test_lr_schedule_without_warmup_starts_at_the_peak():
    schedule = LRSchedule(base_lr=0.05, total_steps=10)
    assert schedule.lr(0) == 0.05 and schedule.lr(10) == 0.0
    optimizer = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.05)
    schedule.scheduler(optimizer)
    assert optimizer.param_groups[0]["lr"] == 0.05


def test_temperature_schedules():
    assert gumbel_temperature(0, 100) == pytest.approx(5.0)
    assert gumbel_temperature(100, 100) == pytest.approx(0.1)
    assert gumbel_temperature(50, 100) == pytest.approx(5.0 * (0.1 / 5.0) ** 0.5)
    assert gumbel_temperature(50, 100, kind="linear") == pytest.approx(2.55)
    assert gumbel_temperature(50, 100, kind="cosine") == pytest.approx(2.55)
    assert gumbel_temperature(25, 100, kind="cosine") > gumbel_temperature(25, 100, kind="linear")
    with pytest.raises(ValueError, match="unknown temperature schedule 'step'"):
        gumbel_temperature(0, 10, kind="step")


def test_flops_target_warmup():
    assert flops_target(0, 10, 0.5) == flops_target(7.3, 10, 0.5) == 0.5  # no warm-up: the paper
    assert flops_target(0, 10, 0.5, warmup=0.4) == pytest.approx(1.0)
    assert flops_target(2, 10, 0.5, warmup=0.4) == pytest.approx(0.75)  # halfway through the 4 warm-up epochs
    assert flops_target(4, 10, 0.5, warmup=0.4) == flops_target(9, 10, 0.5, warmup=0.4) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="target warm-up must be a fraction"):
        flops_target(0, 10, 0.5, warmup=1.5)


def test_bounds_schedule():
    assert flops_bounds(0, 100, 0.5) == pytest.approx((0.5, 0.5))
    lower, upper = flops_bounds(33, 100, 0.5)
    assert lower == pytest.approx(0.0, abs=1e-12) and upper == pytest.approx(1.0)
    lower, upper = flops_bounds(10, 100, 0.4)
    progress = math.cos(math.pi / 2 * 10 / 33) ** 2
    assert (lower, upper) == pytest.approx((progress * 0.4, 1 - progress * 0.6))


def test_bounds_schedule_with_final_bounds():
    assert flops_bounds(0, 10, 0.5, final=(0.2, 0.9)) == pytest.approx((0.5, 0.5))
    assert flops_bounds(5, 10, 0.5, fraction=0.5, final=(0.2, 0.9)) == pytest.approx((0.2, 0.9))
    progress = math.cos(math.pi / 2 * 0.5) ** 2
    assert flops_bounds(2.5, 10, 0.5, fraction=0.5, final=(0.2, 0.9)) == pytest.approx(
        (0.2 + progress * 0.3, 0.9 - progress * 0.4)
    )
    with pytest.raises(ValueError, match="final block bounds"):
        flops_bounds(0, 10, 0.5, final=(0.6, 0.9))


def test_gate_noise_schedules():
    assert gate_noise(70, 100) == 1.0
    assert gate_noise(0, 100, "linear") == pytest.approx(1.0)
    assert gate_noise(50, 100, "linear") == pytest.approx(0.5)
    assert gate_noise(100, 100, "linear", end=0.2) == pytest.approx(0.2)
    assert gate_noise(25, 100, "cosine") > gate_noise(25, 100, "linear")
    with pytest.raises(ValueError, match="unknown gate-noise schedule 'exp'"):
        gate_noise(0, 10, "exp")


