"""`laudnet flops` and `laudnet models`: build each model, run a batch, print per-block activation rates and FLOPs."""

from __future__ import annotations

import argparse
import importlib.util

import torch

import laudnet
from laudnet.paradigms import CNN_PARADIGMS, VIT_PARTS, format_granularity


def add_models_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pattern", nargs="?", default=None, help="shell-style filter, e.g. 'laud_resnet*'")


def run_models(args: argparse.Namespace) -> int:
    for name in laudnet.list_models(args.pattern):
        print(name)
    return 0


def add_flops_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", nargs="+", default=None, help="models to run (default: all registered)")
    parser.add_argument("--paradigms", nargs="+", default=None,
                        help="default: spatial, channel, layer for CNNs; token, head, layer, token+head+layer for ViTs")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--blocks", action="store_true", help="print every block, not only stage means")
    parser.add_argument("--seed", type=int, default=0)


def describe(model: laudnet.DynamicModel) -> list[str]:
    """Lines describing the last forward: per-stage (or per-block) activation rates and FLOPs."""
    infos = model.collect_info()
    lines = []
    start = 0
    for s, stage in enumerate(model.stages()):
        stage_infos = infos[start : start + len(stage)]
        start += len(stage)
        dense = sum(i.dense_flops for i in stage_infos)
        dyn = sum(float(i.mean_flops) for i in stage_infos)
        rates = " ".join(f"{i.activation_rate:.2f}" for i in stage_infos)
        lines.append(f"  stage {s + 1}: {dyn / 1e6:8.1f} / {dense / 1e6:8.1f} MMACs  block rates [{rates}]")
    return lines


def randomise_maskers(model: torch.nn.Module, x: torch.Tensor, generator: torch.Generator) -> None:
    """Give an untrained model's maskers random weights whose decisions vary: some positions, channels and blocks skip.

    Random weights alone skipped nothing on the RegNetYs (every rate 1.00): the maskers' biases start every block open
    (execute logit +5 spatial, +2 channel: "start as the static network") and the pooled RegNetY activations are small
    (mean 0.16 in the first block at 64 px), so ``w · pooled`` never outweighed the bias. ResNets skipped only because
    their activations grow with depth. Here each CNN masker's execute bias is instead shifted so that, on ``x``, a
    random fraction (10-90 %) of its decisions execute, whatever the scale of its input.
    """
    from laudnet.masks import ChannelMasker, SpatialMasker

    for n, p in model.named_parameters():
        if "masker" in n and p.dim() > 1:
            torch.nn.init.normal_(p, std=0.5, generator=generator)
    layers = {}  # masker -> its last layer, whose output is (execute logits, skip logits)
    for module in model.modules():
        if isinstance(module, SpatialMasker):
            layers[module] = (module.conv, module.groups)
        elif isinstance(module, ChannelMasker):
            layers[module] = (module.fc2, module.n_groups)
    margins: dict[torch.nn.Module, torch.Tensor] = {}

    def keep(layer, groups):
        def hook(_module, _inputs, out):
            margins[layer] = (out[:, :groups] - out[:, groups:]).detach().flatten()
        return hook

    handles = [layer.register_forward_hook(keep(layer, g)) for layer, g in layers.values()]
    try:
        # Calibrate one masker at a time, in forward order: each shift changes what the later blocks see.
        for layer, groups in layers.values():
            with torch.no_grad():
                model(x)
                q = float(torch.empty(()).uniform_(0.1, 0.9, generator=generator))
                layer.bias[:groups] -= torch.quantile(margins[layer].float(), 1 - q)
    finally:
        for h in handles:
            h.remove()


# What `laudnet flops` shows without --paradigms: every dynamic CNN paradigm; each ViT part alone and all together.
SHOWN_CNN = [p for p in CNN_PARADIGMS if p != "static"]
SHOWN_VIT = [*VIT_PARTS, "+".join(VIT_PARTS)]


def shown_paradigms(name: str) -> list[str]:
    """The paradigms `laudnet flops` shows of a registered model without --paradigms (by its family in the table)."""
    return SHOWN_VIT if laudnet.model_info(name).is_vit else SHOWN_CNN


def run_flops(args: argparse.Namespace) -> int:
    from laudnet.train.cli import _guard

    return _guard("flops", lambda: _flops(args))


def _flops(args: argparse.Namespace) -> int:
    if args.batch < 1:
        raise ValueError(f"--batch must be a positive integer, got {args.batch}")
    if args.image_size < 1:
        raise ValueError(f"--image-size must be a positive integer, got {args.image_size}")
    known = laudnet.list_models()
    unknown = [m for m in args.models or [] if m not in known]
    if unknown:
        raise ValueError(f"unknown model {unknown[0]!r}; choose from: {', '.join(known)}")
    torch.manual_seed(args.seed)
    names = args.models or known
    x = torch.randn(args.batch, 3, args.image_size, args.image_size)
    print(f"input {tuple(x.shape)}; FLOPs are multiply-accumulates per image; rate = dynamic (masker included) / "
          "static FLOPs per block, so a block that executes everything has a rate a little above 1")
    for name in names:
        info = laudnet.model_info(name)
        if info.is_vit and args.models is None and importlib.util.find_spec("timm") is None:
            print(f"{name}: skipped (needs timm: pip install 'laudnet[vit]')")
            continue
        for paradigm in args.paradigms or shown_paradigms(name):
            kwargs = {"img_size": args.image_size} if info.takes_img_size else {}
            model = laudnet.create_model(name, paradigm=paradigm, **kwargs).eval()
            # Fresh maskers execute everything; random maskers, calibrated on this batch, show skipping at work.
            randomise_maskers(model, x, torch.Generator().manual_seed(args.seed))
            with torch.no_grad():
                model(x)
            flops = laudnet.model_flops(model, (3, args.image_size, args.image_size))
            gran = format_granularity(model.granularity)
            print(f"{name} {paradigm} (granularity {gran}): dense {flops.dense / 1e9:.2f} G, "
                  f"dynamic {flops.dynamic / 1e9:.2f} G, ratio {flops.ratio:.3f}")
            lines = describe(model)
            if args.blocks:
                lines = [f"  {i.name:<30} rate {i.activation_rate:.3f}  {float(i.mean_flops) / 1e6:8.1f} MMACs"
                         for i in model.collect_info()]
            print("\n".join(lines))
    return 0
