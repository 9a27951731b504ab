"""The paper's main figure, measured: top-1 against GPU latency (and FLOPs) for static ResNets, LAUD-ResNet-101 of every
paradigm and channel-pruned ResNet-101 (Torch-Pruning), all trained here on the same data with one recipe.

Every network is trained on ``fashion-canvas`` (128 px, 2 clutter fragments, item scale 0.3-0.6; the same train
subset and the same 5000 validation images for all):

* **static**: torchvision's ResNet-18/34/50/101 from scratch with one recipe (``RECIPE["static"]``: SGD Nesterov,
  per-iteration cosine lr with warm-up, label smoothing, zero-init residual branches, bf16 autocast, channels_last, the
  same epochs and batch). ResNet-50/101 are laudnet's ``laud_resnet50/101`` with paradigm ``static`` (torchvision's
  architecture) trained by ``laudnet.train.loop.train``; ResNet-18/34 (not laudnet models) by `train_plain`, the same
  loop reduced to a static network (laudnet's optimiser, lr schedule, loss and data loader);
* **laud**: LAUD-ResNet-101 for each paradigm (spatial and channel at their default granularity, layer) at FLOPs
  targets 0.3 / 0.5 / 0.7, fine-tuned by ``laudnet.train.loop.train(mode="dynamic", init=<static ResNet-101>)`` with the
  static network as the distillation teacher (``RECIPE["finetune"]`` and ``RECIPE["laud"]``);
* **pruned**: the static ResNet-101 pruned by Torch-Pruning (global channel pruning, group L2-magnitude importance,
  the classifier kept, channels rounded to multiples of 8) in steps until its FLOPs (``tp.utils.count_ops_and_params``)
  are at 0.7 / 0.5 / 0.3 of the dense network, then fine-tuned with the LAUD networks' budget (epochs, lr) and the same
  teacher and KD (`train_plain`).

Then, on the GPU, in bf16 at batch 128 and batch 1 on real validation images: static and pruned networks in their
strongest static form — BN folded into the convs, the stem on laudnet's Triton kernel, compiled whole
(``torch.compile(dynamic=False)``) and replayed as one CUDA graph (for ResNet-50/101 both laudnet's folded network and
the folded torchvision network, the faster kept); LAUD networks in the form ``laudnet.deploy.deploy_fastest`` chooses
on a real validation batch (the tuned sparse network or the dense-masked network compiled whole, each a CUDA graph),
then timed on several real batches (median). Top-1 is each network's training-form eval on the whole validation set
(bf16 autocast, as in training); FLOPs are multiply-accumulates per image (laudnet's convention: convs, linears,
pools; a LAUD network's mean dynamic FLOPs with its maskers, from laudnet's eval).

    # here, once: the wheel and a copy of the data, in folders git ignores (.git/info/exclude: /.whl/ and /.data/)
    python -m pip download --no-deps -d .whl torch-pruning==1.6.1
    mkdir -p .data && cp -r /usr/share/datasets/fashion-mnist .data/
    # on the GPU machine (carry .whl and .data), up to three times:
    python -m pip install -q --no-deps .whl/torch_pruning-1.6.1-py3-none-any.whl   # the GPU machine lacks it
    PYTHONPATH=$PWD python benchmarks/pareto.py --data-root .data/fashion-mnist --out runs/pareto \
        --commit <hash> --budget-minutes 8.2 --no-progress
    cp runs/pareto/{pareto.json,pareto.md,pareto_latency.png,pareto_flops.png,units.json} $OUT/

One command, run up to three times back to back on the same machine (its files stay between calls only while it is
held): ``--budget-minutes`` makes each call stop before a unit of work that would not fit (a laudnet training run in
progress at the deadline saves its ``last.pt`` and stops), with exit status 3; the next call skips every unit whose
outputs exist under ``--out`` and resumes a laudnet run from its ``last.pt``. Exit status 0: every point trained and
timed; 1: a unit failed (its traceback is printed, ``pareto.json``'s ``errors`` names it, every other unit still ran;
a rerun retries it); 2: bad input (one line). Stages run in the order ``static`` → ``dynamic`` → ``prune`` → ``time``
→ ``report``; ``--stage`` runs one (``train`` = the first three, ``all`` the default), e.g. ``--stage train`` twice,
then ``--stage time``. ``pareto.json``, ``pareto.md`` and the plots are rewritten at the end of every call with what
exists so far (``"complete": false`` until every point is trained and timed). Fashion-MNIST's four IDX files may lie
in any folder (``.data/fashion-mnist``, an ignored copy carried to the GPU machine). The timing stage may span two
calls (processes) on the same machine: each point records its device, process and time (``timing_pid``, ``timed_at``).

GPU time, estimated from first principles for an H100 (bf16, channels_last, batch 128, 128 px; 12,800 training
images, 6 static epochs, 2 fine-tuning epochs). Training: ResNet-101 costs 3 × 2.55 GMAC per image; at ~20 TMAC/s
achieved (what a ResNet-50 reached at 224 px on the H200 in `ddp_train.py`, 2,000 images/s) that is ≈ 2,600 images/s
(ResNet-18/34/50 ≈ 9,000 / 5,500 / 4,500); a LAUD fine-tune adds the teacher's forward, the masked computation and the
maskers (≈ 1,700 images/s; 1,276 for LAUD-ResNet-50 at 224 px there), a pruned one costs ∝ its FLOPs plus the teacher.
Each run adds ~15 s (loader workers, cuDNN autotuning, validating 5,000 images, checkpoints). Rendering canvases is no
limit: 0.36 ms per 128-px image on one (shared) core, ≈ 30,000 images/s with 12 workers. Timing: one
`torch.compile` per network, form and batch size (whole ResNet-101 ≈ 20 s, `bench_fastest`'s 22 s at batch 1 on the
H200); `deploy_fastest` compiles the dense-masked network whole and the sparse network's blocks at their shapes (the
blocks' compiled function is shared by every network of the process, so later networks mostly re-trace); replays
are ~1 s per network.

    static   4 runs (76,800 images each)                          ~2 min
    dynamic  9 LAUD fine-tunes (25,600 images each)               ~4.5 min
    prune    pruning (~40 s) + 3 fine-tunes                       ~2 min
    time     static 4 nets (ResNet-50/101 in 2 forms) ~3 min, pruned 3 ~2.5 min, LAUD 9 × 2 batch sizes ~7.5 min
    total    ~22 min + ~20 s start-up per call: 3 calls of --budget-minutes 8.2 (24.6 min at most)

``units.json`` records each unit's seconds against its estimate; the budget scales later estimates by the ratio.

``--smoke`` runs the whole flow on the CPU in about 30 s (32 px canvases, 8 images, one step per run, a ResNet-50 base
instead of ResNet-101, ResNet-18/50 as the static family, one target, batch sizes 2 and 1, eager fp32 timing with
``time.perf_counter``, no compile or CUDA graphs): it checks the script, not the numbers
(``tests/benchmarks/test_pareto.py``).

Output (``--out``): ``pareto.json``, ``pareto.md`` (the table the report prints), ``pareto_latency.png`` (top-1 against
latency, one panel per batch size), ``pareto_flops.png`` (top-1 against FLOPs); ``runs/<name>/`` (laudnet runs:
``best.pt``, ``last.pt``, ``metrics.csv``; the torchvision and pruned networks: ``model.pt``; each ``result.json``),
``time/<name>.json``, ``units.json`` (seconds taken by each unit against its estimate).

``pareto.json``::

    {"complete": bool, "meta": {"device", "devices", "torch", "torchvision", "triton", "torch_pruning", "python",
              "commit", "recipe", "batches", "image_size", "train_subset", "val_subset", "static_epochs",
              "finetune_epochs", "batch_size", "base", "base_dense_mmacs", "pruned_loss", "dtype", "args"},
     "points": [{"name", "family": "static" | "laud" | "pruned", "arch", "paradigm", "target", "top1", "top5",
                 "flops_mmacs" (MACs per image / 1e6), "flops_ratio" (against the base's dense FLOPs),
                 "params_m", "latency_b128_ms", "latency_b1_ms" (one key per batch size, null if not timed),
                 "form_b128", "form_b1" (LAUD: the form deploy_fastest chose; static/pruned: the static form kept),
                 "forms_ms": {batch: {form: ms}} (LAUD: deploy_fastest's times of both forms on the example batch;
                 static: each static form's median), "per_batch_ms": {batch: [ms, ...]}, "agreement": {batch: fraction
                 of deployed predictions equal to the training form's}, "device", "torch", "commit", "train": {...},
                 "laud": {"flops_ratio_own", "block_rates"} | "pruned": {"tp_flops_ratio", "widths", ...}}],
     "gains": [{"name", "batch", "latency_ms", "top1", "static_top1_at_latency", "gain_vs_static",
                "pruned_top1_at_latency", "gain_vs_pruned"}],
     "errors": {unit: "Type: message"}}
"""

