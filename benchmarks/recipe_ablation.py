"""Why trained maskers collapse, and which recipe makes them adapt: ablations of the masker recipe on fashion-canvas.

Every run starts from one static network trained with the demo's recipe (``laudnet/configs/demo.yaml``, or
``--config``: its top-level and ``static:`` options), then fine-tunes a dynamic network with the demo's
``dynamic:`` options plus one variant's overrides, and is evaluated with ``laudnet eval`` (top-1, FLOPs ratio and
the adaptivity metrics: the localisation lift of spatial masks per stage, and for layer skipping the fraction of
blocks executed by 10-90 % of the validation images). Runs go through the ``laudnet`` command line, several at a
time (``--jobs``), and a finished run is not trained again, so an interrupted sweep continues where it stopped.

    python benchmarks/recipe_ablation.py --out runs/ablation --jobs 6 --device cuda --commit $(git rev-parse HEAD)
    python benchmarks/recipe_ablation.py --smoke --out /tmp/abl      # the whole flow on a CPU in about a minute
    python benchmarks/recipe_ablation.py --variants benchmarks/configs/demo-gap-variants.yaml --only demo ...

``--variants FILE`` adds variants from a YAML mapping ``name: {paradigm: ..., option: value, ...}``; their options
override the recipe's ``dynamic:`` section directly (the built-in variants start from the paper's masker recipe).

Writes ``<out>/recipe_ablation.json`` (one record per run, the configuration beside its results) and prints a
markdown table (``--report FILE`` prints the table of an existing JSON).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "laudnet" / "configs" / "demo.yaml"

# The paper's masker recipe, as the baseline the variants depart from (laudnet's defaults differ: see the README).
PAPER = {"masker_norm": False, "noise_schedule": "constant", "flops_loss": "batch", "bounds_lower": 0.0,
         "bounds_upper": 1.0}
NORM = {"masker_norm": True}
ANNEAL = {"noise_schedule": "linear"}

# name -> (paradigm, overrides of the demo's dynamic section). Layer skipping takes no granularity.
VARIANTS: dict[str, tuple[str, dict]] = {
    "spatial/paper": ("spatial", PAPER),
    "spatial/anneal": ("spatial", {**PAPER, **ANNEAL}),
    "spatial/norm": ("spatial", {**PAPER, **NORM}),
    "spatial/norm+anneal": ("spatial", {**PAPER, **NORM, **ANNEAL}),
    "spatial/norm+anneal+sample": ("spatial", {**PAPER, **NORM, **ANNEAL, "flops_loss": "sample"}),
    "spatial/norm+anneal, masker lr x1": ("spatial", {**PAPER, **NORM, **ANNEAL, "masker_lr_mult": 1.0}),
    "spatial/norm+anneal, T0 1": ("spatial", {**PAPER, **NORM, **ANNEAL, "t0": 1.0}),
    "spatial/norm+anneal, no KD": ("spatial", {**PAPER, **NORM, **ANNEAL, "kd_alpha": 0.0}),
    "layer/paper": ("layer", PAPER),
    "layer/anneal": ("layer", {**PAPER, **ANNEAL}),
    "layer/norm": ("layer", {**PAPER, **NORM}),
    "layer/norm+anneal": ("layer", {**PAPER, **NORM, **ANNEAL}),
    "layer/norm+anneal+sample": ("layer", {**PAPER, **NORM, **ANNEAL, "flops_loss": "sample"}),
    "layer/norm+anneal, bounds 0.1-0.9": ("layer", {**PAPER, **NORM, **ANNEAL, "bounds_lower": 0.1,
                                                    "bounds_upper": 0.9}),
    "layer/paper, bounds 0.1-0.9": ("layer", {**PAPER, "bounds_lower": 0.1, "bounds_upper": 0.9}),
}
SMOKE = {"image_size": 32, "train_subset": 64, "val_subset": 32, "batch_size": 16, "threads": 1}


def run_name(variant: str, seed: int) -> str:
    return variant.replace("/", "-").replace(" ", "").replace(",", "_").replace("+", "_") + f"-s{seed}"


def _flags(options: dict) -> list[str]:
    out = []
    for key, value in options.items():
        if value is None:  # the command's default
            continue
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            out.append(flag if value else "--no-" + key.replace("_", "-"))
        elif isinstance(value, list | tuple):
            out += [flag, "-".join(map(str, value))]
        else:
            out += [flag, str(value)]
    return out


def _laudnet(args: list[str], log: Path) -> None:
    with log.open("a") as f:
        done = subprocess.run([sys.executable, "-m", "laudnet", *args], stdout=f, stderr=subprocess.STDOUT)
    if done.returncode:
        raise RuntimeError(f"laudnet {args[0]} failed (status {done.returncode}); see {log}")


def oversubscription(jobs: int, threads: int | None, cpus: int | None) -> str | None:
    """A warning when CPU runs at the same time ask for more threads than there are cores: their threads then wait
    on each other and every run slows down far more than the cores shared would explain."""
    if threads and cpus and jobs * threads > cpus:
        return (f"recipe_ablation.py: warning: {jobs} jobs x {threads} threads on {cpus} cores: the runs slow each "
                f"other down; use --jobs {max(cpus // threads, 1)}")
    return None


def load_recipe(config: Path, smoke: bool, device: str, data_root: str | None) -> tuple[dict, dict]:
    """(static options, dynamic options) of a demo recipe, for this sweep."""
    data = yaml.safe_load(config.read_text())
    static, dynamic = data.pop("static"), data.pop("dynamic")
    shared = {**data, "device": device, "progress": False}
    if data_root:
        shared["data_root"] = data_root
    if device != "cpu":
        shared.update(workers=2, threads=None)
    if smoke:
        shared.update(SMOKE)
        static, dynamic = {**static, "epochs": 1}, {**dynamic, "epochs": 1}
    return {**shared, **static}, {**shared, **dynamic}


def train_static(out: Path, static: dict) -> Path:
    ckpt = out / "static" / "best.pt"
    if not ckpt.is_file():
        _laudnet(["train", *_flags({**static, "mode": "static", "output": str(out), "run_name": "static"})],
                 out / "static.log")
    return ckpt


def load_variants(path: Path) -> dict[str, tuple[str, dict]]:
    """Variants of a YAML file (name -> options, ``paradigm`` among them), in VARIANTS' form."""
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise ValueError(f"{path}: expected a mapping of variant name -> options")
    return {str(name): (options.pop("paradigm", "spatial"), options) for name, options in data.items()}


