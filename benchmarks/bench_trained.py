"""Latency of a *trained* LAUD-ResNet on its own validation images against the static network, on one GPU.

`bench_models.py` imposes random decisions at fixed rates; here the maskers decide, image by image, as in use. For a
laudnet checkpoint (``laudnet train`` output) the script, in one process (bf16, channels_last, cudnn.benchmark):

* loads the checkpoint's validation set (``--data-root`` overrides its data folder) and takes ``--batches`` batches
  of ``--batch`` images, plus ``--singles`` single images for batch 1;
* times the static baselines on the same weights: torchvision's network (the checkpoint's weights minus the maskers)
  eager, as a CUDA graph and compiled, and laudnet's folded static network as a CUDA graph and compiled whole as a
  CUDA graph;
* times ``laudnet.deploy(model, compile=True)`` replayed as one CUDA graph on every batch (the batch is copied into
  the graph's input outside the timing; decisions are made on the device, so each replay skips what its images skip);
* reports per batch the deployed time, the blocks' activation rates, the FLOPs ratio of the training-form model on the
  same images, the agreement of the deployed (bf16) and training-form (fp32) predictions and their top-1, and the
  latency predictor's ratio for the measured per-block rates (hardware ``--hardware``).

    python benchmarks/bench_trained.py CHECKPOINT --data-root DIR --out trained.json --commit $(git rev-parse HEAD)
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from functools import partial
from types import SimpleNamespace

import torch

import laudnet
from laudnet.deploy import deploy

sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
from bench_models import TORCHVISION, _triton_version, as_graph, time_ms  # noqa: E402


def load_batches(ckpt: str, data_root: str | None, batch: int, batches: int, singles: int):
    """(model, checkpoint dict, [(images, labels)] of `batches` batches, [(image, label)] of `singles` images)."""
    from laudnet.data import build_loader
    from laudnet.train.cli import _eval_config, load_trained
    from laudnet.train.loop import build_datasets

    model, state = load_trained(ckpt)
    cfg = _eval_config(state, SimpleNamespace(data_root=data_root, workers=0, device="cpu"))
    (val_set,), _ = build_datasets(cfg, ("val",))
    loader = build_loader(val_set, batch, train=False, num_workers=0)
    out = []
    for images, labels, *_ in loader:
        if len(out) == batches:
            break
        out.append((images, labels))
    single = [(val_set[i][0][None], torch.tensor([val_set[i][1]])) for i in range(singles)]
    return model, state, out, single


def static_torchvision(name: str, model, num_classes: int):
    """torchvision's network holding the trained weights (the maskers dropped)."""
    tv = TORCHVISION[name](num_classes=num_classes)
    sd = {k: v for k, v in model.state_dict().items() if k in tv.state_dict()}
    missing = set(tv.state_dict()) - set(sd)
    if missing:
        raise ValueError(f"trained weights lack torchvision keys {sorted(missing)[:5]}")
    tv.load_state_dict(sd)
    return tv


