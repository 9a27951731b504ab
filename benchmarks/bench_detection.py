"""Latency of LAUD detection backbones and whole detectors against the static detector's strongest form, on one GPU.

For each input size (``--sizes``: 256x256, the fashion-canvas-det canvases, and 800x1216, a COCO-like padded batch)
and batch size (``--batches 1 8``), a torchvision detector (``--detector fasterrcnn``) on a LAUD backbone
(``--backbone laud_resnet50``) whose transform keeps that size (``min_size``/``max_size`` set so; the padded batch is
the size itself, both sides multiples of 32), fed random images (with ``--data-root``: fashion-canvas-det canvases at
that size). Every detector of the run holds the same weights (FPN, heads, backbone convolutions), so the cases differ
only in the backbone's form and decisions:

* ``static``: the static detector with its body deployed dense-masked (`laudnet.detection.deploy_backbone`, which for
  a static body is the folded network compiled whole, ``torch.compile(dynamic=False)``) and replayed from a CUDA
  graph: the strongest static form of `bench_models.py` and `bench_fastest.py`;
* each paradigm (``--paradigms``) at each rate (``--rates 0.25 0.5 0.75``): random decisions at exactly that rate
  over the padded batch's decision grids (`bench_models.random_decisions`), imposed through the deployed blocks'
  ``forced_keep`` (the maskers still run, so their cost is measured); both forms of `deploy_backbone`, each one CUDA
  graph: ``sparse`` with each block's path chosen by `tune_paths` (``DeployedBody.tune``) and ``dense-masked``
  compiled whole; the faster is the form `deploy_detector(form="fastest")` keeps. Also the backbone's FLOPs ratio
  and each form's relative error against the fp32 training-form body holding the same decisions;
* with ``--checkpoint``, trained maskers: a detector of ``laudnet train --task detection|instance`` (its kind,
  backbone and classes then those of the run) or a classification checkpoint of ``laudnet train`` (its backbone in a
  ``--detector``); the maskers deciding on the images, `deploy_detector(form="fastest", example=images)` as an
  application runs it. Every other detector of the run takes the checkpoint's weights (maskers apart), so the
  static case is the same network.

Backbone latency: the deployed body alone on the padded batch. Whole-detector latency: the detector's call on the
list of images (transform, body, FPN, RPN, RoI heads, post-processing; eager, the body replayed from its CUDA graph),
the FPN and heads as they are (fp32) and, with ``--heads-bf16``, their convolutions and linears in bf16 autocast
(`laudnet.detection.autocast_heads`). Timing: `laudnet.timing.time_call` (CUDA events after warm-up, median of
``--repeats``, ``--detector-repeats`` for whole detectors). Compilation dominates the run's time: the dense-masked
forms and the static body compile whole once per size and batch; the sparse form's dense-masked block paths compile
per block shape (``--sparse-compile static``, as `deploy_fastest`) or once per kind of block (``dynamic``: far less
compilation, slightly slower code, so conservative for LAUD). Results: JSON written after every row (device,
versions, commit, arguments); ``--budget-s`` stops starting new cases past that many seconds (the rest are recorded
as skipped); a markdown summary at the end.

    python benchmarks/bench_detection.py --out det.json --commit $(git rev-parse --short HEAD)
    OUT=dir benchmarks/run_ab.sh detection     # the device recipe: both sizes and batches in one call
    python benchmarks/bench_detection.py --checkpoint runs/spatial/best.pt --data-root .data/fashion-mnist \\
        --sizes 256x256 --out det_trained.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
import traceback
from collections.abc import Callable

import torch
import torchvision

import laudnet
from laudnet.detection import autocast_heads, create_detector, deploy_backbone, deploy_detector, head_modules
from laudnet.timing import time_call

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from bench_models import _triton_version, random_decisions  # noqa: E402

DEV = torch.device("cuda")  # --smoke: the CPU (eager and uncompiled, no CUDA graphs)


def parse_size(text: str) -> tuple[int, int]:
    """``HxW`` → (H, W)."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"a size is HxW (e.g. 800x1216), got {text!r}") from None
    return h, w


def timed_ms(fn: Callable[[], object], args, repeats: int | None = None) -> float:
    """Median milliseconds of fn() (after a first call, which compiles and captures)."""
    fn()
    return 1e3 * time_call(fn, DEV, repeats=repeats or args.repeats, warmup=args.warmup)


def set_size(detector, size: tuple[int, int]) -> None:
    """Make the detector's transform keep images of `size` as they are (scale 1; the batch is padded to a multiple of
    32 only)."""
    detector.transform.min_size = (min(size),)
    detector.transform.max_size = max(size)


