"""Detection results (issue 21, item 6): box and mask AP of LAUD-ResNet-50 detectors on fashion-canvas-det against the
static detector, with the backbone's FLOPs and its measured GPU latency, in one resumable command.

On ``fashion-canvas-det`` (256x256 canvases, 2-4 Fashion-MNIST items each at 0.15-0.4 of the side; the same training
and validation canvases for every network), every network trained by ``laudnet train`` in a subprocess:

* **backbone**: the static LAUD-ResNet-50 (torchvision's architecture) trained on ``fashion-canvas`` classification
  (128 px; ``pareto.py``'s static recipe). No ImageNet weights can be downloaded on the device, and a detector from a
  random backbone does not train: its BatchNorms become ``FrozenBatchNorm2d`` (running mean 0, variance 1), so a
  randomly initialised ResNet-50 runs without normalisation and its loss turns NaN within a few steps (seen on the
  CPU at lr 0.0025). The short classification run gives the frozen BNs real statistics and the convolutions a start.
* **static** Mask R-CNN (``--task instance``) and Faster R-CNN (``--task detection``) on that backbone
  (``--mode static --init <backbone>``; torchvision's detection recipe: SGD 0.02 per 16 images, momentum 0.9 without
  Nesterov, weight decay 1e-4, warm-up; stem and stage 1 frozen);
* **dynamic**: t = 0.5 fine-tunes per paradigm (spatial 4-4-2-1, channel at its default groups, layer) from each static
  detector (``--init <static detector>/best.pt``), with the official detection objective (λ = 1, the task's default;
  Gumbel temperature fixed at 0.1; no distillation).

Each network is evaluated by ``laudnet eval --json`` (in this process): COCO box AP (and mask AP), the backbone's FLOPs
ratio, per-block rates and adaptivity. Then timed with ``bench_detection.py``'s functions at batch 1 on fashion-canvas-
det canvases of each size (``--sizes``: 800x1216, COCO-like, and 256x256, the training size): the static detector in
its strongest form (`bench_static`: body folded, compiled whole, CUDA graph) and each dynamic one with its trained
maskers deciding (`bench_trained`: ``deploy_detector(form="fastest", example=images)``), backbone alone and whole
detector (FPN and heads fp32), each as a ratio to the static detector of the same kind.

The goal (issue 21): at t = 0.5 the best paradigm keeps box and mask AP within 1 point of the static detector while
its backbone takes <= 0.7x the static backbone's measured time at batch 1 at 800x1216; judged on Mask R-CNN (box and
mask AP from one network), and per Faster R-CNN point on box AP. The table says met or missed.

    # here, once: a copy of the data in a folder git ignores (.git/info/exclude: /.data/)
    mkdir -p .data && cp -r /usr/share/datasets/fashion-mnist .data/
    # on the GPU machine (carry .data), until it exits 0 (3: budget reached, rerun):
    PYTHONPATH=$PWD python benchmarks/detection_results.py --data-root .data/fashion-mnist --out runs/det-results \\
        --commit <hash> --budget-minutes 8.4 --no-progress          # or: OUT=dir benchmarks/run_ab.sh detection-results
    python benchmarks/detection_results.py --smoke --out /tmp/det   # the whole flow on the CPU (what CI runs)

Resumable like ``pareto.py``: ``--budget-minutes`` stops before a unit that would not fit (exit 3), and a training run
in progress at the deadline gets SIGTERM, saves its ``last.pt`` and is resumed (``--resume auto``) by the next call;
finished units (their ``result.json`` / ``time/<name>.json``) are never redone. Exit 0: every point trained, evaluated
and timed; 1: a unit failed (``errors`` in the JSON; the other units still ran; a rerun retries it); 2: bad input.
Units run per detector (Mask R-CNN first, then Faster R-CNN): static, the three fine-tunes, then their timing, so a
session that runs short still has a complete Mask R-CNN answer. ``--detectors maskrcnn`` leaves Faster R-CNN out.

GPU time, estimated for an H100 from the CPU timings (``laudnet train --task instance`` of Mask R-CNN on
LAUD-ResNet-50 at 256 px: 0.85 images/s on 2 CPU cores, fp32, ~70 GFLOP per training image) and torchvision's
detection throughput: at 256 px a batch of 16 is ~40 ms of bf16 compute and ~50 ms of per-iteration overhead (anchor
matching, RoI sampling, mask targets, Python), so ~150 images/s for Mask R-CNN, ~180 for Faster R-CNN, ×1/1.2 for a
dynamic fine-tune (maskers); ~25 s per run for start-up, loaders and the fp32 validation of 250 canvases; ~15 s per
``laudnet eval``. Timing: one whole compile of the static body per size (~30 s), ``deploy_detector(fastest)`` builds
both forms per size (~45 s; the sparse form's block paths compile once per block kind, ``--sparse-compile dynamic``).

    backbone  12,800 x 4 epochs at 128 px (4,500 images/s)            ~0.5 min
    maskrcnn  static 3,200 x 3 epochs, 3 fine-tunes x 2 epochs, evals  ~5.5 min; timing 4 x 2 sizes ~5 min
    fasterrcnn the same                                               ~5 min; timing ~5 min
    total     ~21 min + start-up per call: 3 calls of --budget-minutes 8.4 (~25 min); maskrcnn alone ~11 min

``--smoke`` runs the whole flow on the CPU (64x96 canvases, 4 images, one step, Mask R-CNN only, eager timing at
64x96, one repeat): it checks the script, not the numbers (``tests/benchmarks/test_detection_results.py``).

Output (``--out``): ``detection_results.json`` (``complete``, ``meta``, ``points``: name, detector, paradigm, target,
box_ap, mask_ap (percent), flops_ratio, block_rates, adaptivity, per size ``latency``: backbone_ms, backbone_ratio,
detector_ms, detector_ratio, form; ``goal``; ``errors``), ``detection_results.md`` (the table), ``readme_table.md``
(the README's text), ``runs/<name>/`` (laudnet runs, ``eval.json``, ``result.json``), ``time/<name>.json``
(bench_detection rows), ``units.json`` (seconds per unit against its estimate).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, __file__.rsplit("/", 1)[0])
import resumable  # noqa: E402
from resumable import BudgetReached, InputError, UnitContext, device_name, read_json, trained_and_timed  # noqa: E402

RECIPE: dict[str, Any] = {
    # the detection data: the same canvases for every network (configs/detection-canvas.yaml's geometry)
    "data": {"dataset": "fashion-canvas-det", "canvas_items_min": 2, "canvas_items_max": 4, "canvas_scale_min": 0.15,
             "canvas_scale_max": 0.4, "seed": 0},
    # the backbone: static classification on fashion-canvas (pareto.py's static recipe)
    "backbone": {"dataset": "fashion-canvas", "canvas_clutter": 2, "canvas_scale_min": 0.3, "canvas_scale_max": 0.6,
                 "seed": 0, "lr_base": 0.2, "warmup_epochs": 0.3, "label_smoothing": 0.1, "weight_decay": 5e-5,
                 "momentum": 0.9, "nesterov": True, "zero_init_residual": True},
    # every detector run: torchvision's detection optimiser (configs/detection-canvas.yaml)
    "detector": {"trainable_layers": 3, "lr_base": 0.02, "lr_base_size": 16, "weight_decay": 1e-4, "momentum": 0.9,
                 "nesterov": False, "warmup_epochs": 0.25},
    # the dynamic fine-tunes: the official detection objective (lambda_flops: the task's default, 1)
    "dynamic": {"target": 0.5, "t0": 0.1, "t_last": 0.1},
    "granularity": {"spatial": "4-4-2-1", "channel": None, "layer": None},
}
FULL = dict(image_size=256, backbone_size=128, backbone_subset=12800, backbone_epochs=4, backbone_batch=128,
            train_subset=3200, val_subset=250, static_epochs=3, finetune_epochs=2, batch_size=16, workers=12,
            max_steps_per_epoch=None, detectors=["maskrcnn", "fasterrcnn"], paradigms=["spatial", "channel", "layer"],
            sizes=["800x1216", "256x256"], repeats=20, detector_repeats=10, warmup=3)
SMOKE = dict(image_size=64, backbone_size=32, backbone_subset=8, backbone_epochs=1, backbone_batch=4,
             train_subset=4, val_subset=2, static_epochs=1, finetune_epochs=1, batch_size=2, workers=0,
             max_steps_per_epoch=1, detectors=["maskrcnn"], paradigms=["spatial", "channel", "layer"],
             sizes=["64x96"], repeats=1, detector_repeats=1, warmup=0)
DETECTORS = ("maskrcnn", "fasterrcnn")
TASK = {"maskrcnn": "instance", "fasterrcnn": "detection"}
PARADIGMS = ("spatial", "channel", "layer")
MODEL = "laud_resnet50"
STAGES = ("train", "time", "report", "all")

# H100 estimates (see the docstring), corrected by the measured/estimated ratio of the units done.
TRAIN_RATE = {"maskrcnn": 150.0, "fasterrcnn": 180.0, "backbone": 4500.0}  # images/s at 256 px (backbone: 128 px)
DYNAMIC_SLOWDOWN = 1.2
RUN_OVERHEAD_S = 25.0
EVAL_S = 15.0
TIME_S = {"static": 30.0, "dynamic": 45.0}  # per size


def fail(message: str) -> None:
    resumable.fail("detection_results.py", message)


# ------------------------------------------------------------------------------------------------------ arguments


def parse_size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise InputError(f"a size is HxW (e.g. 800x1216), got {text!r}") from None
    if h % 32 or w % 32 or h < 32 or w < 32:
        raise InputError(f"timing sizes must be multiples of 32 (the detector pads to them), got {text}")
    return h, w


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data-root", default="/usr/share/datasets/fashion-mnist", help="Fashion-MNIST IDX folder")
    p.add_argument("--out", required=True)
    p.add_argument("--commit", default="unknown")
    p.add_argument("--stage", choices=STAGES, default="all", help="train (and evaluate), time, report, or all")
    p.add_argument("--budget-minutes", type=float, default=None,
                   help="stop before a unit that would not fit (exit 3); rerun to continue")
    p.add_argument("--stop-after-units", type=int, default=None,
                   help="stop (exit 3) after this many units of work (tests of the resume)")
    p.add_argument("--smoke", action="store_true", help="the whole flow on the CPU, tiny")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    g = p.add_argument_group("budget (defaults: the full run, or --smoke's)")
    for name, kind in (("image_size", int), ("backbone_size", int), ("backbone_subset", int), ("backbone_epochs", int),
                       ("backbone_batch", int), ("train_subset", int), ("val_subset", int), ("static_epochs", int),
                       ("finetune_epochs", int), ("batch_size", int), ("workers", int), ("max_steps_per_epoch", int),
                       ("repeats", int), ("detector_repeats", int), ("warmup", int)):
        g.add_argument("--" + name.replace("_", "-"), type=kind)
    g.add_argument("--detectors", nargs="+", choices=DETECTORS)
    g.add_argument("--paradigms", nargs="+", choices=PARADIGMS)
    g.add_argument("--sizes", nargs="+", help="timing sizes HxW at batch 1 (default 800x1216 256x256)")
    args = p.parse_args(argv)
    for key, value in (SMOKE if args.smoke else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, copy.deepcopy(value))
    try:
        args.sizes = [parse_size(s) if isinstance(s, str) else tuple(s) for s in args.sizes]
        check_args(args)
    except InputError as e:
        fail(str(e))
    return args


def check_args(args: argparse.Namespace) -> None:
    for name in ("image_size", "backbone_size", "backbone_subset", "backbone_epochs", "backbone_batch", "train_subset",
                 "val_subset", "static_epochs", "finetune_epochs", "batch_size", "repeats", "detector_repeats"):
        if getattr(args, name) < 1:
            raise InputError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.workers < 0 or args.warmup < 0:
        raise InputError("--workers and --warmup must be >= 0")
    resumable.check_budget_minutes(args.budget_minutes)
    resumable.check_data_root(args.data_root)


# ------------------------------------------------------------------------------------------------------- context


@dataclass
class Context(UnitContext):
    """resumable's context, and --stop-after-units: the units done by this call, counted."""

    done_here: int = 0

    def check_budget(self, name: str, kind: str, estimate_s: float) -> float:
        if self.args.stop_after_units is not None and self.done_here >= self.args.stop_after_units:
            raise BudgetReached(f"{name} (--stop-after-units {self.args.stop_after_units})")
        return super().check_budget(name, kind, estimate_s)

    def record(self, name: str, kind: str, seconds: float, estimate_s: float) -> None:
        self.done_here += 1
        super().record(name, kind, seconds, estimate_s)


