"""The moving average of the weights: every float tensor of the state averaged (maskers and BN statistics too),
integers copied, the decay warmed up."""

from __future__ import annotations

import pytest
import torch

from laudnet.models import create_model
from laudnet.train.ema import ModelEma


def _model():
    torch.manual_seed(0)
    return create_model("laud_regnety_400mf", paradigm="spatial", granularity=[2, 2, 1, 1], num_classes=10)


def test_update_averages_parameters_and_buffers_of_a_dynamic_model():
    model = _model()
    ema = ModelEma(model, 0.9)
    start = {k: v.clone() for k, v in ema.state_dict().items()}
    assert all(not p.requires_grad for p in ema.module.parameters()) and not ema.module.training
    model.train()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    model(torch.randn(4, 3, 32, 32))  # BN and masker-norm running statistics move, num_batches_tracked counts
    now = model.state_dict()
    ema.update(model, step=0)
    got = ema.state_dict()
    masker_keys = [k for k in got if "masker" in k]
    assert any(k.endswith("masker.conv.weight") for k in masker_keys)
    assert any(k.endswith("masker.norm.running_var") for k in masker_keys)
    for key, value in got.items():
        if value.is_floating_point():
            torch.testing.assert_close(value, 0.9 * start[key] + 0.1 * now[key], rtol=1e-6, atol=1e-6, msg=key)
            if not torch.equal(start[key], now[key]):
                assert not torch.equal(value, start[key]), key
        else:
            assert torch.equal(value, now[key]), key  # num_batches_tracked: copied
    # the average is a copy: training the model again does not move it
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    assert torch.equal(ema.state_dict()[next(iter(now))], got[next(iter(now))])


def test_warmup_and_round_trip():
    model = _model()
    plain, warm = ModelEma(model, 0.999), ModelEma(model, 0.999, warmup=True)
    assert plain.decay_at(0) == plain.decay_at(10**6) == 0.999
    assert warm.decay_at(0) == pytest.approx(0.1) and warm.decay_at(90) == pytest.approx(0.91)
    assert warm.decay_at(10**6) == 0.999  # (1 + k) / (10 + k) passes 0.999 after ~9000 updates
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(2)
    warm.update(model, step=0)  # decay 0.1: most of the way to the model at once
    other = ModelEma(_model(), 0.5)
    other.load_state_dict(warm.state_dict())
    for key, value in warm.state_dict().items():
        assert torch.equal(other.state_dict()[key], value)
    with pytest.raises(ValueError, match="EMA decay must be in"):
        ModelEma(model, 1.0)