@contextlib.contextmanager
def body_in(detector, body):
    """The detector with `body` in place of its backbone body for the duration."""
    original = detector.backbone.body
    detector.backbone.body = body
    try:
        yield detector
    finally:
        detector.backbone.body = original


@contextlib.contextmanager
def heads_bf16(detector, on: bool):
    """The detector with its FPN and heads in bf16 autocast for the duration (when `on`)."""
    saved = [(parent, name, getattr(parent, name)) for parent, name in head_modules(detector)]
    if on:
        autocast_heads(detector, torch.bfloat16)
    try:
        yield detector
    finally:
        for parent, name, module in saved:
            setattr(parent, name, module)


def decision_shapes(body, x: torch.Tensor) -> list[tuple[int, ...]]:
    """The shape of every block's decisions on the padded batch `x`, as the deployed blocks' `forced_keep` takes them
    (from one training-form forward)."""
    with torch.no_grad():
        body(x)
    shapes = []
    for info in body.collect_info():
        if info.paradigm == "channel":
            shapes.append(tuple(info.masks["channel"].shape))
        elif info.paradigm == "layer":
            shapes.append((x.shape[0],))
        else:
            b, _, gh, gw = info.masks["patch"].shape
            shapes.append((b, gh, gw))
    return shapes


@contextlib.contextmanager
def forced_masks(body, masks: list[torch.Tensor]):
    """The training-form body's maskers answering `masks` (float) for the duration: its FLOPs and features for the
    decisions the deployed blocks are given."""
    maskers = []
    for block, keep in zip(body.dynamic_blocks(), masks, strict=True):
        value = keep.float().to(x_device(body))
        if block.paradigm == "layer":
            value = value.view(-1, 1, 1, 1)
        elif block.paradigm == "spatial":
            value = value[:, None]
        masker = block.masker if block.paradigm in ("layer", "spatial") else block.channel_masker
        masker.forward = lambda *a, _v=value, **k: _v
        maskers.append(masker)
    try:
        yield body
    finally:
        for masker in maskers:
            del masker.forward


def x_device(module) -> torch.device:
    return next(module.parameters()).device


def reference(body, x: torch.Tensor, masks: list[torch.Tensor] | None) -> tuple[dict, float]:
    """The fp32 training-form features and the backbone's FLOPs ratio for these decisions (None: the maskers')."""
    with torch.no_grad(), forced_masks(body, masks) if masks is not None else contextlib.nullcontext():
        features = body(x)
    return features, laudnet.model_flops(body, (3, x.shape[2], x.shape[3])).ratio


def relative_error(out: dict, ref: dict) -> float:
    """||out − ref|| / ||ref|| over every returned stage."""
    num = sum(float((out[k].float() - ref[k]).norm() ** 2) for k in ref)
    return (num / sum(float(ref[k].norm() ** 2) for k in ref)) ** 0.5


def images_for(args, size: tuple[int, int], batch: int) -> list[torch.Tensor]:
    """Random images, or with --data-root fashion-canvas-det validation canvases, of `size`."""
    if args.data_root:
        from laudnet.detection import fashion_canvas_det

        data = fashion_canvas_det(args.data_root, "val", height=size[0], width=size[1], num_samples=batch)
        return [data[i][0].to(DEV) for i in range(batch)]
    g = torch.Generator().manual_seed(batch)
    return [torch.rand(3, *size, generator=g).to(DEV) for _ in range(batch)]


def build_detectors(args, trained: dict | None) -> dict:
    """The detectors of the run (eval, on DEV), all with one set of weights: ``static``, each paradigm, and with
    --checkpoint ``trained`` (whose weights the others take, maskers apart)."""
    kw = dict(num_classes=args.num_classes)
    dets = {}
    if trained is not None:
        dets["trained"] = trained_detector(args, trained)
    dets["static"] = create_detector(args.detector, args.backbone, "static", **kw)
    if "trained" in dets:
        load_shared(dets["static"], dets["trained"].state_dict())
    shared = dets["static"].state_dict()
    for paradigm in args.paradigms:
        dets[paradigm] = create_detector(args.detector, args.backbone, paradigm, **kw)
        load_shared(dets[paradigm], shared)
    return {name: det.to(DEV).eval() for name, det in dets.items()}


def load_shared(det, state: dict) -> None:
    """Every weight of `state` into `det` but the maskers (which only one of them may have; a BatchNorm's
    ``num_batches_tracked`` neither, where one backbone has plain BN and the other frozen BN)."""
    skip = ("masker", "num_batches_tracked")
    missing, unexpected = det.load_state_dict({k: v for k, v in state.items() if not any(s in k for s in skip)},
                                              strict=False)
    left = [k for k in missing + unexpected if not any(s in k for s in skip)]
    if left:
        raise ValueError(f"the detectors of the run do not share their weights: {left[:3]}")


