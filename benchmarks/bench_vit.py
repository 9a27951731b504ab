"""Whole-model latency of a deployed LAUD-DeiT-S against static DeiT-S, measured on one GPU (issue 6, item 5).

For `--model` (default laud_deit_small at 224²) and each batch (128 and 1), in the same process, bf16:

* static baselines: timm's network eager, as a CUDA graph and compiled (`torch.compile`, default mode, each compile
  bounded by `--compile-timeout`; done last; also replayed from a CUDA graph); laudnet's deployed static network
  eager and as a CUDA graph;
* dynamic cases: token, head and layer skipping at several rates and their combination, with random but exactly
  controlled decisions: every block keeps exactly ⌈rate·(N−1)⌉ patch tokens (plus the class token) per sample,
  round(rate·H) heads per sample, and each sub-block runs on exactly round(rate·B) samples (batch 1: round(rate·2L)
  of the 2L sub-blocks run); one case spreads the kept-token counts over the samples (same mean) — where bucketed
  padding pays for the largest count. The maskers still run (their cost is measured); their answer is replaced
  (`DeployedViTBlock.forced`, and the training-form maskers' outputs). Each case is deployed four ways:
  ``bucket`` and ``varlen`` attention eager (host-read counts), and both ``capturable`` (sync-free) as CUDA graphs;
* a fixed-ratio token-reduction baseline at matched FLOPs (`FixedRatioViT`): per block, the k best-scoring patch
  tokens of each sample by a linear score, dense (B, k+1, C) tensors through timm's own block, no per-sample
  variation; k is the one whose FLOPs ratio is closest to the case's. Eager and as a CUDA graph;
* correctness: every deployed form against the training-form model in eval (fp32) holding the same decisions
  (relative error of the logits), and the fixed-ratio baseline (fp32) against the training-form LAUD-ViT built with
  the same fixed keep ratio;
* the FLOPs ratio of each case (laudnet's accounting, maskers included) and the latency predictor's ratio
  (`laudnet.latency.predict_model`, hardware h100) for the single-paradigm cases.

Timing: CUDA events around each call after warm-up, median of `--iters`. Results: JSON (device, versions, commit),
written after every measurement; `--report` prints the markdown tables.

GPU: ``python benchmarks/bench_vit.py --out results.json --commit $(git rev-parse --short HEAD)``
CPU smoke test (fp32, tiny, seconds): ``python benchmarks/bench_vit.py --smoke --out /tmp/smoke.json``
Report: ``python benchmarks/bench_vit.py --report results.json``
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import platform
import signal
import statistics
import sys
import time
import traceback
from collections import defaultdict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import laudnet
from laudnet.deploy import deploy_vit
from laudnet.deploy.packed import varlen_available
from laudnet.models.vit import MODEL_CFGS, LaudViT
from laudnet.timing import capture_graph, time_call

VARIANTS = ("bucket eager", "varlen eager", "bucket cuda-graph", "varlen cuda-graph")


# --- decisions ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    """One dynamic configuration: the paradigm and the rate of each part it skips (None: not skipped)."""

    paradigm: str
    token: float | None = None
    head: float | None = None
    layer: float | None = None
    spread: float = 0.0  # kept-token counts vary over the samples by ±spread·(N−1) around the mean (same mean)

    @property
    def label(self) -> str:
        parts = [f"{p} {r:g}" for p, r in (("token", self.token), ("head", self.head), ("layer", self.layer)) if r]
        return ", ".join(parts) + (f" ±{self.spread:g}" if self.spread else "")


def n_keep(rate: float, patches: int) -> int:
    """Patch tokens kept at a token rate (the fixed-ratio masker's count, `TokenMasker.n_keep`)."""
    return max(1, math.ceil(rate * patches - 1e-9))


def _exact_choice(rows: int, n: int, k: Tensor | int, gen: torch.Generator) -> Tensor:
    """(rows, n) bool with exactly k[r] True entries in row r, at random positions."""
    k = torch.full((rows,), int(k)) if isinstance(k, int) else k
    order = torch.rand(rows, n, generator=gen).argsort(dim=1)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(n).expand(rows, n))
    return rank < k[:, None]