from __future__ import annotations

import argparse
import copy
import gc
import math
import os
import platform
import signal
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, __file__.rsplit("/", 1)[0])
import resumable  # noqa: E402
from resumable import (  # noqa: E402
    BudgetReached,
    InputError,
    UnitContext,
    device_name,
    read_json,
    trained_and_timed,
    write_json,
)

# One recipe for every network. Keys are `laudnet.train.config.TrainConfig` fields (but "granularity" and "prune");
# the CLI sets only the budget (epochs, subsets, batch). Another engineer tunes the masker recipe in "laud".
RECIPE: dict[str, Any] = {
    # the data: the same fashion-canvas split for every network
    "data": {"dataset": "fashion-canvas", "canvas_clutter": 2, "canvas_scale_min": 0.3, "canvas_scale_max": 0.6,
             "seed": 0},
    # static training from scratch (ResNet-18/34/50/101)
    "static": {"lr_base": 0.2, "warmup_epochs": 0.3, "label_smoothing": 0.1, "weight_decay": 5e-5, "momentum": 0.9,
               "nesterov": True, "zero_init_residual": True},
    # fine-tuning from the static base with it as the teacher: every LAUD and every pruned network
    "finetune": {"lr_base": 0.05, "warmup_epochs": 0.0, "label_smoothing": 0.1, "weight_decay": 5e-5,
                 "momentum": 0.9, "nesterov": True, "kd_alpha": 0.5, "kd_temperature": 4.0},
    # the LAUD maskers and their objective
    "laud": {"masker_lr_mult": 5.0, "t0": 5.0, "t_last": 0.1, "temp_schedule": "exp", "lambda_flops": 10.0,
             "bounds_fraction": 0.33, "masker_norm": True, "noise_schedule": "linear"},
    # per paradigm (None: the model's default, 4-4-2-1 spatial, 8-8-8-8 channel)
    "granularity": {"spatial": None, "channel": None},
    # torch-pruning: global channel pruning in steps (--prune-step of the channels) until the FLOPs ratio is within
    # `tolerance` of each target; no layer loses more than `max_pruning_ratio` of its channels
    "prune": {"importance": "group-magnitude-l2", "global_pruning": True, "max_pruning_ratio": 0.8, "round_to": 8,
              "tolerance": 0.02},
}

# The budget: the full run (an H100, ~21 min) and --smoke (the CPU, ~1 min). A flag overrides either.
FULL = dict(image_size=128, train_subset=12800, val_subset=5000, static_epochs=6, finetune_epochs=2, batch_size=128,
            workers=12, max_steps_per_epoch=None, static_nets=["resnet18", "resnet34", "resnet50", "resnet101"],
            base="resnet101", paradigms=["spatial", "channel", "layer"], targets=[0.3, 0.5, 0.7],
            prune_targets=[0.3, 0.5, 0.7], prune_step=0.02, batches=[128, 1], time_batches=4, time_singles=16,
            repeats=20)
SMOKE = dict(image_size=32, train_subset=8, val_subset=8, static_epochs=1, finetune_epochs=1, batch_size=4,
             workers=0, max_steps_per_epoch=1, static_nets=["resnet18", "resnet50"], base="resnet50",
             paradigms=["spatial", "channel", "layer"], targets=[0.5], prune_targets=[0.5], prune_step=0.1,
             batches=[2, 1], time_batches=1, time_singles=1, repeats=1)
STATIC_NETS = ("resnet18", "resnet34", "resnet50", "resnet101")
LAUD_MODELS = {"resnet50": "laud_resnet50", "resnet101": "laud_resnet101"}  # trained by laudnet's loop
PARADIGMS = ("spatial", "channel", "layer")
STAGES = ("static", "dynamic", "prune", "train", "time", "report", "all")

# Training throughput on an H100 at 128 px, batch 128, bf16 (images/s; first principles, see the docstring): only for
# the budget's estimates, corrected by the measured/estimated ratio of the units already done.
TRAIN_RATE = {"resnet18": 9000, "resnet34": 5500, "resnet50": 4500, "resnet101": 2600}
LAUD_SLOWDOWN = 1.55  # the teacher's forward, masked computation and maskers
UNIT_OVERHEAD_S = 15
TIME_S = {"resnet18": 8, "resnet34": 11, "resnet50": 14, "resnet101": 22}  # one compile + timing, per form and batch
LAUD_TIME_S = 25  # deploy_fastest (two forms; later networks reuse compiled blocks) + timing, per batch size


def fail(message: str) -> None:
    resumable.fail("pareto.py", message)


# ------------------------------------------------------------------------------------------------------ arguments


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data-root", default="/usr/share/datasets/fashion-mnist", help="Fashion-MNIST IDX folder")
    p.add_argument("--out", required=True, help="output folder (runs, timings, pareto.json, plots)")
    p.add_argument("--commit", default="unknown")
    p.add_argument("--stage", choices=STAGES, default="all")
    p.add_argument("--budget-minutes", type=float, default=None,
                   help="stop before a unit of work that would not fit (exit 3); rerun to continue")
    p.add_argument("--smoke", action="store_true", help="the whole flow on the CPU in about a minute")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    g = p.add_argument_group("budget (defaults: the full run, or --smoke's)")
    g.add_argument("--image-size", type=int)
    g.add_argument("--train-subset", type=int)
    g.add_argument("--val-subset", type=int)
    g.add_argument("--static-epochs", type=int)
    g.add_argument("--finetune-epochs", type=int, help="epochs of every LAUD and pruned fine-tune")
    g.add_argument("--batch-size", type=int)
    g.add_argument("--workers", type=int, help="data loader processes (16-core GPU machine: 12)")
    g.add_argument("--max-steps-per-epoch", type=int)
    g = p.add_argument_group("networks")
    g.add_argument("--static-nets", nargs="+", choices=STATIC_NETS)
    g.add_argument("--base", choices=tuple(LAUD_MODELS), help="the LAUD and pruned networks' base (a static net)")
    g.add_argument("--paradigms", nargs="+", choices=PARADIGMS)
    g.add_argument("--targets", nargs="+", type=float, help="LAUD FLOPs targets, in (0, 1)")
    g.add_argument("--prune-targets", nargs="+", type=float, help="pruned FLOPs ratios, in (0, 1)")
    g.add_argument("--prune-step", type=float, help="channel ratio pruned per step (0.02: FLOPs steps <= 0.03)")
    g = p.add_argument_group("timing")
    g.add_argument("--batches", nargs="+", type=int, help="batch sizes (default 128 1)")
    g.add_argument("--time-batches", type=int, help="real validation batches timed per batch size > 1")
    g.add_argument("--time-singles", type=int, help="real validation images timed at batch 1")
    g.add_argument("--repeats", type=int, help="timed replays per batch")
    args = p.parse_args(argv)
    for key, value in (SMOKE if args.smoke else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, copy.deepcopy(value))
    try:
        check_args(args)
    except InputError as e:
        fail(str(e))
    return args