def read_checkpoint(args) -> dict | None:
    """The --checkpoint's state, and the run's detector kind, backbone and classes set from it: a detection
    checkpoint (``laudnet train --task detection|instance``) is the whole trained detector, a classification one
    (``laudnet train``) a trained backbone put into a detector of --detector."""
    if not args.checkpoint:
        return None
    from laudnet.detection.task import is_detection_checkpoint
    from laudnet.train.checkpoint import load_checkpoint
    from laudnet.train.cli import checkpoint_model_args

    state = load_checkpoint(args.checkpoint)
    if is_detection_checkpoint(state):
        margs = state["model_args"]
        args.detector, args.backbone, args.num_classes = margs["kind"], margs["backbone"], margs["num_classes"]
        state["checkpoint_kind"] = "detection"
    else:
        margs = checkpoint_model_args(state)
        args.backbone = margs["name"]
        state["checkpoint_kind"] = "classification"
    state["create_args"] = margs
    return state


def trained_detector(args, state: dict):
    """The trained detector of the checkpoint (see `read_checkpoint`)."""
    if state["checkpoint_kind"] == "detection":
        from laudnet.detection.task import trained_detector as rebuild

        return rebuild(state, args.checkpoint)
    margs = state["create_args"]
    return create_detector(args.detector, margs["name"], margs["paradigm"], margs.get("granularity"),
                           weights_backbone=args.checkpoint, masker_norm=margs.get("masker_norm", True),
                           num_classes=args.num_classes)


class Run:
    """The results file: rows appended and written after each one, the budget, and the static times to compare with."""

    def __init__(self, args, meta: dict) -> None:
        self.args, self.meta, self.rows, self.t0 = args, meta, [], time.time()
        self.static: dict[tuple, dict] = {}

    def save(self, row: dict) -> None:
        self.rows.append(row)
        print(json.dumps(row), flush=True)
        with open(self.args.out, "w") as f:
            json.dump(dict(meta=self.meta, rows=self.rows), f, indent=1)

    def over_budget(self) -> bool:
        return self.args.budget_s is not None and time.time() - self.t0 > self.args.budget_s


def detector_times(run: Run, det, body, images) -> dict:
    """Whole-detector milliseconds with `body` in place: the heads as they are and (--heads-bf16) in bf16 autocast."""
    out = {}
    with torch.no_grad(), body_in(det, body):
        for bf16 in (False, True) if run.args.heads_bf16 else (False,):
            with heads_bf16(det, bf16):
                key = "detector_bf16_heads_ms" if bf16 else "detector_ms"
                out[key] = timed_ms(lambda: det(images), run.args, repeats=run.args.detector_repeats)
    return out


def ratios(run: Run, key: tuple, row: dict) -> dict:
    """Each time of `row` over the static case's (same size and batch)."""
    static = run.static.get(key)
    if static is None:
        return {}
    out = {"backbone_ratio": round(row["backbone_ms"] / static["backbone_ms"], 3)}
    for k in ("detector_ms", "detector_bf16_heads_ms"):
        if k in row and k in static:
            out[k.replace("_ms", "_ratio")] = round(row[k] / static[k], 3)
    return out


def bench_static(run: Run, det, size, batch, images, x) -> None:
    t0 = time.time()
    row = dict(size=list(size), batch=batch, kind="static")
    try:
        body = deploy_backbone(det.backbone.body, torch.bfloat16, form="dense-masked", compile=run.args.compile)
        row.update(form="folded" + (", compiled whole" if run.args.compile else "")
                   + (", CUDA graph" if body.graphed else ""),
                   backbone_ms=timed_ms(lambda: body(x), run.args))
        row.update(detector_times(run, det, body, images), build_s=round(time.time() - t0, 1))
        run.static[(size, batch)] = row
    except Exception as e:  # the dynamic cases are still measured, without ratios
        traceback.print_exc()
        row["error"] = f"{type(e).__name__}: {str(e)[:300]}"
    run.save(row)


def compile_mode(args) -> bool | str:
    """`deploy_backbone`'s ``compile`` for the LAUD backbones (one block-compile mode per process)."""
    return args.sparse_compile if args.compile else False