def token_counts(case: Case, batch: int, patches: int, gen: torch.Generator) -> Tensor:
    """Kept patch tokens per sample: the case's count, or spread symmetrically around it (antithetic pairs)."""
    k = n_keep(case.token, patches)
    counts = torch.full((batch,), k)
    if case.spread and batch > 1:
        half = batch // 2
        delta = (torch.rand(half, generator=gen) * case.spread * patches).round().long()
        counts[:half] += delta
        counts[half : 2 * half] -= delta
        if counts.min() < 1 or counts.max() > patches:
            raise ValueError(f"spread {case.spread} takes the kept-token counts outside [1, {patches}]")
    return counts


def exact_decisions(model: LaudViT, case: Case, batch: int, gen: torch.Generator) -> list[tuple]:
    """Per block: (tokens (B, N), heads (B, H), sub-blocks (B, 2)) booleans, None for the parts not skipped."""
    n, depth = model.num_tokens, len(model.blocks)
    heads_n = model.blocks[0].num_heads
    if case.layer is not None and batch == 1:
        chosen = _exact_choice(1, 2 * depth, round(case.layer * 2 * depth), gen).view(depth, 1, 2)
    decisions = []
    for i in range(depth):
        tokens = heads = layers = None
        if case.token is not None:
            tokens = F.pad(_exact_choice(batch, n - 1, token_counts(case, batch, n - 1, gen), gen), (1, 0), value=True)
        if case.head is not None:
            heads = _exact_choice(batch, heads_n, round(case.head * heads_n), gen)
        if case.layer is not None:
            if batch == 1:
                layers = chosen[i]
            else:
                k = round(case.layer * batch)
                layers = torch.stack([_exact_choice(1, batch, k, gen)[0] for _ in range(2)], dim=1)
        decisions.append((tokens, heads, layers))
    return decisions


def impose(deployed: list, decisions: list[tuple], device: torch.device) -> None:
    """Impose the decisions on deployed models (`DeployedViTBlock.forced`; their maskers still run)."""
    forced = [tuple(t.to(device) if t is not None else None for t in d) for d in decisions]
    for dep in deployed:
        for block, f in zip(dep.blocks, forced, strict=True):
            block.forced = f


@contextlib.contextmanager
def imposed(model: LaudViT, decisions: list[tuple], device: torch.device):
    """The training-form model's maskers answer the given decisions (restored on exit)."""
    patched = []
    for block, (tokens, heads, layers) in zip(model.blocks, decisions, strict=True):
        for name, value in (("token_masker", tokens), ("head_masker", heads), ("layer_masker", layers)):
            if value is not None:
                masker, answer = getattr(block, name), value.float().to(device)
                masker.forward = lambda *a, _v=answer, **k: _v
                patched.append(masker)
    try:
        yield model
    finally:
        for masker in patched:
            del masker.forward  # the class's forward again