def check_args(args: argparse.Namespace) -> None:
    for t in args.prune_targets:
        if not 0 < t < 1:
            raise InputError(f"a pruning ratio (FLOPs of the pruned network / dense) must be in (0, 1), got {t}")
    for t in args.targets:
        if not 0 < t < 1:
            raise InputError(f"a LAUD FLOPs target must be in (0, 1), got {t}")
    if args.base not in args.static_nets:
        raise InputError(f"the base {args.base} must be one of --static-nets ({' '.join(args.static_nets)})")
    for name in ("image_size", "train_subset", "val_subset", "static_epochs", "finetune_epochs", "batch_size",
                 "time_batches", "time_singles", "repeats"):
        if getattr(args, name) < 1:
            raise InputError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not 0 < args.prune_step < 1:
        raise InputError(f"--prune-step must be in (0, 1), got {args.prune_step}")
    if args.workers < 0 or any(b < 1 for b in args.batches):
        raise InputError("--workers must be >= 0 and every batch size >= 1")
    resumable.check_budget_minutes(args.budget_minutes)
    resumable.check_data_root(args.data_root)


# ------------------------------------------------------------------------------------------------------- context


@dataclass
class Context(UnitContext):
    """resumable's context, and: CUDA memory freed after every unit (done or failed), training stopped in this
    process at the deadline (`stop_at_deadline`), the timing dtype."""

    stopped: list[str] = field(default_factory=list)

    def after_error(self) -> None:
        free_cuda()

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.cuda else torch.float32

    def record(self, name: str, kind: str, seconds: float, estimate_s: float) -> None:
        free_cuda()  # loader workers, CUDA graphs and caching-allocator blocks of the unit just done
        super().record(name, kind, seconds, estimate_s)

    def stop_at_deadline(self, state) -> None:
        """laudnet's on_step hook: past the deadline, SIGTERM to ourselves, so the loop saves last.pt and returns."""
        if self.deadline is not None and time.time() > self.deadline and not self.stopped:
            self.stopped.append("sigterm")
            os.kill(os.getpid(), signal.SIGTERM)


def fmt_target(t: float) -> str:
    return f"{t:g}"


def laud_name(base: str, paradigm: str, target: float) -> str:
    return f"laud-{base}-{paradigm}-t{fmt_target(target)}"


def pruned_name(base: str, target: float) -> str:
    return f"pruned-{base}-r{fmt_target(target)}"


# ----------------------------------------------------------------------------------------------------- configs


def train_config(ctx: Context, part: str, name: str, **extra):
    """The TrainConfig of one run: the data, the recipe's `part` ("static" or "finetune"), the budget, `extra`."""
    from laudnet.train.config import TrainConfig

    a = ctx.args
    finetune = part == "finetune"
    values = dict(
        RECIPE["data"], **RECIPE[part], data_root=a.data_root, image_size=a.image_size, train_subset=a.train_subset,
        val_subset=a.val_subset, workers=a.workers, batch_size=a.batch_size,
        epochs=a.finetune_epochs if finetune else a.static_epochs, max_steps_per_epoch=a.max_steps_per_epoch,
        eval_every=a.finetune_epochs if finetune else a.static_epochs,  # one validation, at the end: best = last
        output=str(ctx.out / "runs"), run_name=name, device=str(ctx.device), progress=a.progress,
    )
    values.update(extra)
    return TrainConfig(**values)


def train_estimate(ctx: Context, arch: str, epochs: int, slowdown: float = 1.0) -> float:
    a = ctx.args
    images = min(a.train_subset, 60000) * epochs
    if a.max_steps_per_epoch is not None:
        images = min(images, a.max_steps_per_epoch * a.batch_size * epochs)
    rate = TRAIN_RATE[arch] * (128 / a.image_size) ** 2 / slowdown
    return UNIT_OVERHEAD_S + images / rate


# --------------------------------------------------------------------------------------------------- networks


def count_macs(model: nn.Module, image_size: int) -> float:
    """Multiply-accumulates per image of a static network (laudnet's convention: convs and linears; a k×k window pool
    k² per output element, a global pool one per input element); equals `DynamicModel.dense_flops` for laudnet's
    static ResNets."""
    total = 0

    def hook(m, inputs, out):
        nonlocal total
        per_image = out.numel() // out.shape[0]
        if isinstance(m, nn.Conv2d):
            total += per_image * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
        elif isinstance(m, nn.Linear):
            total += per_image * m.in_features
        elif isinstance(m, nn.MaxPool2d):
            k = m.kernel_size if isinstance(m.kernel_size, int) else m.kernel_size[0]
            total += per_image * k * k
        elif isinstance(m, nn.AdaptiveAvgPool2d):
            total += inputs[0].numel() // inputs[0].shape[0]

    kinds = (nn.Conv2d, nn.Linear, nn.MaxPool2d, nn.AdaptiveAvgPool2d)
    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, kinds)]
    was_training = model.training
    param = next(model.parameters())
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, 3, image_size, image_size, device=param.device, dtype=param.dtype))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return float(total)


def torchvision_resnet(arch: str, num_classes: int, **kw) -> nn.Module:
    import torchvision

    return getattr(torchvision.models, arch)(num_classes=num_classes, **kw)


def torchvision_from_laud(checkpoint: Path, arch: str) -> nn.Module:
    """torchvision's network holding a static laudnet checkpoint's weights (the same architecture and keys)."""
    from laudnet.train.cli import load_trained

    model, state = load_trained(checkpoint)
    tv = torchvision_resnet(arch, state["num_classes"])
    tv.load_state_dict({k: v for k, v in model.state_dict().items() if "masker" not in k})
    return tv.eval()