def write_json(path: Path, data: Any) -> None:
    resumable.write_json(path, data, default=str)


def point_name(detector: str, paradigm: str) -> str:
    return f"{detector}-static" if paradigm == "static" else f"{detector}-{paradigm}-t{RECIPE['dynamic']['target']:g}"


def planned(args) -> list[tuple[str, str, str]]:
    """(name, detector, paradigm) of every point, in the table's order."""
    return [(point_name(d, p), d, p) for d in args.detectors for p in ("static", *args.paradigms)]


# ---------------------------------------------------------------------------------------------------- training


def flags(values: dict[str, Any]) -> list[str]:
    """``laudnet train`` flags from TrainConfig fields (True: --x, False: --no-x, None: left out)."""
    out = []
    for key, value in values.items():
        name = "--" + key.replace("_", "-")
        if value is None:
            continue
        if isinstance(value, bool):
            out.append(name if value else "--no-" + key.replace("_", "-"))
        else:
            out += [name, str(value)]
    return out


def common(ctx: Context, name: str, epochs: int) -> dict[str, Any]:
    a = ctx.args
    return dict(data_root=a.data_root, workers=a.workers, epochs=epochs, eval_every=epochs,
                max_steps_per_epoch=a.max_steps_per_epoch, output=str(ctx.out / "runs"), run_name=name,
                resume="auto", device=str(ctx.device), progress=a.progress)


