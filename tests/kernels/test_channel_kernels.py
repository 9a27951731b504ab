"""Channel-skipping kernels (laudnet.kernels.channel) against the reference, and the reference against dense masking.

Without CUDA the Triton kernels run under TRITON_INTERPRET=1 (set before triton is imported) on tiny odd shapes in
float32; with CUDA the same tests run the compiled kernels, and the `gpu` tests add bf16 at bottleneck sizes.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from laudnet.kernels import channel as ch  # noqa: E402
from laudnet.kernels import channel_ref as ref  # noqa: E402
from laudnet.kernels import indexing  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# float32 under the interpreter is exact to rounding; on a GPU tl.dot runs float32 as tf32
TOL = 1e-5 if DEVICE == "cpu" else 2e-3

# (G, n_groups): widths 10, 10, 12 with groups of 1, 2, 4 channels
GROUPINGS = [(1, 10), (2, 5), (4, 3)]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative RMS error ||a - b|| / ||b|| in float64 (0 when both are 0)."""
    a, b = a.double(), b.double()
    assert torch.isfinite(a).all(), "non-finite values in the kernel output"
    denom = b.norm().item()
    return (a - b).norm().item() / denom if denom else (a - b).norm().item()


def make_mask(n: int, n_groups: int, seed: int) -> torch.Tensor:
    """Random group mask whose first samples are: all active, none active, exactly one group active."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(n, n_groups, generator=g) < 0.5
    mask[0] = True
    if n > 1:
        mask[1] = False
    if n > 2:
        mask[2] = False
        mask[2, n_groups // 2] = True
    return mask


def make_block(cin: int, width: int, cout: int, seed: int, dtype=torch.float32, device=DEVICE):
    """Folded bottleneck weights in PyTorch layouts; biases centred so that ReLU zeroes part of the outputs."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale):
        return (torch.randn(*shape, generator=g) * scale).to(device=device, dtype=dtype)

    w1 = rnd(width, cin, scale=cin**-0.5)
    w2 = rnd(width, width, 3, 3, scale=(9 * width) ** -0.5)
    w3 = rnd(cout, width, scale=width**-0.5)
    return w1, rnd(width, scale=0.3), w2, rnd(width, scale=0.3), w3, rnd(cout, scale=0.3)


def nhwc(n, h, w, c, seed, dtype=torch.float32, device=DEVICE):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, h, w, c, generator=g).to(device=device, dtype=dtype)


# ----------------------------------------------------------------------------------------------------------------
# reference proven against the dense masked computation (pure torch, fast)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("group_size,n_groups", GROUPINGS)
def test_reference_chain_equals_dense_masked(group_size, n_groups, stride):
    width, cin, cout = group_size * n_groups, 19, 21
    mask = make_mask(4, n_groups, seed=group_size)
    x = nhwc(4, 5, 7, cin, seed=1, device="cpu")
    w1, b1, w2, b2, w3, b3 = make_block(cin, width, cout, seed=2, device="cpu")
    ho, wo = (5 - 1) // stride + 1, (7 - 1) // stride + 1
    residual = nhwc(4, ho, wo, cout, seed=3, device="cpu")
    h1_d, h2_d, out_d = ref.dense_masked_bottleneck_ref(
        x, w1, b1, w2, b2, w3, b3, mask, group_size, stride=stride, residual=residual
    )
    idx, counts = ref.channel_index_ref(mask, group_size)
    h1 = ref.channel_conv1x1_out_ref(x, w1, b1, idx, counts)
    h2 = ref.channel_conv3x3_ref(h1, w2, b2, idx, counts, stride)
    out = ref.channel_conv1x1_in_ref(h2, w3, b3, idx, counts, residual)
    assert rel_err(h1, indexing.compact_channels(h1_d, idx, counts)) < 1e-6
    assert rel_err(h2, indexing.compact_channels(h2_d, idx, counts)) < 1e-6
    assert rel_err(out, out_d) < 1e-6
    # the compacted form holds every nonzero of the dense masked tensor: skipped channels are exactly zero there
    assert (h1_d * ~indexing.expand_channel_mask(mask, group_size)[:, None, None, :]).abs().max() == 0
    assert h1_d[0].abs().sum() > 0 and h2_d[0].abs().sum() > 0  # the test data does exercise ReLU's positive side
    # a sample with no active channel: relu(residual + b3)
    torch.testing.assert_close(out[1], torch.relu(residual[1] + b3), rtol=0, atol=1e-6)