# --- the fixed-ratio baseline -------------------------------------------------------------------------------------
class FixedRatioViT(nn.Module):
    """Fixed-ratio token reduction with dense tensors, the comparison point of token skipping.

    In every block each sample keeps its k best-scoring patch tokens and the class token; timm's block runs on the
    gathered (B, k+1, C) tokens and its results are written back, the other tokens pass unchanged. This is the
    per-block top-k selection of fixed-keep-rate token pruning (DynamicViT, Rao et al., NeurIPS 2021; EViT, Liang
    et al., ICLR 2022 — they keep a fixed fraction at a few stages and drop the rest for good; here, as in LAUD's
    token skipping, the choice is made at every block and a dropped token stays available to the next block), scored
    by laudnet's `TokenMasker` linear. It computes the eval function of a LAUD-ViT built with `token_keep_ratio`
    (same decisions, same FLOPs) with no padding mask and no per-sample count.

    Args:
        model: a LAUD-ViT with the token paradigm and a fixed `token_keep_ratio`.
        dtype: compute dtype.
    """

    def __init__(self, model: LaudViT, dtype: torch.dtype) -> None:
        super().__init__()
        if model.token_keep_ratio is None:
            raise ValueError("FixedRatioViT needs a LAUD-ViT built with token_keep_ratio")
        self.k = model.blocks[0].token_masker.n_keep(model.num_tokens - 1)
        self.global_pool = model.global_pool
        self.patch_embed = copy.deepcopy(model.patch_embed)
        self.cls_token = nn.Parameter(model.cls_token.detach().clone())
        self.pos_embed = nn.Parameter(model.pos_embed.detach().clone())
        self.blocks = nn.ModuleList()
        for b in model.blocks:
            block = nn.Module()
            for name in ("norm1", "attn", "ls1", "norm2", "mlp", "ls2"):
                setattr(block, name, copy.deepcopy(getattr(b, name)))
            block.scorer = copy.deepcopy(b.token_masker.fc)  # score = execute logit − skip logit
            self.blocks.append(block)
        self.norm, self.fc_norm, self.head = (copy.deepcopy(m) for m in (model.norm, model.fc_norm, model.head))
        self.to(dtype).eval().requires_grad_(False)
        self.dtype = dtype

    def forward(self, x: Tensor) -> Tensor:
        x = self.patch_embed(x.to(self.dtype))
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        c = x.shape[2]
        for blk in self.blocks:
            y = blk.norm1(x)
            logits = blk.scorer(y)  # on every token, as TokenMasker does, so that the scores are the same numbers
            top = (logits[:, 1:, 0] - logits[:, 1:, 1]).topk(self.k, dim=1).indices + 1
            idx = F.pad(top, (1, 0))[..., None].expand(-1, -1, c)  # class token (index 0) first
            xk = x.gather(1, idx)
            xk = xk + blk.ls1(blk.attn(y.gather(1, idx)))
            xk = xk + blk.ls2(blk.mlp(blk.norm2(xk)))
            x = x.scatter(1, idx, xk)
        x = self.norm(x)
        x = x[:, 0] if self.global_pool == "token" else x[:, 1:].mean(1)
        return self.head(self.fc_norm(x))


def set_fixed_k(model: LaudViT, k: int) -> None:
    """Keep exactly k patch tokens per block in a fixed-ratio LAUD-ViT."""
    for block in model.blocks:
        block.token_masker.keep_ratio = k / (model.num_tokens - 1)


def flops_ratio(model: LaudViT, x: Tensor) -> float:
    with torch.no_grad():
        model(x)
    return laudnet.model_flops(model, (model.in_chans, *model.img_size)).ratio


def matched_k(fixed: LaudViT, target: float, x1: Tensor) -> tuple[int, float]:
    """The kept patch count k of the fixed-ratio model whose FLOPs ratio is closest to `target` (ratio monotone in
    k: bisection), and that ratio."""
    lo, hi = 1, fixed.num_tokens - 1
    while hi - lo > 1:
        mid = (lo + hi) // 2
        set_fixed_k(fixed, mid)
        lo, hi = (mid, hi) if flops_ratio(fixed, x1) < target else (lo, mid)
    best = None
    for k in (lo, hi):
        set_fixed_k(fixed, k)
        r = flops_ratio(fixed, x1)
        if best is None or abs(r - target) < abs(best[1] - target):
            best = (k, r)
    return best