def backbone_flags(ctx: Context) -> list[str]:
    a = ctx.args
    return flags(dict(RECIPE["backbone"], **common(ctx, "backbone", a.backbone_epochs), mode="static", model=MODEL,
                      image_size=a.backbone_size, train_subset=a.backbone_subset, val_subset=min(1000, a.val_subset
                      * 4), batch_size=a.backbone_batch))


def detector_flags(ctx: Context, name: str, detector: str, paradigm: str) -> list[str]:
    a = ctx.args
    static = paradigm == "static"
    values = dict(RECIPE["data"], **RECIPE["detector"],
                  **common(ctx, name, a.static_epochs if static else a.finetune_epochs),
                  task=TASK[detector], detector=detector, model=MODEL, image_size=a.image_size,
                  canvas_height=a.image_size, canvas_width=a.image_size, min_size=a.image_size,
                  max_size=a.image_size, train_subset=a.train_subset, val_subset=a.val_subset, batch_size=a.batch_size)
    if static:
        values.update(mode="static", init=str(ctx.run_dir("backbone") / "best.pt"))
    else:
        values.update(RECIPE["dynamic"], mode="dynamic", paradigm=paradigm, granularity=RECIPE["granularity"][paradigm],
                      init=str(ctx.run_dir(point_name(detector, "static")) / "best.pt"))
    if values["warmup_epochs"] >= values["epochs"]:
        values["warmup_epochs"] = 0.0
    return flags(values)