class FoldedTorchvision(nn.Module):
    """A torchvision ResNet (any widths: pruned ones too) in inference form, as laudnet's folded static network: BN
    folded into every conv, the stem's conv + ReLU on laudnet's Triton stem kernel (`stem_kernel`, on a GPU),
    channels_last, `dtype`; takes the float input and casts it, as `DeployedModel` does."""

    def __init__(self, model: nn.Module, dtype: torch.dtype, stem_kernel: bool) -> None:
        from laudnet.deploy.fold import fold_conv_bn
        from laudnet.deploy.stem import TritonStemConv

        super().__init__()
        m = copy.deepcopy(model).eval()
        m.conv1, m.bn1 = fold_conv_bn(m.conv1, m.bn1), nn.Identity()
        if stem_kernel:  # torchvision's top-level ReLU serves the stem only (each block has its own)
            m.conv1, m.relu = TritonStemConv(m.conv1), nn.Identity()
        for layer in (m.layer1, m.layer2, m.layer3, m.layer4):
            for block in layer:
                for i in (1, 2, 3):
                    if hasattr(block, f"conv{i}"):
                        setattr(block, f"conv{i}", fold_conv_bn(getattr(block, f"conv{i}"), getattr(block, f"bn{i}")))
                        setattr(block, f"bn{i}", nn.Identity())
                if block.downsample is not None:
                    block.downsample = fold_conv_bn(block.downsample[0], block.downsample[1])
        m.to(dtype)
        for mod in m.modules():  # the stem kernel's packed weight keeps its layout
            if isinstance(mod, nn.Conv2d):
                mod.to(memory_format=torch.channels_last)
        self.net, self.dtype = m, dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.to(dtype=self.dtype, memory_format=torch.channels_last))


# -------------------------------------------------------------------------------------------------- training


def evaluate_plain(model: nn.Module, val_set, cfg, device: torch.device) -> dict:
    """Top-1/top-5 of a torchvision network on the validation set, as laudnet's `evaluate` computes them."""
    from laudnet.data import build_loader

    loader = build_loader(val_set, cfg.val_batch_size or max(1, int(cfg.batch_size * 1.5)), train=False,
                          seed=cfg.seed, num_workers=cfg.workers, pin_memory=device.type == "cuda")
    model.eval()
    n = c1 = c5 = 0
    with torch.no_grad():
        for images, labels, *_ in loader:
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            if device.type == "cuda":
                images = images.contiguous(memory_format=torch.channels_last)
            with autocast(device, cfg.amp):
                logits = model(images).float()
            hits = logits.topk(min(5, logits.shape[1]), 1).indices.eq(labels[:, None])
            c1 += int(hits[:, 0].sum())
            c5 += int(hits.any(1).sum())
            n += len(labels)
    return dict(top1=100.0 * c1 / n, top5=100.0 * c5 / n, num_samples=n)


def autocast(device: torch.device, enabled: bool):
    import contextlib

    return torch.autocast("cuda", dtype=torch.bfloat16) if enabled and device.type == "cuda" \
        else contextlib.nullcontext()


def train_plain(model: nn.Module, cfg, device: torch.device, teacher: nn.Module | None = None) -> dict:
    """laudnet's training loop reduced to a static torchvision network: the same optimiser (`build_optimizer`),
    per-iteration lr schedule (`lr_factor`), objective (`LaudLoss`: CE with label smoothing + α·KD from `teacher`),
    data loader, bf16 autocast and channels_last. No checkpoints in between: a unit is redone if interrupted."""
    from tqdm.auto import tqdm

    from laudnet.data import build_loader
    from laudnet.train.loop import build_datasets, build_optimizer, lr_factor
    from laudnet.train.losses import LaudLoss

    (train_set, val_set), _ = build_datasets(cfg, ("train", "val"))
    cuda = device.type == "cuda"
    model.to(device)
    if teacher is not None:
        teacher.to(device).eval().requires_grad_(False)
    if cuda and cfg.channels_last:
        model.to(memory_format=torch.channels_last)
        if teacher is not None:
            teacher.to(memory_format=torch.channels_last)
    loader = build_loader(train_set, cfg.batch_size, train=True, seed=cfg.seed, num_workers=cfg.workers,
                          pin_memory=cuda)
    steps = len(loader.sampler) // cfg.batch_size
    if cfg.max_steps_per_epoch is not None:
        steps = min(steps, cfg.max_steps_per_epoch)
    if steps < 1:
        raise ValueError(f"the training set ({len(train_set)} images) is smaller than one batch ({cfg.batch_size})")
    total, warmup = steps * cfg.epochs, round(cfg.warmup_epochs * steps)
    lr = cfg.effective_lr()
    optimizer = build_optimizer(cfg, model, lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total, warmup, cfg.min_lr / lr))
    criterion = LaudLoss(cfg.target, cfg.epochs, lambda_flops=cfg.lambda_flops,
                         alpha_kd=cfg.kd_alpha if teacher is not None else 0.0, kd_temperature=cfg.kd_temperature,
                         bounds_fraction=cfg.bounds_fraction, label_smoothing=cfg.label_smoothing)
    t0, images_seen, losses = time.time(), 0, []
    for epoch in range(cfg.epochs):
        loader.sampler.set_epoch(epoch)
        model.train()
        batches = iter(loader)
        loss_sum = torch.zeros((), device=device)
        for _ in tqdm(range(steps), desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False, disable=not cfg.progress):
            images, labels = next(batches)[:2]
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            if cuda and cfg.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            optimizer.zero_grad(set_to_none=True)
            with autocast(device, cfg.amp):
                logits = model(images)
                teacher_logits = None
                if teacher is not None:
                    with torch.no_grad():
                        teacher_logits = teacher(images).float()
            out = criterion(logits.float(), labels, model, epoch=epoch, teacher_logits=teacher_logits)
            out["loss"].backward()
            if cfg.clip_grad is not None:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
            optimizer.step()
            scheduler.step()
            loss_sum += out["loss"].detach()
            images_seen += len(labels)
        losses.append(float(loss_sum) / steps)  # one synchronisation per epoch
        if not math.isfinite(losses[-1]):
            raise FloatingPointError(f"loss is {losses[-1]} in epoch {epoch + 1}: lower the learning rate")
        print(f"epoch {epoch + 1}/{cfg.epochs}: loss {losses[-1]:.3f}", flush=True)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.time() - t0
    ev = evaluate_plain(model, val_set, cfg, device)
    print(f"val top-1 {ev['top1']:.2f}%", flush=True)
    return dict(ev, train=dict(epochs=cfg.epochs, steps=total, images=images_seen, seconds=round(seconds, 1),
                               images_per_s=round(images_seen / max(seconds, 1e-9), 1), losses=losses,
                               lr=lr, kd=teacher is not None))


def run_laudnet(ctx: Context, name: str, cfg, estimate_s: float, **fields) -> dict:
    """One `laudnet.train.loop.train` run (resumed from its last.pt when one exists) and its result.json."""
    from laudnet.train.loop import train

    done = read_json(ctx.run_dir(name) / "result.json")
    if done is not None:
        return done
    ctx.check_budget(name, "train", estimate_s)
    print(f"== {name}: laudnet train ({cfg.mode}, {cfg.epochs} epochs, estimate {estimate_s:.0f} s)", flush=True)
    t0 = time.time()
    result = train(cfg, on_step=ctx.stop_at_deadline, log=print)
    if result.interrupted:
        raise BudgetReached(f"{name} stopped at the deadline; its last.pt resumes it")
    ev = result.last_eval
    if ev is None:  # every epoch was done by an earlier call: evaluate its final checkpoint
        ev = evaluate_laud_checkpoint(ctx, result.run_dir / "last.pt", cfg)
    rows = result.history
    model_params = sum(v.numel() for k, v in torch.load(result.run_dir / "last.pt", map_location="cpu",
                                                         weights_only=False)["model"].items()
                       if "masker" not in k and "running" not in k and "num_batches" not in k)
    out = dict(fields, name=name, top1=ev.top1, top5=ev.top5, flops_mmacs=ev.dynamic_flops / 1e6,
               dense_mmacs=ev.dense_flops / 1e6, flops_ratio_own=ev.flops_ratio, block_rates=ev.block_rates,
               params_m=model_params / 1e6, checkpoint=str(result.run_dir / "last.pt"),
               train=dict(epochs=cfg.epochs, steps=result.global_step, seconds=round(time.time() - t0, 1),
                          images_per_s=statistics.median(r["train_images_per_s"] for r in rows) if rows else None,
                          lr=cfg.effective_lr(), kd=cfg.mode == "dynamic" and cfg.kd_alpha > 0))
    write_json(ctx.run_dir(name) / "result.json", out)
    ctx.record(name, "train", time.time() - t0, estimate_s)
    return out


