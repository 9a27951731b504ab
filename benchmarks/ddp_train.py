"""Data-parallel training on several GPUs against one GPU: the same ``laudnet train`` command under ``torchrun``.

Plan (every stage is a ``torchrun ... -m laudnet train`` subprocess; the exact commands go into the result):

1. a static LAUD-ResNet-50 trained from scratch on fashion-canvas (``--gpus`` processes), the initialisation and the
   distillation teacher of the dynamic runs;
2. the dynamic fine-tuning (layer skipping, FLOPs target ``--target``), bf16 autocast, channels_last, NCCL, once on
   ``--gpus`` processes and once on one — the same command with ``--nproc_per_node`` changed;
3. ``laudnet eval`` of both dynamic runs (top-1, FLOPs ratio).

It reports training images/s per GPU (per-epoch ``train_images_per_s`` from ``metrics.csv``, the first epoch left out
as warm-up), the scaling efficiency, final top-1 and FLOPs ratio, and whether the ranks ended with bit-identical
weights (``replicas.json``, written by ``laudnet train``). Results: ``ddp_train.json`` and ``ddp_train.md`` under
``--out``.

    python benchmarks/ddp_train.py --data-root /path/to/fashion-mnist --out results --commit $(git rev-parse HEAD)

NVLink multicast stays off (``NCCL_NVLS_ENABLE=0``) unless the environment already sets it.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

CANVAS = ["--dataset", "fashion-canvas", "--canvas-clutter", "2", "--canvas-scale-min", "0.4",
          "--canvas-scale-max", "0.7", "--label-smoothing", "0.1"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", required=True, help="folder with the Fashion-MNIST IDX files")
    p.add_argument("--out", required=True, help="folder for the runs and the results")
    p.add_argument("--gpus", type=int, default=2, help="processes of the data-parallel runs (default: 2)")
    p.add_argument("--model", default="laud_resnet50")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=128, help="per process (default: 128)")
    p.add_argument("--workers", type=int, default=10, help="data loader processes per training process")
    p.add_argument("--static-epochs", type=int, default=4)
    p.add_argument("--epochs", type=int, default=3, help="epochs of the dynamic runs (default: 3)")
    p.add_argument("--target", type=float, default=0.5)
    p.add_argument("--train-subset", type=int, default=None)
    p.add_argument("--val-subset", type=int, default=None)
    p.add_argument("--device", default="cuda", help="cuda (NCCL) or cpu (gloo, for a smoke run)")
    p.add_argument("--stage-timeout", type=float, default=400.0, help="seconds before a stage is stopped")
    p.add_argument("--commit", default="unknown")
    return p.parse_args(argv)


def common_flags(args: argparse.Namespace) -> list[str]:
    flags = [*CANVAS, "--data-root", args.data_root, "--model", args.model, "--image-size", str(args.image_size),
             "--batch-size", str(args.batch_size), "--workers", str(args.workers), "--device", args.device,
             "--output", str(Path(args.out) / "runs"), "--no-progress"]
    if args.train_subset:
        flags += ["--train-subset", str(args.train_subset)]
    if args.val_subset:
        flags += ["--val-subset", str(args.val_subset)]
    return flags


def torchrun(nproc: int, flags: list[str]) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", "laudnet", "train", *flags]


def run_stage(name: str, cmd: list[str], out: Path, timeout: float) -> dict:
    """Run one subprocess with its log under ``out``; returns its command, exit status and wall time."""
    log = out / f"{name}.log"
    print(f"== {name}: {' '.join(cmd)}", flush=True)
    t0 = time.time()
    with open(log, "w") as f:
        try:
            rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    wall = time.time() - t0
    print(f"   exit {rc} after {wall:.0f} s; log {log}", flush=True)
    return {"command": " ".join(cmd), "exit": rc, "wall_s": round(wall, 1)}


def read_metrics(run_dir: Path) -> list[dict[str, float]]:
    path = run_dir / "metrics.csv"
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(f)]


def summarise(run_dir: Path, nproc: int) -> dict:
    rows = read_metrics(run_dir)
    steady = [r["train_images_per_s"] for r in rows[1:]] or [r["train_images_per_s"] for r in rows]
    per_gpu = statistics.median(steady) if steady else None
    replicas = run_dir / "replicas.json"
    evaluation = run_dir / "last.pt.eval.json"
    ev = json.loads(evaluation.read_text()) if evaluation.is_file() else {}
    return {
        "processes": nproc,
        "epochs": len(rows),
        "images_per_s_per_gpu": per_gpu,
        "images_per_s_total": None if per_gpu is None else per_gpu * nproc,
        "images_per_s_per_gpu_by_epoch": [r["train_images_per_s"] for r in rows],
        "val_top1_by_epoch": [r.get("val_top1") for r in rows],
        "final_val_top1": rows[-1].get("val_top1") if rows else None,
        "final_val_flops_ratio": rows[-1].get("val_flops_ratio") if rows else None,
        "eval": {k: ev.get(k) for k in ("top1", "top5", "flops_ratio", "num_samples")} if ev else None,
        "replicas": json.loads(replicas.read_text()) if replicas.is_file() else None,
    }


def environment(commit: str) -> dict:
    import torch

    cuda = torch.cuda.is_available()
    return {
        "device": torch.cuda.get_device_name(0) if cuda else platform.processor() or "cpu",
        "gpus_visible": torch.cuda.device_count() if cuda else 0,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "nccl": ".".join(map(str, torch.cuda.nccl.version())) if cuda else None,
        "python": platform.python_version(),
        "commit": commit,
        "NCCL_NVLS_ENABLE": os.environ.get("NCCL_NVLS_ENABLE"),
    }


def markdown(result: dict) -> str:
    env, runs = result["environment"], result["dynamic"]
    lines = [f"# Data-parallel training: {result['model']} layer skipping t = {result['target']} on fashion-canvas",
             "",
             f"{env['device']} x {result['gpus']}, torch {env['torch']}, NCCL {env['nccl']}, commit {env['commit']}; "
             f"{result['image_size']} px, batch {result['batch_size']} per GPU, bf16 autocast, channels_last.",
             "", "| processes | images/s per GPU | images/s total | epochs | val top-1 | FLOPs ratio | replicas |",
             "|---|---|---|---|---|---|---|"]
    for key in ("single", "multi"):
        r = runs.get(key)
        if not r:
            continue
        ev = r["eval"] or {}
        rep = r["replicas"]
        rep_text = "n/a (one process)" if rep is None else ("bit-identical" if rep["identical"] else "DIFFER")
        ips = r["images_per_s_per_gpu"]
        lines.append(f"| {r['processes']} | {ips:.0f} | {r['images_per_s_total']:.0f} | {r['epochs']} | "
                     f"{ev.get('top1', float('nan')):.2f} % | {ev.get('flops_ratio', float('nan')):.3f} | {rep_text} |"
                     if ips else f"| {r['processes']} | failed | | | | | |")
    if result.get("scaling_efficiency") is not None:
        static_top1 = result["static"]["final_val_top1"]
        lines += ["", f"Scaling efficiency (images/s per GPU, {result['gpus']} GPUs against 1): "
                      f"{result['scaling_efficiency']:.2f}. Static teacher: top-1 {static_top1}."]
    lines += ["", "Commands:", ""] + [f"    {s['command']}" for s in result["stages"].values()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not Path(args.data_root).is_dir():
        raise SystemExit(f"--data-root {args.data_root} is not a folder")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
    os.environ.setdefault("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1")
    runs = out / "runs"
    flags = common_flags(args)
    stages = {}
    static_flags = [*flags, "--mode", "static", "--run-name", "static", "--epochs", str(args.static_epochs),
                    "--lr-base", "0.2", "--warmup-epochs", "0.3"]
    stages["static"] = run_stage("static", torchrun(args.gpus, static_flags), out, args.stage_timeout)
    dynamic_flags = [*flags, "--mode", "dynamic", "--paradigm", "layer", "--target", str(args.target),
                     "--init", str(runs / "static" / "last.pt"), "--epochs", str(args.epochs),
                     "--lr-base", "0.05", "--masker-lr-mult", "5"]
    names = {"multi": args.gpus, "single": 1}
    for key, nproc in names.items():
        stages[key] = run_stage(key, torchrun(nproc, [*dynamic_flags, "--run-name", f"dynamic-{nproc}gpu"]), out,
                                args.stage_timeout)
        ckpt = runs / f"dynamic-{nproc}gpu" / "last.pt"
        if ckpt.is_file():
            stages[f"eval-{key}"] = run_stage(
                f"eval-{key}", [sys.executable, "-m", "laudnet", "eval", str(ckpt), "--device", args.device,
                                "--workers", str(args.workers)], out, args.stage_timeout)
    dynamic = {key: summarise(runs / f"dynamic-{n}gpu", n) for key, n in names.items()}
    single, multi = dynamic["single"]["images_per_s_per_gpu"], dynamic["multi"]["images_per_s_per_gpu"]
    result = {
        "environment": environment(args.commit),
        "model": args.model, "target": args.target, "gpus": args.gpus, "image_size": args.image_size,
        "batch_size": args.batch_size, "epochs": args.epochs, "static_epochs": args.static_epochs,
        "static": summarise(runs / "static", args.gpus),
        "dynamic": dynamic,
        "scaling_efficiency": multi / single if single and multi else None,
        "stages": stages,
    }
    (out / "ddp_train.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "ddp_train.md").write_text(markdown(result))
    print(markdown(result))
    return 0 if all(s["exit"] == 0 for s in stages.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