def run_training(ctx: Context, name: str, argv: list[str]) -> None:
    """``laudnet train`` in a subprocess; at the deadline it gets SIGTERM (saves last.pt) and BudgetReached follows."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    cmd = [sys.executable, "-m", "laudnet", "train", *argv]
    print(f"   $ laudnet train {' '.join(argv)}", flush=True)
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT)
    stopped = False
    while proc.poll() is None:
        if ctx.deadline is not None and time.time() > ctx.deadline and not stopped:
            proc.send_signal(signal.SIGTERM)
            stopped = True
        time.sleep(0.5)
    if stopped:
        raise BudgetReached(f"{name} stopped at the deadline; its last.pt resumes it")
    if proc.returncode != 0:
        raise RuntimeError(f"laudnet train for {name} exited with status {proc.returncode}")


def evaluate(ctx: Context, name: str) -> dict:
    """``laudnet eval <best.pt> --json`` (in this process: no second start-up)."""
    from laudnet.cli import main as laudnet_main

    path = ctx.run_dir(name) / "eval.json"
    argv = ["eval", str(ctx.run_dir(name) / "best.pt"), "--json", str(path), "--device", str(ctx.device),
            "-j", str(min(ctx.args.workers, 4))]
    code = laudnet_main(argv)
    if code != 0:
        raise RuntimeError(f"laudnet eval {name} exited with status {code}")
    return json.loads(path.read_text())


def train_estimate(ctx: Context, kind: str, epochs: int, slowdown: float = 1.0) -> float:
    a = ctx.args
    if kind == "backbone":
        images, size = a.backbone_subset * epochs, a.backbone_size
        rate = TRAIN_RATE["backbone"] * (128 / size) ** 2
    else:
        images, size = a.train_subset * epochs, a.image_size
        rate = TRAIN_RATE[kind] * (256 / size) ** 2 / slowdown
    if a.max_steps_per_epoch is not None:
        images = min(images, a.max_steps_per_epoch * a.batch_size * epochs)
    return RUN_OVERHEAD_S + images / rate


def unit_backbone(ctx: Context) -> None:
    if (ctx.run_dir("backbone") / "result.json").is_file():
        return
    estimate = train_estimate(ctx, "backbone", ctx.args.backbone_epochs)
    ctx.check_budget("backbone", "train", estimate)
    print(f"== backbone: static {MODEL} on fashion-canvas (estimate {estimate:.0f} s)", flush=True)
    t0 = time.time()
    run_training(ctx, "backbone", backbone_flags(ctx))
    import csv

    rows = list(csv.DictReader((ctx.run_dir("backbone") / "metrics.csv").open()))
    top1 = next((float(r["val_top1"]) for r in reversed(rows) if r.get("val_top1")), None)
    write_json(ctx.run_dir("backbone") / "result.json", dict(name="backbone", top1=top1, seconds=time.time() - t0))
    ctx.record("backbone", "train", time.time() - t0, estimate)


def unit_detector(ctx: Context, name: str, detector: str, paradigm: str) -> None:
    run_dir = ctx.run_dir(name)
    if (run_dir / "result.json").is_file():
        return
    static = paradigm == "static"
    a = ctx.args
    epochs = a.static_epochs if static else a.finetune_epochs
    estimate = train_estimate(ctx, detector, epochs, 1.0 if static else DYNAMIC_SLOWDOWN) + EVAL_S
    ctx.check_budget(name, "train", estimate)
    print(f"== {name}: laudnet train --task {TASK[detector]} ({epochs} epochs, estimate {estimate:.0f} s)", flush=True)
    t0 = time.time()
    run_training(ctx, name, detector_flags(ctx, name, detector, paradigm))
    train_s = time.time() - t0
    ev = evaluate(ctx, name)
    import csv

    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    rates = [float(r["train_images_per_s"]) for r in rows if r.get("train_images_per_s")]
    out = dict(name=name, detector=detector, paradigm=paradigm,
               target=None if static else RECIPE["dynamic"]["target"], checkpoint=str(run_dir / "best.pt"),
               eval=ev, train=dict(epochs=epochs, seconds=round(train_s, 1),
                                   images_per_s=rates[-1] if rates else None))
    write_json(run_dir / "result.json", out)
    ctx.record(name, "train", time.time() - t0, estimate)


# ---------------------------------------------------------------------------------------------------- timing


def bench_module():
    """benchmarks/bench_detection.py, imported (its DEV set to this run's device)."""
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    import bench_detection

    return bench_detection


def unit_time(ctx: Context, name: str, detector: str, paradigm: str) -> None:
    path = ctx.out / "time" / f"{name}.json"
    unit = read_json(ctx.run_dir(name) / "result.json")
    if path.is_file() or unit is None:
        return
    static_name = point_name(detector, "static")
    static_time = read_json(ctx.out / "time" / f"{static_name}.json")
    if paradigm != "static" and static_time is None:
        return  # the static detector is timed first (its unit failed: nothing to compare with)
    a = ctx.args
    estimate = TIME_S["static" if paradigm == "static" else "dynamic"] * len(a.sizes)
    ctx.check_budget(f"timing {name}", "time", estimate)
    print(f"== timing {name} at batch 1, {' '.join(f'{h}x{w}' for h, w in a.sizes)} (estimate {estimate:.0f} s)",
          flush=True)
    t0 = time.time()
    from laudnet.detection.task import trained_detector
    from laudnet.train.checkpoint import load_checkpoint

    bd = bench_module()
    bd.DEV = ctx.device
    cuda = ctx.device.type == "cuda"
    targs = argparse.Namespace(repeats=a.repeats, warmup=a.warmup, detector_repeats=a.detector_repeats,
                               heads_bf16=False, compile=cuda, sparse_compile="dynamic", budget_s=None,
                               checkpoint=unit["checkpoint"], data_root=a.data_root,
                               out=str(ctx.out / "time" / f"{name}.rows.json"))
    path.parent.mkdir(parents=True, exist_ok=True)
    run = bd.Run(targs, dict(device=device_name(ctx.device), commit=a.commit))
    if static_time is not None:
        run.static = {(tuple(r["size"]), r["batch"]): r for r in static_time["rows"]
                      if r["kind"] == "static" and "backbone_ms" in r}
    det = trained_detector(load_checkpoint(unit["checkpoint"]), unit["checkpoint"]).to(ctx.device).eval()
    if cuda:
        torch.backends.cudnn.benchmark = True
        cfg = torch._dynamo.config  # 8 detectors x 2 sizes x 2 forms share the bodies' code objects' caches
        for key in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit",
                    "accumulated_cache_size_limit"):
            if hasattr(cfg, key):
                setattr(cfg, key, max(getattr(cfg, key), 1024))
    with torch.no_grad():
        for size in a.sizes:
            bd.set_size(det, size)
            images = bd.images_for(targs, size, 1)
            x = det.transform(images)[0].tensors
            if paradigm == "static":
                bd.bench_static(run, det, size, 1, images, x)
            else:
                bd.bench_trained(run, det, size, 1, images, x)
            if cuda:
                torch.cuda.empty_cache()
    errors = [r["error"] for r in run.rows if "error" in r]
    if errors:
        raise RuntimeError(f"timing {name}: {errors[0]}")
    write_json(path, dict(name=name, device=device_name(ctx.device), torch=torch.__version__, commit=a.commit,
                          pid=os.getpid(), timed_at=time.strftime("%Y-%m-%d %H:%M:%S"), rows=run.rows))
    ctx.record(f"timing {name}", "time", time.time() - t0, estimate)


