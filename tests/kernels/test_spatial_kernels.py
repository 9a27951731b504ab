"""Triton spatial kernels against the reference: under TRITON_INTERPRET=1 on CPU, and compiled on CUDA (`gpu`)."""

import pytest
import torch
from spatial_testing import cuda_fixture, err_ratio, interpret_fixture  # noqa: F401 (fixtures)

from laudnet import kernels as K
from laudnet.kernels import indexing, spatial, weights
from laudnet.kernels import spatial_ref as R

N, H, W = 2, 7, 5  # odd map: with S = 2 or 3 the last patch row and column are partial
MASK_KINDS = ["all", "none", "one", "border", "random"]


def _mask(kind: str, grid: tuple[int, int], gen: torch.Generator, n: int = N) -> torch.Tensor:
    gh, gw = grid
    if kind == "all":
        return torch.ones((n, gh, gw), dtype=torch.bool)
    if kind == "none":
        return torch.zeros((n, gh, gw), dtype=torch.bool)
    m = torch.zeros((n, gh, gw), dtype=torch.bool)
    if kind == "one":
        m[n - 1, gh - 1, 0] = True
    elif kind == "border":  # partial patches only: last patch row and last patch column
        m[:, gh - 1, :] = True
        m[:, :, gw - 1] = True
    else:
        m = torch.rand((n, gh, gw), generator=gen) < 0.5
        m[0, 0, 0] = True
    return m