def evaluate_laud_checkpoint(ctx: Context, path: Path, cfg):
    from laudnet.data import build_loader
    from laudnet.train.cli import load_trained
    from laudnet.train.loop import build_datasets, evaluate

    model, _ = load_trained(path)
    (val_set,), _ = build_datasets(cfg, ("val",))
    loader = build_loader(val_set, max(1, int(cfg.batch_size * 1.5)), train=False, num_workers=cfg.workers)
    return evaluate(model.to(ctx.device), loader, ctx.device, amp=cfg.amp, channels_last=cfg.channels_last)


def stage_static(ctx: Context) -> None:
    a = ctx.args
    order = [a.base] + [n for n in reversed(STATIC_NETS) if n in a.static_nets and n != a.base]  # the base first
    for arch in order:
        ctx.guard(arch, partial(train_static, ctx, arch))


def train_static(ctx: Context, arch: str) -> None:
    from laudnet.data import num_classes

    a = ctx.args
    estimate = train_estimate(ctx, arch, a.static_epochs)
    info = dict(family="static", arch=arch, paradigm="static", target=None)
    if arch in LAUD_MODELS:
        cfg = train_config(ctx, "static", arch, model=LAUD_MODELS[arch], mode="static", resume="auto")
        run_laudnet(ctx, arch, cfg, estimate, **info)
        return
    run_dir = ctx.run_dir(arch)
    if not (run_dir / "result.json").is_file():
        ctx.check_budget(arch, "train", estimate)
        print(f"== {arch}: torchvision, static ({a.static_epochs} epochs, estimate {estimate:.0f} s)", flush=True)
        t0 = time.time()
        cfg = train_config(ctx, "static", arch)
        torch.manual_seed(cfg.seed)
        model = torchvision_resnet(arch, num_classes(cfg.dataset), zero_init_residual=cfg.zero_init_residual)
        res = train_plain(model, cfg, ctx.device)
        run_dir.mkdir(parents=True, exist_ok=True)
        torch.save(model.cpu().state_dict(), run_dir / "model.pt")
        macs = count_macs(model, a.image_size)
        out = dict(info, name=arch, **res, flops_mmacs=macs / 1e6, dense_mmacs=macs / 1e6,
                   params_m=sum(p.numel() for p in model.parameters()) / 1e6, checkpoint=str(run_dir / "model.pt"))
        write_json(run_dir / "result.json", out)
        ctx.record(arch, "train", time.time() - t0, estimate)


def base_checkpoint(ctx: Context) -> Path:
    path = ctx.run_dir(ctx.args.base) / "best.pt"
    if not path.is_file():
        raise RuntimeError(f"the static {ctx.args.base} ({path}) is not trained: run --stage static first")
    return path


def stage_dynamic(ctx: Context) -> None:
    a = ctx.args
    init = base_checkpoint(ctx)
    for paradigm in a.paradigms:
        for target in a.targets:
            name = laud_name(a.base, paradigm, target)
            granularity = RECIPE["granularity"].get(paradigm)
            cfg = train_config(ctx, "finetune", name, **RECIPE["laud"], model=LAUD_MODELS[a.base], mode="dynamic",
                               paradigm=paradigm, target=target, init=str(init), resume="auto",
                               granularity=granularity)
            estimate = train_estimate(ctx, a.base, a.finetune_epochs, LAUD_SLOWDOWN)
            ctx.guard(name, partial(run_laudnet, ctx, name, cfg, estimate, family="laud", arch=a.base,
                                    paradigm=paradigm, target=target))


def importance(kind: str):
    import torch_pruning as tp

    if kind == "group-magnitude-l2":
        return tp.importance.GroupMagnitudeImportance(p=2)
    if kind == "group-magnitude-l1":
        return tp.importance.GroupMagnitudeImportance(p=1)
    raise ValueError(f"unknown importance {kind!r} in RECIPE['prune']")


def prune_snapshots(ctx: Context, base: nn.Module, targets: list[float]) -> None:
    """Prune `base` in steps until each FLOPs target (largest first), saving the network at each as pruned.pt."""
    import torch_pruning as tp

    opts = RECIPE["prune"]
    size = ctx.args.image_size
    model = copy.deepcopy(base).to(ctx.device).eval()
    example = torch.randn(1, 3, size, size, device=ctx.device)
    final = 0.95  # the channel ratio the iterative schedule heads for; the targets are reached well before
    steps = max(1, round(final / ctx.args.prune_step))
    pruner = tp.pruner.MetaPruner(model, example, importance=importance(opts["importance"]),
                                  global_pruning=opts["global_pruning"], pruning_ratio=final, iterative_steps=steps,
                                  max_pruning_ratio=opts["max_pruning_ratio"], ignored_layers=[model.fc],
                                  round_to=opts["round_to"])
    dense = tp.utils.count_ops_and_params(model, example)[0]
    pending = sorted(targets, reverse=True)
    for step in range(steps):
        pruner.step()
        ratio = tp.utils.count_ops_and_params(model, example)[0] / dense
        while pending and ratio <= pending[0] + opts["tolerance"] / 2:
            target = pending.pop(0)
            run_dir = ctx.run_dir(pruned_name(ctx.args.base, target))
            run_dir.mkdir(parents=True, exist_ok=True)
            torch.save(copy.deepcopy(model).cpu(), run_dir / "pruned.pt")
            info = dict(target=target, tp_flops_ratio=ratio, steps=step + 1, channel_ratio=(step + 1) * final / steps,
                        off_target=abs(ratio - target) > opts["tolerance"], **opts)
            write_json(run_dir / "pruning.json", info)
            print(f"pruned to FLOPs ratio {ratio:.3f} (target {target}) after {step + 1} steps", flush=True)
        if not pending:
            return
    raise RuntimeError(f"pruning did not reach FLOPs ratios {pending} (max_pruning_ratio "
                       f"{opts['max_pruning_ratio']} too low?)")


def stage_prune(ctx: Context) -> None:
    a = ctx.args
    names = {t: pruned_name(a.base, t) for t in a.prune_targets}
    todo = [t for t, n in names.items() if not (ctx.run_dir(n) / "result.json").is_file()]
    if not todo:
        return
    import torch_pruning  # noqa: F401  (a missing package fails here, before any work)

    path = base_checkpoint(ctx)
    base = torchvision_from_laud(path, a.base)
    missing = [t for t in todo if not (ctx.run_dir(names[t]) / "pruned.pt").is_file()]
    if missing:
        ctx.check_budget("pruning", "train", 40)
        t0 = time.time()
        prune_snapshots(ctx, base, missing)
        ctx.record("pruning", "train", time.time() - t0, 40)
    for target in sorted(todo, reverse=True):
        ctx.guard(names[target], partial(finetune_pruned, ctx, base, target, names[target]))