# ---------------------------------------------------------------------------------------------------- report


def percent(value: float | None) -> float | None:
    return None if value is None else 100.0 * value


def adaptivity_summary(adaptivity: Any) -> dict | None:
    """The scalar measures of ``laudnet eval``'s adaptivity (None for a static backbone)."""
    if not isinstance(adaptivity, dict):
        return None
    return {k: v for k, v in adaptivity.items() if isinstance(v, int | float | str) or v is None}


def collect_points(out: Path, args) -> tuple[list[dict], bool]:
    plan = {name: (detector, paradigm) for name, detector, paradigm in planned(args)}
    found, complete = trained_and_timed(out, list(plan))
    points = []
    for name, unit, timing in found:
        detector, paradigm = plan[name]
        ev = unit["eval"]
        p = dict(name=name, detector=detector, paradigm=paradigm, target=unit["target"],
                 box_ap=percent((ev.get("bbox") or {}).get("AP")),
                 mask_ap=percent((ev.get("segm") or {}).get("AP")) if "segm" in ev else None,
                 box_ap50=percent((ev.get("bbox") or {}).get("AP50")),
                 flops_ratio=(ev.get("backbone") or {}).get("flops_ratio"),
                 gmacs_dense=(ev.get("backbone") or {}).get("gmacs_dense"),
                 gmacs_dynamic=(ev.get("backbone") or {}).get("gmacs_dynamic"),
                 block_rates=ev.get("block_rates"), adaptivity=adaptivity_summary(ev.get("adaptivity")),
                 images=ev.get("images"), train=unit["train"], latency={})
        for r in (timing or {}).get("rows", []):
            if "backbone_ms" not in r:
                continue
            key = f"{r['size'][0]}x{r['size'][1]}"
            p["latency"][key] = dict(backbone_ms=r["backbone_ms"], detector_ms=r.get("detector_ms"), form=r["form"],
                                     backbone_ratio=1.0 if paradigm == "static" else r.get("backbone_ratio"),
                                     detector_ratio=1.0 if paradigm == "static" else r.get("detector_ratio"),
                                     flops_ratio_timed=r.get("flops_ratio"), rel_error=r.get("rel_error"))
        if timing:
            p.update(device=timing["device"], torch=timing["torch"], commit=timing["commit"],
                     timed_at=timing["timed_at"])
        points.append(p)
    return points, complete


