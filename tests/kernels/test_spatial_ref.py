"""The spatial reference ops proven against dense torch convolutions plus masking (so the spec is not assumed)."""

import pytest
import torch
import torch.nn.functional as F

from laudnet.kernels import indexing, weights
from laudnet.kernels import spatial_ref as R


def _rand_mask(n, grid, p, gen):
    return torch.rand((n, *grid), generator=gen) < p


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("s", [1, 2, 3])
@pytest.mark.parametrize("groups", [1, 2])
def test_gather_conv3x3_ref_matches_dense_conv(stride, s, groups):
    gen = torch.Generator().manual_seed(100 * stride + 10 * s + groups)
    n, h, w, cin, cout = 2, 7, 5, 4, 6
    h1 = torch.randn((n, h, w, cin), generator=gen)
    wt = torch.randn((cout, cin // groups, 3, 3), generator=gen)
    b = torch.randn((cout,), generator=gen)
    ho, wo = indexing.conv_out_size(h, stride), indexing.conv_out_size(w, stride)
    mask = _rand_mask(n, indexing.patch_grid((ho, wo), s), 0.6, gen)
    pidx = indexing.mask_to_patch_idx(mask)
    got = R.gather_conv3x3_ref(h1, wt, b, pidx, s, stride, relu=True, groups=groups)
    dense = F.conv2d(h1.permute(0, 3, 1, 2), wt, b, stride=stride, padding=1, groups=groups).relu()
    dense = dense.permute(0, 2, 3, 1)  # [N, Ho, Wo, Cout]
    assert dense.shape[1:3] == (ho, wo)
    got = got.reshape(-1, s, s, cout)
    for p, (i, py, px) in enumerate(pidx.tolist()):
        for dy in range(s):
            for dx in range(s):
                oy, ox = py * s + dy, px * s + dx
                if oy < ho and ox < wo:
                    torch.testing.assert_close(got[p, dy, dx], dense[i, oy, ox], rtol=1e-5, atol=1e-5)
                else:  # pixels beyond the map are defined as zero
                    assert torch.all(got[p, dy, dx] == 0)


def test_gather_conv3x3_ref_packed_weight_and_no_relu():
    gen = torch.Generator().manual_seed(3)
    h1 = torch.randn((1, 5, 6, 3), generator=gen)
    wt = torch.randn((4, 3, 3, 3), generator=gen)
    pidx = indexing.mask_to_patch_idx(torch.ones((1, 3, 3), dtype=torch.bool))
    a = R.gather_conv3x3_ref(h1, wt, None, pidx, 2, 1, relu=False)
    b = R.gather_conv3x3_ref(h1, weights.pack_conv3x3_weight(wt), None, pidx, 2, 1, relu=False)
    torch.testing.assert_close(a, b)
    assert (a < 0).any()  # no ReLU applied


@pytest.mark.parametrize("s", [2, 3])
def test_conv1x1_scatter_add_ref_matches_dense(s):
    gen = torch.Generator().manual_seed(s)
    n, ho, wo, cmid, cout = 2, 7, 5, 3, 4
    y_dense = torch.randn((n, ho, wo, cmid), generator=gen)
    wt = torch.randn((cout, cmid, 1, 1), generator=gen)
    b = torch.randn((cout,), generator=gen)
    res = torch.randn((n, ho, wo, cout), generator=gen)
    mask = _rand_mask(n, indexing.patch_grid((ho, wo), s), 0.5, gen)
    pidx = indexing.mask_to_patch_idx(mask)
    # gathered rows from the dense map; rows beyond the map get garbage, which must be ignored
    n_, oy, ox, inside = R._patch_pixels(pidx, s, (ho, wo))
    yg = torch.full((pidx.shape[0] * s * s, cmid), 1e6)
    yg[inside] = y_dense[n_[inside], oy[inside], ox[inside]]
    expect = torch.where(
        indexing.patch_mask_to_pixel_mask(mask, s, (ho, wo))[..., None],
        (res + F.conv2d(y_dense.permute(0, 3, 1, 2), wt, b).permute(0, 2, 3, 1)).relu(),
        res,
    )
    out = R.conv1x1_scatter_add_ref(yg, wt, b, res.clone(), pidx, s)
    torch.testing.assert_close(out, expect, rtol=1e-5, atol=1e-5)
    # into a separate `out`: inactive positions keep what `out` held
    other = torch.full_like(res, -7.0)
    R.conv1x1_scatter_add_ref(yg, weights.pack_conv1x1_weight(wt), b, res, pidx, s, out=other)
    pm = indexing.patch_mask_to_pixel_mask(mask, s, (ho, wo))
    torch.testing.assert_close(other[pm], expect[pm], rtol=1e-5, atol=1e-5)
    assert torch.all(other[~pm] == -7.0)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("s", [1, 2, 3])
def test_conv1_pixel_mask_matches_patch_formula(stride, s):
    """Rows [py*S*s - 1, (py*S + S - 1)*s + 1] (and columns) of each active patch, clipped to the map."""
    gen = torch.Generator().manual_seed(7 * s + stride)
    n, h, w = 2, 9, 7
    ho, wo = indexing.conv_out_size(h, stride), indexing.conv_out_size(w, stride)
    mask = _rand_mask(n, indexing.patch_grid((ho, wo), s), 0.3, gen)
    expect = torch.zeros((n, h, w), dtype=torch.bool)
    for i, py, px in indexing.mask_to_patch_idx(mask).tolist():
        # the last output row of the patch is clipped to the map first (border patches are partial)
        y0, y1 = py * s * stride - 1, min(py * s + s - 1, ho - 1) * stride + 1
        x0, x1 = px * s * stride - 1, min(px * s + s - 1, wo - 1) * stride + 1
        expect[i, max(y0, 0) : min(y1, h - 1) + 1, max(x0, 0) : min(x1, w - 1) + 1] = True
    assert torch.equal(indexing.conv1_pixel_mask(mask, s, stride, (h, w)), expect)


@pytest.mark.parametrize("stride", [1, 2])
def test_conv1_region_is_sufficient(stride):
    """gather_conv3x3 on an h1 that is garbage outside conv1_pixel_mask gives the exact result."""
    gen = torch.Generator().manual_seed(11 + stride)
    n, h, w, c, s = 2, 9, 7, 3, 2
    h1 = torch.randn((n, h, w, c), generator=gen)
    wt = torch.randn((c, c, 3, 3), generator=gen)
    ho, wo = indexing.conv_out_size(h, stride), indexing.conv_out_size(w, stride)
    mask = _rand_mask(n, indexing.patch_grid((ho, wo), s), 0.4, gen)
    pidx = indexing.mask_to_patch_idx(mask)
    region = indexing.conv1_pixel_mask(mask, s, stride, (h, w))
    assert not region.all()
    junk = torch.where(region[..., None], h1, torch.full_like(h1, float("nan")))
    a = R.gather_conv3x3_ref(h1, wt, None, pidx, s, stride)
    b = R.gather_conv3x3_ref(junk, wt, None, pidx, s, stride)
    assert not b.isnan().any()
    torch.testing.assert_close(a, b)


def test_mask_idx_round_trip_and_pixel_idx():
    gen = torch.Generator().manual_seed(5)
    mask = _rand_mask(3, (4, 3), 0.5, gen)
    pidx = indexing.mask_to_patch_idx(mask)
    assert pidx.dtype == torch.int32 and pidx.shape[1] == 3
    assert torch.equal(indexing.patch_idx_to_mask(pidx, 3, (4, 3)), mask)
    pix = torch.rand((2, 3, 4), generator=gen) < 0.5
    q = indexing.pixel_mask_to_idx(pix).long()
    flat = torch.zeros(2 * 3 * 4, dtype=torch.bool)
    flat[q] = True
    assert torch.equal(flat.reshape(2, 3, 4), pix)
    rows = indexing.samples_to_pixel_idx(torch.tensor([2, 0]), 6)
    assert rows.tolist() == list(range(12, 18)) + list(range(0, 6))


def test_pixel_conv1x1_ref_matches_dense():
    gen = torch.Generator().manual_seed(9)
    x = torch.randn((2, 3, 5, 4), generator=gen)
    wt = torch.randn((6, 4, 1, 1), generator=gen)
    b = torch.randn((6,), generator=gen)
    dense = F.conv2d(x.permute(0, 3, 1, 2), wt, b).relu().permute(0, 2, 3, 1).reshape(-1, 6)
    pix = torch.tensor([0, 7, 29, 13], dtype=torch.int32)
    torch.testing.assert_close(R.pixel_conv1x1_ref(x, wt, b, pix, compact=True), dense[pix.long()])
    out = R.pixel_conv1x1_ref(x, wt, b, pix)
    torch.testing.assert_close(out.reshape(-1, 6)[pix.long()], dense[pix.long()])


def test_reference_rejects_bad_inputs():
    h1 = torch.randn(1, 5, 5, 4)
    wt = torch.randn(4, 4, 3, 3)
    good = torch.zeros((1, 3), dtype=torch.int32)
    with pytest.raises(ValueError, match="int32"):
        R.gather_conv3x3_ref(h1, wt, None, good.long(), 2, 1)
    with pytest.raises(ValueError, match="contiguous"):
        R.gather_conv3x3_ref(h1.transpose(1, 2), wt, None, good, 2, 1)
    with pytest.raises(ValueError, match="stride"):
        R.gather_conv3x3_ref(h1, wt, None, good, 2, 3)
    with pytest.raises(ValueError, match="bias"):
        R.gather_conv3x3_ref(h1, wt, torch.zeros(3), good, 2, 1)
    with pytest.raises(ValueError, match="grid"):
        indexing.patch_mask_to_pixel_mask(torch.ones(1, 2, 2, dtype=torch.bool), 2, (7, 5))
    with pytest.raises(ValueError, match="y_gathered"):
        R.conv1x1_scatter_add_ref(torch.randn(3, 4), torch.randn(4, 4, 1, 1), None, h1, good, 2)


@pytest.mark.parametrize("p", [0.0, 0.4, 1.0])
def test_sync_free_lists_match_nonzero(p):
    gen = torch.Generator().manual_seed(int(10 * p))
    mask = torch.rand((3, 4, 5), generator=gen) < p
    pidx, count = indexing.mask_to_patch_list(mask)
    ref = indexing.mask_to_patch_idx(mask)
    assert pidx.dtype == count.dtype == torch.int32 and pidx.shape == (60, 3) and count.shape == (1,)
    assert int(count) == ref.shape[0]
    assert torch.equal(pidx[: int(count)], ref)
    pix = torch.rand((2, 3, 5), generator=gen) < p
    q, qc = indexing.pixel_mask_to_idx_padded(pix)
    assert torch.equal(q[: int(qc)], indexing.pixel_mask_to_idx(pix))
    assert indexing.samples_to_patch_idx(torch.tensor([4, 1])).tolist() == [[4, 0, 0], [1, 0, 0]]


def test_reference_count_truncates():
    gen = torch.Generator().manual_seed(0)
    h1 = torch.randn((2, 7, 5, 3), generator=gen)
    wt = torch.randn((4, 3, 3, 3), generator=gen)
    mask = torch.rand((2, 4, 3), generator=gen) < 0.5
    pidx, count = indexing.mask_to_patch_list(mask)
    c = int(count)
    full = R.gather_conv3x3_ref(h1, wt, None, pidx, 2, 1, count=count)
    assert full.shape == (24 * 4, 4)
    torch.testing.assert_close(full[: c * 4], R.gather_conv3x3_ref(h1, wt, None, pidx[:c], 2, 1))
    with pytest.raises(ValueError, match="count"):
        R.gather_conv3x3_ref(h1, wt, None, pidx, 2, 1, count=torch.tensor([99], dtype=torch.int32))
