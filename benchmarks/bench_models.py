"""Whole-model latency of deployed LAUD-ResNets against static torchvision ResNets, measured on one GPU.

For each model, in the same run and process (bf16, channels_last, cudnn.benchmark):
* static baselines: torchvision's network eager, as a CUDA graph and compiled (`torch.compile`, default mode, unless
  `--no-compile`), and laudnet's folded static network (deploy of the static paradigm) eager, as a CUDA graph, with
  compiled blocks and compiled whole (also as a CUDA graph); each timed before and again after the dynamic cases
  (variants `... (again)`), so that a transient slowdown of one pass does not make the static reference weaker;
* dynamic: `laudnet.deploy` of each paradigm at chosen activation rates. Decisions are random with the given rate
  (the masker still runs, so its cost is measured; see `DeployedBlock.forced_keep`). For layer skipping the script
  also solves, from the FLOPs accounting, the one rate on all blocks that gives a whole-network FLOPs ratio of 0.5.
  Sync-free paths (channel) are also timed as CUDA graphs.
* correctness: every dynamic deployed network is compared with the training-form model in eval mode holding the same
  decisions (relative error, bf16 vs fp32);
* the latency predictor's ratio for the same case (`laudnet.latency.predict_model`): with eager launches on the
  `h100` preset (``predicted_ratio``) and with both networks as CUDA graphs on the spec calibrated on the H100
  (``predicted_ratio_graphed``, what `report_models.py` shows);
* with `--compare-maskers`, the spatial and layer networks are also deployed with the other masker bookkeeping
  paths (`deploy(maskers="kernel")`: Triton decisions and lists, each block pooling its own input; ``"torch"``: the
  previous torch path) and timed as CUDA graphs in the same run: variants ``deployed cuda-graph maskers=<mode>``.
  The default rows (``deployed eager`` / ``deployed cuda-graph``) use the default, ``maskers="fused"``;
* with `--tune`, each case is also deployed with every block's path chosen by measurement
  (`laudnet.deploy.tune_paths(graphed=True)`: sparse or dense-masked, each timed from its own CUDA graph on the
  case's input) and timed as a CUDA graph: variant ``deployed tuned cuda-graph``, with the number of dense blocks.

Timing: CUDA events around each call after warm-up, median of `--iters`. Results: JSON (device, versions, commit).
Run on the GPU machine: ``python benchmarks/bench_models.py --out results.json --commit $(git rev-parse HEAD)``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import traceback
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
import torchvision

import laudnet
from laudnet.deploy import GraphedModel, deploy, deploy_dense_masked, tune_paths
from laudnet.flops import conv_out_size
from laudnet.masks import mask_grid_size
from laudnet.timing import capture_graph, time_call

_SAVE = None  # set by main: writes the results file
DEV = torch.device("cuda")  # --smoke: the CPU (tiny run of the whole flow; CUDA-graph variants record their error)

TORCHVISION = {"laud_resnet50": torchvision.models.resnet50, "laud_resnet101": torchvision.models.resnet101}


def time_ms(fn, warmup: int, iters: int) -> float:
    """Median milliseconds of fn() measured with CUDA events (the wall clock on the CPU, `--smoke`)."""
    return 1e3 * time_call(fn, DEV, repeats=iters, warmup=warmup)


def as_graph(fn, x: torch.Tensor):
    """Capture fn(x) as a CUDA graph on a static input (three warm-up calls first); returns a replay function."""
    static_x = x.clone()
    return capture_graph(lambda: fn(static_x))[0].replay


def block_decision_shapes(model, batch: int, image: int) -> list[tuple[int, ...]]:
    """Shape of each block's decisions for a batch at image² input."""
    hw = conv_out_size(conv_out_size(image, 2), 2)  # ResNet stem: conv stride 2, max-pool stride 2
    shapes = []
    for block in model.dynamic_blocks():
        out = conv_out_size(hw, block.stride)
        if block.paradigm == "layer":
            shapes.append((batch,))
        elif block.paradigm == "channel":
            shapes.append((batch, block.width // block.granularity))
        else:
            shapes.append((batch, *mask_grid_size(out, out, block.granularity)))
        hw = out
    return shapes


def random_decisions(shapes, rate: float, gen: torch.Generator) -> list[torch.Tensor]:
    """Exactly round(rate·n) active decisions per block (per sample for channel/spatial), positions at random.

    Layer skipping at batch 1 has one decision per block: round(rate·blocks) blocks execute, chosen at random.
    """
    if all(len(shape) == 1 and shape[0] == 1 for shape in shapes):
        order = torch.randperm(len(shapes), generator=gen)
        active = set(order[: round(rate * len(shapes))].tolist())
        return [torch.tensor([i in active]) for i in range(len(shapes))]
    masks = []
    for shape in shapes:
        flat = shape[-1] if len(shape) == 2 else (shape[1] * shape[2] if len(shape) == 3 else shape[0])
        rows = 1 if len(shape) == 1 else shape[0]
        scores = torch.rand(rows, flat, generator=gen)
        k = round(rate * flat)
        keep = torch.zeros(rows, flat, dtype=torch.bool)
        if k:
            keep.scatter_(1, scores.topk(k, dim=1).indices, True)
        masks.append(keep.view(shape))
    return masks


def force(model, deployed, masks: list[torch.Tensor]) -> None:
    """Impose decisions on both forms: the deployed blocks' `forced_keep` and the training-form maskers' outputs."""
    for block, dblock, keep in zip(model.dynamic_blocks(), deployed.blocks(), masks, strict=True):
        dblock.forced_keep = keep.to(DEV)
        value = keep.float().to(DEV)
        if block.paradigm == "layer":
            value = value.view(-1, 1, 1, 1)
        elif block.paradigm == "spatial":
            value = value[:, None]
        masker = block.masker if block.paradigm in ("layer", "spatial") else block.channel_masker
        masker.forward = lambda *a, _v=value, **k: _v


MASKER_MODES = ("kernel", "torch")  # compared with the default "fused" under --compare-maskers


def relative_error(deployed, x: torch.Tensor, ref: torch.Tensor) -> float | str:
    """||deployed(x) − ref|| / ||ref|| (bf16 deployed network vs fp32 eval model), or the error it raised."""
    try:
        out = deployed(x)
    except Exception as e:
        traceback.print_exc()
        return f"{type(e).__name__}: {e}"[:300]
    return float((out.float() - ref).norm() / ref.norm())


def flops_ratio(model, x: torch.Tensor) -> float:
    with torch.no_grad():
        model(x)
    return laudnet.model_flops(model, (3, x.shape[2], x.shape[3])).ratio


def layer_rate_for_flops(name: str, target: float, image: int) -> float:
    """The one layer-skipping rate on all blocks whose whole-network FLOPs ratio is `target` (linear in the rate)."""
    model = laudnet.create_model(name, paradigm="layer").eval()
    x = torch.randn(1, 3, image, image)
    ratios = []
    for value in (0, 1):
        with laudnet.mask_override(model, value):
            ratios.append(flops_ratio(model, x))
    return (target - ratios[0]) / (ratios[1] - ratios[0])


# the spec calibrated on the H100, with the per-kernel time of a CUDA-graph replay (the deployed networks' form)
CALIBRATED = Path(__file__).parent / "results" / "h100_calibrated_1e74193.yaml"


def predicted_ratio(name: str, paradigm: str, rate: float, granularity, batch: int,
                    graphed: bool = False) -> float | None:
    """The predictor's dynamic/static ratio: the `h100` preset with eager launches, or (`graphed`) the calibrated
    spec with both networks replayed as CUDA graphs."""
    try:
        from laudnet.latency import predict_model

        gran = "-".join(map(str, granularity)) if paradigm in ("spatial", "channel") else None
        hardware = str(CALIBRATED) if graphed else "h100"
        return predict_model(name, paradigm, density=rate, granularity=gran, hardware=hardware, batch=batch,
                             graphed=graphed).ratio
    except Exception as e:  # the predictor is reported, not required
        print(f"  predictor failed: {e}", file=sys.stderr)
        return None


def record(results: list[dict], row: dict, variant: str, fn, args, **extra) -> float | None:
    """Time fn and append a result row (or the error it raised)."""
    try:
        ms = time_ms(fn, args.warmup, args.iters)
    except Exception as e:
        traceback.print_exc()
        results.append(dict(row, variant=variant, error=f"{type(e).__name__}: {e}", **extra))
        return None
    results.append(dict(row, variant=variant, ms=ms, **extra))
    if _SAVE is not None:
        _SAVE()  # after every measurement: a run cut short by a time limit keeps what it measured
    print(f"{row['model']} b{row['batch']} {row['kind']:<8} {row.get('rate', ''):<7} {variant:<26} {ms:8.3f} ms "
          f"{extra or ''}", flush=True)
    return ms


def record_graph(results: list[dict], row: dict, variant: str, deployed, x, args, conditional: bool = False,
                 **extra) -> None:
    """Capture a deployed model (or a compiled one) as a CUDA graph, with conditional nodes when `conditional`, and
    time its replay (or record why it could not be captured)."""
    try:
        graphed = GraphedModel(deployed, x, conditional=conditional)
    except Exception as e:
        traceback.print_exc()
        results.append(dict(row, variant=variant, error=f"{type(e).__name__}: {str(e)[:300]}", **extra))
        return
    record(results, row, variant, partial(graphed, x), args, **extra)


def static_baselines(name: str, tv, x: torch.Tensor, args) -> dict[str, Callable[[], object]]:
    """The static networks to time, built (and compiled) once per batch: torchvision's eager, CUDA graph and compiled
    forms, laudnet's folded network eager, as a CUDA graph, with compiled blocks, and compiled whole (also replayed
    from a CUDA graph)."""
    xb = x.to(torch.bfloat16)
    forms: dict[str, Callable[[], object]] = {"torchvision eager": partial(tv, xb)}
    if DEV.type == "cuda":
        forms["torchvision cuda-graph"] = as_graph(tv, xb)
    if args.compile:
        forms["torchvision compile"] = partial(torch.compile(tv), xb)
    static = deploy(laudnet.create_model(name, paradigm="static").to(DEV).eval(), torch.bfloat16, stem=args.stem)
    forms["laudnet folded eager"] = partial(static, x)
    if DEV.type == "cuda":
        forms["laudnet folded cuda-graph"] = as_graph(static, x)
    if args.compile:
        static_c = deploy(laudnet.create_model(name, paradigm="static").to(DEV).eval(), torch.bfloat16, stem=args.stem,
                          compile=args.compile_shapes)
        forms["laudnet folded compile"] = partial(static_c, x)
        # one graph of the whole network at this shape (no dynamic-shape branch function shared with other models)
        whole = torch.compile(static, dynamic=False)
        forms["laudnet folded whole-compile"] = partial(whole, x)
        forms["laudnet folded whole-compile cuda-graph"] = as_graph(whole, x)  # compiles during its warm-up
    return forms


def record_static(results: list[dict], row: dict, forms: dict, args, suffix: str = "") -> None:
    """Time each static form (the first call of a compiled form compiles it: its seconds are recorded)."""
    for variant, fn in forms.items():
        t0 = time.time()
        try:
            fn()
        except Exception as e:
            traceback.print_exc()
            results.append(dict(row, variant=variant + suffix, error=f"{type(e).__name__}: {str(e)[:300]}"))
            continue
        extra = dict(compile_s=round(time.time() - t0, 1)) if "compile" in variant and not suffix else {}
        record(results, row, variant + suffix, fn, args, **extra)


def bench_model(name: str, args, results: list[dict]) -> None:
    image = args.image_size
    tv = TORCHVISION[name]().to(DEV).eval().to(memory_format=torch.channels_last, dtype=torch.bfloat16)
    for batch in args.batches:
        x = torch.randn(batch, 3, image, image, device=DEV).to(memory_format=torch.channels_last)
        row = dict(model=name, batch=batch, kind="static")
        with torch.no_grad():
            forms = static_baselines(name, tv, x, args)
            record_static(results, row, forms, args)
        for paradigm in args.paradigms:
            model = laudnet.create_model(name, paradigm=paradigm).to(DEV).eval()
            deployed = deploy(model, torch.bfloat16, compile=args.compile and args.compile_shapes, stem=args.stem)
            deployed_sparse = (deploy(model, torch.bfloat16, spatial_conv1="sparse", stem=args.stem)
                               if paradigm == "spatial" else None)
            # the masker bookkeeping paths to compare with the default (fused) one, same compile setting
            others = {mode: deploy(model, torch.bfloat16, compile=args.compile and args.compile_shapes, maskers=mode,
                                   stem=args.stem)
                      for mode in MASKER_MODES if args.compare_maskers and paradigm in ("layer", "spatial")}
            tuned = (deploy(model, torch.bfloat16, compile=args.compile and args.compile_shapes, stem=args.stem)
                     if args.tune else None)
            # every block dense-masked, the whole network one compiled graph (the fallback where skipping does not
            # pay); its decisions are copied into one tensor per block, so it compiles once for all rates
            dense_whole = deploy_dense_masked(model, torch.bfloat16, stem=args.stem) if args.dense_whole else None
            dense_whole_fn = (torch.compile(dense_whole, dynamic=False) if args.compile else dense_whole) \
                if dense_whole is not None else None
            shapes = block_decision_shapes(model, batch, image)
            rates = list(args.rates)
            if paradigm == "layer":
                rates.append(round(layer_rate_for_flops(name, 0.5, image), 4))
            for rate in rates:
                gen = torch.Generator().manual_seed(0)
                masks = random_decisions(shapes, rate, gen)
                force(model, deployed, masks)
                for other in [deployed_sparse, tuned, *others.values()]:
                    if other is not None:
                        for dblock, keep in zip(other.blocks(), masks, strict=True):
                            dblock.forced_keep = keep.to(DEV)
                if dense_whole is not None:
                    for dblock, keep in zip(dense_whole.blocks(), masks, strict=True):
                        if dblock.forced_keep is None:
                            dblock.forced_keep = keep.to(DEV)
                        else:
                            dblock.forced_keep.copy_(keep)
                row = dict(model=name, batch=batch, kind=paradigm, rate=rate, granularity=list(model.granularity))
                with torch.no_grad():
                    ref = model(x)
                    ratio = laudnet.model_flops(model, (3, image, image)).ratio
                    rel = relative_error(deployed, x, ref)
                extra = dict(flops_ratio=round(ratio, 4), rel_error=rel,
                             predicted_ratio=predicted_ratio(name, paradigm, rate, model.granularity, batch),
                             predicted_ratio_graphed=predicted_ratio(name, paradigm, rate, model.granularity, batch,
                                                                     graphed=True))
                with torch.no_grad():
                    record(results, row, "deployed eager", partial(deployed, x), args, **extra)
                    record_graph(results, row, "deployed cuda-graph", deployed, x, args, **extra)
                    if args.conditional:
                        record_graph(results, row, "deployed cuda-graph conditional", deployed, x, args,
                                     conditional=True, **extra)
                    if deployed_sparse is not None:
                        record_graph(results, row, "deployed sparse-conv1 cuda-graph", deployed_sparse, x, args,
                                     **extra)
                    for mode, other in others.items():
                        record_graph(results, row, f"deployed cuda-graph maskers={mode}", other, x, args,
                                     **dict(extra, rel_error=relative_error(other, x, ref)))
                    if tuned is not None:
                        bench_tuned(results, row, tuned, x, ref, args, extra)
                    if dense_whole_fn is not None:
                        t0 = time.time()
                        rel_dense = relative_error(dense_whole_fn, x, ref)  # the first call compiles
                        record(results, row, "dense-masked whole-compile", partial(dense_whole_fn, x), args,
                               **dict(extra, rel_error=rel_dense, compile_s=round(time.time() - t0, 1)))
                        record_graph(results, row, "dense-masked whole-compile cuda-graph", dense_whole_fn, x, args,
                                     **dict(extra, rel_error=rel_dense))
                    try:
                        block_rates = [round(r, 3) for r in deployed.activation_rates()]
                    except Exception as e:  # a failed deployed forward above is already recorded
                        block_rates = f"{type(e).__name__}: {e}"[:300]
                    results.append(dict(row, variant="block rates", rates=block_rates))
        with torch.no_grad():  # again after the dynamic cases: the best static time is the best of both passes
            record_static(results, dict(model=name, batch=batch, kind="static"), forms, args, suffix=" (again)")


def bench_tuned(results: list[dict], row: dict, tuned, x, ref, args, extra: dict) -> None:
    """Choose every block's path by graphed measurement (`tune_paths`), then time the model as a CUDA graph."""
    for block in tuned.blocks():
        block.path = "sparse"  # tune from the same starting point for every case
    try:
        t0 = time.time()
        paths = tune_paths(tuned, x, graphed=True)
        tune_s = round(time.time() - t0, 1)
    except Exception as e:
        traceback.print_exc()
        results.append(dict(row, variant="deployed tuned cuda-graph", error=f"{type(e).__name__}: {str(e)[:300]}"))
        return
    record_graph(results, row, "deployed tuned cuda-graph", tuned, x, args,
                 **dict(extra, rel_error=relative_error(tuned, x, ref), dense_blocks=paths.count("dense"),
                        blocks=len(paths), tune_s=tune_s))
    if args.conditional:  # tuned and captured with conditional nodes (a block no sample executes launches nothing)
        for block in tuned.blocks():
            block.path = "sparse"
        try:
            paths = tune_paths(tuned, x, graphed=True, conditional=True)
        except Exception as e:
            traceback.print_exc()
            results.append(dict(row, variant="deployed tuned cuda-graph conditional",
                                error=f"{type(e).__name__}: {str(e)[:300]}"))
            return
        record_graph(results, row, "deployed tuned cuda-graph conditional", tuned, x, args, conditional=True,
                     **dict(extra, dense_blocks=paths.count("dense"), blocks=len(paths)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["laud_resnet101", "laud_resnet50"])
    parser.add_argument("--paradigms", nargs="+", default=["layer", "channel", "spatial"])
    parser.add_argument("--batches", nargs="+", type=int, default=[128, 1])
    parser.add_argument("--rates", nargs="+", type=float, default=[0.25, 0.5, 0.75])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--no-compile", dest="compile", action="store_false")
    parser.add_argument("--compile-shapes", choices=["dynamic", "static"], default="dynamic",
                        help="shape mode of the compiled block function of deploy(compile=...) (one per process)")
    parser.add_argument("--compare-maskers", action="store_true",
                        help="also time spatial/layer networks deployed with maskers='kernel' and 'torch' (the "
                             "previous path) as CUDA graphs, against the default maskers='fused'")
    parser.add_argument("--tune", action="store_true",
                        help="also time each case with the per-block paths chosen by tune_paths(graphed=True)")
    parser.add_argument("--dense-whole", action="store_true",
                        help="also time each case deployed with every block dense-masked and the whole network "
                             "compiled as one graph (deploy_dense_masked + torch.compile(dynamic=False))")
    parser.add_argument("--conditional", action="store_true",
                        help="also time the deployed (and tuned) networks captured with conditional CUDA-graph nodes")
    parser.add_argument("--stem", choices=["auto", "cudnn", "triton"], default="auto",
                        help="the stem convolution of every laudnet network, static and dynamic (deploy(stem=...))")
    parser.add_argument("--smoke", action="store_true",
                        help="run the whole flow on the CPU, uncompiled, one timed call per variant (CUDA-graph "
                             "variants record their error): checks the script without a GPU")
    parser.add_argument("--commit", default="unknown")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    global DEV, _SAVE
    if args.smoke:
        DEV, args.compile, args.warmup, args.iters = torch.device("cpu"), False, 0, 1
    elif not torch.cuda.is_available():
        raise SystemExit("bench_models.py needs a CUDA device (or --smoke)")
    torch.backends.cudnn.benchmark = True
    results: list[dict] = []
    meta = dict(device=torch.cuda.get_device_name() if DEV.type == "cuda" else "cpu", torch=torch.__version__,
                torchvision=torchvision.__version__,
                triton=_triton_version(), python=platform.python_version(), commit=args.commit, args=vars(args))

    def save() -> None:
        with open(args.out, "w") as f:
            json.dump(dict(meta=meta, results=results), f, indent=1)

    _SAVE = save
    try:
        for name in args.models:
            bench_model(name, args, results)
    finally:
        save()
    return 0


def _triton_version() -> str | None:
    try:
        import triton

        return triton.__version__
    except ImportError:
        return None


if __name__ == "__main__":
    sys.exit(main())