def finetune_pruned(ctx: Context, base: nn.Module, target: float, name: str) -> None:
    a = ctx.args
    run_dir = ctx.run_dir(name)
    dense = count_macs(base, a.image_size)
    estimate = train_estimate(ctx, a.base, a.finetune_epochs, slowdown=1.25 * (target + 0.35))
    ctx.check_budget(name, "train", estimate)
    print(f"== {name}: fine-tune ({a.finetune_epochs} epochs, KD from the static {a.base}, estimate "
          f"{estimate:.0f} s)", flush=True)
    t0 = time.time()
    model = torch.load(run_dir / "pruned.pt", map_location="cpu", weights_only=False)
    cfg = train_config(ctx, "finetune", name)
    teacher = copy.deepcopy(base) if cfg.kd_alpha > 0 else None
    res = train_plain(model, cfg, ctx.device, teacher=teacher)
    torch.save(model.cpu(), run_dir / "model.pt")
    macs = count_macs(model, a.image_size)
    widths = [b.conv2.out_channels for layer in (model.layer1, model.layer2, model.layer3, model.layer4)
              for b in layer]
    out = dict(name=name, family="pruned", arch=a.base, paradigm="pruned", target=target, **res,
               flops_mmacs=macs / 1e6, dense_mmacs=dense / 1e6,
               params_m=sum(p.numel() for p in model.parameters()) / 1e6, checkpoint=str(run_dir / "model.pt"),
               pruned=dict(read_json(run_dir / "pruning.json"), flops_ratio=macs / dense, widths=widths,
                           stem=model.conv1.out_channels))
    write_json(run_dir / "result.json", out)
    ctx.record(name, "train", time.time() - t0, estimate)


# ---------------------------------------------------------------------------------------------------- timing


def planned(args) -> list[str]:
    """Every point's name, in the table's order."""
    names = [n for n in STATIC_NETS if n in args.static_nets]
    names += [laud_name(args.base, p, t) for p in args.paradigms for t in args.targets]
    names += [pruned_name(args.base, t) for t in sorted(args.prune_targets, reverse=True)]
    return names


def timing_inputs(ctx: Context) -> dict[int, list[torch.Tensor]]:
    """Per batch size, the real validation batches to time on (consecutive images from the first)."""
    from laudnet.train.loop import build_datasets

    cfg = train_config(ctx, "static", "timing")
    (val_set,), _ = build_datasets(cfg, ("val",))
    out = {}
    for b in ctx.args.batches:
        count = ctx.args.time_singles if b == 1 else ctx.args.time_batches
        if b * count > len(val_set):
            count = max(1, len(val_set) // b)
        out[b] = [torch.stack([val_set[i][0] for i in range(k * b, (k + 1) * b)]) for k in range(count)]
    return out


def time_run(run, xs: list[torch.Tensor], device: torch.device, repeats: int) -> list[float]:
    """Median ms of `run` on each input: a GraphedModel is replayed (the input copied in outside the timing)."""
    from laudnet.deploy import GraphedModel
    from laudnet.timing import time_call

    per = []
    for x in xs:
        if isinstance(run, GraphedModel):
            run.static_input.copy_(x)
            fn = run.graph.replay
        else:
            def fn(x=x):
                return run(x)
        per.append(1e3 * time_call(fn, device, repeats=repeats, warmup=2 if device.type == "cuda" else 0))
    return per


def free_cuda() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def static_forms(ctx: Context, unit: dict) -> dict[str, Callable[[], nn.Module]]:
    """The static network's inference forms to compare (each an eval module taking the float input)."""
    cuda, dtype = ctx.cuda, ctx.dtype
    arch = unit["arch"]
    if unit["family"] == "pruned":
        def tv():
            return torch.load(unit["checkpoint"], map_location="cpu", weights_only=False)
    elif arch in LAUD_MODELS:
        def tv():
            return torchvision_from_laud(Path(unit["checkpoint"]), arch)
    else:
        def tv():
            state = torch.load(unit["checkpoint"], map_location="cpu")
            model = torchvision_resnet(arch, state["fc.weight"].shape[0])
            model.load_state_dict(state)
            return model
    forms = {"torchvision folded": lambda: FoldedTorchvision(tv().to(ctx.device).eval(), dtype, stem_kernel=cuda)}
    if unit["family"] == "static" and arch in LAUD_MODELS:
        def laud_folded():
            from laudnet.deploy import deploy
            from laudnet.train.cli import load_trained

            model, _ = load_trained(unit["checkpoint"])
            return deploy(model.to(ctx.device).eval(), dtype)
        forms["laudnet folded"] = laud_folded
    return forms


def time_static(ctx: Context, unit: dict, inputs: dict[int, list[torch.Tensor]]) -> dict:
    from laudnet.deploy import GraphedModel

    suffix = " whole-compile cuda-graph" if ctx.cuda else " eager"
    result: dict[str, Any] = {}
    for form, build in static_forms(ctx, unit).items():
        try:
            module = build()
            fn = torch.compile(module, dynamic=False) if ctx.cuda else module
            for b, xs in inputs.items():
                xs_dev = [x.to(ctx.device).contiguous(memory_format=torch.channels_last) for x in xs]
                t0 = time.time()
                with torch.no_grad():
                    run = GraphedModel(fn, xs_dev[0]) if ctx.cuda else fn
                    per = time_run(run, xs_dev, ctx.device, ctx.args.repeats)
                rec = result.setdefault(str(b), dict(forms_ms={}, per_batch_ms={}, build_s={}, errors={}))
                rec["forms_ms"][form + suffix] = statistics.median(per)
                rec["per_batch_ms"][form + suffix] = per
                rec["build_s"][form + suffix] = round(time.time() - t0, 1)
                del run
            del fn, module
        except Exception as e:  # one form failing leaves the other to time (and says why)
            traceback.print_exc()
            for b in inputs:
                rec = result.setdefault(str(b), dict(forms_ms={}, per_batch_ms={}, build_s={}, errors={}))
                rec["errors"][form + suffix] = f"{type(e).__name__}: {str(e)[:300]}"
        free_cuda()
    if any(not rec["forms_ms"] for rec in result.values()):
        raise RuntimeError(f"no static form could be timed: {[r['errors'] for r in result.values()]}")
    for rec in result.values():
        rec["form"] = min(rec["forms_ms"], key=rec["forms_ms"].get)
        rec["ms"] = rec["forms_ms"][rec["form"]]
        rec["per_batch_ms"] = rec["per_batch_ms"][rec["form"]]
    return result


def time_laud(ctx: Context, unit: dict, inputs: dict[int, list[torch.Tensor]]) -> dict:
    from laudnet.deploy import deploy_fastest
    from laudnet.timing import time_call
    from laudnet.train.cli import load_trained

    model, _ = load_trained(unit["checkpoint"])
    model = model.to(ctx.device).eval()
    result = {}
    for b, xs in inputs.items():
        xs_dev = [x.to(ctx.device).contiguous(memory_format=torch.channels_last) for x in xs]
        t0 = time.time()
        with torch.no_grad():
            chosen = deploy_fastest(model, xs_dev[0], ctx.dtype, compile=ctx.cuda, repeats=ctx.args.repeats,
                                    timer=time_call if ctx.cuda else partial(time_call, warmup=0))
            build_s = time.time() - t0
            per = time_run(chosen.run, xs_dev, ctx.device, ctx.args.repeats)
            agree = []
            for x in xs_dev:  # the deployed predictions against the training form's (eval mode, fp32)
                deployed = chosen(x).float().argmax(1)
                agree.append(float((deployed == model(x).argmax(1)).float().mean()))
        result[str(b)] = dict(ms=statistics.median(per), per_batch_ms=per, form=chosen.form,
                              forms_ms=chosen.times_ms, errors=chosen.errors, build_s=round(build_s, 1),
                              agreement=statistics.fmean(agree))
        del chosen
        free_cuda()
    return result


def time_estimate(ctx: Context, unit: dict) -> float:
    n = len(ctx.args.batches)
    if unit["family"] == "laud":
        return LAUD_TIME_S * n
    forms = 2 if unit["family"] == "static" and unit["arch"] in LAUD_MODELS else 1
    return TIME_S[unit["arch"]] * n * forms + 5


def stage_time(ctx: Context) -> None:
    if ctx.cuda:
        torch.backends.cudnn.benchmark = True
        cfg = torch._dynamo.config  # 16 networks x 2 batch sizes share the forward code objects' caches
        for name in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit",
                     "accumulated_cache_size_limit"):
            if hasattr(cfg, name):
                setattr(cfg, name, max(getattr(cfg, name), 1024))
        if hasattr(cfg, "fail_on_recompile_limit_hit"):  # never time an eager fallback silently
            cfg.fail_on_recompile_limit_hit = True
    inputs = None
    for name in planned(ctx.args):
        path = ctx.out / "time" / f"{name}.json"
        unit = read_json(ctx.run_dir(name) / "result.json")
        if path.is_file() or unit is None:
            continue
        estimate = time_estimate(ctx, unit)
        ctx.check_budget(f"timing {name}", "time", estimate)
        inputs = inputs if inputs is not None else timing_inputs(ctx)
        print(f"== timing {name} (estimate {estimate:.0f} s)", flush=True)
        t0 = time.time()
        timer = time_laud if unit["family"] == "laud" else time_static
        batches = ctx.guard(f"timing {name}", partial(timer, ctx, unit, inputs))
        if batches is None:
            continue
        for b, rec in batches.items():
            forms = ", ".join(f"{k} {v:.3f}" for k, v in rec["forms_ms"].items())
            print(f"   batch {b}: {rec['ms']:.3f} ms ({rec['form']}; {forms})", flush=True)
        write_json(path, dict(name=name, device=device_name(ctx.device), torch=torch.__version__,
                              commit=ctx.args.commit, dtype=str(ctx.dtype).removeprefix("torch."),
                              pid=os.getpid(), timed_at=time.strftime("%Y-%m-%d %H:%M:%S"), batches=batches))
        ctx.record(f"timing {name}", "time", time.time() - t0, estimate)