def test_reference_index_matches_mask():
    mask = make_mask(5, 6, seed=0)
    idx, counts = ref.channel_index_ref(mask, 3)
    chan = indexing.expand_channel_mask(mask, 3)
    assert idx.shape[1] == 32  # sample 0 keeps all 18 channels; rounded up to a multiple of 16
    for i in range(5):
        active = torch.nonzero(chan[i]).flatten()
        assert counts[i] == active.numel()
        assert torch.equal(idx[i, : counts[i]].long(), active)
        assert (idx[i, counts[i] :] == 0).all()


# ----------------------------------------------------------------------------------------------------------------
# channel_index


@pytest.mark.parametrize("group_size,n_groups", [*GROUPINGS, (3, 5), (1, 1)])
def test_channel_index_kernel(group_size, n_groups):
    mask = make_mask(4, n_groups, seed=n_groups).to(DEVICE)
    for kmax in (None, n_groups * group_size, 40):
        idx, counts = ch.channel_index(mask, group_size, kmax=kmax, impl="triton")
        idx_r, counts_r = ref.channel_index_ref(mask.cpu(), group_size, kmax=kmax)
        assert idx.dtype == torch.int32 and counts.dtype == torch.int32
        assert torch.equal(idx.cpu(), idx_r) and torch.equal(counts.cpu(), counts_r)


def test_channel_index_errors():
    mask = make_mask(3, 4, seed=0)
    with pytest.raises(ValueError, match="bool"):
        ch.channel_index(mask.float(), 2)
    with pytest.raises(ValueError, match="positive"):
        ch.channel_index(mask, 0)
    with pytest.raises(ValueError, match="smaller than the largest"):
        ch.channel_index(mask, 2, kmax=3)  # sample 0 has all 8 channels


# ----------------------------------------------------------------------------------------------------------------
# the three conv kernels against the reference


def _setup(group_size, n_groups, seed, n=3, height=5, width_px=7, cin=19, cout=21, kmax=None):
    width = group_size * n_groups
    mask = make_mask(n, n_groups, seed=seed).to(DEVICE)
    idx, counts = ch.channel_index(mask, group_size, kmax=kmax, impl="torch")
    x = nhwc(n, height, width_px, cin, seed=seed + 1)
    return mask, idx, counts, x, make_block(cin, width, cout, seed=seed + 2)


@pytest.mark.parametrize("group_size,n_groups", GROUPINGS)
def test_conv1x1_out_kernel(group_size, n_groups):
    _, idx, counts, x, (w1, b1, *_) = _setup(group_size, n_groups, seed=10)
    y = ch.channel_conv1x1_out(x, w1, b1, idx, counts, impl="triton")
    y_ref = ref.channel_conv1x1_out_ref(x, w1, b1, idx, counts)
    assert y.shape == y_ref.shape
    assert rel_err(y, y_ref) < TOL
    pad = torch.arange(idx.shape[1], device=DEVICE)[None, :] >= counts[:, None]
    assert (y * pad[:, None, None, :]).abs().max() == 0  # padding slots exactly zero
    assert y[1].abs().max() == 0  # no active channel