def val_history(run_dir: Path) -> list[float]:
    """Validation top-1 after each validated epoch of a run (its metrics.csv)."""
    path = run_dir / "metrics.csv"
    if not path.is_file():
        return []
    with path.open() as f:
        return [round(float(row["val_top1"]), 2) for row in csv.DictReader(f) if row.get("val_top1")]


def run_variant(out: Path, variant: str, seed: int, dynamic: dict, init: Path) -> dict:
    """Train (unless done) and evaluate one variant; its record."""
    paradigm, overrides = VARIANTS[variant]
    name = run_name(variant, seed)
    options = {**dynamic, **overrides, "mode": "dynamic", "paradigm": paradigm, "seed": seed, "init": str(init),
               "output": str(out), "run_name": name}
    if paradigm != "spatial":
        options.pop("granularity", None)
    log = out / f"{name}.log"
    result = out / name / "eval.json"
    t0 = time.time()
    if not result.is_file():
        if not (out / name / "last.pt").is_file() or (out / name / ".incomplete").exists():
            (out / name).mkdir(parents=True, exist_ok=True)
            (out / name / ".incomplete").touch()
            _laudnet(["train", *_flags(options), "--resume", "auto"], log)
            (out / name / ".incomplete").unlink()
        _laudnet(["eval", str(out / name / "last.pt"), "--json", str(result), "--device", options["device"]], log)
    ev = json.loads(result.read_text())
    return {"variant": variant, "paradigm": paradigm, "seed": seed, "overrides": overrides,
            "seconds": round(time.time() - t0, 1), "val_history": val_history(out / name), **summarise(ev)}


def summarise(ev: dict) -> dict:
    """The numbers the sweep compares, from a `laudnet eval` JSON."""
    ad = ev.get("adaptivity") or {}
    lifts = {str(s["stage"]): s["lift"] for s in ad.get("stages", [])}
    return {"top1": round(ev["top1"], 2), "flops_ratio": round(ev["flops_ratio"], 4),
            "adaptive_fraction": ad.get("adaptive_fraction"), "lift": lifts,
            "block_rates": [round(r, 3) for r in ev["block_rates"]]}


def merged(payloads: list[dict]) -> dict:
    """One payload holding the runs of several sweeps from the same static network (the first run of each
    variant and seed kept)."""
    tops = {p["static_top1"] for p in payloads}
    if len(tops) > 1:
        raise SystemExit(f"recipe_ablation.py: the sweeps start from different static networks (top-1 {sorted(tops)})")
    runs = {(r["variant"], r["seed"]): r for p in reversed(payloads) for r in p["runs"]}
    return {**payloads[0], "runs": list(runs.values())}


def _fmt(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, str):
        return value
    return f"{value:.2f}"


def _mean(values) -> float | None:
    vals = [float(v) for v in values if v is not None]
    return None if not vals else sum(vals) / len(vals)