# ---------------------------------------------------------------------------------------------------- report


def frontier_at(curve: list[tuple[float, float]], x: float) -> float | None:
    """Top-1 of a family's Pareto frontier (points sorted by latency, dominated ones dropped) at latency `x`: linear
    between frontier points, the best top-1 beyond the slowest, None below the fastest."""
    frontier: list[tuple[float, float]] = []
    for lx, ly in sorted(curve):
        if not frontier or ly > frontier[-1][1]:
            frontier.append((lx, ly))
    if not frontier or x < frontier[0][0]:
        return None
    for (x0, y0), (x1, y1) in zip(frontier, frontier[1:], strict=False):
        if x0 <= x <= x1:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0) if x1 > x0 else max(y0, y1)
    return frontier[-1][1]


def collect_points(ctx_out: Path, args) -> tuple[list[dict], bool]:
    base_dense = base_dense_macs(args) / 1e6
    found, complete = trained_and_timed(ctx_out, list(planned(args)))
    points = []
    for name, unit, timing in found:
        p = dict(name=name, family=unit["family"], arch=unit["arch"], paradigm=unit["paradigm"],
                 target=unit["target"], top1=unit["top1"], top5=unit.get("top5"), flops_mmacs=unit["flops_mmacs"],
                 flops_ratio=unit["flops_mmacs"] / base_dense, params_m=unit.get("params_m"), train=unit["train"])
        for b in args.batches:
            rec = (timing or {}).get("batches", {}).get(str(b))
            p[f"latency_b{b}_ms"] = rec["ms"] if rec else None
            p[f"form_b{b}"] = rec["form"] if rec else None
        if timing:
            p["forms_ms"] = {b: r["forms_ms"] for b, r in timing["batches"].items()}
            p["per_batch_ms"] = {b: r["per_batch_ms"] for b, r in timing["batches"].items()}
            p["build_s"] = {b: r["build_s"] for b, r in timing["batches"].items()}
            if unit["family"] == "laud":
                p["agreement"] = {b: r["agreement"] for b, r in timing["batches"].items()}
                p["errors"] = {b: r["errors"] for b, r in timing["batches"].items() if r["errors"]}
            p.update(device=timing["device"], torch=timing["torch"], commit=timing["commit"],
                     timed_at=timing["timed_at"], timing_pid=timing["pid"], dtype=timing["dtype"])
        if unit["family"] == "laud":
            p["laud"] = dict(flops_ratio_own=unit["flops_ratio_own"], block_rates=unit["block_rates"])
        if unit["family"] == "pruned":
            p["pruned"] = unit["pruned"]
        points.append(p)
    return points, complete


def gains(points: list[dict], batches: list[int], base: str) -> list[dict]:
    out = []
    for b in batches:
        key = f"latency_b{b}_ms"
        static = [(p[key], p["top1"]) for p in points if p["family"] == "static" and p[key] is not None]
        # the pruned curve starts at the unpruned network (ratio 1.0)
        pruned = [(p[key], p["top1"]) for p in points
                  if (p["family"] == "pruned" or p["name"] == base) and p[key] is not None]
        for p in points:
            if p["family"] != "laud" or p[key] is None:
                continue
            s, q = frontier_at(static, p[key]), frontier_at(pruned, p[key])
            out.append(dict(name=p["name"], batch=b, latency_ms=p[key], top1=p["top1"], static_top1_at_latency=s,
                            gain_vs_static=None if s is None else p["top1"] - s, pruned_top1_at_latency=q,
                            gain_vs_pruned=None if q is None else p["top1"] - q))
    return out