def bench_paradigm(run: Run, det, paradigm: str, size, batch, images, x) -> None:
    """Every rate of one paradigm: both forms built once, the decisions copied in place for each rate."""
    args = run.args
    body = det.backbone.body
    shapes = decision_shapes(body, x)
    decisions = {rate: random_decisions(shapes, rate, torch.Generator().manual_seed(0)) for rate in args.rates}
    first = decisions[args.rates[0]]

    def impose(deployed) -> None:
        for block, keep in zip(deployed.blocks(), first, strict=True):
            block.forced_keep = keep.to(DEV).clone()

    t0 = time.time()
    try:
        forms = {form: deploy_backbone(body, torch.bfloat16, form=form, compile=compile_mode(args), setup=impose)
                 for form in ("sparse", "dense-masked")}
    except Exception as e:  # the other paradigms are still measured
        traceback.print_exc()
        run.save(dict(size=list(size), batch=batch, kind=paradigm, error=f"{type(e).__name__}: {str(e)[:300]}"))
        return
    build_s = time.time() - t0
    for rate in args.rates:
        if run.over_budget():
            run.save(dict(size=list(size), batch=batch, kind=paradigm, rate=rate, skipped="budget"))
            continue
        t0 = time.time()
        row = dict(size=list(size), batch=batch, kind=paradigm, rate=rate)
        try:
            ref, flops = reference(body, x, decisions[rate])
            times, errors, form_errors = {}, {}, {}
            for name, form in forms.items():
                try:  # a form this backbone cannot take (RegNetY layer skipping syncs: no CUDA graph) is left out
                    for block, keep in zip(form.blocks(), decisions[rate], strict=True):
                        block.forced_keep.copy_(keep)
                    form.clear_graphs()
                    if name == "sparse":
                        row["dense_blocks"] = form.tune(x, repeats=max(3, args.repeats // 2)).count("dense")
                    times[name] = timed_ms(lambda f=form: f(x), args)
                    errors[name] = round(relative_error(form(x), ref), 5)
                except Exception as e:
                    traceback.print_exc()
                    form_errors[name] = f"{type(e).__name__}: {str(e)[:300]}"
            if not times:
                raise RuntimeError(f"no form could be timed: {form_errors}")
            fastest = min(times, key=times.get)
            row.update(flops_ratio=round(flops, 4), form=fastest, backbone_ms=times[fastest], forms_ms=times,
                       rel_error=errors, **({"form_errors": form_errors} if form_errors else {}))
            row.update(detector_times(run, det, forms[fastest], images))
            row.update(ratios(run, (size, batch), row), build_s=round(time.time() - t0 + build_s, 1))
            build_s = 0.0
        except Exception as e:  # one case failing leaves the others to measure
            traceback.print_exc()
            row["error"] = f"{type(e).__name__}: {str(e)[:300]}"
        run.save(row)


def bench_trained(run: Run, det, size, batch, images, x) -> None:
    """The trained maskers deciding on the images; `deploy_detector(form="fastest")` picks the form on them."""
    t0 = time.time()
    row = dict(size=list(size), batch=batch, kind="trained", paradigm=det.backbone.body.paradigm,
               checkpoint=run.args.checkpoint,
               images="fashion-canvas-det" if run.args.data_root else "random")
    try:
        deployed = deploy_detector(det, torch.bfloat16, form="fastest", example=images,
                                   compile=compile_mode(run.args), repeats=run.args.repeats)
        body = deployed.backbone.body
        ref, flops = reference(det.backbone.body, x, None)
        with torch.no_grad():
            rel = relative_error(body(x), ref)
        row.update(flops_ratio=round(flops, 4), form=body.form, backbone_ms=timed_ms(lambda: body(x), run.args),
                   forms_ms=body.times_ms, form_errors=body.errors, rel_error=round(rel, 5),
                   block_rates=[round(r, 3) for r in body.activation_rates()])
        row.update(detector_times(run, deployed, body, images))
        row.update(ratios(run, (size, batch), row), build_s=round(time.time() - t0, 1))
    except Exception as e:
        traceback.print_exc()
        row["error"] = f"{type(e).__name__}: {str(e)[:300]}"
    run.save(row)


def summary(rows: list[dict]) -> str:
    """Markdown table of the rows: each case's backbone and whole-detector times and their ratios to static."""
    lines = ["| size | batch | case | rate | FLOPs | form | backbone ms | × static | detector ms | × static |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "backbone_ms" not in r:
            continue
        lines.append(f"| {r['size'][0]}x{r['size'][1]} | {r['batch']} | {r['kind']} | {r.get('rate', '')} | "
                     f"{r.get('flops_ratio', '')} | {r['form']} | {r['backbone_ms']:.3f} | "
                     f"{r.get('backbone_ratio', '')} | {r.get('detector_ms', float('nan')):.2f} | "
                     f"{r.get('detector_ratio', '')} |")
    skipped = [r for r in rows if "skipped" in r or "error" in r]
    if skipped:
        lines.append(f"\n{len(skipped)} case(s) skipped or failed: " + "; ".join(
            f"{r['size'][0]}x{r['size'][1]} b{r['batch']} {r['kind']} {r.get('rate', '')}: "
            f"{r.get('skipped') or r.get('error')}" for r in skipped))
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--detector", default="fasterrcnn", choices=laudnet.detection.list_detectors())
    parser.add_argument("--backbone", default="laud_resnet50", choices=laudnet.detection.BACKBONES)
    parser.add_argument("--paradigms", nargs="+", default=["spatial", "channel", "layer"])
    parser.add_argument("--rates", nargs="+", type=float, default=[0.25, 0.5, 0.75])
    parser.add_argument("--sizes", nargs="+", type=parse_size, default=[(256, 256), (800, 1216)],
                        help="padded batch sizes HxW (multiples of 32)")
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--num-classes", type=int, default=91)
    parser.add_argument("--checkpoint", default=None,
                        help="a laudnet checkpoint with trained maskers, of a detector (laudnet train --task "
                             "detection: sets --detector, --backbone, --num-classes) or of a classifier (sets "
                             "--backbone): also time it with its maskers deciding; every detector of the run takes "
                             "its weights")
    parser.add_argument("--data-root", default=None, help="Fashion-MNIST files: fashion-canvas-det images")
    parser.add_argument("--heads-bf16", action="store_true",
                        help="also time each whole detector with its FPN and heads in bf16 autocast")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--no-compile", dest="compile", action="store_false")
    parser.add_argument("--sparse-compile", choices=["static", "dynamic"], default="static",
                        help="how the sparse form's dense-masked block paths compile (deploy_backbone's compile): "
                             "specialised to each block's shapes (deploy_fastest's choice), or once per block kind "
                             "with symbolic sizes for every batch, image size and paradigm's rates (far less "
                             "compilation, slightly slower: conservative for LAUD); the dense-masked forms and the "
                             "static baseline are compiled whole at static shapes either way")
    parser.add_argument("--detector-repeats", type=int, default=10, help="timed calls per whole-detector time")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="start no new case after this many seconds (the rest are recorded as skipped)")
    parser.add_argument("--smoke", action="store_true",
                        help="the whole flow on the CPU, tiny (64x96, batch 2, the first rate only), eager and "
                             "uncompiled: checks the script without a GPU")
    parser.add_argument("--commit", default="unknown")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    global DEV
    if args.smoke:
        DEV, args.compile, args.repeats, args.detector_repeats, args.warmup = torch.device("cpu"), False, 1, 1, 0
        args.sizes, args.batches, args.rates = [(64, 96)], [2], args.rates[:1]
    elif not torch.cuda.is_available():
        raise SystemExit("bench_detection.py needs a CUDA device (or --smoke)")
    bad = [s for s in args.sizes if s[0] % 32 or s[1] % 32]
    if bad:
        raise SystemExit(f"sizes must be multiples of 32 (the detector pads to them), got {bad}")
    trained = read_checkpoint(args)
    torch.backends.cudnn.benchmark = True
    meta = dict(device=torch.cuda.get_device_name() if DEV.type == "cuda" else "cpu", torch=torch.__version__,
                torchvision=torchvision.__version__, triton=_triton_version(), commit=args.commit,
                args={k: v for k, v in vars(args).items()})
    run = Run(args, meta)
    dets = build_detectors(args, trained)
    with torch.no_grad():
        for size in args.sizes:
            for det in dets.values():
                set_size(det, size)
            for batch in args.batches:
                images = images_for(args, size, batch)
                x = dets["static"].transform(images)[0].tensors
                assert tuple(x.shape[2:]) == size, f"the transform made {tuple(x.shape)} from {size} images"
                cases = [("static", bench_static), *((p, bench_paradigm) for p in args.paradigms)]
                if "trained" in dets:
                    cases.append(("trained", bench_trained))
                for name, bench in cases:
                    if run.over_budget():
                        run.save(dict(size=list(size), batch=batch, kind=name, skipped="budget"))
                        continue
                    if bench is bench_paradigm:
                        bench(run, dets[name], name, size, batch, images, x)
                    else:
                        bench(run, dets[name], size, batch, images, x)
                    if DEV.type == "cuda":
                        torch.cuda.empty_cache()  # each case's graphs and deployed bodies are gone
    print(summary(run.rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
