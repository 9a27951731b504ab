"""The FLOPs loss drives a fresh dynamic network from executing everything towards the target ratio."""

from __future__ import annotations

import pytest

from laudnet.train.config import TrainConfig
from laudnet.train.loop import train


def _run(tmp_path, fashion_root, **overrides):
    cfg = TrainConfig(
        model="laud_regnety_400mf", mode="dynamic", paradigm="spatial", granularity=[2, 2, 1, 1], target=0.5,
        dataset="fashion-canvas", data_root=str(fashion_root), image_size=32, train_subset=96, val_subset=64,
        batch_size=16, epochs=4, lr=0.05, workers=0, progress=False, output=str(tmp_path), run_name="flops",
        **overrides,
    )
    ratios = []
    result = train(cfg, on_step=lambda s: ratios.append(s.metrics["flops_ratio"]), log=None)
    assert len(ratios) == 24
    assert ratios[0] > 0.9  # the maskers start by executing (almost) everything
    return ratios, result.last_eval.flops_ratio


def test_flops_ratio_reaches_target_with_the_papers_maskers(tmp_path, fashion_root):
    ratios, eval_ratio = _run(tmp_path, fashion_root, masker_norm=False, noise_schedule="constant")
    assert sum(ratios[-3:]) / 3 == pytest.approx(0.5, abs=0.1)  # sampled (Gumbel) decisions at the end
    # Deterministic decisions on the val set: after 24 steps, thresholding the logits lands within about ±0.12 of the
    # sampled ratio, depending on the platform's float summation order (0.39 to 0.46 measured on two CPU machines).
    assert eval_ratio == pytest.approx(0.5, abs=0.15)


def test_flops_ratio_falls_with_the_default_maskers(tmp_path, fashion_root):
    # With input normalisation the FLOPs term moves the maskers' biases only (not their weights), so it is slower:
    # 24 steps take a network trained from scratch to about 0.7 (1.0 at the start), a longer run to the target.
    ratios, eval_ratio = _run(tmp_path, fashion_root, masker_lr_mult=5.0)
    assert sum(ratios[-3:]) / 3 < 0.8
    assert eval_ratio < 0.85
