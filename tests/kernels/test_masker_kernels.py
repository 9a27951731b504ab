"""Masker kernels (window sums, decisions + lists) and the pooling / per-sample extensions of the spatial kernels,
against their references: under TRITON_INTERPRET=1 on CPU, compiled on CUDA (`gpu`)."""

import pytest
import torch
import torch.nn.functional as F
from spatial_testing import cuda_fixture, err_ratio, interpret_fixture  # noqa: F401 (fixtures)

from laudnet import kernels as K
from laudnet.kernels import indexing, masker
from laudnet.kernels import masker_ref as MR
from laudnet.kernels import spatial_ref as R
from laudnet.masks import pool_patches

N, H, W, C = 3, 7, 5, 20  # odd map: windows of 2 and 3 leave partial border windows; C > one 16-wide tile


def _decisions_equal(a: indexing.MaskerDecisions, b: indexing.MaskerDecisions) -> None:
    for name, x, y in zip(a._fields, a, b, strict=True):
        assert torch.equal(x, y), name


# ---------------------------------------------------------------------------------------------------------------
# references: the masker ops are the masker's function


@pytest.mark.parametrize("window", [indexing.MAP_WINDOW, 1, 2, 3, 8])
def test_window_sums_ref_are_the_maskers_pooling(window):
    """sums / window pixel counts == `pool_patches` (avg_pool2d, ceil_mode) of the training-form masker."""
    x = torch.randn(N, C, H, W)
    sums = MR.window_sums_ref(x.permute(0, 2, 3, 1).contiguous(), window)
    means = sums / indexing.window_counts((H, W), window)[None, :, :, None]
    if window == indexing.MAP_WINDOW:
        expect = pool_patches(x, 1, None, (H, W))
    else:  # a spatial masker of patch S on a stride-s block pools windows of S*s input pixels
        out_hw = (indexing.conv_out_size(H, 1), indexing.conv_out_size(W, 1))
        expect = pool_patches(x, 1, window, out_hw)
    torch.testing.assert_close(means.permute(0, 3, 1, 2), expect, rtol=1e-5, atol=1e-6)


def test_window_grid_of_strided_maskers_matches_the_output_patch_grid():
    """A stride-2 block's masker windows (2S on the input) form the block's output patch grid."""
    for h in range(1, 30):
        for s in (1, 2, 3, 4, 7):
            out_side = indexing.conv_out_size(h, 2)
            assert indexing.window_grid((h, h), 2 * s)[0] == indexing.patch_grid((out_side, out_side), s)[0]


