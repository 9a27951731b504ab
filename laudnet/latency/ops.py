"""Per-operator latency models with their tile scheduling (LAUDNet's "operator library").

Every operator is scheduled the way the paper describes: its output is cut into tiles (channel x height x width, plus
patches processed together for sparse ops); each candidate tiling is costed as compute (MACs over the engines, with the
efficiency lost when a tile does not fill an engine) plus memory (DRAM traffic at DRAM bandwidth, per-engine traffic at
L2 bandwidth, with the efficiency lost when a request is narrower than a sector); the best tiling wins, and the
kernel launch is added. All latencies are seconds for the whole batch.

Two fidelities share this code. `compat=True` reproduces the official DyNetSimulator operator by operator, quirks
included, so that the paper's analysis can be re-run; each reproduced quirk is marked `compat:` with what it does.
`compat=False` (the default) fixes them, each fix marked `fix:`, and adds what the paper
lacks (tensor cores via `HardwareSpec.precision`, exact channel-group load imbalance).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from laudnet.latency.hardware import HardwareSpec


@dataclass(frozen=True)
class Cost:
    """Latency of one operator (or a sum of them), seconds for the whole batch.

    `compute` and `memory` are the parts before composition; `latency` includes launches.
    """

    latency: float
    compute: float = 0.0
    memory: float = 0.0
    launches: int = 0

    def __post_init__(self) -> None:  # plain floats (the searches produce numpy scalars)
        for key in ("latency", "compute", "memory"):
            object.__setattr__(self, key, float(getattr(self, key)))

    def __add__(self, other: Cost) -> Cost:
        return Cost(self.latency + other.latency, self.compute + other.compute, self.memory + other.memory,
                    self.launches + other.launches)

    def scale(self, k: float) -> Cost:
        """Expected cost of an operator that runs with probability `k` (the kernel count is left as it is)."""
        return Cost(self.latency * k, self.compute * k, self.memory * k, self.launches)


ZERO = Cost(0.0)


# ---- helpers ---------------------------------------------------------------------------------------------------------
# The helpers take numbers or numpy arrays: the tile searches evaluate every candidate tiling at once (a Python loop
# over the ~60k candidates of a sparse conv takes ~0.2 s; the array form ~2 ms), then re-cost the winner on scalars.
def ceil_eff(x, unit):
    """Fraction of `ceil(x / unit)` units of work that `x` actually uses."""
    return x / (np.ceil(x / unit) * unit)


def mem_eff(n, gap, concurrent):
    """Useful fraction of memory requests reading runs of `n` elements separated by `gap` elements."""
    gap = np.maximum(gap, 0)
    return np.where(n > concurrent, ceil_eff(n, concurrent), np.where(n + gap > concurrent, n / concurrent,
                                                                       n / (n + gap)))


def _grid(*axes: tuple[int, ...]) -> list[np.ndarray]:
    """Candidate values per search axis as float arrays broadcastable against each other (axis i on dimension i)."""
    n = len(axes)
    return [np.asarray(a, dtype=np.float64).reshape([-1 if i == j else 1 for j in range(n)])
            for i, a in enumerate(axes)]


def _map_tiles(c: int, h: int, w: int) -> tuple[np.ndarray, ...]:
    """The tile search of an element-wise op over a `c x h x w` map: (ct, ht, wt, tile size, tile count) grids."""
    ct, ht, wt = _grid(tile_candidates(c), tile_candidates(h), tile_candidates(w))
    return ct, ht, wt, ct * ht * wt, np.ceil(c / ct) * np.ceil(h / ht) * np.ceil(w / wt)


@lru_cache(maxsize=4096)
def tile_candidates(n: int, pow2_limit: int = 8, max_div: int = 8) -> tuple[int, ...]:
    """Tile sizes searched along a dimension of size `n`.

    Powers of two below 2**pow2_limit and at most 2n, the sizes that split `n` into 1..7 near-equal parts, and the
    small sizes 2..7. The tuple keeps the iteration order of a Python set built in that order: the official search
    keeps the first of equally good tilings, and which one it keeps changes the cost of sparse ops, which are
    scheduled on the mean patch count and then re-costed on the real one.
    """
    pow2 = [1 << k for k in range(pow2_limit) if (1 << k) <= 2 * n]
    divs: list[int] = []
    for i in range(1, min(n, max_div)):
        t = math.ceil(n / i)
        if t not in divs:
            divs.append(t)
    small = list(range(2, min(n, max_div)))
    return tuple(set(pow2 + divs + small))


@lru_cache(maxsize=65536)
def expected_max_density(n_tiles: int, c_tile: int, density: float, group: int = 1) -> float:
    """Expected busiest-tile channel density when channels are kept in groups (load imbalance of channel skipping).

    Channels come in runs of `group` consecutive channels, each run kept with probability `density`; the output
    channels are split into `n_tiles` tiles of `c_tile` channels and the slowest (fullest) tile sets the time. This is
    the exact expectation of what the official `calc_max_c_density` estimates with 100 unseeded Monte-Carlo draws
    (fixed: deterministic and order-independent), floored at `density` as there.
    """
    if density >= 1:
        return 1.0
    if density <= 0:
        return 0.0
    if group >= c_tile:
        # A tile lies within ceil(c_tile / group)-ish runs; with runs at least as wide as a tile every tile is all on
        # or all off, and the busiest one is full as soon as any run is on.
        runs = max(1, math.ceil(n_tiles * c_tile / group))
        return max(density, 1.0 - (1.0 - density) ** runs)
    per_tile = math.ceil(c_tile / group)  # independent runs per tile
    e_max = _expected_max_binomial(n_tiles, per_tile, density) * group
    return max(density, min(1.0, e_max / c_tile))


def _expected_max_binomial(n: int, m: int, p: float) -> float:
    """E[max of n i.i.d. Binomial(m, p)] = sum_k P(max >= k)."""
    log_p, log_q = math.log(p), math.log1p(-p)
    cdf = 0.0
    total = 0.0
    for k in range(m):
        log_pmf = math.lgamma(m + 1) - math.lgamma(k + 1) - math.lgamma(m - k + 1) + k * log_p + (m - k) * log_q
        cdf = min(1.0, cdf + math.exp(log_pmf))
        total += 1.0 - cdf**n  # P(max >= k + 1)
    return total


@lru_cache(maxsize=256)
def get_op_model(hw: HardwareSpec, batch: int, compat: bool = False) -> OpModel:
    """A shared `OpModel`: its per-operator memo makes repeated predictions (sweeps, plots) cheap."""
    return OpModel(hw, batch, compat)


# ---- the operator model ----------------------------------------------------------------------------------------------
class OpModel:
    """Operator latencies on one device, at one batch size and fidelity.

    Args:
        hw: the device.
        batch: images processed together.
        compat: reproduce the official simulator (FP32 only) instead of the fixed model.
    """

    def __init__(self, hw: HardwareSpec, batch: int, compat: bool = False) -> None:
        if batch < 1 or int(batch) != batch:
            raise ValueError(f"batch must be a positive integer, got {batch!r}")
        if compat and hw.precision != "fp32":
            raise ValueError(f"compat mode reproduces the paper's FP32 model; got precision {hw.precision!r}")
        self.hw = hw
        self.batch = int(batch)
        self.compat = compat
        self.n_pes = hw.n_pes
        self.freq = hw.frequency
        self.lanes = hw.pe_fp32s  # CUDA-core lanes: element-wise work and FP32 matmuls
        self.mm_lanes = hw.matmul_lanes  # tensor cores at 16-bit precision
        self.fill = hw.pe_fp32s * hw.fp32_cycles  # outputs a tile needs to keep an engine full
        self.mm_fill = hw.matmul_fill
        self.dram = hw.mem_elem_bandwidth
        self.l2 = hw.l2_elem_bandwidth
        self.sector = hw.mem_concurrent
        self.launch = hw.launch_time
        self.add_mode = hw.latency_mode == "add"
        self._memo: dict[tuple, Cost] = {}

    def with_batch(self, batch: int) -> OpModel:
        """The model of the same device at another batch size (shared, so that its memo is reused)."""
        return get_op_model(self.hw, batch, self.compat)

    # -- composition ---------------------------------------------------------------------------------------------------
    def _join(self, compute: float, memory: float) -> float:
        return compute + memory if self.add_mode else max(compute, memory)

    def _cached(self, key: tuple, fn) -> Cost:
        hit = self._memo.get(key)
        if hit is None:
            hit = self._memo[key] = fn()
        return hit

    def _imbalance(self, n_tiles: int, c_tile: int, density: float, group: int) -> float:
        return expected_max_density(int(n_tiles), int(c_tile), round(float(density), 12), int(group))

    def _imbalance_axis(self, channels: int, tiles: tuple[int, ...], density: float, group: int, ndim: int,
                        axis: int = 0):
        """`_imbalance` for every channel-tile candidate, shaped to broadcast along search axis `axis`."""
        if density >= 1:
            return 1.0
        values = [self._imbalance(math.ceil(channels / t), t, density, group) for t in tiles]
        return np.asarray(values).reshape([-1 if i == axis else 1 for i in range(ndim)])

    def _conv_eff(self, ks: int) -> float:
        """Measured k x k conv efficiency relative to a GEMM (beyond the paper; 1 in compat mode and for 1x1)."""
        return 1.0 if self.compat or ks == 1 else self.hw.conv_efficiency

    def _pick(self, compute, mem) -> tuple[int, ...]:
        """Index of the best candidate; the first one on ties, as the official search keeps the first."""
        compute, mem = np.broadcast_arrays(compute, mem)
        lat = compute + mem if self.add_mode else np.maximum(compute, mem)
        return np.unravel_index(int(np.argmin(lat)), lat.shape)

    def _best(self, compute, mem) -> Cost:
        compute, mem = np.broadcast_arrays(compute, mem)
        idx = self._pick(compute, mem)
        c, m = float(compute[idx]), float(mem[idx])
        return Cost(self._join(c, m) + self.launch, c, m, 1)

    # -- dense convolution (the official simulate_conv) ----------------------------------------------------------------
    def conv(self, cin: int, cout: int, out_h: int, out_w: int, ks: int = 1, groups: int = 1, stride: int = 1,
             in_density: float = 1.0, out_density: float = 1.0, group: int = 1, compacted: str | None = None) -> Cost:
        """Convolution (or channel-masked convolution with gathered weights) producing `cout x out_h x out_w`.

        `in_density` / `out_density` are the kept fractions of input / output channels (channel skipping; per
        sample, so the weights of all channels are read at batch > 1); `group` is the channel-group size G.
        `compacted` ("in", "out" or "both": which channel dimensions laudnet's channel kernels compact): each
        sample's kept channels are packed densely before tiling, so no tile is partly empty (no load imbalance), but
        every tile of every sample reads its own gathered weight tile through L2; gathered in both dimensions ("both",
        `channel_conv3x3`), the weight loads are runs of G channels, served at the sector efficiency of such runs.
        """
        if compacted not in (None, "in", "out", "both"):
            raise ValueError(f"compacted must be None, 'in', 'out' or 'both', got {compacted!r}")
        key = ("conv", cin, cout, out_h, out_w, ks, groups, stride, in_density, out_density, group, compacted)
        return self._cached(key, lambda: self._conv(cin, cout, out_h, out_w, ks, groups, stride, in_density,
                                                    out_density, group, compacted))

    def _conv(self, cin, cout, out_h, out_w, ks, groups, stride, ic, oc, group, compacted=None) -> Cost:
        B = self.batch
        cpg = cin // groups
        c_cand = tile_candidates(cout)
        ct, ht, wt = _grid(c_cand, tile_candidates(out_h), tile_candidates(out_w))
        n_ct = np.ceil(cout / ct)
        n_tiles = n_ct * np.ceil(out_h / ht) * np.ceil(out_w / wt)
        touched = np.ceil(ct / (cout // groups))  # conv groups a channel tile reads
        if self.compat:  # compat: the halo is (t + k - 1) * s instead of (t - 1) * s + k
            in_tile = touched * cpg * (ht + ks - 1) * stride * (wt + ks - 1) * stride
        else:
            in_tile = touched * cpg * ((ht - 1) * stride + ks) * ((wt - 1) * stride + ks)
        w_tile = ct * cpg * ks * ks
        w_all = cout * cpg * ks * ks
        if B == 1:  # one sample: only its kept channels' weights are read
            w_tile = w_tile * (ic * oc)
            w_all = w_all * oc
        pe_traffic = (w_tile + in_tile * ic * B + ct * ht * wt * oc * B) * n_tiles
        if compacted and B > 1:
            # engine: `laudnet.kernels.channel`, every sample gathers its own kept weights (DRAM once, L2 per
            # sample); `channel_conv3x3` gathers both channel dimensions in aligned runs of G, loaded at the sector
            # efficiency of such runs (why G >= 8 is the default)
            eff = mem_eff(group, cpg, self.sector) if compacted == "both" else 1.0
            pe_traffic = pe_traffic + (B - 1) * w_all * ic * oc / eff
        dram = w_all + cin * out_h * stride * out_w * stride * B * ic + cout * out_h * out_w * B * oc
        mem = dram / self.dram + pe_traffic / self.l2 / mem_eff(wt, out_w - wt, self.sector)
        if compacted:  # packed channels fill the tiles: the work is the kept fraction, no busiest-tile excess
            busy = oc
            lanes, fill = self.mm_lanes, self.mm_fill
        elif self.compat:
            # compat: rho_in counted twice, and the group size never reaches this model
            busy = self._imbalance_axis(cout, c_cand, ic * oc, 1, ct.ndim)
            lanes, fill = self.lanes, self.fill
        else:  # fix: rho_in times the busiest tile's kept output channels at group size G
            busy = self._imbalance_axis(cout, c_cand, oc, group, ct.ndim)
            lanes, fill = self.mm_lanes, self.mm_fill
        macs = ct * ht * wt * cpg * ks * ks * B
        compute = macs / self.freq / lanes * ic * busy / ceil_eff(ct * ht * wt, fill) * np.ceil(n_tiles / self.n_pes)
        return self._best(compute / self._conv_eff(ks), mem)

    # -- element-wise add (simulate_add) -------------------------------------------------------------------------------
    def add(self, c: int, h: int, w: int) -> Cost:
        """Element-wise sum of two `c x h x w` maps (the residual add)."""
        return self._cached(("add", c, h, w), lambda: self._add(c, h, w))

    def _add(self, c, h, w) -> Cost:
        B = self.batch
        ct, ht, wt, tile, n_tiles = _map_tiles(c, h, w)
        compute = tile / self.freq / self.lanes / ceil_eff(tile, self.fill) * np.ceil(n_tiles / self.n_pes)
        if self.compat:  # compat: every tile's 3 operands come from DRAM, padded tiles included
            mem = 3 * tile / self.dram * n_tiles
        else:  # fix: DRAM moves the maps once; tiles move through L2 at the sector efficiency
            mem = 3 * c * h * w / self.dram + 3 * tile * n_tiles / self.l2 / mem_eff(wt, w - wt, self.sector)
        return self._best(compute * B, mem * B)

    # -- pooling -------------------------------------------------------------------------------------------------------
    def avg_pool(self, c: int, h: int, w: int, out_h: int, out_w: int) -> Cost:
        """Average (or max) pooling of `c x h x w` to `c x out_h x out_w`: memory-bound, compute hidden."""
        B = self.batch
        read, written = c * h * w, c * out_h * out_w
        mem = (read + written) * B / self.dram + (read + written) * B / self.l2
        return Cost(mem + self.launch, 0.0, mem, 1)

    def global_pool(self, c: int, h: int, w: int) -> Cost:
        """Global average pool with a tree reduction (search_global_avg_pool_tile_cfg), launch included."""
        return self._cached(("gpool", c, h, w), lambda: self._global_pool(c, h, w))

    def _reduce_tree(self, c_par: int, n: int) -> float:
        n = math.ceil(n / 2)
        lat = 0.0
        while n > 1:
            lat += math.ceil(n * c_par / self.lanes) / ceil_eff(n * c_par, self.fill) / self.freq
            n = math.ceil(n / 2)
        return lat * self.batch

    def _global_pool(self, c, h, w) -> Cost:
        B = self.batch
        best = None
        for i in range(8):
            ct = 1 << i
            if ct > 2 * c:
                break
            n_ct = math.ceil(c / ct)
            n_tiles = n_ct * h * w  # 1 x 1 spatial tiles
            compute = ct / self.freq / self.lanes / ceil_eff(ct, self.fill) * math.ceil(n_tiles / self.n_pes)
            if not self.compat:  # fix: the per-tile compute also scales with the batch (the official one does not)
                compute *= B
            compute += self._reduce_tree(ct, h * w)
            mem = (ct / self.dram + ct / self.l2) * n_tiles + (ct * h * w / self.l2 + ct / self.l2) * n_ct
            mem *= B
            lat = self._join(compute, mem)
            if best is None or lat < best[0]:
                best = (lat, compute, mem)
        return Cost(best[0] + self.launch, best[1], best[2], 1)

    def broadcast_mul(self, c: int, h: int, w: int) -> Cost:
        """Per-channel rescaling of a `c x h x w` map (SE excitation), launch included."""
        return self._cached(("bmul", c, h, w), lambda: self._broadcast_mul(c, h, w))

    def _broadcast_mul(self, c, h, w) -> Cost:
        B = self.batch
        ct, ht, wt, tile, n_tiles = _map_tiles(c, h, w)
        mem = (2 * c * h * w + c) / self.dram + (2 * tile + ct) * n_tiles / self.l2 / mem_eff(wt, w - wt, self.sector)
        compute = tile / self.freq / self.lanes / ceil_eff(tile, self.fill) * np.ceil(n_tiles / self.n_pes)
        return self._best(compute * B, mem * B)

    # -- fully connected (simulate_fc) ---------------------------------------------------------------------------------
    def fc(self, cin: int, cout: int, rows: int = 1) -> Cost:
        """Fully connected layer `cin -> cout` on `rows` vectors per sample."""
        return self._cached(("fc", cin, cout, rows), lambda: self._fc(cin, cout, rows))

    def _fc(self, cin, cout, rows) -> Cost:
        B = self.batch * rows
        co, ci = _grid(tile_candidates(cout), tile_candidates(cin))
        if self.compat:
            # compat: tile count = product of tile sizes; weights re-read for every sample
            n_tiles = co * ci
            pe_traffic = (co * ci + ci + co) * n_tiles * B
            dram = (cin * cout + cin + cout) * B
            gap = cin
            lanes, fill = self.lanes, self.fill
        else:  # fix: tiles counted by number; the weight is read once per batch
            n_tiles = np.ceil(cout / co) * np.ceil(cin / ci)
            pe_traffic = (co * ci + (ci + co) * B) * n_tiles
            dram = cin * cout + (cin + cout) * B
            gap = cin - ci
            lanes, fill = self.mm_lanes, self.mm_fill
        compute = ci * co * B / self.freq / lanes / ceil_eff(ci * co * B, fill) * np.ceil(n_tiles / self.n_pes)
        mem = dram / self.dram + pe_traffic / self.l2 / mem_eff(ci, gap, self.sector)
        return self._best(compute, mem)

    # -- squeeze-and-excitation (simulate_se) --------------------------------------------------------------------------
    def se(self, c: int, h: int, w: int, squeeze: int) -> Cost:
        """Dense SE: global pool, fc c->squeeze, fc squeeze->c, rescale (4 kernels)."""
        return self.global_pool(c, h, w) + self.fc(c, squeeze) + self.fc(squeeze, c) + self.broadcast_mul(c, h, w)

    # -- sparse ops over S x S patches (the official simulate_dynamic_conv, scatter_add, dynamic SE) -------------------
    @staticmethod
    def n_patches(h: int, w: int, patch: int, density: float) -> int:
        """Active patches: the density rounded up to whole patches (a block with any active pixel computes)."""
        return math.ceil(round(density * math.ceil(h / patch) * math.ceil(w / patch), 9))

    def gather_conv(self, cin: int, cout: int, out_h: int, out_w: int, ks: int, groups: int, stride: int, patch: int,
                    n_patches: int, gathered_input: bool, in_density: float = 1.0, out_density: float = 1.0,
                    group: int = 1, side: int | None = None) -> Cost:
        """Convolution computed only on `n_patches` output patches of `patch x patch` pixels.

        Args:
            out_h, out_w: size of the full output map (the patch grid covers it).
            gathered_input: the input was gathered into patches beforehand (read only the patches), instead of being
                read from the full map by indexing.
            side: side of the region actually computed per patch when it exceeds the cell (conv1 of a spatial block
                computes the halo that the next 3x3 conv needs); default `patch`.
        """
        side = patch if side is None else side
        key = ("gconv", cin, cout, out_h, out_w, ks, groups, stride, patch, n_patches, gathered_input, in_density,
               out_density, group, side)
        return self._cached(key, lambda: self._gather_conv(cin, cout, out_h, out_w, ks, groups, stride, patch,
                                                           n_patches, gathered_input, in_density, out_density, group,
                                                           side))

    def _gather_conv(self, cin, cout, out_h, out_w, ks, groups, stride, patch, n_patches, gathered, ic, oc, group,
                     side) -> Cost:
        # The tiling is chosen for the mean patch count (the kernel is built before the mask is known), then costed on
        # the real count.
        grid = math.ceil(out_h / patch) * math.ceil(out_w / patch)
        mean_patches = (grid + 1) / 2
        if self.compat:  # compat: the halo only fed a print; the patch that is computed is S x S
            side = patch
        if self.compat:  # compat: rho_in counted twice and G unused, as in `conv`
            density, grp = ic * oc, group
        else:
            density, grp = oc, group
        axes = (tile_candidates(256), tile_candidates(cout), tile_candidates(side), tile_candidates(side))
        npp, ct, ht, wt = _grid(*axes)
        busy = self._imbalance_axis(cout, axes[1], density, grp, 4, axis=1)
        n_tiles = np.ceil(cout / ct) * np.ceil(side / ht) * np.ceil(side / wt)
        args = (cin, cout, out_h, out_w, groups, stride, ks, side, gathered, ic, oc)
        mem = self._gconv_mem(n_tiles, ct, ht, wt, mean_patches, *args)
        compute = self._gconv_compute(ct, ht, wt, npp, mean_patches, busy, cin, groups, ks, ic) * np.ceil(
            n_tiles / self.n_pes)
        i = self._pick(compute, mem)
        npp, ct, ht, wt = (float(a[i[k]]) for k, a in enumerate(axes))
        busy = self._imbalance(math.ceil(cout / ct), ct, density, grp)
        n_tiles = math.ceil(cout / ct) * math.ceil(side / ht) * math.ceil(side / wt)
        mem = float(self._gconv_mem(n_tiles, ct, ht, wt, n_patches, *args))
        compute = float(self._gconv_compute(ct, ht, wt, npp, n_patches, busy, cin, groups, ks, ic)) * math.ceil(
            n_tiles / self.n_pes)
        return Cost(self._join(compute, mem) + self.launch, compute, mem, 1)

    def _gconv_compute(self, ct, ht, wt, npp, n_patches, busy, cin, groups, ks, ic):
        if n_patches == 0:
            return 0.0
        B = self.batch
        lanes, fill = (self.lanes, self.fill) if self.compat else (self.mm_lanes, self.mm_fill)
        per_batch = ct * ht * wt * (cin // groups) * ks * ks * npp / self.freq / lanes / ceil_eff(
            ct * ht * wt * B * npp, fill)
        return per_batch * np.ceil(n_patches / npp) * ic * busy * B / self._conv_eff(ks)

    def _gconv_mem(self, n_tiles, ct, ht, wt, n_patches, cin, cout, out_h, out_w, groups, stride, ks, side, gathered,
                   ic, oc):
        B = self.batch
        cpg = cin // groups
        touched = np.ceil(ct / (cout // groups))
        w_tile = ct * cpg * ks * ks
        if self.compat:  # compat: the official halo form
            in_tile = touched * cpg * (ht + ks - 1) * stride * (wt + ks - 1) * stride * n_patches
            in_patch = (side + ks - 1) * stride
        else:
            in_tile = touched * cpg * ((ht - 1) * stride + ks) * ((wt - 1) * stride + ks) * n_patches
            in_patch = (side - 1) * stride + ks
        if B == 1:
            w_tile = w_tile * (ic * oc)
        pe_traffic = (w_tile + in_tile * ic * B + ct * ht * wt * n_patches * oc * B) * n_tiles
        w_all = cout * cpg * ks * ks
        read = n_patches * cin * in_patch * in_patch if gathered else cin * out_h * stride * out_w * stride
        written = n_patches * cout * side * side
        dram = w_all + read * ic * B + written * oc * B
        # The official model forces the L2 request efficiency to 1 for sparse convs; kept in both modes (gathered
        # patches are contiguous, and indexed reads of whole rows are too when S >= a sector).
        return dram / self.dram + pe_traffic / self.l2

    def pixel_gemm(self, cin: int, cout: int, rows: int, ks: int = 1, in_per_row: float = 1.0,
                   in_unique: float | None = None) -> Cost:
        """A convolution run as one GEMM over a list of output pixels (laudnet's Triton kernels).

        engine: `pixel_conv1x1`, `gather_conv3x3` (implicit GEMM) and `conv1x1_scatter_add` in `laudnet.kernels.spatial`
        tile M = listed output pixels (of every sample and patch together) x N = output channels, K = cin * ks^2: no
        tile is bounded by a patch, unlike the paper's sparse conv. Tiles are searched over (channels, rows).

        Args:
            rows: output pixels per sample.
            ks: kernel size (K = cin * ks^2).
            in_per_row: input pixels an output pixel brings through L2 (the per-patch halo of a 3x3, amortised).
            in_unique: input pixels per sample read from DRAM (default `rows`).
        """
        key = ("pgemm", cin, cout, rows, ks, in_per_row, in_unique)
        return self._cached(key, lambda: self._pixel_gemm(cin, cout, rows, ks, in_per_row,
                                                          rows if in_unique is None else in_unique))

    def _pixel_gemm(self, cin, cout, rows, ks, in_per_row, in_unique) -> Cost:
        if rows <= 0:
            return Cost(self.launch, launches=1)  # launched for the list's capacity; every program exits at once
        m_total = rows * self.batch
        ct, mt = _grid(tile_candidates(cout), tuple(1 << k for k in range(4, 9)))
        n_tiles = np.ceil(cout / ct) * np.ceil(m_total / mt)
        k = cin * ks * ks
        pe_traffic = (ct * k + mt * cin * in_per_row + ct * mt) * n_tiles
        dram = cout * k + (in_unique * cin + rows * cout) * self.batch
        mem = dram / self.dram + pe_traffic / self.l2
        compute = ct * mt * k / self.freq / self.mm_lanes / ceil_eff(ct * mt, self.mm_fill) * np.ceil(
            n_tiles / self.n_pes)
        return self._best(compute / self._conv_eff(ks), mem)

    def scatter_add(self, c: int, h: int, w: int, patch: int, n_patches: int) -> Cost:
        """Residual add that writes `n_patches` computed patches into the identity map (full map in and out)."""
        return self._cached(("sadd", c, h, w, patch, n_patches), lambda: self._scatter_add(c, h, w, patch, n_patches))

    def _elementwise_patches_mem(self, n_tiles, ct, ht, wt, c, h, w, patch, n_patches):
        B = self.batch
        tile = ct * ht * wt * n_patches
        pe_traffic = 3 * tile * n_tiles * B
        dram = (n_patches * c * patch * patch + 2 * c * h * w) * B
        return dram / self.dram + pe_traffic / self.l2 / mem_eff(wt, patch - wt, self.sector)

    def _elementwise_patches_compute(self, ct, ht, wt, npp, n_patches):
        B = self.batch
        per_batch = ct * ht * wt * npp / self.freq / self.lanes / ceil_eff(ct * ht * wt * B * npp, self.fill)
        return per_batch * np.ceil(n_patches / npp) * B

    def _scatter_add(self, c, h, w, patch, n_patches) -> Cost:
        grid = math.ceil(h / patch) * math.ceil(w / patch)
        mean_patches = (grid + 1) / 2
        axes = (tile_candidates(grid), tile_candidates(c), tile_candidates(patch), tile_candidates(patch))
        npp, ct, ht, wt = _grid(*axes)
        n_tiles = np.ceil(c / ct) * np.ceil(patch / ht) * np.ceil(patch / wt)
        mem = self._elementwise_patches_mem(n_tiles, ct, ht, wt, c, h, w, patch, mean_patches)
        compute = self._elementwise_patches_compute(ct, ht, wt, npp, mean_patches) * np.ceil(n_tiles / self.n_pes)
        i = self._pick(compute, mem)
        npp, ct, ht, wt = (float(a[i[k]]) for k, a in enumerate(axes))
        n_tiles = math.ceil(c / ct) * math.ceil(patch / ht) * math.ceil(patch / wt)
        mem = float(self._elementwise_patches_mem(n_tiles, ct, ht, wt, c, h, w, patch, n_patches))
        compute = float(self._elementwise_patches_compute(ct, ht, wt, npp, n_patches)) * math.ceil(
            n_tiles / self.n_pes)
        return Cost(self._join(compute, mem) + self.launch, compute, mem, 1)

    def gather(self, c: int, h: int, w: int, patch: int, n_patches: int, halo: int = 0) -> Cost:
        """Copy `n_patches` patches (with `halo` border) of a `c x h x w` map into a dense patch stack."""
        side = patch + 2 * halo
        moved = c * n_patches * side * side
        run = side
        mem = ((c * h * w + moved) / self.dram + moved / self.l2 / mem_eff(run, max(0, w - run), self.sector)
               + moved / self.l2) * self.batch
        return Cost(mem + self.launch, 0.0, mem, 1)

    def scatter(self, c: int, h: int, w: int, patch: int, n_patches: int) -> Cost:
        """Write a stack of `n_patches` patches back into a `c x h x w` map."""
        moved = c * n_patches * patch * patch
        mem = ((c * h * w + moved) / self.dram + moved / self.l2 / mem_eff(patch, max(0, w - patch), self.sector)
               + moved / self.l2) * self.batch
        return Cost(mem + self.launch, 0.0, mem, 1)

    def stream(self, read_bytes: float, written_bytes: float, launches: int = 1) -> Cost:
        """A memory-bound pass (index arithmetic, element-wise) moving the given bytes through DRAM and L2.

        `launches` kernels share the traffic (a short sequence of small PyTorch ops); 0 makes it an epilogue of
        another kernel (traffic only).
        """
        moved = float(read_bytes + written_bytes)
        mem = moved / self.hw.mem_bandwidth + moved / (self.hw.mem_bandwidth * self.hw.l2_speed_frac)
        return Cost(mem + launches * self.launch, 0.0, mem, launches)

    def compact_list(self, n: int) -> Cost:
        """Sync-free compaction of `n` flags into an index list and a device-side count.

        Mirrors `laudnet.kernels.indexing._compact`: zeros(n+1) int32, cumsum to int32, - 1, .long(),
        where(flag, pos, n), arange, scatter_ (+ the count, a one-element op): 8 kernels whose traffic sums to
        30 bytes read and 36 bytes written per flag.
        """
        return self.stream(30 * n, 36 * n, launches=8)

    def patch_list(self, n_cells: int) -> Cost:
        """`mask_to_patch_list` on `n_cells` coarse-mask cells (batch included): `mask != 0`, `_compact`, then the
        (sample, row, col) columns by // and % and a stack (5 int32 kernels): 6 kernels besides the compaction."""
        return self.compact_list(n_cells) + self.stream(29 * n_cells, 29 * n_cells, launches=6)

    def conv1_pixel_list(self, in_pixels: int, out_pixels: int) -> Cost:
        """`conv1_pixel_mask` + `pixel_mask_to_idx_padded` (batch included): the coarse mask upsampled to output
        pixels (2 repeat_interleave), a float32 map of the input zeroed, filled at the stride, 3x3 max-pooled and
        compared (5 kernels), then compacted. Bytes per pixel summed over the 7 mask kernels: read 7 per output pixel
        + 8 per input pixel, written 10 + 9."""
        return (self.stream(7 * out_pixels + 8 * in_pixels, 10 * out_pixels + 9 * in_pixels, launches=7)
                + self.compact_list(in_pixels))

    def epilogue(self, elements: float) -> Cost:
        """Extra activation traffic of a fused epilogue (e.g. the residual read of a conv + add): no launch."""
        return self.stream(elements * self.hw.bytes_per_element, 0.0, launches=0)

    def copy_samples(self, c: int, h: int, w: int) -> Cost:
        """Copy the batch's `c x h x w` maps by sample index (layer skipping: gather the executing samples into a
        sub-batch, or scatter-add their outputs back)."""
        moved = 2 * c * h * w * self.batch
        mem = moved / self.dram + moved / self.l2
        return Cost(mem + self.launch, 0.0, mem, 1)

    def dynamic_se(self, c: int, h: int, w: int, squeeze: int, patch: int, n_patches: int) -> Cost:
        """SE whose pooling reads only the active patches; the rescale covers the full map (simulate_dynamic_se)."""
        return self._cached(("dse", c, h, w, squeeze, patch, n_patches),
                            lambda: self._dynamic_se(c, h, w, squeeze, patch, n_patches))

    def _dpool_mem(self, n_tiles, ct, ht, wt, c, h, w, patch, n_patches):
        pe_traffic = (ct * ht * wt * n_patches + ct) * n_tiles + ct * np.ceil(h / ht) * np.ceil(w / wt) + ct
        dram = n_patches * c * patch * patch + c * h * w
        return (dram / self.dram + pe_traffic / self.l2 / mem_eff(wt, patch - wt, self.sector)) * self.batch

    def _dpool_compute(self, ct, ht, wt, npp, n_patches):
        per_batch = ct * ht * wt * npp / self.freq / self.lanes / ceil_eff(ct * npp, self.fill)
        reduce = ct * npp / self.freq / self.lanes / ceil_eff(ct, self.fill)
        return (per_batch * np.ceil(n_patches / npp) + reduce) * self.batch

    def _reduce_tree_array(self, c_par, n):
        return np.vectorize(self._reduce_tree, otypes=[float])(c_par, n)

    def _dynamic_se(self, c, h, w, squeeze, patch, n_patches) -> Cost:
        grid = math.ceil(h / patch) * math.ceil(w / patch)
        mean_patches = (grid + 1) / 2
        axes = (tile_candidates(grid), tile_candidates(c), tile_candidates(patch), tile_candidates(patch))
        npp, ct, ht, wt = _grid(*axes)
        n_ht, n_wt = np.ceil(patch / ht), np.ceil(patch / wt)
        n_tiles = np.ceil(c / ct) * n_ht * n_wt
        mem = self._dpool_mem(n_tiles, ct, ht, wt, c, h, w, patch, mean_patches)
        compute = (self._dpool_compute(ct, ht, wt, npp, mean_patches) * np.ceil(n_tiles / self.n_pes)
                   + self._reduce_tree_array(ct, n_ht * n_wt))
        i = self._pick(compute, mem)
        npp, ct, ht, wt = (float(a[i[k]]) for k, a in enumerate(axes))
        n_tiles = math.ceil(c / ct) * math.ceil(patch / ht) * math.ceil(patch / wt)
        mem = float(self._dpool_mem(n_tiles, ct, ht, wt, c, h, w, patch, n_patches))
        # compat: the final reduction is re-costed over the whole map's tile grid, not the patch's
        compute = (float(self._dpool_compute(ct, ht, wt, npp, n_patches)) * math.ceil(n_tiles / self.n_pes)
                   + self._reduce_tree(ct, math.ceil(h / ht) * math.ceil(w / wt)))
        pool = Cost(self._join(compute, mem) + self.launch, compute, mem, 1)
        return pool + self.fc(c, squeeze) + self.fc(squeeze, c) + self.broadcast_mul(c, h, w)

    # -- maskers -------------------------------------------------------------------------------------------------------
    def masker_conv1(self, cin: int, cout: int, h: int, w: int, patch: int, density: float, out_density: float = 1.0,
                     try_unfused: bool = True) -> Cost:
        """Spatial/layer masker scheduled with conv1 (simulate_masker_conv1), the cheaper of two schedules.

        Fused: one dense 1x1 conv `cin -> cout + 1` computes conv1 and the mask logit together. Unfused: a 1x1 conv
        `cin -> 2` for the mask, then conv1 on the active patches only (reading the input by indexing).
        `out_density` is the kept fraction of conv1's output channels (0 for layer skipping, where the fused form only
        reads the input).
        """
        fused = self.conv(cin, cout + 1, h, w, 1, out_density=out_density)
        if not try_unfused:
            return fused
        unfused = self.conv(cin, 2, h, w, 1) + self.gather_conv(
            cin, cout, h, w, 1, 1, 1, patch, self.n_patches(h, w, patch, density), gathered_input=False,
            out_density=out_density)
        return unfused if unfused.latency < fused.latency else fused

    def spatial_masker(self, cin: int, h: int, w: int, mask_size: int) -> Cost:
        """The trained spatial/layer masker: average-pool to `mask_size`^2, then a 1x1 conv `cin -> 2` logits."""
        pool = self.avg_pool(cin, h, w, mask_size, mask_size) if mask_size < h else ZERO
        if mask_size == 1:
            return pool + self.fc(cin, 2)
        return pool + self.conv(cin, 2, mask_size, mask_size, 1)

    def channel_masker(self, cin: int, h: int, w: int, n_groups: int) -> Cost:
        """Channel masker MLP: global pool, fc cin -> hidden, fc hidden -> n_groups; one logit per group."""
        if self.compat:
            # compat: the official predictor passes n_groups = cin // G and hidden = n // 16 (capped)
            if n_groups == 1:
                return ZERO
            hidden = n_groups // min(16, n_groups)
        else:  # fix: the trained masker has hidden = max(n_groups // 16, 16)
            hidden = max(n_groups // 16, 16)
        return self.avg_pool(cin, h, w, 1, 1) + self.fc(cin, hidden) + self.fc(hidden, n_groups)

    # -- transformer ops ----------------------------------------------------------------------------------------------
    # Token rows are per sample. compat reproduces the official predictor's batch handling (the batch is folded
    # into the rows and counted again by the operator), not its exact map layouts, for which no reference numbers
    # exist.
    def _as_map(self, rows: int) -> tuple[int, int]:
        side = max(1, round(math.sqrt(rows)))
        return side, max(1, round(rows / side))

    def _rows(self, rows: int) -> int:
        return rows * self.batch if self.compat else rows  # compat: the batch is counted again

    def linear(self, rows: int, cin: int, cout: int, in_density: float = 1.0, out_density: float = 1.0) -> Cost:
        """`rows x cin @ cin x cout` per sample with a shared weight (rows folded into a square map, as a 1x1 conv).

        `in_density` / `out_density` keep that fraction of the input / output features (head skipping).
        """
        cin_k = max(1, round(cin * in_density))
        cout_k = max(1, round(cout * out_density))
        h, w = self._as_map(self._rows(rows))
        return self.conv(cin_k, cout_k, h, w, 1)

    def batched_matmul(self, mats: int, m: int, k: int, n: int) -> Cost:
        """`mats` independent products `m x k @ k x n` per sample whose operands are both activations (attention)."""
        if self.compat:  # compat: one shared-weight linear over batch * mats * m rows, batch counted again
            h, w = self._as_map(self._rows(mats * m))
            return self.conv(k, n, h, w, 1)
        # fix: both operands are activations: each of the batch * mats products reads its own right operand
        B = self.batch
        h, w = self._as_map(m)
        inner = self.with_batch(B * mats).conv(k, n, h, w, 1)
        extra_weights = (B * mats - 1) * k * n / self.dram if B * mats > 1 else 0.0
        return Cost(inner.latency + extra_weights, inner.compute, inner.memory + extra_weights, 1)

    def elementwise(self, rows: int, dim: int) -> Cost:
        """One element-wise pass over `rows x dim` (GELU, residual add, scaling)."""
        if self.compat:  # compat: the (B, L, C) tensor is the map C x B x L, and the batch multiplies again
            return self.add(dim, self.batch, rows)
        return self.add(dim, *self._as_map(rows))

    def row_reduce(self, rows: int, dim: int) -> Cost:
        """Reduce each of `rows` vectors of length `dim` (softmax/layernorm statistics)."""
        side = math.ceil(math.sqrt(dim))
        return self.global_pool(self._rows(rows), side, side)

    def softmax(self, rows: int, dim: int) -> Cost:
        """max, exp-subtract, sum, divide, fused into one kernel (4 passes, 1 launch)."""
        c = self.row_reduce(rows, dim) + self.elementwise(rows, dim) + self.row_reduce(rows, dim) + self.elementwise(
            rows, dim)
        return Cost(c.latency - 3 * self.launch, c.compute, c.memory, 1)

    def layernorm(self, rows: int, dim: int) -> Cost:
        c = self.row_reduce(rows, dim) + self.row_reduce(rows, dim) + self.elementwise(rows, dim) + self.elementwise(
            rows, dim)
        return Cost(c.latency - 3 * self.launch, c.compute, c.memory, 1)

    def attention(self, tokens: int, dim: int, heads: int, head_density: float = 1.0) -> Cost:
        """Multi-head self-attention on `tokens` tokens with `int(heads * head_density)` heads kept."""
        kept = max(1, int(heads * head_density))
        hd = dim // heads
        qkv = self.linear(tokens, dim, 3 * dim, out_density=kept / heads)
        scores = self.batched_matmul(kept, tokens, hd, tokens)
        soft = self.softmax(kept * tokens, tokens)
        ctx = self.batched_matmul(kept, tokens, tokens, hd)
        proj = self.linear(tokens, dim, dim, in_density=kept / heads)
        return qkv + scores + soft + ctx + proj

    def mlp(self, tokens: int, dim: int, hidden: int, in_density: float = 1.0) -> Cost:
        """Transformer MLP: fc1, GELU, fc2."""
        return (self.linear(tokens, dim, hidden, in_density=in_density) + self.elementwise(tokens, hidden)
                + self.linear(tokens, hidden, dim))

    def token_gather(self, tokens: int, kept: int, dim: int) -> Cost:
        """Select `kept` of `tokens` token rows by index (token skipping)."""
        moved = (tokens + kept) * dim if not self.compat else 2 * kept * dim
        mem = moved * self.batch / self.dram + 2 * kept * dim * self.batch / self.l2
        return Cost(mem + self.launch, 0.0, mem, 1)