def goal(points: list[dict], goal_size: str) -> dict:
    """Each dynamic point against its static detector: AP within 1 point (box; mask where there are masks) and the
    backbone at <= 0.7x the static backbone's time at batch 1 at `goal_size`; met when a Mask R-CNN point (or, without
    Mask R-CNN, any point) meets all three."""
    static = {p["detector"]: p for p in points if p["paradigm"] == "static"}
    for p in points:
        s = static.get(p["detector"])
        if p["paradigm"] == "static" or s is None:
            continue
        ratio = p["latency"].get(goal_size, {}).get("backbone_ratio")
        checks = {"box": None if p["box_ap"] is None or s["box_ap"] is None else p["box_ap"] >= s["box_ap"] - 1.0,
                  "latency": None if ratio is None else ratio <= 0.7}
        if p["detector"] == "maskrcnn":
            checks["mask"] = None if p["mask_ap"] is None or s["mask_ap"] is None else p["mask_ap"] >= s["mask_ap"] - 1
        p["box_ap_delta"] = None if p["box_ap"] is None or s["box_ap"] is None else p["box_ap"] - s["box_ap"]
        p["mask_ap_delta"] = None if p["mask_ap"] is None or s["mask_ap"] is None else p["mask_ap"] - s["mask_ap"]
        p["goal_checks"] = checks
        p["goal"] = None if None in checks.values() else all(checks.values())
    judged = [p for p in points if "goal" in p]
    primary = [p for p in judged if p["detector"] == "maskrcnn"] or judged
    met = [p["name"] for p in primary if p["goal"]]
    status = "met" if met else ("missed" if primary and all(p["goal"] is not None for p in primary) else "open")
    return dict(status=status, size=goal_size, met_by=met, judged_on=[p["name"] for p in primary],
                rule="box and mask AP within 1 point of the static detector and backbone <= 0.7x the static "
                     f"backbone's time at batch 1 at {goal_size}")