def test_masker_decide_ref_is_the_deployed_masker():
    """Decisions from sums == the torch path's `mean @ w + b >= 0`; lists active-first; zeroing and forcing."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(6, C, H, W, generator=gen)
    w, b = torch.randn(C, generator=gen), torch.randn(1, generator=gen)
    sums = MR.window_sums_ref(x.permute(0, 2, 3, 1).contiguous(), indexing.MAP_WINDOW)
    d = MR.masker_decide_ref(sums.clone(), w, b, (H, W), indexing.MAP_WINDOW)
    keep = x.mean(dim=(2, 3)) @ w + b >= 0
    assert torch.equal(d.keep.view(-1), keep) and 0 < int(d.count) < 6
    active = keep.nonzero()[:, 0].tolist()
    assert d.order.tolist() == active + [i for i in range(6) if i not in active]
    assert d.patch_idx[:, 0].tolist() == d.order.tolist() and not d.patch_idx[:, 1:].any()
    assert float(d.rate) == pytest.approx(len(active) / 6)
    z = sums.clone()
    MR.masker_decide_ref(z, w, b, (H, W), indexing.MAP_WINDOW, zero_active=True)
    assert not z[keep].any() and torch.equal(z[~keep], sums[~keep])
    forced = torch.zeros(6, dtype=torch.bool)
    forced[[5, 2]] = True
    df = MR.masker_decide_ref(sums, w, b, (H, W), indexing.MAP_WINDOW, forced=forced)
    assert df.order[:2].tolist() == [2, 5] and int(df.count) == 2


# ---------------------------------------------------------------------------------------------------------------
# Triton under the interpreter


@pytest.mark.parametrize("split", [None, 1, 3])  # None: the tiled kernel for small windows
@pytest.mark.parametrize("window", [indexing.MAP_WINDOW, 1, 2, 3, 5])
def test_window_sums_interpret(interpret, window, split):
    gen = torch.Generator().manual_seed(window + 10 * (split or 0))
    x = torch.randn((N, H, W, C), generator=gen)
    got = masker.window_sums_triton(x, window, split=split)  # split > 1: partial sums added atomically
    assert got.shape == (N, *indexing.window_grid((H, W), window), C)
    assert err_ratio(got, MR.window_sums_ref(x, window)) < 1e-6
    xr = x.clone()
    got_r = masker.window_sums_triton(xr, window, relu=True, split=split)
    assert torch.equal(xr, x.clamp(min=0))  # ReLU applied in place
    assert err_ratio(got_r, MR.window_sums_ref(x.clamp(min=0), window)) < 1e-6


@pytest.mark.parametrize(
    ("window", "n", "kind"),
    [(indexing.MAP_WINDOW, 5, "random"), (indexing.MAP_WINDOW, 37, "random"), (2, N, "random"), (3, N, "random"),
     (2, N, "all"), (2, N, "none"), (indexing.MAP_WINDOW, 5, "forced"), (indexing.MAP_WINDOW, 1, "all"),
     (indexing.MAP_WINDOW, 1, "none")],
)
def test_masker_decide_interpret(interpret, window, n, kind):
    """Same decisions, lists, count and rate as the reference; T = N*gh*gw spans several compaction programs, or
    fits one decision program that writes the lists itself (T = 1, 5: layer skipping at batch 1 and 5)."""
    gen = torch.Generator().manual_seed(n + window)
    sums = MR.window_sums_ref(torch.randn((n, H, W, C), generator=gen), window)
    w = torch.randn(C, generator=gen)
    b = {"all": torch.tensor([1e4]), "none": torch.tensor([-1e4])}.get(kind, torch.randn(1, generator=gen) * 0.1)
    forced = torch.rand(sums.shape[:3], generator=gen) < 0.5 if kind == "forced" else None
    zero = kind != "forced"
    s_tri, s_ref = sums.clone(), sums.clone()
    got = K.masker_decide(s_tri, w, b, (H, W), window, forced, zero_active=zero, impl="triton")
    ref = MR.masker_decide_ref(s_ref, w, b, (H, W), window, forced, zero_active=zero)
    _decisions_equal(got, ref)
    assert torch.equal(s_tri, s_ref)
    t = sums.shape[0] * sums.shape[1] * sums.shape[2]
    assert int(got.count) == {"all": t, "none": 0}.get(kind, int(ref.keep.sum()))
    assert got.active.shape == () and bool(got.active) == (int(got.count) > 0)  # a conditional node's predicate
    assert sorted(got.order.tolist()) == list(range(t))  # a permutation: every window listed once
    if kind == "random":
        assert 0 < int(got.count) < t


@pytest.mark.parametrize("kind", ["random", "none", "all"])
@pytest.mark.parametrize("s", [1, 2, 3, 4, 7])
def test_conv1x1_scatter_add_pool_out_interpret(interpret, s, kind):
    """Per-patch sums of the written values, added into pool_out: S = 1, 2, 4 (one reduction over whole patches
    per tile), 3 and 7 = the map (a loop over the patches a tile touches; 7 is layer skipping's one patch)."""
    gen = torch.Generator().manual_seed(s + 7 * len(kind))
    gh, gw = indexing.patch_grid((H, W), s)
    mask = {"none": torch.zeros(N, gh, gw, dtype=torch.bool), "all": torch.ones(N, gh, gw, dtype=torch.bool)}.get(
        kind, torch.rand((N, gh, gw), generator=gen) < 0.5
    )
    plist, count = K.mask_to_patch_list(mask)
    yg = torch.randn((plist.shape[0] * s * s, 18), generator=gen)
    wt, b = torch.randn((C, 18, 1, 1), generator=gen) / 3, torch.randn(C, generator=gen)
    res = torch.randn((N, H, W, C), generator=gen)
    start = torch.randn((N, gh, gw, C), generator=gen)  # accumulation adds to what is there
    p_tri, p_ref = start.clone(), start.clone()
    out = K.conv1x1_scatter_add(yg, wt, b, res.clone(), plist, s, count=count, pool_out=p_tri, impl="triton")
    ref = R.conv1x1_scatter_add_ref(yg, wt, b, res.clone(), plist, s, count=count, pool_out=p_ref)
    assert err_ratio(out, ref) < 1e-6
    assert err_ratio(p_tri, p_ref) < 1e-6
    assert torch.equal(p_tri[~mask], start[~mask])  # inactive patches: untouched
    # the definition: active rows gain exactly the window sums of the output map
    expect = torch.where(mask[..., None], start + MR.window_sums_ref(ref, s), start)
    assert err_ratio(p_tri, expect) < 1e-6


def test_layer_pool_spans_tiles_and_samples_interpret(interpret):
    """Layer skipping with maps larger than a tile (several atomic adds per sample) and tiles spanning samples."""
    gen = torch.Generator().manual_seed(5)
    n, h, w = 4, 9, 6  # 54 rows per sample: tiles of 32 rows straddle sample boundaries
    pidx = K.samples_to_patch_idx(torch.tensor([3, 0, 2]))
    s = max(h, w)
    yg = torch.randn((3 * s * s, 16), generator=gen)
    wt = torch.randn((C, 16, 1, 1), generator=gen) / 3
    res = torch.randn((n, h, w, C), generator=gen)
    pool = torch.zeros((n, 1, 1, C))
    out = K.conv1x1_scatter_add(yg, wt, None, res.clone(), pidx, s, pool_out=pool, impl="triton")
    expect = MR.window_sums_ref(out, indexing.MAP_WINDOW)
    expect[1] = 0
    assert err_ratio(pool, expect) < 1e-6


@pytest.mark.parametrize("kind", ["some", "none", "all"])
def test_pixel_conv1x1_per_sample_interpret(interpret, kind):
    """A list of samples drives conv1 directly (layer skipping): only the listed samples' pixels are written."""
    gen = torch.Generator().manual_seed(len(kind))
    x = torch.randn((N, H, W, C), generator=gen)
    wt, b = torch.randn((18, C, 1, 1), generator=gen) / 4, torch.randn(18, generator=gen)
    order = torch.tensor([2, 0, 1], dtype=torch.int32)
    c = {"some": 2, "none": 0, "all": 3}[kind]
    count = torch.tensor([c], dtype=torch.int32)
    out = torch.full((N, H, W, 18), float("nan"))
    K.pixel_conv1x1(x, wt, b, order, out=out, count=count, per_sample=True, impl="triton")
    ref = R.pixel_conv1x1_ref(x, wt, b, indexing.samples_to_pixel_idx(order[:c], H * W))
    listed = order[:c].long()
    assert err_ratio(out[listed], ref[listed]) < 1e-6 if c else True
    rest = [i for i in range(N) if i not in listed.tolist()]
    assert out[rest].isnan().all()
    compact = K.pixel_conv1x1(x, wt, b, order, compact=True, count=count, per_sample=True, impl="triton")
    assert compact.shape == (N * H * W, 18)
    ref_c = R.pixel_conv1x1_ref(x, wt, b, order, compact=True, count=count, per_sample=True)
    assert err_ratio(compact[: c * H * W], ref_c[: c * H * W]) < 1e-6 if c else True


def test_masker_ops_reject_bad_input(interpret):
    sums = torch.zeros((2, 4, 3, C))
    w, b = torch.zeros(C), torch.zeros(1)
    with pytest.raises(ValueError, match="sums must be contiguous fp32"):
        K.masker_decide(sums, w, b, (H, W), 3, impl="triton")  # windows of 3 on 7x5 are a 3x2 grid
    with pytest.raises(ValueError, match="sums must be contiguous fp32"):
        K.masker_decide(sums.double(), w, b, (H, W), 2, impl="triton")
    with pytest.raises(ValueError, match="masker weight"):
        K.masker_decide(sums, torch.zeros(C + 1), b, (H, W), 2, impl="triton")
    with pytest.raises(ValueError, match="forced decisions"):
        K.masker_decide(sums, w, b, (H, W), 2, forced=torch.zeros(5, dtype=torch.bool), impl="triton")
    with pytest.raises(ValueError, match="window must be"):
        K.window_sums(torch.zeros((1, H, W, C)), -1, impl="triton")
    with pytest.raises(ValueError, match="pool_out must be"):
        K.conv1x1_scatter_add(torch.zeros(4, 4), torch.zeros(C, 4, 1, 1), None, torch.zeros((1, H, W, C)),
                              torch.zeros((1, 3), dtype=torch.int32), 2, pool_out=torch.zeros((1, 3, 3, C)),
                              impl="triton")
    with pytest.raises(ValueError, match="per_sample needs"):
        K.pixel_conv1x1(torch.zeros((1, H, W, C)), torch.zeros(4, C, 1, 1), None, None, per_sample=True)


# ---------------------------------------------------------------------------------------------------------------
# compiled on a GPU, bf16 maps, ResNet-like sizes


@pytest.mark.gpu
@pytest.mark.parametrize("s", [indexing.MAP_WINDOW, 2, 3, 4])
def test_masker_kernels_cuda_bf16(cuda, s):
    torch.manual_seed(s)
    n, h, w, c, cm = 16, 29, 27, 256, 64
    dt = torch.bfloat16
    x = torch.randn((n, h, w, c), device=cuda, dtype=dt)
    window = s
    sums = K.window_sums(x, window)
    assert err_ratio(sums, MR.window_sums_ref(x, window)) < 1e-5
    xr = x.clone()
    sums_r = K.window_sums(xr, window, relu=True)
    assert torch.equal(xr, x.clamp(min=0)) and err_ratio(sums_r, MR.window_sums_ref(x.clamp(min=0), window)) < 1e-5
    wt, b = torch.randn(c, device=cuda), torch.randn(1, device=cuda) * 0.01
    s_tri, s_ref = sums.clone(), sums.clone()
    got = K.masker_decide(s_tri, wt, b, (h, w), window, zero_active=True)
    ref = MR.masker_decide_ref(s_ref, wt, b, (h, w), window, zero_active=True)
    logits = (sums / indexing.window_counts((h, w), window, cuda)[None, :, :, None]) @ wt + b
    clear = (logits.abs() > 1e-3 * logits.abs().max()).all()  # no decision within rounding of the threshold
    if clear:
        _decisions_equal(got, ref)
        assert torch.equal(s_tri, s_ref)
    # the scatter epilogue accumulates the written map's window sums (layer: S = map size, one patch per sample)
    patch = max(h, w) if s == indexing.MAP_WINDOW else s
    gh, gw = indexing.patch_grid((h, w), patch)
    mask = torch.rand((n, gh, gw), device=cuda) < 0.5
    plist, count = K.mask_to_patch_list(mask)
    yg = torch.randn((plist.shape[0] * patch * patch, cm), device=cuda, dtype=dt)
    w3 = (torch.randn((c, cm, 1, 1), device=cuda) / 8).to(dt)
    pool = torch.zeros((n, gh, gw, c), device=cuda)
    out = K.conv1x1_scatter_add(yg, w3, None, x.clone(), plist, patch, count=count, pool_out=pool)
    expect = torch.where(mask[..., None], MR.window_sums_ref(out, patch), 0.0)
    assert err_ratio(pool, expect) < 1e-5
    if s == indexing.MAP_WINDOW:
        order = torch.randperm(n, device=cuda).to(torch.int32)
        cnt = torch.tensor([n // 2], dtype=torch.int32, device=cuda)
        w1 = (torch.randn((cm, c, 1, 1), device=cuda) / 16).to(dt)
        h1 = K.pixel_conv1x1(x, w1, None, order, count=cnt, per_sample=True)
        ref1 = R.pixel_conv1x1_ref(x.float(), w1.float(), None, indexing.samples_to_pixel_idx(order[: n // 2], h * w))
        sel = order[: n // 2].long()
        assert err_ratio(h1[sel], ref1[sel]) < 1e-2


# ---------------------------------------------------------------------------------------------------------------
# channel masker


def _channel_masker_args(n: int, c: int, hidden: int, groups: int, device="cpu", seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    sums = torch.randn((n, c), generator=gen) * 7
    w1, b1 = torch.randn((hidden, c), generator=gen) / c**0.5, torch.randn(hidden, generator=gen)
    w2, b2 = torch.randn((groups, hidden), generator=gen), torch.randn(groups, generator=gen) * 0.1
    return [t.to(device) for t in (sums, w1, b1, w2, b2)]


def test_channel_masker_ref_is_the_deployed_masker_mlp():
    """sums / pixels through the masker's MLP: the decisions of `ChannelMasker` on the mean (eval, hard)."""
    from laudnet.masks import ChannelMasker

    torch.manual_seed(0)
    masker = ChannelMasker(24, n_groups=5).eval()
    x = torch.randn(4, 24, 6, 5)
    with torch.no_grad():
        expect = masker(x).bool()
        n = masker.n_groups
        w2, b2 = masker.fc2.weight[:n] - masker.fc2.weight[n:], masker.fc2.bias[:n] - masker.fc2.bias[n:]
        sums = MR.window_sums_ref(x.permute(0, 2, 3, 1).contiguous(), indexing.MAP_WINDOW).view(4, 24)
        fc1 = masker.folded_fc1()
        got = MR.channel_masker_ref(sums, 30, fc1.weight, fc1.bias, w2, b2)
    assert torch.equal(got, expect.view(4, n))


@pytest.mark.parametrize(("n", "c", "hidden", "groups"), [(5, 20, 16, 8), (3, 37, 17, 33), (1, 8, 16, 1)])
def test_channel_masker_interpret(interpret, n, c, hidden, groups):
    """Odd channel, hidden and group counts (several C and G tiles, masked lanes), one sample, one group."""
    sums, w1, b1, w2, b2 = _channel_masker_args(n, c, hidden, groups, seed=c)
    got = masker.channel_masker_triton(sums, 12, w1, b1, w2, b2)
    logits = F.relu(sums / 12 @ w1.t() + b1) @ w2.t() + b2
    clear = logits.abs() > 1e-4
    assert got.shape == (n, groups) and got.dtype == torch.bool
    assert torch.equal(got[clear], MR.channel_masker_ref(sums, 12, w1, b1, w2, b2)[clear])
    assert got.any() and not got.all() or n * groups < 8
    forced = torch.rand((n, groups), generator=torch.Generator().manual_seed(1)) < 0.5
    assert torch.equal(K.channel_masker(sums, 12, w1, b1, w2, b2, forced, impl="triton"), forced)


def test_channel_masker_rejects_bad_input():
    sums, w1, b1, w2, b2 = _channel_masker_args(2, 8, 16, 4)
    with pytest.raises(ValueError, match="sums must be contiguous fp32"):
        MR.channel_masker_ref(sums.half(), 4, w1, b1, w2, b2)
    with pytest.raises(ValueError, match="fc1 weight must be fp32"):
        MR.channel_masker_ref(sums, 4, w1[:, :5], b1, w2, b2)
    with pytest.raises(ValueError, match="pixels"):
        MR.channel_masker_ref(sums, 0, w1, b1, w2, b2)
    with pytest.raises(ValueError, match="forced decisions"):
        MR.channel_masker_ref(sums, 4, w1, b1, w2, b2, forced=torch.ones(2, 3, dtype=torch.bool))


@pytest.mark.gpu
def test_channel_masker_cuda(cuda):
    sums, w1, b1, w2, b2 = _channel_masker_args(128, 2048, 32, 512, device=cuda)
    got = K.channel_masker(sums, 49, w1, b1, w2, b2)
    logits = F.relu(sums / 49 @ w1.t() + b1) @ w2.t() + b2
    clear = logits.abs() > 1e-3
    assert torch.equal(got[clear], (logits >= 0)[clear])