# --- timing -------------------------------------------------------------------------------------------------------
class Bench:
    """Timing, result rows and the results file."""

    def __init__(self, args, meta: dict) -> None:
        self.args, self.meta, self.rows = args, meta, []
        self.cuda = args.device == "cuda"
        self.t0 = time.time()

    def save(self) -> None:
        with open(self.args.out, "w") as f:
            json.dump(dict(meta=self.meta, results=self.rows), f, indent=1)

    def time_ms(self, fn) -> float:
        """Median milliseconds of fn() (CUDA events on the GPU, wall clock on CPU)."""
        with torch.no_grad():
            return 1e3 * time_call(fn, "cuda" if self.cuda else "cpu", repeats=self.args.iters, warmup=self.args.warmup)

    def record(self, row: dict, variant: str, make_fn, **extra) -> float | None:
        """Build the callable (capture, compile: errors recorded), time it and append a result row."""
        try:
            with torch.no_grad():
                fn = make_fn()
            ms = self.time_ms(fn)
        except Exception as e:
            traceback.print_exc()
            self.rows.append(dict(row, variant=variant, error=f"{type(e).__name__}: {str(e)[:300]}", **extra))
            self.save()
            return None
        self.rows.append(dict(row, variant=variant, ms=ms, **extra))
        self.save()  # after every measurement: a run cut short keeps what it measured
        print(f"b{row['batch']:<4} {row.get('case', row['kind']):<34} {variant:<26} {ms:9.3f} ms", flush=True)
        return ms

    def graph(self, fn, x: Tensor):
        """fn(x) replayed from a CUDA graph (on CPU: fn itself, no graph)."""
        if not self.cuda:
            return lambda: fn(x)
        static_x = x.clone()
        return capture_graph(lambda: fn(static_x))[0].replay

    def graphed_deployed(self, deployed, x: Tensor, conditional: bool = False):
        if not self.cuda:
            return lambda: deployed(x)
        run = deployed.graphed(x, conditional=conditional)
        return lambda: run(x)

    def over_budget(self) -> bool:
        return time.time() - self.t0 > self.args.budget_s