def markdown(data: dict) -> str:
    meta, points = data["meta"], data["points"]
    sizes = meta["sizes"]

    def num(v, f="{:.2f}"):
        return "–" if v is None else f.format(v)

    head = ["network", "box AP", "mask AP", "FLOPs ratio"]
    for s in sizes:
        head += [f"backbone {s} ms (× static)", f"detector {s} ms (× static)"]
    head.append("goal")
    lines = [f"| {' | '.join(head)} |", "|" + "---|" * len(head)]
    for p in points:
        row = [p["name"], num(p["box_ap"]), num(p["mask_ap"]), num(p["flops_ratio"], "{:.3f}")]
        for s in sizes:
            lat = p["latency"].get(s)
            if lat is None:
                row += ["–", "–"]
                continue
            row.append(f"{lat['backbone_ms']:.3f} ({num(lat['backbone_ratio'])}×, {lat['form']})")
            row.append(f"{num(lat['detector_ms'], '{:.2f}')} ({num(lat['detector_ratio'])}×)")
        row.append("–" if "goal" not in p else {True: "met", False: "missed", None: "open"}[p["goal"]])
        lines.append("| " + " | ".join(row) + " |")
    g = data["goal"]
    verdict = {"met": f"**The goal is met** (by {', '.join(g['met_by'])})", "missed": "**The goal is missed**",
               "open": "The goal is open (points not yet trained or timed)"}[g["status"]]
    lines += ["", f"{verdict}: {g['rule']}; judged on {', '.join(g['judged_on']) or 'no point yet'}."]
    return "\n".join(lines) + "\n"