def report(payload: dict, reference: str | None = None) -> str:
    """Markdown table: one row per variant — the mean over seeds, the top-1 range where there are several seeds, and
    the top-1 difference to the ``reference`` variant paired by seed (over the seeds both have; the seed spread is
    larger than most differences, so unpaired means mislead). The reference row comes first; by default it is
    ``demo`` where the runs have it, else the first variant run."""
    rows = payload["runs"]
    stages = sorted({s for r in rows for s in r["lift"]})
    head = ["variant", "seeds", "top-1", "top-1 range", "paired Δ top-1", "FLOPs", "adaptive"]
    head += [f"lift {s}" for s in stages]
    lines = [f"static top-1 {payload['static_top1']:.2f} %", "", "| " + " | ".join(head) + " |",
             "|" + "---|" * len(head)]
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    reference = reference or ("demo" if "demo" in variants else variants[0])
    if reference not in variants:
        raise SystemExit(f"recipe_ablation.py: no run of the reference variant {reference!r} "
                         f"(variants: {', '.join(variants)})")
    variants.sort(key=lambda v: v != reference)
    by_seed = {v: {r.get("seed"): r["top1"] for r in rows if r["variant"] == v} for v in variants}
    for variant in variants:
        runs = [r for r in rows if r["variant"] == variant]
        tops = [r["top1"] for r in runs]
        spread = f"{min(tops):.1f}-{max(tops):.1f}" if len(tops) > 1 else "–"
        shared = [s for s in by_seed[variant] if s is not None and s in by_seed[reference]]
        if variant == reference:
            paired = "(reference)"
        elif shared:
            paired = f"{_mean(by_seed[variant][s] - by_seed[reference][s] for s in shared):+.2f} ({len(shared)})"
        else:
            paired = "–"
        cells = [variant, str(len(runs)), _fmt(_mean(tops)), spread, paired,
                 _fmt(_mean(r["flops_ratio"] for r in runs)), _fmt(_mean(r["adaptive_fraction"] for r in runs))]
        cells += [_fmt(_mean(r["lift"].get(s) for r in runs)) for s in stages]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/ablation", help="folder of the runs and the JSON")
    parser.add_argument("--config", default=str(DEMO), help="demo recipe to start from (default: the demo's)")
    parser.add_argument("--data-root", default=None, help="Fashion-MNIST folder (default: the dataset's)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--jobs", type=int, default=1, help="runs trained at the same time (default: 1)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds of the dynamic runs (default: 0)")
    parser.add_argument("--variants", default=None, help="YAML of more variants (name: {paradigm: ..., options})")
    parser.add_argument("--only", nargs="+", default=None, help="variants to run (default: all)")
    parser.add_argument("--smoke", action="store_true", help="tiny images and subsets, one epoch: checks the flow")
    parser.add_argument("--commit", default="unknown", help="commit recorded in the JSON")
    parser.add_argument("--report", nargs="+", default=None,
                        help="print the table of these JSONs (their runs together) and exit")
    parser.add_argument("--reference", default=None,
                        help="--report: the variant the others are paired with (default: demo, else the first)")
    args = parser.parse_args(argv)
    if args.report:
        print(report(merged([json.loads(Path(f).read_text()) for f in args.report]), args.reference))
        return 0
    if args.variants:
        try:
            VARIANTS.update(load_variants(Path(args.variants)))
        except (OSError, yaml.YAMLError, ValueError) as e:
            parser.error(f"cannot read --variants: {e}")
    variants = args.only or list(VARIANTS)
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {unknown}; choose from: {', '.join(VARIANTS)}")
    if args.jobs < 1:
        parser.error(f"--jobs must be positive, got {args.jobs}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    config = Path(args.config)
    if not config.is_file():
        parser.error(f"recipe {config} does not exist")
    static, dynamic = load_recipe(config, args.smoke, args.device, args.data_root)
    if args.device == "cpu" and (warning := oversubscription(args.jobs, dynamic.get("threads"), os.cpu_count())):
        print(warning, file=sys.stderr, flush=True)
    t_start = time.time()
    init = train_static(out, static)
    static_eval = out / "static" / "eval.json"
    if not static_eval.is_file():
        _laudnet(["eval", str(init), "--json", str(static_eval), "--device", args.device], out / "static.log")
    cases = [(v, s) for v in variants for s in args.seeds]
    import torch

    payload = {
        "recipe": str(config), "static_options": static, "dynamic_options": dynamic,
        "static_top1": json.loads(static_eval.read_text())["top1"], "runs": [],
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "cpu",
        "torch": torch.__version__, "commit": args.commit, "smoke": args.smoke, "cpus": os.cpu_count(),
    }
    path = out / "recipe_ablation.json"
    if path.is_file():  # runs of earlier invocations over the same folder stay in the JSON
        payload["runs"] = [r for r in json.loads(path.read_text())["runs"] if (r["variant"], r["seed"]) not in cases]
    with ThreadPoolExecutor(args.jobs) as pool:
        futures = {pool.submit(run_variant, out, v, s, dynamic, init): (v, s) for v, s in cases}
        for fut in as_completed(futures):
            (v, s), record = futures[fut], fut.result()
            payload["runs"].append(record)
            payload["seconds"] = round(time.time() - t_start, 1)
            path.write_text(json.dumps(payload, indent=2) + "\n")  # what is done so far, if the sweep is cut short
            shown = {k: payload["runs"][-1][k] for k in ("top1", "flops_ratio", "lift", "adaptive_fraction")}
            print(f"{v} (seed {s}): {json.dumps(shown)}", flush=True)
    print(report(payload))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