def markdown(data: dict) -> str:
    meta, points = data["meta"], data["points"]
    bs = meta["batches"]

    def num(v, f="{:.2f}"):
        return "–" if v is None else f.format(v)

    head = ["network", "family", "paradigm", "target", "top-1 %", "MMACs", "FLOPs ratio"]
    head += [f"batch {b} ms (form)" for b in bs]
    lines = [f"Measured on {', '.join(meta['devices']) or 'no device yet'}, torch {meta['torch']}, commit "
             f"{meta['commit']}; fashion-canvas {meta['image_size']} px, {meta['train_subset']} training images, "
             f"{meta['val_subset']} validation images; static {meta['static_epochs']} epochs, fine-tunes "
             f"{meta['finetune_epochs']} epochs; pruned networks fine-tuned with {meta['pruned_loss']}.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for p in points:
        row = [p["name"], p["family"], p["paradigm"], num(p["target"], "{:g}"), num(p["top1"]),
               num(p["flops_mmacs"], "{:.0f}"), num(p["flops_ratio"], "{:.3f}")]
        for b in bs:
            ms, form = p.get(f"latency_b{b}_ms"), p.get(f"form_b{b}")
            row.append("–" if ms is None else f"{ms:.3f} ({form})")
        lines.append("| " + " | ".join(row) + " |")
    if data["gains"]:
        lines += ["", "LAUD top-1 against the static family and the pruned curve (pruned networks and the unpruned "
                  "base) at the same measured latency (Pareto frontier, linear between points; – where the LAUD "
                  "network is faster than every network of that family):", "",
                  "| network | batch | ms | top-1 % | static at this latency | gain | pruned at this latency | gain |",
                  "|---|---|---|---|---|---|---|---|"]
        for g in data["gains"]:
            lines.append(f"| {g['name']} | {g['batch']} | {g['latency_ms']:.3f} | {g['top1']:.2f} | "
                         f"{num(g['static_top1_at_latency'])} | {num(g['gain_vs_static'], '{:+.2f}')} | "
                         f"{num(g['pruned_top1_at_latency'])} | {num(g['gain_vs_pruned'], '{:+.2f}')} |")
    if len(meta["devices"]) > 1:
        lines += ["", f"WARNING: the timings come from several devices ({', '.join(meta['devices'])})."]
    if meta["timing_processes"] > 1:
        lines += ["", f"(timed in {meta['timing_processes']} processes of the same run, one after the other)"]
    return "\n".join(lines) + "\n"


STYLE = {"static": ("black", "o", "-"), "pruned": ("tab:gray", "s", "--"), "spatial": ("tab:blue", "^", "-"),
         "channel": ("tab:orange", "D", "-"), "layer": ("tab:green", "v", "-")}


def plot(data: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points, meta = data["points"], data["meta"]
    base = meta["base"]

    def groups():
        yield "static", f"static ResNet-{'/'.join(n.removeprefix('resnet') for n in meta['static_nets'])}", \
            [p for p in points if p["family"] == "static"]
        yield "pruned", f"{base} pruned (Torch-Pruning) + unpruned", \
            [p for p in points if p["family"] == "pruned" or p["name"] == base]
        for paradigm in PARADIGMS:
            yield paradigm, f"LAUD-{base} {paradigm}", [p for p in points if p["paradigm"] == paradigm]

    def panel(ax, key: str, xlabel: str):
        for style, label, group in groups():
            pts = sorted((p[key], p["top1"], p) for p in group if p.get(key) is not None)
            if not pts:
                continue
            color, marker, line = STYLE[style]
            ax.plot([x for x, _, _ in pts], [y for _, y, _ in pts], marker=marker, linestyle=line, color=color,
                    label=label)
            for x, y, p in pts:
                tag = p["name"].removeprefix("resnet") if p["family"] == "static" else \
                    fmt_target(p["target"]) if p["target"] is not None else ""
                ax.annotate(tag, (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7, color=color)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("top-1 (%)")
        ax.grid(alpha=0.3)

    batches = meta["batches"]
    fig, axes = plt.subplots(1, len(batches), figsize=(6.5 * len(batches), 5), squeeze=False)
    for ax, b in zip(axes[0], batches, strict=True):
        panel(ax, f"latency_b{b}_ms", f"latency at batch {b} (ms, {meta['dtype']}, {meta['device']})")
        ax.set_title(f"batch {b}")
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"fashion-canvas {meta['image_size']} px: top-1 against measured latency ({meta['commit']})")
    fig.tight_layout()
    fig.savefig(out / "pareto_latency.png", dpi=120)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6.5, 5))
    panel(ax, "flops_mmacs", "MMACs per image")
    ax.legend(fontsize=8)
    ax.set_title(f"fashion-canvas {meta['image_size']} px: top-1 against FLOPs")
    fig.tight_layout()
    fig.savefig(out / "pareto_flops.png", dpi=120)
    plt.close(fig)


def versions() -> dict:
    import torchvision

    out = dict(torch=torch.__version__, torchvision=torchvision.__version__, python=platform.python_version())
    for mod in ("triton", "torch_pruning"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:  # not installed (the CPU smoke has no triton; torch-pruning is optional)
            out[mod] = None
    return out


def stage_report(ctx: Context) -> dict:
    a = ctx.args
    points, complete = collect_points(ctx.out, a)
    devices = sorted({p["device"] for p in points if p.get("device")})
    processes = len({p["timing_pid"] for p in points if p.get("timing_pid") is not None})
    kd = RECIPE["finetune"]["kd_alpha"] > 0
    meta = dict(device=devices[0] if len(devices) == 1 else ", ".join(devices) or device_name(ctx.device),
                devices=devices, timing_processes=processes, commit=a.commit, recipe=RECIPE, batches=a.batches,
                image_size=a.image_size,
                train_subset=a.train_subset, val_subset=a.val_subset, static_epochs=a.static_epochs,
                finetune_epochs=a.finetune_epochs, batch_size=a.batch_size, base=a.base, static_nets=a.static_nets,
                base_dense_mmacs=base_dense_macs(a) / 1e6,
                pruned_loss=(f"CE + {RECIPE['finetune']['kd_alpha']}·KD (T = {RECIPE['finetune']['kd_temperature']})"
                             f" from the static {a.base}, as the LAUD networks") if kd else "CE only",
                dtype=next((p["dtype"] for p in points if p.get("dtype")), str(ctx.dtype).removeprefix("torch.")),
                smoke=a.smoke, args=vars(a), **versions())
    data = dict(complete=complete, meta=meta, points=points, gains=gains(points, a.batches, a.base),
                errors=ctx.errors)
    ctx.out.mkdir(parents=True, exist_ok=True)
    write_json(ctx.out / "pareto.json", data)
    text = markdown(data)
    (ctx.out / "pareto.md").write_text(text)
    plot(data, ctx.out)
    print(text)
    print(f"wrote {ctx.out / 'pareto.json'}, pareto.md, pareto_latency.png, pareto_flops.png"
          f"{'' if complete else ' (incomplete: rerun to continue)'}", flush=True)
    return data


def base_dense_macs(args) -> float:
    """Dense MACs per image of the static base (10 classes), the reference of every point's FLOPs ratio."""
    import laudnet
    from laudnet.data import num_classes

    model = laudnet.create_model(LAUD_MODELS[args.base], paradigm="static",
                                 num_classes=num_classes(RECIPE["data"]["dataset"]))
    return model.dense_flops((args.image_size, args.image_size))


# ------------------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    ctx, t_start = resumable.start(args, Context, fail)
    if ctx.device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    stages = {"all": ("static", "dynamic", "prune", "time"), "train": ("static", "dynamic", "prune")}.get(
        args.stage, (args.stage,) if args.stage != "report" else ())
    run = {"static": stage_static, "dynamic": stage_dynamic, "prune": stage_prune, "time": stage_time}
    steps = [(f"stage {stage}", partial(run[stage], ctx)) for stage in stages]
    return resumable.run_units(ctx, steps, stage_report, t_start, show_times=True)


if __name__ == "__main__":
    sys.exit(main())