def _rel(a: Tensor, b: Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def _free() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def predicted_ratio(args, case: Case, batch: int) -> float | None:
    rates = [r for r in (case.token, case.head, case.layer) if r is not None]
    if len(rates) != 1 or case.spread:
        return None  # the predictor takes one rate for every part
    try:
        from laudnet.latency import predict_model

        return predict_model(args.model, case.paradigm, density=rates[0], hardware="h100", batch=batch).ratio
    except Exception as e:  # reported, not required
        print(f"  predictor failed: {e}", file=sys.stderr)
        return None


# --- the run ------------------------------------------------------------------------------------------------------
def _arch(args) -> dict:
    return dict(img_size=args.image_size, **({"depth": args.depth} if args.depth else {}))


def build(args, paradigm: str, **kw) -> LaudViT:
    return laudnet.create_model(args.model, paradigm=paradigm, **_arch(args), **kw).eval()


def timm_static(args) -> nn.Module:
    import timm

    cfg = MODEL_CFGS[args.model.removeprefix("laud_")]
    return timm.create_model(cfg.timm_name, pretrained=False, **_arch(args)).eval()


def bench_static(bench: Bench, batch: int, x: Tensor, tv: nn.Module) -> None:
    args = bench.args
    row = dict(model=args.model, batch=batch, kind="static")
    xd = x.to(bench.dtype)
    bench.record(row, "timm eager", lambda: lambda: tv(xd))
    if bench.cuda:
        bench.record(row, "timm cuda-graph", lambda: bench.graph(tv, xd))
    static = build(args, "static").to(x.device)
    dep = deploy_vit(static, bench.dtype)
    bench.record(row, "laudnet static eager", lambda: lambda: dep(x))
    dep_c = deploy_vit(static, bench.dtype, capturable=True)
    bench.record(row, "laudnet static cuda-graph", lambda: bench.graphed_deployed(dep_c, x))


def bench_case(bench: Bench, case: Case, batch: int, x: Tensor, model: LaudViT, fixed: LaudViT,
               gen: torch.Generator) -> None:
    args = bench.args
    row = dict(model=args.model, batch=batch, kind=case.paradigm, case=case.label,
               rates=dict(token=case.token, head=case.head, layer=case.layer, spread=case.spread))
    if bench.over_budget():
        bench.rows.append(dict(row, variant="skipped", error=f"time budget of {args.budget_s} s spent"))
        return
    fuse = dict(fuse_token_masker=args.fuse_token_masker)
    forms = {
        "bucket eager": deploy_vit(model, bench.dtype, **fuse),
        "varlen eager": deploy_vit(model, bench.dtype, attention="varlen", **fuse),
        "bucket cuda-graph": deploy_vit(model, bench.dtype, capturable=True, fuse_rows=args.fuse_rows, **fuse),
        "varlen cuda-graph": deploy_vit(model, bench.dtype, attention="varlen", capturable=True,
                                        fuse_rows=args.fuse_rows, **fuse),
    }
    decisions = exact_decisions(model, case, batch, gen)
    impose(list(forms.values()), decisions, x.device)
    with torch.no_grad():
        with imposed(model, decisions, x.device):
            ref = model(x)
        ratio = laudnet.model_flops(model, (model.in_chans, *model.img_size)).ratio
        rel = {}
        for name, dep in forms.items():
            try:
                rel[name] = _rel(dep(x), ref)
            except Exception as e:
                traceback.print_exc()
                rel[name] = f"{type(e).__name__}: {str(e)[:200]}"
        densities = forms["bucket eager"].densities()
    measured = {k: round(statistics.mean(d[k] for d in densities), 4) for k in densities[0]}
    k, k_ratio = matched_k(fixed, ratio, x[:1])
    extra = dict(flops_ratio=round(ratio, 4), rel_error=rel, measured_rates=measured,
                 predicted_ratio=predicted_ratio(args, case, batch))
    bench.rows.append(dict(row, variant="case", **extra))
    for name, dep in forms.items():
        if "graph" in name:
            bench.record(row, name, lambda d=dep: bench.graphed_deployed(d, x), flops_ratio=extra["flops_ratio"])
        else:
            bench.record(row, name, lambda d=dep: lambda: d(x), flops_ratio=extra["flops_ratio"])
        _free()
    if case.head is not None and bench.cuda:  # the same graph with PyTorch's flash attention over every head
        flash = forms["varlen cuda-graph"]
        for block in flash.blocks:
            block.skip_head_attention = False
        bench.record(row, "varlen cuda-graph flash heads", lambda: bench.graphed_deployed(flash, x),
                     flops_ratio=extra["flops_ratio"])
        for block in flash.blocks:
            block.skip_head_attention = True
        _free()
    if args.conditional and case.layer is not None and bench.cuda:  # skipped sub-blocks launch nothing
        bench.record(row, "varlen cuda-graph conditional",
                     lambda: bench.graphed_deployed(forms["varlen cuda-graph"], x, conditional=True),
                     flops_ratio=extra["flops_ratio"])
        _free()
    set_fixed_k(fixed, k)
    base = FixedRatioViT(fixed, bench.dtype)
    base_row = dict(row, baseline_k=k, baseline_flops_ratio=round(k_ratio, 4))
    bench.record(base_row, "fixed-ratio eager", lambda: lambda: base(x))
    if bench.cuda:
        bench.record(base_row, "fixed-ratio cuda-graph", lambda: bench.graph(base, x))
    _free()


def check_baseline(bench: Bench, fixed: LaudViT, batch: int, x: Tensor) -> None:
    """The fixed-ratio baseline in fp32 against the training-form LAUD-ViT with the same keep ratio.

    On at most 8 samples: the two forms sum in different orders, so a top-k choice between two nearly equal scores
    can flip (about 1e-4 per sample and block), which would then show as an error of the baseline."""
    x = x[:8]
    set_fixed_k(fixed, n_keep(0.5, fixed.num_tokens - 1))
    with torch.no_grad():
        rel = _rel(FixedRatioViT(fixed, torch.float32)(x), fixed(x))
    bench.rows.append(dict(model=bench.args.model, batch=batch, kind="fixed-ratio", variant="fp32 check",
                           rel_error=rel))
    print(f"b{batch:<4} fixed-ratio baseline fp32 vs training form: relative error {rel:.2e}", flush=True)


def bench_compile(bench: Bench, batch: int, x: Tensor, tv: nn.Module) -> None:
    """torch.compile (default mode) of the static timm network; a compile longer than the timeout is abandoned."""
    args = bench.args
    row = dict(model=args.model, batch=batch, kind="static")
    xd = x.to(bench.dtype)

    def make():
        compiled = torch.compile(copy.deepcopy(tv), dynamic=False)
        t0 = time.time()
        signal.signal(signal.SIGALRM, _timeout)
        # Each compile gets its own limit, and at least 30 s even when the run's budget is spent.
        signal.alarm(int(max(30, min(args.compile_timeout, args.budget_s + 60 - (t0 - bench.t0)))))
        try:
            compiled(xd)
        finally:
            signal.alarm(0)
        row["compile_s"] = round(time.time() - t0, 1)
        made["compiled"] = compiled
        return lambda: compiled(xd)

    made: dict = {}
    bench.record(row, "timm compile", make)
    if "compiled" in made:  # the compiled network replayed from a CUDA graph: the strongest static form at batch 1
        row.pop("compile_s", None)
        bench.record(row, "timm compile cuda-graph", lambda: bench.graph(made["compiled"], xd))


def _timeout(signum, frame):
    raise TimeoutError("torch.compile took longer than --compile-timeout")


def cases(args) -> list[Case]:
    out = [Case("token", token=r) for r in args.token_rates]
    if args.spread:
        out.append(Case("token", token=args.spread_rate, spread=args.spread))
    out += [Case("head", head=r) for r in args.head_rates]
    out += [Case("layer", layer=r) for r in args.layer_rates]
    if args.combo:
        t, h, layer = args.combo
        out.append(Case("token+head+layer", token=t, head=h, layer=layer))
    return out


def run(args) -> int:
    device = torch.device(args.device)
    meta = dict(device=torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or "cpu",
                torch=torch.__version__, triton=_version("triton"), timm=_version("timm"),
                cudnn=torch.backends.cudnn.version() if args.device == "cuda" else None,
                varlen_attn=varlen_available(), python=platform.python_version(), commit=args.commit,
                dtype=args.dtype, args=vars(args))
    bench = Bench(args, meta)
    bench.dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    torch.backends.cudnn.benchmark = True  # the patch embedding's convolution
    tv = timm_static(args).to(device=device, dtype=bench.dtype)
    models = {p: build(args, p).to(device) for p in dict.fromkeys(c.paradigm for c in cases(args))}
    fixed = build(args, "token", token_keep_ratio=0.5).to(device)
    try:
        for batch in args.batches:
            x = torch.randn(batch, 3, args.image_size, args.image_size, device=device)
            bench_static(bench, batch, x, tv)
            check_baseline(bench, fixed, batch, x)
            gen = torch.Generator().manual_seed(batch)
            for case in cases(args):
                if case.spread and batch == 1:
                    continue  # one sample: nothing to spread
                bench_case(bench, case, batch, x, models[case.paradigm], fixed, gen)
        if args.compile:
            for batch in args.batches:
                x = torch.randn(batch, 3, args.image_size, args.image_size, device=device)
                bench_compile(bench, batch, x, tv)
    finally:
        meta["wall_s"] = round(time.time() - bench.t0, 1)
        bench.save()
    print(f"\n{meta['wall_s']} s\n\n{report(args.out)}", flush=True)
    return 0


def _version(name: str) -> str | None:
    try:
        return __import__(name).__version__
    except ImportError:
        return None


# --- report -------------------------------------------------------------------------------------------------------
def _fmt(ms: float | None) -> str:
    return f"{ms:.2f}" if ms is not None else "—"


def report(path: str) -> str:
    """Markdown tables from a results file: per batch, the static times and every case against the best static."""
    with open(path) as f:
        data = json.load(f)
    meta, rows = data["meta"], data["results"]
    lines = [f"{meta['device']}, torch {meta['torch']}, triton {meta['triton']}, timm {meta['timm']}, "
             f"commit {meta['commit']}; {meta['dtype']}, medians of "
             f"{'CUDA-event' if meta['args']['device'] == 'cuda' else 'wall-clock'} timings (ms); "
             "ratio = time / best static time of the same run.", ""]
    batches = list(dict.fromkeys(r["batch"] for r in rows))
    for batch in batches:
        rs = [r for r in rows if r["batch"] == batch]
        static = {r["variant"]: r["ms"] for r in rs if r["kind"] == "static" and "ms" in r}
        failed = [f"{r['variant']}: {r['error']}" for r in rs if "error" in r and r["variant"] != "skipped"]
        best_name = min(static, key=static.get) if static else None
        best = static.get(best_name)
        check = [r["rel_error"] for r in rs if r.get("variant") == "fp32 check"]
        lines += [f"**{meta['args']['model']}, batch {batch}** — static: "
                  + ", ".join(f"{k} {v:.2f}" + (f" (compile {r['compile_s']} s)" if (r := _row(rs, k)) and
                                                 "compile_s" in r else "") for k, v in static.items())
                  + (f"; best: {best_name}" if best_name else "")
                  + (f"; fixed-ratio baseline fp32 check: rel. error {check[0]:.1e}" if check else ""), "",
                  "| case | FLOPs | bucket eager | varlen eager | bucket graph | varlen graph | best/static "
                  "| fixed-ratio (FLOPs) eager / graph | fixed/static | pred. | rel. err. (bucket, varlen, graphs) |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        by_case, conditional, flash = defaultdict(dict), [], []
        for r in rs:
            if "case" in r:
                by_case[r["case"]][r["variant"]] = r
        for label, v in by_case.items():
            info = v.get("case")
            if info is None:
                lines.append(f"| {label} | skipped: {next(iter(v.values())).get('error', '?')} |")
                continue
            times = {n: v[n]["ms"] if n in v and "ms" in v[n] else None for n in VARIANTS}
            got = [t for t in times.values() if t is not None]
            cond = v.get("varlen cuda-graph conditional", {}).get("ms")
            if cond is not None:  # the best includes the conditional graph; listed below the table
                got.append(cond)
                conditional.append(f"{label}: {cond:.2f} ms" + (f" ({cond / best:.2f})" if best else ""))
            fl = v.get("varlen cuda-graph flash heads", {}).get("ms")
            if fl is not None:  # a comparison: the default varlen graph skips the heads' attention
                flash.append(f"{label}: {fl:.2f} ms against {_fmt(times['varlen cuda-graph'])}")
            base_e, base_g = v.get("fixed-ratio eager", {}), v.get("fixed-ratio cuda-graph", {})
            base_best = min([t for t in (base_e.get("ms"), base_g.get("ms")) if t is not None], default=None)
            errs = info["rel_error"]
            lines.append(
                f"| {label} | {info['flops_ratio']:.3f} | "
                + " | ".join(_fmt(times[n]) for n in VARIANTS)
                + f" | {'**%.2f**' % (min(got) / best) if got and best else '—'} | "
                + (f"({base_e.get('baseline_flops_ratio', float('nan')):.3f}) {_fmt(base_e.get('ms'))} / "
                   f"{_fmt(base_g.get('ms'))} | ")
                + (f"{base_best / best:.2f} | " if base_best and best else "— | ")
                + (f"{info['predicted_ratio']:.2f} | " if info.get("predicted_ratio") else "— | ")
                + ", ".join(f"{errs[n]:.1e}" if isinstance(errs.get(n), float) else "err" for n in VARIANTS)
                + " |"
            )
        if conditional:
            lines += ["", "varlen CUDA graph with conditional nodes: " + "; ".join(conditional)]
        if flash:
            lines += ["", "varlen CUDA graph, PyTorch's flash attention over every head instead of laudnet's kernel "
                      "(skipped heads not computed): " + "; ".join(flash)]
        if failed:
            lines += ["", "Not measured: " + "; ".join(failed)]
        lines.append("")
    return "\n".join(lines)


def _row(rows: list[dict], variant: str) -> dict | None:
    return next((r for r in rows if r["kind"] == "static" and r["variant"] == variant), None)


# --- command line -------------------------------------------------------------------------------------------------
def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="laud_deit_small")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--depth", type=int, default=None, help="blocks (default: the architecture's)")
    parser.add_argument("--batches", nargs="+", type=int, default=[128, 1])
    parser.add_argument("--token-rates", nargs="*", type=float, default=[0.7, 0.5, 0.3])
    parser.add_argument("--spread", type=float, default=0.25, help="the spread-count token case (0: none)")
    parser.add_argument("--spread-rate", type=float, default=0.5)
    parser.add_argument("--head-rates", nargs="*", type=float, default=[0.67, 0.5, 0.33])
    parser.add_argument("--layer-rates", nargs="*", type=float, default=[0.75, 0.5])
    parser.add_argument("--combo", nargs=3, type=float, default=[0.7, 0.67, 0.8], metavar=("TOKEN", "HEAD", "LAYER"))
    parser.add_argument("--no-combo", dest="combo", action="store_const", const=None)
    parser.add_argument("--separate-token-masker", dest="fuse_token_masker", action="store_const", const=False,
                        default=None, help="deploy with the token masker as its own layer, not fused into norm1")
    parser.add_argument("--unfused-rows", dest="fuse_rows", action="store_const", const=False, default=None,
                        help="CUDA-graph forms without norm2, GELU and residual adds in the row GEMMs "
                             "(deploy_vit(fuse_rows=False))")
    parser.add_argument("--conditional", action="store_true",
                        help="also time layer-skipping cases as a varlen CUDA graph with conditional nodes "
                             "(DeployedViT.graphed(conditional=True))")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--no-compile", dest="compile", action="store_false")
    parser.add_argument("--compile-timeout", type=int, default=90, help="seconds per torch.compile")
    parser.add_argument("--budget-s", type=float, default=180,
                        help="no new dynamic case after this many seconds; the compiles then get what is left of "
                             "budget + 60 s (at least 30 s each)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--commit", default="unknown")
    parser.add_argument("--out")
    parser.add_argument("--smoke", action="store_true",
                        help="CPU (one thread), fp32, laud_deit_tiny with 4 blocks at 48 px, few cases, 2 timing "
                             "iterations, no compile: checks the script end to end")
    parser.add_argument("--report", metavar="RESULTS_JSON", help="print the markdown tables of a results file")
    args = parser.parse_args(argv)
    if args.smoke:
        args.device, args.dtype, args.model, args.image_size, args.depth = "cpu", "float32", "laud_deit_tiny", 48, 4
        args.batches, args.token_rates, args.head_rates, args.layer_rates = [3, 1], [0.5], [0.67], [0.5]
        args.warmup, args.iters, args.compile = 1, 2, False
    if args.report is None and args.out is None:
        parser.error("--out is required (or --report RESULTS_JSON)")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.report:
        print(report(args.report))
        return 0
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --smoke (CPU) or --device cpu")
    if args.smoke:
        torch.set_num_threads(1)  # tiny shapes: threads only add contention (CI has 2 cores)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