def test_conv1x1_out_kernel_multi_tile_k():
    """Cin over several K tiles (odd remainder) and kmax = width (no host sync): slots past the count are zero."""
    _, idx, counts, x, (w1, b1, *_) = _setup(2, 20, seed=11, cin=37, kmax=40)
    y = ch.channel_conv1x1_out(x, w1, b1, idx, counts, impl="triton")
    assert rel_err(y, ref.channel_conv1x1_out_ref(x, w1, b1, idx, counts)) < TOL


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("group_size,n_groups", GROUPINGS)
def test_conv3x3_kernel(group_size, n_groups, stride):
    _, idx, counts, x, (_, _, w2, b2, *_) = _setup(group_size, n_groups, seed=20)
    h = nhwc(3, 5, 7, idx.shape[1], seed=21)
    h = h * (torch.arange(idx.shape[1], device=DEVICE)[None, :] < counts[:, None])[:, None, None, :]
    w2p = ch.pack_bottleneck_weights(w2[:, :, 1, 1], w2, w2[:, :, 1, 1])[1]
    for weight in (w2, w2p):
        y = ch.channel_conv3x3(h, weight, b2, idx, counts, stride, group_size=group_size, impl="triton")
        y_ref = ref.channel_conv3x3_ref(h, w2, b2, idx, counts, stride)
        assert y.shape == (3, (5 - 1) // stride + 1, (7 - 1) // stride + 1, idx.shape[1])
        assert rel_err(y, y_ref) < TOL
        assert y[1].abs().max() == 0


def test_conv3x3_kernel_many_channels():
    """Active counts over several K and N tiles, G = 8 (wide weight loads), odd 9x6 map, stride 2."""
    _, idx, counts, _, (_, _, w2, b2, *_) = _setup(8, 5, seed=22)
    h = nhwc(3, 9, 6, idx.shape[1], seed=23)
    w2p = ch.pack_bottleneck_weights(w2[:, :, 1, 1], w2, w2[:, :, 1, 1])[1]
    y = ch.channel_conv3x3(h, w2p, b2, idx, counts, 2, group_size=8, impl="triton")
    assert rel_err(y, ref.channel_conv3x3_ref(h, w2, b2, idx, counts, 2)) < TOL


@pytest.mark.parametrize("group_size,n_groups", GROUPINGS)
def test_conv1x1_in_kernel(group_size, n_groups):
    _, idx, counts, _, (*_, w3, b3) = _setup(group_size, n_groups, seed=30)
    h = nhwc(3, 5, 7, idx.shape[1], seed=31)
    residual = nhwc(3, 5, 7, 21, seed=32)
    out_ref = ref.channel_conv1x1_in_ref(h, w3, b3, idx, counts, residual)
    out = ch.channel_conv1x1_in(h, w3, b3, idx, counts, residual, impl="triton")
    assert rel_err(out, out_ref) < TOL
    torch.testing.assert_close(out[1], torch.relu(residual[1] + b3), rtol=0, atol=1e-6)  # count 0
    w3p = ch.pack_bottleneck_weights(w3[:, :8], torch.zeros(1, 1, 3, 3), w3)[2]
    in_place = residual.clone()
    result = ch.channel_conv1x1_in(h, w3p, b3, idx, counts, in_place, out=in_place, impl="triton")
    assert result.data_ptr() == in_place.data_ptr()
    assert rel_err(in_place, out_ref) < TOL
    cfg = {"PREFETCH": False, "BM": 32}  # residual loaded after the GEMM loop; the other tiles the default's
    in_place = residual.clone()
    ch.channel_conv1x1_in(h, w3p, b3, idx, counts, in_place, out=in_place, impl="triton", config=cfg)
    assert rel_err(in_place, out_ref) < TOL


@pytest.mark.parametrize("group_size,n_groups", GROUPINGS)
def test_conv1x1_in_pools_its_output(group_size, n_groups):
    """pool_out: each sample's sums of the output over its map (several pixel tiles, a partial channel tile) are
    added to it, as the reference and `window_sums` of the output say; a sample with no active channel included."""
    from laudnet.kernels import masker_ref

    _, idx, counts, _, (*_, w3, b3) = _setup(group_size, n_groups, seed=36)
    h = nhwc(3, 5, 7, idx.shape[1], seed=37)
    residual = nhwc(3, 5, 7, 21, seed=38)
    start = torch.randn(3, 21, device=DEVICE)
    pool = start.clone()
    out = ch.channel_conv1x1_in(h, w3, b3, idx, counts, residual.clone(), impl="triton", pool_out=pool)
    pool_ref = start.clone()
    ref.channel_conv1x1_in_ref(h, w3, b3, idx, counts, residual.clone(), pool_out=pool_ref)
    assert rel_err(pool, pool_ref) < TOL
    sums = masker_ref.window_sums_ref(out.cpu(), indexing.MAP_WINDOW).view(3, 21).to(DEVICE)
    assert rel_err(pool - start, sums) < TOL
    with pytest.raises(ValueError, match=r"pool_out must be contiguous fp32 \[3, 21\]"):
        ch.channel_conv1x1_in(h, w3, b3, idx, counts, residual, impl="triton", pool_out=pool[:, :20])


def test_conv1x1_in_count_zero_without_bias_is_relu_residual():
    _, idx, counts, _, (*_, w3, _) = _setup(1, 10, seed=33)
    h = nhwc(3, 5, 7, idx.shape[1], seed=34)
    residual = nhwc(3, 5, 7, 21, seed=35)
    out = ch.channel_conv1x1_in(h, w3, torch.zeros(21, device=DEVICE), idx, counts, residual, impl="triton")
    assert torch.equal(out[1], torch.relu(residual[1]))


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("group_size,n_groups", GROUPINGS)
def test_block_chain_equals_dense_masked(group_size, n_groups, stride):
    """Index + three kernels against the dense masked bottleneck: one-channel, all-active, no-active samples."""
    mask, _, _, x, (w1, b1, w2, b2, w3, b3) = _setup(group_size, n_groups, seed=40)
    if group_size == 1:
        mask[2] = False
        mask[2, 3] = True  # a single active channel
    ho, wo = (5 - 1) // stride + 1, (7 - 1) // stride + 1
    residual = nhwc(3, ho, wo, 21, seed=41)
    w1p, w2p, w3p = ch.pack_bottleneck_weights(w1, w2, w3)
    idx, counts = ch.channel_index(mask, group_size, impl="triton")
    h1 = ch.channel_conv1x1_out(x, w1p, b1, idx, counts, impl="triton")
    h2 = ch.channel_conv3x3(h1, w2p, b2, idx, counts, stride, group_size=group_size, impl="triton")
    out = ch.channel_conv1x1_in(h2, w3p, b3, idx, counts, residual, impl="triton")
    h1_d, h2_d, out_d = ref.dense_masked_bottleneck_ref(
        x, w1, b1, w2, b2, w3, b3, mask, group_size, stride=stride, residual=residual
    )
    assert rel_err(h1, indexing.compact_channels(h1_d, idx, counts)) < TOL
    assert rel_err(h2, indexing.compact_channels(h2_d, idx, counts)) < TOL
    assert rel_err(out, out_d) < TOL


def test_grouped_conv3x3_fallback_equals_dense_masked():
    """RegNet's grouped 3x3: the dense masked fallback keeps channel-skipping semantics."""
    group_size, n_groups, conv_groups = 2, 6, 3
    mask, idx, counts, _, _ = _setup(group_size, n_groups, seed=50)
    width = group_size * n_groups
    g = torch.Generator().manual_seed(51)
    w2 = (torch.randn(width, width // conv_groups, 3, 3, generator=g) * 0.3).to(DEVICE)
    b2 = (torch.randn(width, generator=g) * 0.3).to(DEVICE)
    chan = indexing.expand_channel_mask(mask, group_size)[:, None, None, :]
    h_dense = torch.relu(nhwc(3, 5, 7, width, seed=52)) * chan
    h = indexing.compact_channels(h_dense, idx, counts)
    y = ch.channel_conv3x3(h, w2, b2, idx, counts, 2, conv_groups=conv_groups)
    y_dense = (
        torch.relu(
            torch.nn.functional.conv2d(h_dense.permute(0, 3, 1, 2), w2, b2, stride=2, padding=1, groups=conv_groups)
        ).permute(0, 2, 3, 1)
        * indexing.expand_channel_mask(mask, group_size)[:, None, None, :]
    )
    assert rel_err(y, indexing.compact_channels(y_dense, idx, counts)) < 1e-5


def test_op_errors():
    _, idx, counts, x, (w1, b1, w2, b2, w3, b3) = _setup(2, 5, seed=60)
    h = nhwc(3, 5, 7, idx.shape[1], seed=61)
    with pytest.raises(ValueError, match="NHWC"):
        ch.channel_conv1x1_out(x.permute(0, 3, 1, 2), w1, b1, idx, counts)
    with pytest.raises(ValueError, match="w1"):
        ch.channel_conv1x1_out(x, w1[:, :5], b1, idx, counts)
    with pytest.raises(ValueError, match="idx must be int32"):
        ch.channel_conv1x1_out(x, w1, b1, idx.long(), counts)
    with pytest.raises(ValueError, match="stride"):
        ch.channel_conv3x3(h, w2, b2, idx, counts, 3)
    with pytest.raises(ValueError, match="compacted slots"):
        ch.channel_conv3x3(h[..., :8].contiguous(), w2, b2, idx, counts)
    with pytest.raises(ValueError, match="residual"):
        ch.channel_conv1x1_in(h, w3, b3, idx, counts, nhwc(3, 5, 7, 20, seed=0))
    with pytest.raises(ValueError, match="impl"):
        ch.channel_conv1x1_in(h, w3, b3, idx, counts, nhwc(3, 5, 7, 21, seed=0), impl="cuda")


# ----------------------------------------------------------------------------------------------------------------
# GPU: bf16 at bottleneck sizes


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("group_size", [1, 8, 32])
def test_gpu_bf16_bottleneck(group_size, stride):
    n, size, cin, width, cout = 6, 14, 1024, 256, 1024
    mask = torch.rand(n, width // group_size, generator=torch.Generator().manual_seed(0)) < 0.5
    mask[0], mask[1] = True, False
    mask = mask.cuda()
    x = nhwc(n, size, size, cin, seed=1, dtype=torch.bfloat16, device="cuda")
    w1, b1, w2, b2, w3, b3 = make_block(cin, width, cout, seed=2, dtype=torch.bfloat16, device="cuda")
    so = (size - 1) // stride + 1
    residual = nhwc(n, so, so, cout, seed=3, dtype=torch.bfloat16, device="cuda")
    w1p, w2p, w3p = ch.pack_bottleneck_weights(w1, w2, w3)
    idx, counts = ch.channel_index(mask, group_size)
    h1 = ch.channel_conv1x1_out(x, w1p, b1, idx, counts)
    h2 = ch.channel_conv3x3(h1, w2p, b2, idx, counts, stride, group_size=group_size)
    out = ch.channel_conv1x1_in(h2, w3p, b3, idx, counts, residual)
    h1_d, h2_d, out_d = ref.dense_masked_bottleneck_ref(
        x, w1, b1, w2, b2, w3, b3, mask, group_size, stride=stride, residual=residual
    )
    assert rel_err(h1, indexing.compact_channels(h1_d, idx, counts)) < 1e-2
    assert rel_err(h2, indexing.compact_channels(h2_d, idx, counts)) < 1e-2
    assert rel_err(out, out_d) < 1e-2


# ----------------------------------------------------------------------------------------------------------------
# implementation choice: LAUDNET_KERNELS, read at each call


@pytest.mark.parametrize("env", ["auto", "", "reference", "torch"])
def test_env_without_triton_override_runs_the_reference_on_cpu(monkeypatch, env):
    """`LAUDNET_KERNELS=auto` (documented, and the unset default) used to raise in every channel op; with it, an empty
    value or the reference spellings, CPU tensors take the reference, as every other op does."""
    monkeypatch.setenv("LAUDNET_KERNELS", env)
    mask = make_mask(3, 5, seed=70)
    x = nhwc(3, 5, 7, 19, seed=71, device="cpu")
    w1, b1, w2, b2, w3, b3 = make_block(19, 10, 21, seed=72, device="cpu")
    residual = nhwc(3, 5, 7, 21, seed=73, device="cpu")
    idx, counts = ch.channel_index(mask, 2)
    idx_r, counts_r = ref.channel_index_ref(mask, 2)
    assert torch.equal(idx, idx_r) and torch.equal(counts, counts_r)
    h1 = ch.channel_conv1x1_out(x, w1, b1, idx, counts)
    assert torch.equal(h1, ref.channel_conv1x1_out_ref(x, w1, b1, idx, counts))
    h2 = ch.channel_conv3x3(h1, w2, b2, idx, counts, 1, group_size=2)
    assert torch.equal(h2, ref.channel_conv3x3_ref(h1, w2, b2, idx, counts, 1))
    out = ch.channel_conv1x1_in(h2, w3, b3, idx, counts, residual)
    assert torch.equal(out, ref.channel_conv1x1_in_ref(h2, w3, b3, idx, counts, residual))


def test_env_unknown_value_is_rejected(monkeypatch):
    monkeypatch.setenv("LAUDNET_KERNELS", "cuda")
    with pytest.raises(ValueError, match="LAUDNET_KERNELS"):
        ch.channel_index(make_mask(3, 5, seed=0), 2)