def bench_case(label: str, model, tv, data, args, rows: list[dict], name: str) -> None:
    """Static baselines and the deployed graph over the images of `data` (one batch size)."""
    x0 = data[0][0].cuda().contiguous(memory_format=torch.channels_last)
    batch = x0.shape[0]
    row = dict(case=label, batch=batch)
    static_ms = {}
    with torch.no_grad():
        tvb = tv.cuda().eval().to(memory_format=torch.channels_last, dtype=torch.bfloat16)
        xb = x0.to(torch.bfloat16)
        static_ms["torchvision eager"] = time_ms(partial(tvb, xb), args.warmup, args.iters)
        static_ms["torchvision cuda-graph"] = time_ms(as_graph(tvb, xb), args.warmup, args.iters)
        if args.compile:
            t0 = time.time()
            compiled = torch.compile(tvb)
            compiled(xb)
            static_ms["torchvision compile"] = time_ms(partial(compiled, xb), args.warmup, args.iters)
            row["compile_s"] = round(time.time() - t0, 1)
        static_model = laudnet.create_model(name, paradigm="static", num_classes=tv.fc.out_features)
        static_model.load_state_dict({k: v for k, v in model.state_dict().items() if "masker" not in k})
        folded = deploy(static_model.cuda().eval(), torch.bfloat16)
        static_ms["laudnet folded cuda-graph"] = time_ms(as_graph(folded, x0), args.warmup, args.iters)
        if args.compile:  # the folded network compiled whole, replayed from a CUDA graph (the strongest static form)
            whole = torch.compile(folded, dynamic=False)
            static_ms["laudnet folded whole-compile cuda-graph"] = time_ms(as_graph(whole, x0), args.warmup,
                                                                           args.iters)
        deployed = deploy(model, torch.bfloat16, compile=args.compile)
        graphed = deployed.graphed(x0)
        per_batch = []
        for images, labels in data:
            x = images.cuda().contiguous(memory_format=torch.channels_last)
            graphed.static_input.copy_(x)
            ms = time_ms(graphed.graph.replay, 2, args.iters)
            out = graphed.static_output.float().clone()
            rates = deployed.activation_rates()
            ref = model(x)
            flops = laudnet.model_flops(model, tuple(x.shape[1:])).ratio
            per_batch.append(dict(
                ms=ms, flops_ratio=flops, rates=[round(r, 4) for r in rates],
                agreement=float((out.argmax(1) == ref.argmax(1)).float().mean()),
                top1_deployed=float((out.argmax(1).cpu() == labels).float().mean()),
                top1_eval=float((ref.argmax(1).cpu() == labels).float().mean()),
            ))
    best_name = min(static_ms, key=static_ms.get)
    mean_rates = [statistics.fmean(r) for r in zip(*(b["rates"] for b in per_batch), strict=True)]
    dyn = statistics.median(b["ms"] for b in per_batch)
    try:
        from laudnet.latency import predict_model

        predicted = predict_model(name, model.paradigm, density=mean_rates, granularity=_granularity(model),
                                  hardware=args.hardware, batch=batch).ratio
    except Exception as e:  # reported, not required
        print(f"predictor failed: {e}", file=sys.stderr)
        predicted = None
    rows.append(dict(
        row, static_ms=static_ms, best_static=best_name, deployed_graph_ms_median=dyn,
        deployed_graph_ms_mean=statistics.fmean(b["ms"] for b in per_batch),
        ratio_to_best_static=dyn / static_ms[best_name],
        flops_ratio_mean=statistics.fmean(b["flops_ratio"] for b in per_batch),
        mean_block_rates=[round(r, 4) for r in mean_rates], predicted_ratio=predicted,
        agreement=statistics.fmean(b["agreement"] for b in per_batch),
        top1_deployed=statistics.fmean(b["top1_deployed"] for b in per_batch),
        top1_eval=statistics.fmean(b["top1_eval"] for b in per_batch),
        per_batch=per_batch,
    ))
    r = rows[-1]
    print(f"{label}: static {', '.join(f'{k} {v:.3f}' for k, v in static_ms.items())} ms; deployed graph "
          f"{dyn:.3f} ms = {r['ratio_to_best_static']:.2f} x {best_name}; FLOPs ratio {r['flops_ratio_mean']:.3f}; "
          f"agreement {r['agreement']:.4f}; predicted ratio {predicted}", flush=True)


def _granularity(model):
    g = model.granularity
    return "-".join(map(str, g)) if model.paradigm in ("spatial", "channel") and g[0] is not None else None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint")
    p.add_argument("--data-root", default=None, help="data folder (default: the checkpoint's)")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--batches", type=int, default=8, help="batches of --batch images (default: 8)")
    p.add_argument("--singles", type=int, default=32, help="single images for batch 1 (default: 32; 0: skip)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--no-compile", dest="compile", action="store_false")
    p.add_argument("--hardware", default="h100", help="latency predictor hardware for the predicted ratio")
    p.add_argument("--commit", default="unknown")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("bench_trained.py needs a CUDA device")
    torch.backends.cudnn.benchmark = True
    model, state, data, singles = load_batches(args.checkpoint, args.data_root, args.batch, args.batches,
                                               args.singles)
    name = state["model_name"]
    if name not in TORCHVISION:
        raise SystemExit(f"bench_trained.py compares against torchvision ResNets; {name} is not one")
    model = model.cuda().eval()
    tv = static_torchvision(name, model, state["num_classes"])
    rows: list[dict] = []
    bench_case(f"batch {args.batch}", model, tv, data, args, rows, name)
    if args.singles:
        bench_case("batch 1", model, tv, singles, args, rows, name)
    meta = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, triton=_triton_version(),
                python=platform.python_version(), commit=args.commit, checkpoint=args.checkpoint, model=name,
                paradigm=state["paradigm"], target=state["config"].get("target"),
                image_size=state["config"].get("image_size"), dataset=state["config"].get("dataset"), args=vars(args))
    with open(args.out, "w") as f:
        json.dump(dict(meta=meta, results=rows), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
