"""``laudnet demo``: train a small dynamic network on ``fashion-canvas`` on the CPU, evaluate it and plot it.

The recipe lives in ``laudnet/configs/demo.yaml``: shared options at the top level, then a ``static:`` section (a
short static training from scratch; omit it to train the dynamic network from scratch) and a ``dynamic:`` section
(fine-tuning with maskers from the static network, which is also the distillation teacher). The demo writes, under
the output folder (default ``runs/demo``): the two runs (``static/``, ``dynamic/``), ``report.json`` (top-1,
FLOPs ratio, target, adaptivity and more, of the dynamic network's last checkpoint), ``activation_rates.png`` and
``masks.png``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "demo.yaml"
PHASES = ("static", "dynamic")


def load_recipe(path: str | Path, output: str | None = None):
    """The (static or None, dynamic) TrainConfigs of a recipe YAML file: shared options at the top level, then a
    ``dynamic:`` section and optionally a ``static:`` one (``configs/demo.yaml``, ``configs/vit-canvas.yaml``).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a mapping, or an unknown key or bad value in any section (naming it and the file).
    """
    from laudnet.train.config import TrainConfig, check_overrides, read_yaml

    path = Path(path)
    data = read_yaml(path, "demo config")
    if not isinstance(data, dict) or "dynamic" not in data:
        raise ValueError(f"demo config {path} must be a mapping with a 'dynamic:' section (and optionally 'static:')")
    sections = {name: data.pop(name) for name in PHASES if name in data}
    shared = check_overrides(data, f"demo config {path}", where=f" in {path}")
    if output is not None:
        shared["output"] = output
    configs: dict[str, Any] = {}
    for name in PHASES:
        if sections.get(name) is None:
            configs[name] = None
            continue
        values = check_overrides(sections[name], f"demo config {path} ({name}:)", where=f" in {path} ({name}:)")
        merged = {**shared, **values, "mode": name, "run_name": name}
        # A demo reruns from scratch: it replaces its own previous runs (and says so) unless the file resumes them.
        merged.setdefault("overwrite", merged.get("resume") is None)
        configs[name] = TrainConfig(**merged)
    return configs["static"], configs["dynamic"]


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", default=str(DEFAULT_CONFIG), help="demo YAML (default: the shipped one)")
    parser.add_argument("-o", "--output", default="runs/demo", help="output folder (default: runs/demo)")
    parser.add_argument("--num-images", type=int, default=6, help="images in the mask overlays (default: 6)")


def run_demo(args: argparse.Namespace) -> int:
    from laudnet.train.cli import _guard

    return _guard("demo", lambda: _demo(args))


def _demo(args: argparse.Namespace) -> int:
    from laudnet.train.cli import evaluate_checkpoint, format_eval, load_trained, mask_figure, stage_lift_text
    from laudnet.train.loop import train
    from laudnet.train.viz import RateSeries, plot_activation_rates

    t_start = time.time()
    static_cfg, dynamic_cfg = load_recipe(args.config, args.output)
    out = Path(args.output)
    static_top1 = None
    if static_cfg is not None:
        print(f"== static training ({static_cfg.epochs} epochs)", flush=True)
        result = train(static_cfg)
        static_top1 = result.last_eval.top1 if result.last_eval else None
        dynamic_cfg.init = str(result.run_dir / "best.pt")
    print(f"== dynamic training ({dynamic_cfg.paradigm}, target {dynamic_cfg.target}, {dynamic_cfg.epochs} epochs)",
          flush=True)
    result = train(dynamic_cfg)
    t_train = time.time() - t_start

    # The report describes the network at the end of training (last.pt), where the temperature and the FLOPs loss
    # have done their work; best.pt is kept by the loop for top-1 alone.
    checkpoint = result.run_dir / "last.pt"
    eval_args = argparse.Namespace(
        model=None, dataset=None, data_root=None, image_size=None, val_subset=None, batch_size=128, workers=0,
        device="auto", threads=dynamic_cfg.threads,
    )
    ev, state, cfg = evaluate_checkpoint(checkpoint, eval_args)
    gran = "-".join(map(str, state["granularity"])) if state.get("granularity") else ""
    print(format_eval(ev, f"== evaluation of {checkpoint}: {cfg.model} {cfg.paradigm} {gran}, {cfg.dataset} val"))
    rates_png = plot_activation_rates(
        [RateSeries(f"{cfg.paradigm} {gran}".strip(), ev.block_names, ev.block_rates, ev.flops_ratio)],
        out / "activation_rates.png",
        target=cfg.target,
        title=f"{cfg.model} on {cfg.dataset} ({cfg.image_size} px): per-block activation rate",
    )
    plots = [str(rates_png)]
    if cfg.paradigm == "spatial":
        model, _ = load_trained(checkpoint)
        masks_png = mask_figure(
            model, cfg, out / "masks.png", args.num_images,
            f"{cfg.model} spatial {gran}, t={cfg.target}: red = computed, grey = skipped, green = item box",
        )
        plots.append(str(masks_png))
    report = {
        "top1": round(ev.top1, 2),
        "top5": round(ev.top5, 2),
        "flops_ratio": round(ev.flops_ratio, 4),
        "target": cfg.target,
        "within_0.1_of_target": abs(ev.flops_ratio - cfg.target) <= 0.1,
        "chance_top1": 100.0 / state["num_classes"],
        "static_top1": None if static_top1 is None else round(static_top1, 2),
        "dense_mflops": round(ev.dense_flops / 1e6, 3),
        "dynamic_mflops": round(ev.dynamic_flops / 1e6, 3),
        "val_images": ev.num_samples,
        "model": cfg.model,
        "paradigm": cfg.paradigm,
        "granularity": state.get("granularity"),
        "dataset": cfg.dataset,
        "image_size": cfg.image_size,
        "block_rates": {n: round(r, 4) for n, r in zip(ev.block_names, ev.block_rates, strict=True)},
        "adaptivity": None if ev.adaptivity is None else ev.adaptivity.to_dict(),
        "checkpoint": str(checkpoint),
        "plots": plots,
        "train_seconds": round(t_train, 1),
        "total_seconds": round(time.time() - t_start, 1),
    }
    report_path = out / "report.json"
    report_path.write_text(json.dumps(report, indent=2) + "\n")
    print("== demo result")
    if static_top1 is not None:
        print(f"  static network:  top-1 {static_top1:.2f} %")
    print(f"  dynamic network: top-1 {ev.top1:.2f} % (chance {report['chance_top1']:.0f} %), FLOPs ratio "
          f"{ev.flops_ratio:.3f} (target {cfg.target}), {ev.dynamic_flops / 1e6:.2f} of {ev.dense_flops / 1e6:.2f} "
          f"MMACs per image")
    if ev.adaptivity is not None and ev.adaptivity.stages:
        print(f"  masks on the items: lift {stage_lift_text(ev.adaptivity)} (1 = blind)")
    print(f"  wrote {report_path}, {', '.join(plots)} in {report['total_seconds']:.0f} s")
    return 0