def readme_text(data: dict) -> str:
    meta = data["meta"]
    dev = meta["device"]
    return (f"On {dev} (`benchmarks/results/detection_results_<dev>_{meta['commit']}.{{json,md}}`, torch "
            f"{meta['torch']}): fashion-canvas-det {meta['image_size']} px, {meta['train_subset']} training and "
            f"{meta['val_subset']} validation canvases; LAUD-ResNet-50 backbone from a static fashion-canvas "
            f"classification run ({meta['backbone_epochs']} epochs at {meta['backbone_size']} px); static detectors "
            f"{meta['static_epochs']} epochs, t = 0.5 fine-tunes {meta['finetune_epochs']} epochs from them (λ = 1, "
            "temperature 0.1); AP in percent (COCOeval), latency at batch 1 in bf16 (static: folded, compiled whole, "
            "CUDA graph; LAUD: `deploy_detector(form=\"fastest\")` with the trained maskers deciding on a "
            "fashion-canvas-det canvas of that size), FPN and heads fp32.\n\n" + markdown(data))


def versions() -> dict:
    import torchvision

    out = dict(torch=torch.__version__, torchvision=torchvision.__version__, python=platform.python_version())
    try:
        out["triton"] = __import__("triton").__version__
    except Exception:  # the CPU has no triton
        out["triton"] = None
    return out


def stage_report(ctx: Context) -> dict:
    a = ctx.args
    points, complete = collect_points(ctx.out, a)
    devices = sorted({p["device"] for p in points if p.get("device")})
    sizes = [f"{h}x{w}" for h, w in a.sizes]
    meta = dict(device=", ".join(devices) or device_name(ctx.device), devices=devices, commit=a.commit,
                recipe=RECIPE, sizes=sizes, image_size=a.image_size, train_subset=a.train_subset,
                val_subset=a.val_subset, static_epochs=a.static_epochs, finetune_epochs=a.finetune_epochs,
                backbone_epochs=a.backbone_epochs, backbone_size=a.backbone_size, batch_size=a.batch_size,
                backbone_top1=(read_json(ctx.run_dir("backbone") / "result.json") or {}).get("top1"),
                smoke=a.smoke, args={k: v for k, v in vars(a).items()}, **versions())
    data = dict(complete=complete, meta=meta, points=points, errors=ctx.errors)
    data["goal"] = goal(points, "800x1216" if "800x1216" in sizes else sizes[0])
    ctx.out.mkdir(parents=True, exist_ok=True)
    write_json(ctx.out / "detection_results.json", data)
    (ctx.out / "detection_results.md").write_text(markdown(data))
    (ctx.out / "readme_table.md").write_text(readme_text(data))
    print(markdown(data))
    print(f"wrote {ctx.out / 'detection_results.json'}, detection_results.md, readme_table.md"
          f"{'' if complete else ' (incomplete: rerun to continue)'}", flush=True)
    return data


# ------------------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    ctx, t_start = resumable.start(args, Context, fail)
    steps: list[tuple[str, Callable[[], None]]] = []
    if args.stage in ("train", "all"):
        steps.append(("backbone", lambda: unit_backbone(ctx)))
    for detector in args.detectors:  # per detector: its trainings, then its timings
        points = [(n, d, p) for n, d, p in planned(args) if d == detector]
        if args.stage in ("train", "all"):
            steps += [(n, lambda n=n, d=d, p=p: unit_detector(ctx, n, d, p)) for n, d, p in points]
        if args.stage in ("time", "all"):
            steps += [(f"timing {n}", lambda n=n, d=d, p=p: unit_time(ctx, n, d, p)) for n, d, p in points]
    return resumable.run_units(ctx, steps, stage_report, t_start)


if __name__ == "__main__":
    sys.exit(main())