def _case(stride: int, s: int, kind: str, cin: int, cout: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    ho, wo = indexing.conv_out_size(H, stride), indexing.conv_out_size(W, stride)
    pidx = indexing.mask_to_patch_idx(_mask(kind, indexing.patch_grid((ho, wo), s), gen))
    h1 = torch.randn((N, H, W, cin), generator=gen)
    wt = torch.randn((cout, cin, 3, 3), generator=gen) / 3
    b = torch.randn((cout,), generator=gen)
    return gen, ho, wo, pidx, h1, wt, b


# Cin = 20 > BLOCK_K = 16 and Cout = 18 > BLOCK_N = 16 under the interpreter: several K and N tiles, masked tails.
@pytest.mark.parametrize("kind", MASK_KINDS)
@pytest.mark.parametrize("s", [2, 3])
@pytest.mark.parametrize("stride", [1, 2])
def test_gather_conv3x3_interpret(interpret, stride, s, kind):
    _, _, _, pidx, h1, wt, b = _case(stride, s, kind, 20, 18, seed=100 * stride + 10 * s + MASK_KINDS.index(kind))
    got = K.gather_conv3x3(h1, wt, b, pidx, s, stride, impl="triton")
    ref = R.gather_conv3x3_ref(h1, wt, b, pidx, s, stride)
    assert got.shape == ref.shape == (pidx.shape[0] * s * s, 18)
    if pidx.shape[0]:
        assert err_ratio(got, ref) < 1e-5


def test_gather_conv3x3_interpret_variants(interpret):
    """No bias, no ReLU, packed weight, S = 1, channels below one tile."""
    _, _, _, pidx, h1, wt, _ = _case(1, 1, "random", 5, 3, seed=1)
    got = K.gather_conv3x3(h1, weights.pack_conv3x3_weight(wt), None, pidx, 1, 1, relu=False, impl="triton")
    ref = R.gather_conv3x3_ref(h1, wt, None, pidx, 1, 1, relu=False)
    assert (ref < 0).any() and err_ratio(got, ref) < 1e-5


def test_grouped_conv_takes_reference_path(interpret, monkeypatch):
    monkeypatch.setattr(spatial, "_gather_conv3x3_kernel", None)  # must not be reached
    _, _, _, pidx, h1, _, _ = _case(1, 2, "random", 8, 8, seed=2)
    wt = torch.randn(8, 4, 3, 3)
    got = K.gather_conv3x3(h1, wt, None, pidx, 2, 1, groups=2, impl="triton")
    torch.testing.assert_close(got, R.gather_conv3x3_ref(h1, wt, None, pidx, 2, 1, groups=2))


@pytest.mark.parametrize("kind", MASK_KINDS)
@pytest.mark.parametrize("s", [2, 3])
def test_conv1x1_scatter_add_interpret(interpret, s, kind):
    gen = torch.Generator().manual_seed(10 * s + MASK_KINDS.index(kind))
    cmid, cout = 18, 20
    pidx = indexing.mask_to_patch_idx(_mask(kind, indexing.patch_grid((H, W), s), gen))
    yg = torch.randn((pidx.shape[0] * s * s, cmid), generator=gen)
    wt = torch.randn((cout, cmid, 1, 1), generator=gen) / 3
    b = torch.randn((cout,), generator=gen)
    res = torch.randn((N, H, W, cout), generator=gen)
    ref = R.conv1x1_scatter_add_ref(yg, wt, b, res.clone(), pidx, s)
    # in place into the residual (default)
    got = res.clone()
    ret = K.conv1x1_scatter_add(yg, wt, b, got, pidx, s, impl="triton")
    assert ret is got
    assert err_ratio(got, ref) < 1e-5
    mask = indexing.patch_idx_to_mask(pidx, N, indexing.patch_grid((H, W), s))
    inactive = ~indexing.patch_mask_to_pixel_mask(mask, s, (H, W))
    assert torch.equal(got[inactive], res[inactive])  # inactive positions keep the residual bit for bit
    # into a poisoned separate `out`: exactly the active in-map pixels are written
    out = torch.full_like(res, float("nan"))
    K.conv1x1_scatter_add(yg, weights.pack_conv1x1_weight(wt), b, res, pidx, s, out=out, impl="triton")
    assert out[inactive].isnan().all()
    assert not out[~inactive].isnan().any()
    assert err_ratio(out[~inactive], ref[~inactive]) < 1e-5 if (~inactive).any() else True


def test_conv1x1_scatter_add_interpret_no_bias_no_relu(interpret):
    gen = torch.Generator().manual_seed(4)
    pidx = indexing.mask_to_patch_idx(_mask("random", indexing.patch_grid((H, W), 2), gen))
    yg = torch.randn((pidx.shape[0] * 4, 5), generator=gen)
    wt = torch.randn((3, 5, 1, 1), generator=gen)
    res = torch.randn((N, H, W, 3), generator=gen)
    ref = R.conv1x1_scatter_add_ref(yg, wt, None, res.clone(), pidx, 2, relu=False)
    got = K.conv1x1_scatter_add(yg, wt, None, res.clone(), pidx, 2, relu=False, impl="triton")
    assert (ref < 0).any() and err_ratio(got, ref) < 1e-5


def test_zero_patches_launch_nothing(interpret, monkeypatch):
    class _NoLaunch:
        def __getitem__(self, grid):
            raise AssertionError(f"kernel launched with grid {grid} for P = 0")

    monkeypatch.setattr(spatial, "_gather_conv3x3_kernel", _NoLaunch())
    monkeypatch.setattr(spatial, "_conv1x1_scatter_add_kernel", _NoLaunch())
    monkeypatch.setattr(spatial, "_pixel_conv1x1_kernel", _NoLaunch())
    pidx = torch.zeros((0, 3), dtype=torch.int32)
    h1 = torch.randn(N, H, W, 4)
    y = K.gather_conv3x3(h1, torch.randn(6, 4, 3, 3), None, pidx, 2, 1, impl="triton")
    assert y.shape == (0, 6)
    res = torch.randn(N, H, W, 8)
    before = res.clone()
    K.conv1x1_scatter_add(y, torch.randn(8, 6, 1, 1), torch.randn(8), res, pidx, 2, impl="triton")
    assert torch.equal(res, before)
    q = K.pixel_conv1x1(
        h1, torch.randn(6, 4, 1, 1), None, torch.zeros(0, dtype=torch.int32), compact=True, impl="triton"
    )
    assert q.shape == (0, 6)


@pytest.mark.parametrize("compact", [False, True])
def test_pixel_conv1x1_interpret(interpret, compact):
    gen = torch.Generator().manual_seed(int(compact))
    cin = 32 if compact else 20  # a whole number of K tiles (EVEN_K) and a masked tail
    x = torch.randn((N, H, W, cin), generator=gen)
    wt = torch.randn((18, cin, 1, 1), generator=gen) / 3
    b = torch.randn((18,), generator=gen)
    region = indexing.conv1_pixel_mask(_mask("random", indexing.patch_grid((H, W), 2), gen), 2, 1, (H, W))
    pix = indexing.pixel_mask_to_idx(region)
    ref = R.pixel_conv1x1_ref(x, wt, b, pix, compact=compact)
    if compact:
        got = K.pixel_conv1x1(x, wt, b, pix, compact=True, impl="triton")
        assert err_ratio(got, ref) < 1e-5
    else:
        out = torch.full((N, H, W, 18), float("nan"))
        K.pixel_conv1x1(x, wt, b, pix, out=out, impl="triton")
        assert torch.equal(out.isnan().all(-1), ~region)  # only the listed pixels are written
        assert err_ratio(out[region], ref[region]) < 1e-5


def test_sparse_block_pipeline_matches_dense_block(interpret):
    """conv1 on the dilated region -> gather conv3x3 -> conv1x1 scatter-add == dense block where active."""
    gen = torch.Generator().manual_seed(21)
    n, h, w, c, cm, s, stride = 2, 7, 5, 20, 16, 2, 1
    x = torch.randn((n, h, w, c), generator=gen)
    w1, b1 = torch.randn((cm, c, 1, 1), generator=gen) / 4, torch.randn(cm, generator=gen)
    w2, b2 = torch.randn((cm, cm, 3, 3), generator=gen) / 12, torch.randn(cm, generator=gen)
    w3, b3 = torch.randn((c, cm, 1, 1), generator=gen) / 4, torch.randn(c, generator=gen)
    mask = _mask("random", indexing.patch_grid((h, w), s), gen, n)
    pidx = K.mask_to_patch_idx(mask)
    pix = K.pixel_mask_to_idx(K.conv1_pixel_mask(mask, s, stride, (h, w)))
    h1 = K.pixel_conv1x1(x, w1, b1, pix, impl="triton")  # pixels outside the region stay uninitialised
    h2 = K.gather_conv3x3(h1, w2, b2, pidx, s, stride, impl="triton")
    out = K.conv1x1_scatter_add(h2, w3, b3, x.clone(), pidx, s, impl="triton")
    import torch.nn.functional as F

    xn = x.permute(0, 3, 1, 2)
    d = F.conv2d(F.conv2d(xn, w1, b1).relu(), w2, b2, padding=1).relu()
    dense = (xn + F.conv2d(d, w3, b3)).relu().permute(0, 2, 3, 1)
    pm = K.patch_mask_to_pixel_mask(mask, s, (h, w))
    expect = torch.where(pm[..., None], dense, x)
    assert err_ratio(out, expect) < 1e-5


def test_dispatch_rules(monkeypatch):
    x = torch.randn(1, 2, 2, 2)
    monkeypatch.delenv("LAUDNET_KERNELS", raising=False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert K.resolve_impl(x) == "reference"  # CPU tensors, no interpreter
    with pytest.raises(ValueError, match="TRITON_INTERPRET"):
        K.resolve_impl(x, impl="triton")
    with pytest.raises(ValueError, match="impl"):
        K.resolve_impl(x, impl="cuda")
    monkeypatch.setenv("LAUDNET_KERNELS", "reference")
    assert K.resolve_impl(x, impl="triton") == "reference"  # env overrides the call
    monkeypatch.setenv("LAUDNET_KERNELS", "torch")
    assert K.resolve_impl(x, impl="triton") == "reference"
    monkeypatch.setenv("LAUDNET_KERNELS", "fast")
    with pytest.raises(ValueError, match="LAUDNET_KERNELS"):
        K.resolve_impl(x)


def test_triton_launchers_reject_bad_inputs(interpret):
    h1 = torch.randn(1, 5, 5, 4)
    pidx = torch.zeros((1, 3), dtype=torch.int32)
    with pytest.raises(ValueError, match="grouped"):
        K.gather_conv3x3(h1, torch.randn(4, 2, 3, 3), None, pidx, 2, 1, impl="triton")
    with pytest.raises(ValueError, match="packed"):
        K.gather_conv3x3(h1, torch.randn(4, 4), None, pidx, 2, 1, impl="triton")
    with pytest.raises(ValueError, match="residual channels"):
        K.conv1x1_scatter_add(torch.randn(4, 4), torch.randn(3, 4, 1, 1), None, h1, pidx, 2, impl="triton")
    with pytest.raises(ValueError, match="pix_idx"):
        K.pixel_conv1x1(h1, torch.randn(3, 4, 1, 1), None, torch.zeros(2, dtype=torch.int64), impl="triton")


# ---------------------------------------------------------------------------------------------------------------
# compiled kernels on a GPU, bf16, at a ResNet-like size


@pytest.mark.gpu
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("s", [4, 7])
def test_spatial_kernels_cuda_bf16(cuda, stride, s):
    torch.manual_seed(s + stride)
    n, h, w, c, cm, cout = 4, 29, 27, 256, 64, 256  # odd map: partial border patches
    dt = torch.bfloat16
    h1 = torch.randn((n, h, w, cm), device=cuda, dtype=dt)
    w2 = (torch.randn((cm, cm, 3, 3), device=cuda) / 24).to(dt)
    b2 = torch.randn(cm, device=cuda, dtype=dt)
    ho, wo = indexing.conv_out_size(h, stride), indexing.conv_out_size(w, stride)
    mask = torch.rand((n, *indexing.patch_grid((ho, wo), s)), device=cuda) < 0.5
    pidx = K.mask_to_patch_idx(mask)
    got = K.gather_conv3x3(h1, w2, b2, pidx, s, stride)
    ref = R.gather_conv3x3_ref(h1.float(), w2.float(), b2.float(), pidx, s, stride)
    assert err_ratio(got, ref) < 1e-2
    w3 = (torch.randn((cout, cm, 1, 1), device=cuda) / 8).to(dt)
    b3 = torch.randn(cout, device=cuda, dtype=dt)
    res = torch.randn((n, ho, wo, cout), device=cuda, dtype=dt)
    expect = R.conv1x1_scatter_add_ref(got.float(), w3.float(), b3.float(), res.float(), pidx, s)
    out = res.clone()
    K.conv1x1_scatter_add(got, w3, b3, out, pidx, s)
    assert err_ratio(out, expect) < 1e-2
    pm = indexing.patch_mask_to_pixel_mask(mask, s, (ho, wo))
    assert torch.equal(out[~pm], res[~pm])
    x = torch.randn((n, h, w, c), device=cuda, dtype=dt)
    w1 = (torch.randn((cm, c, 1, 1), device=cuda) / 16).to(dt)
    pix = K.pixel_mask_to_idx(K.conv1_pixel_mask(mask, s, stride, (h, w)))
    got1 = K.pixel_conv1x1(x, w1, None, pix, compact=True)
    assert err_ratio(got1, R.pixel_conv1x1_ref(x.float(), w1.float(), None, pix, compact=True)) < 1e-2
    # sync-free lists: same results from capacity-sized launches
    plist, count = K.mask_to_patch_list(mask)
    got_c = K.gather_conv3x3(h1, w2, b2, plist, s, stride, count=count)
    assert err_ratio(got_c[: got.shape[0]], got) < 1e-3
    out_c = res.clone()
    K.conv1x1_scatter_add(got_c, w3, b3, out_c, plist, s, count=count)
    assert err_ratio(out_c, out) < 1e-3


@pytest.mark.parametrize("kind", ["random", "none", "all"])
def test_sync_free_count_path_interpret(interpret, kind):
    """Capacity-sized launches with a device-side count give the same results as exact lists."""
    gen = torch.Generator().manual_seed(MASK_KINDS.index(kind))
    s, cin, cm, cout = 2, 20, 18, 20
    mask = _mask(kind, indexing.patch_grid((H, W), s), gen)
    pidx_list, count = K.mask_to_patch_list(mask)
    pidx = K.mask_to_patch_idx(mask)
    c = int(count)
    x = torch.randn((N, H, W, cin), generator=gen)
    w1 = torch.randn((cm, cin, 1, 1), generator=gen) / 4
    w2 = torch.randn((cm, cm, 3, 3), generator=gen) / 12
    w3 = torch.randn((cout, cm, 1, 1), generator=gen) / 4
    pix, pcount = K.pixel_mask_to_idx_padded(K.conv1_pixel_mask(mask, s, 1, (H, W)))
    h1 = K.pixel_conv1x1(x, w1, None, pix, count=pcount, impl="triton")
    h1_ref = R.pixel_conv1x1_ref(x, w1, None, pix[: int(pcount)])
    region = K.conv1_pixel_mask(mask, s, 1, (H, W))
    assert err_ratio(h1[region], h1_ref[region]) < 1e-5 if region.any() else True
    h2 = K.gather_conv3x3(h1, w2, None, pidx_list, s, 1, count=count, impl="triton")
    assert h2.shape[0] == pidx_list.shape[0] * s * s
    h2_ref = R.gather_conv3x3_ref(h1_ref, w2, None, pidx, s, 1)
    assert err_ratio(h2[: c * s * s], h2_ref) < 1e-5 if c else True
    res = torch.randn((N, H, W, cout), generator=gen)
    out = K.conv1x1_scatter_add(h2, w3, None, res.clone(), pidx_list, s, count=count, impl="triton")
    ref = R.conv1x1_scatter_add_ref(h2_ref, w3, None, res.clone(), pidx, s)
    assert err_ratio(out, ref) < 1e-5
    if c == 0:
        assert torch.equal(out, res)


def test_layer_skip_as_one_patch_per_sample_interpret(interpret):
    """Layer skipping through the spatial kernels: S = map size, one patch (idx, 0, 0) per active sample."""
    gen = torch.Generator().manual_seed(8)
    n, h, w, c, cm = 4, 5, 3, 16, 16
    x = torch.randn((n, h, w, c), generator=gen)
    w1 = torch.randn((cm, c, 1, 1), generator=gen) / 4
    w2 = torch.randn((cm, cm, 3, 3), generator=gen) / 12
    w3 = torch.randn((c, cm, 1, 1), generator=gen) / 4
    idx = torch.tensor([3, 1])
    pidx = K.samples_to_patch_idx(idx)
    s = max(h, w)
    h1 = K.pixel_conv1x1(x, w1, None, K.samples_to_pixel_idx(idx, h * w), impl="triton")
    h2 = K.gather_conv3x3(h1, w2, None, pidx, s, 1, impl="triton")
    out = K.conv1x1_scatter_add(h2, w3, None, x.clone(), pidx, s, impl="triton")
    import torch.nn.functional as F

    xn = x.permute(0, 3, 1, 2)
    dense = (xn + F.conv2d(F.conv2d(F.conv2d(xn, w1).relu(), w2, padding=1).relu(), w3)).relu().permute(0, 2, 3, 1)
    assert err_ratio(out[idx], dense[idx]) < 1e-5
    assert torch.equal(out[[0, 2]], x[[0, 2]])


def test_downsampling_block_recipe_interpret(interpret):
    """First block of a stage (stride 2, projection shortcut): scatter into the projection, then one ReLU pass.

    Inactive positions must be relu(proj(x)) and active ones relu(proj(x) + branch): the scatter writes the latter
    in place into the un-activated projection, and a final `relu_` (idempotent where already applied) does the rest.
    """
    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(12)
    n, h, w, c, cm, cout, s, stride = 2, 7, 5, 16, 16, 20, 2, 2
    x = torch.randn((n, h, w, c), generator=gen)
    w1 = torch.randn((cm, c, 1, 1), generator=gen) / 4
    w2 = torch.randn((cm, cm, 3, 3), generator=gen) / 12
    w3 = torch.randn((cout, cm, 1, 1), generator=gen) / 4
    wp, bp = torch.randn((cout, c, 1, 1), generator=gen) / 4, torch.randn(cout, generator=gen)
    ho, wo = indexing.conv_out_size(h, stride), indexing.conv_out_size(w, stride)
    mask = _mask("random", indexing.patch_grid((ho, wo), s), gen)
    pidx = K.mask_to_patch_idx(mask)
    xn = x.permute(0, 3, 1, 2)
    proj = F.conv2d(xn, wp, bp, stride=stride).permute(0, 2, 3, 1).contiguous()  # un-activated, NHWC
    h1 = K.pixel_conv1x1(x, w1, None, K.pixel_mask_to_idx(K.conv1_pixel_mask(mask, s, stride, (h, w))), impl="triton")
    h2 = K.gather_conv3x3(h1, w2, None, pidx, s, stride, impl="triton")
    out = K.conv1x1_scatter_add(h2, w3, None, proj.clone(), pidx, s, impl="triton").relu_()
    branch = F.conv2d(F.conv2d(F.conv2d(xn, w1).relu(), w2, stride=stride, padding=1).relu(), w3)
    pm = K.patch_mask_to_pixel_mask(mask, s, (ho, wo))[..., None]
    expect = torch.where(pm, (proj + branch.permute(0, 2, 3, 1)).relu(), proj.relu())
    assert err_ratio(out, expect) < 1e-5


def test_pixel_conv1x1_all_pixels_is_dense_conv(interpret):
    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(30)
    x = torch.randn((N, H, W, 16), generator=gen)
    wt = torch.randn((20, 16, 1, 1), generator=gen) / 4
    b = torch.randn(20, generator=gen)
    got = K.pixel_conv1x1(x, wt, b, None, impl="triton")
    dense = F.conv2d(x.permute(0, 3, 1, 2), wt, b).relu().permute(0, 2, 3, 1)
    assert got.shape == dense.shape and err_ratio(got, dense) < 1e-5
