"""`deploy_fastest` against the strongest static network: which whole form a LAUD model should run in, measured.

For each batch size, the best static form: for a ResNet laudnet's folded static network compiled whole and replayed
from a CUDA graph (the best static form of `bench_models.py`); for a ViT (`--model laud_deit_small`) timm's network
compiled and replayed from a CUDA graph, and `deploy_fastest` of the static LAUD-ViT (its capturable deployment and
its compiled one, each a CUDA graph). Then for each paradigm, `deploy_fastest` with random decisions at exactly the
given rate (imposed through `forced_keep` / `forced`, the maskers still run), reporting both forms' times (the sparse
network and the dense-masked network compiled whole, each one CUDA graph) and the choice. Results are written after
every case.

    python benchmarks/bench_fastest.py --batches 1 128 --paradigms channel spatial --out fastest.json \
        --commit $(git rev-parse --short HEAD)
    python benchmarks/bench_fastest.py --model laud_deit_small --paradigms token head layer --out vit.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback

import torch

import laudnet
from laudnet.deploy import GraphedModel, deploy, deploy_fastest
from laudnet.timing import time_call

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from bench_models import _triton_version, block_decision_shapes, random_decisions  # noqa: E402

DEV = torch.device("cuda")  # --smoke: the CPU (the flow uncompiled and eager; CUDA-graph forms record their error)


def static_forms(args, x: torch.Tensor, save) -> list[float]:
    """Time the static candidates at x's batch size (each saved as a row, or its error); returns their times."""
    dev, times = x.device, []

    def timed(variant: str, build) -> None:
        t0 = time.time()
        try:
            run, inp = build()
            ms = 1e3 * time_call(lambda: run(inp), dev, repeats=args.repeats)
        except Exception as e:  # one static form failing leaves the others (and the dynamic cases) to measure
            traceback.print_exc()
            save(dict(batch=x.shape[0], kind="static", variant=variant, error=f"{type(e).__name__}: {str(e)[:300]}"))
            return
        times.append(ms)
        save(dict(batch=x.shape[0], kind="static", variant=variant, ms=ms, build_s=round(time.time() - t0, 1)))

    if laudnet.model_info(args.model).is_vit:
        import timm

        from laudnet.models.vit import MODEL_CFGS

        def timm_graph():
            tv = timm.create_model(MODEL_CFGS[args.model.removeprefix("laud_")].timm_name, pretrained=False,
                                   img_size=args.image_size)
            xb = x.to(torch.bfloat16)
            return GraphedModel(torch.compile(tv.to(dev, torch.bfloat16).eval(), dynamic=False), xb), xb

        timed("timm compile cuda-graph", timm_graph)
        try:
            static = deploy_fastest(laudnet.create_model(args.model, paradigm="static", img_size=args.image_size)
                                    .to(dev).eval(), x, repeats=args.repeats, compile=not args.smoke)
        except Exception as e:
            traceback.print_exc()
            save(dict(batch=x.shape[0], kind="static", variant="laudnet static", error=f"{type(e).__name__}: {e}"))
            return times
        for form, ms in static.times_ms.items():
            times.append(ms)
            save(dict(batch=x.shape[0], kind="static", variant=f"laudnet static {form} cuda-graph", ms=ms))
        return times

    def folded_graph():
        static = deploy(laudnet.create_model(args.model, paradigm="static").to(dev).eval(), torch.bfloat16)
        return GraphedModel(torch.compile(static, dynamic=False), x), x

    timed("laudnet folded whole-compile cuda-graph", folded_graph)
    return times


def cnn_setup(model, rate: float, batch: int, image: int):
    """Imposes random decisions at exactly `rate` on each deployed CNN (`forced_keep`)."""
    masks = random_decisions(block_decision_shapes(model, batch, image), rate, torch.Generator().manual_seed(0))

    def setup(deployed):
        for block, keep in zip(deployed.blocks(), masks, strict=True):
            block.forced_keep = keep.to(DEV)
    return setup


def vit_setup(model, paradigm: str, rate: float, batch: int):
    """Imposes exact random decisions at `rate` on every part the paradigm skips (`DeployedViTBlock.forced`)."""
    from bench_vit import Case, exact_decisions, impose

    case = Case(paradigm, **{part: rate for part in paradigm.split("+")})
    decisions = exact_decisions(model, case, batch, torch.Generator().manual_seed(0))
    return lambda deployed: impose([deployed], decisions, DEV)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="laud_resnet101")
    parser.add_argument("--paradigms", nargs="+", default=["layer", "channel", "spatial"])
    parser.add_argument("--batches", nargs="+", type=int, default=[128, 1])
    parser.add_argument("--rate", type=float, default=0.5)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--conditional", action="store_true",
                        help="CNN sparse form with conditional CUDA-graph nodes (deploy_fastest(conditional=True))")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--smoke", action="store_true",
                        help="the whole flow on the CPU, eager and uncompiled (CUDA-graph forms record their error): "
                             "checks the script without a GPU")
    parser.add_argument("--commit", default="unknown")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    global DEV
    if args.smoke:
        DEV, args.repeats = torch.device("cpu"), 1
    elif not torch.cuda.is_available():
        raise SystemExit("bench_fastest.py needs a CUDA device (or --smoke)")
    torch.backends.cudnn.benchmark = True
    meta = dict(device=torch.cuda.get_device_name() if DEV.type == "cuda" else "cpu", torch=torch.__version__,
                triton=_triton_version(),
                commit=args.commit, model=args.model, rate=args.rate)
    rows = []

    def save(row):
        rows.append(row)
        print(row, flush=True)
        with open(args.out, "w") as f:
            json.dump(dict(meta=meta, rows=rows), f, indent=1)

    vit = laudnet.model_info(args.model).is_vit
    size = args.image_size
    arch = dict(img_size=size) if vit else {}
    with torch.no_grad():
        for batch in args.batches:
            x = torch.randn(batch, 3, size, size, device=DEV).to(memory_format=torch.channels_last)
            static_ms = min(static_forms(args, x, save), default=float("nan"))
            for paradigm in args.paradigms:
                model = laudnet.create_model(args.model, paradigm=paradigm, **arch).to(DEV).eval()
                setup = (vit_setup(model, paradigm, args.rate, batch) if vit
                         else cnn_setup(model, args.rate, batch, size))
                t0 = time.time()
                try:
                    chosen = deploy_fastest(model, x, torch.bfloat16, setup=setup, repeats=args.repeats,
                                            conditional=args.conditional and not vit, compile=not args.smoke)
                except Exception as e:
                    save(dict(batch=batch, kind=paradigm, error=f"{type(e).__name__}: {str(e)[:300]}"))
                    continue
                save(dict(batch=batch, kind=paradigm, rate=args.rate, form=chosen.form, times_ms=chosen.times_ms,
                          errors=chosen.errors, build_s=round(time.time() - t0, 1),
                          ratio_to_static=round(min(chosen.times_ms.values()) / static_ms, 3)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
