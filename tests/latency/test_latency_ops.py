"""Operator models: helpers, load imbalance, monotonicity, tensor cores, transformer ops."""

import random

import pytest

from laudnet.latency.hardware import load_hardware
from laudnet.latency.ops import ceil_eff, expected_max_density, get_op_model, mem_eff, tile_candidates


def test_helpers():
    assert ceil_eff(100, 64) == pytest.approx(100 / 128)
    assert mem_eff(4, 2, 5) == pytest.approx(4 / 5)
    assert mem_eff(4, 2, 6) == pytest.approx(4 / 6)
    assert mem_eff(4, 0, 3) == pytest.approx(4 / 6)
    assert set(tile_candidates(1)) == {1, 2}
    assert set(tile_candidates(7)) == {1, 2, 3, 4, 5, 6, 7, 8}
    assert set(tile_candidates(56)) == {1, 2, 4, 8, 16, 32, 64, 56, 28, 19, 14, 12, 10, 3, 5, 6, 7}


def _monte_carlo(n_tiles, c_tile, p, group, trials=4000, seed=0):
    rng = random.Random(seed)
    total = 0.0
    for _ in range(trials):
        runs = [rng.random() < p for _ in range(-(-n_tiles * c_tile // group))]
        chans = [r for r in runs for _ in range(group)][: n_tiles * c_tile]
        total += max(sum(chans[t * c_tile:(t + 1) * c_tile]) for t in range(n_tiles)) / c_tile
    return max(p, total / trials)


@pytest.mark.parametrize("n_tiles,c_tile,p,group", [(4, 16, 0.5, 1), (8, 8, 0.25, 1), (2, 64, 0.3, 4), (4, 8, 0.5, 8),
                                                    (8, 4, 0.5, 16)])
def test_expected_max_density_matches_monte_carlo(n_tiles, c_tile, p, group):
    assert expected_max_density(n_tiles, c_tile, p, group) == pytest.approx(_monte_carlo(n_tiles, c_tile, p, group),
                                                                            abs=0.01)


def test_expected_max_density_edges_and_monotone():
    assert expected_max_density(4, 16, 1.0) == 1.0
    assert expected_max_density(4, 16, 0.0) == 0.0
    assert expected_max_density(1, 16, 0.5) == pytest.approx(0.5)  # one tile: no imbalance
    values = [expected_max_density(8, 32, p / 10) for p in range(11)]
    assert values == sorted(values)
    # coarser groups imbalance more
    assert expected_max_density(8, 32, 0.5, 8) > expected_max_density(8, 32, 0.5, 1)


@pytest.mark.parametrize("compat", [False, True])
def test_conv_monotone_in_work(compat):
    op = get_op_model(load_hardware("v100"), 8, compat)
    assert op.conv(64, 64, 28, 28, 3).latency < op.conv(64, 128, 28, 28, 3).latency
    assert op.conv(64, 64, 28, 28, 3).latency < get_op_model(load_hardware("v100"), 16, compat).conv(
        64, 64, 28, 28, 3).latency
    sparse = [op.gather_conv(64, 64, 28, 28, 3, 1, 1, 4, n, gathered_input=True).latency for n in (1, 10, 25, 49)]
    assert sparse == sorted(sparse)
    masked = [op.conv(64, 64, 28, 28, 3, in_density=d, out_density=d).latency for d in (0.25, 0.5, 1.0)]
    assert masked == sorted(masked)


def test_tensor_cores_speed_up_convs():
    h100 = load_hardware("h100")
    bf16 = get_op_model(h100, 128).conv(256, 256, 14, 14, 3)
    fp32 = get_op_model(h100.with_precision("fp32"), 128).conv(256, 256, 14, 14, 3)
    assert bf16.compute < fp32.compute / 4
    assert bf16.latency < fp32.latency


def test_compat_requires_fp32():
    with pytest.raises(ValueError, match="FP32"):
        get_op_model(load_hardware("h100"), 1, True)
    with pytest.raises(ValueError, match="batch"):
        get_op_model(load_hardware("v100"), 0)


def test_transformer_ops():
    op = get_op_model(load_hardware("h100"), 64)
    full = op.attention(197, 384, 6)
    assert op.attention(197, 384, 6, head_density=0.5).latency < full.latency
    assert op.attention(99, 384, 6).latency < full.latency
    assert op.mlp(197, 384, 1536).latency > op.mlp(99, 384, 1536).latency > 0
    assert 0 < op.token_gather(197, 99, 384).latency < op.mlp(197, 384, 1536).latency
    assert op.softmax(197, 197).launches == 1 and op.layernorm(197, 384).launches == 1
    # per-sample activations as right operands: a larger batch costs more than proportionally less
    small = get_op_model(load_hardware("h100"), 1).batched_matmul(6, 197, 64, 197)
    assert full.latency > small.latency > 0


def test_transformer_block_skipping_saves_time():
    from laudnet.latency.blocks import transformer_block

    for compat, hw in ((False, "h100"), (True, "v100")):
        op = get_op_model(load_hardware(hw), 64, compat)
        full = transformer_block(op, 197, 384, 6).latency
        for kwargs in ({"token_density": 0.5}, {"head_density": 0.5}, {"attn_density": 0.5}, {"mlp_density": 0.0}):
            assert transformer_block(op, 197, 384, 6, **kwargs).latency < full, kwargs
        with pytest.raises(ValueError, match="token_density"):
            transformer_block(op, 197, 384, 6, token_density=1.5)


def test_gather_scatter_costs_grow_with_moved_data():
    op = get_op_model(load_hardware("v100"), 32)
    g = [op.gather(256, 56, 56, 4, n).latency for n in (1, 49, 196)]
    assert g == sorted(g) and g[0] < g[-1]
    assert op.gather(256, 56, 56, 4, 49, halo=1).latency > op.gather(256, 56, 56, 4, 49).latency
    s = [op.scatter(256, 56, 56, 4, n).latency for n in (1, 49, 196)]
    assert s == sorted(s) and s[0] < s[-1]
    assert op.copy_samples(256, 56, 56).latency < op.with_batch(64).copy_samples(256, 56, 56).latency
