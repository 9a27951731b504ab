"""``laudnet train``, ``laudnet eval`` and ``laudnet viz``: the command line over :func:`laudnet.train.loop.train`.

- ``laudnet train -c config.yaml [--flag value ...]``: flags override the YAML file, which overrides the defaults;
  under ``torchrun`` every process runs the same command (one per GPU).
- ``laudnet eval CHECKPOINT``: top-1/top-5, mean dense and dynamic FLOPs, per-block activation rates and the
  adaptivity of the decisions (:mod:`laudnet.train.adaptivity`), as a table and a JSON file; for a detection
  checkpoint (``--task detection|instance``) the COCO table and the backbone's FLOPs, rates and adaptivity
  (:mod:`laudnet.detection.report`).
- ``laudnet viz CHECKPOINT [CHECKPOINT ...]``: the per-block activation-rate chart (runs side by side), the
  execution-share histogram, and, for spatial models, the localisation lift per stage and mask overlays on validation
  images, as PNGs; for a detection checkpoint, validation images with the predicted boxes (and masks) and each
  backbone stage's executed pixels.

Bad input (a missing data root, an unknown model or config key, a target outside (0, 1], a checkpoint of another
model, ...) ends the command with one line ``laudnet <command>: error: <message>`` and exit status 2.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

EXIT_BAD_INPUT = 2
EXIT_TERMINATED = 143  # 128 + SIGTERM: the run stopped on request and can be resumed (130 after SIGINT)


def _guard(command: str, fn: Callable[[], int]) -> int:
    """Run ``fn``; a bad-input error becomes one line on stderr and exit status 2."""
    from laudnet.train.checkpoint import CheckpointError

    try:
        return fn()
    except (ValueError, FileNotFoundError, NotADirectoryError, CheckpointError) as err:
        print(f"laudnet {command}: error: {_one_line(err)}", file=sys.stderr)
        return EXIT_BAD_INPUT


def _one_line(err: BaseException) -> str:
    """The message of ``err``; for one re-raised from a DataLoader worker, the original message without the traceback
    that torch puts before it (``Caught BadImageError in DataLoader worker process 0. Original Traceback ...``)."""
    text = str(err).strip()
    if "Original Traceback" in text:
        text = text.splitlines()[-1].split(": ", 1)[-1]
    return text


# ----------------------------------------------------------------------------------------------------------- train


TRAIN_EPILOG = """examples:
  laudnet train -c my.yaml --mode static --run-name static
  laudnet train -c my.yaml --paradigm spatial --target 0.5 --init runs/static/best.pt --run-name spatial
  laudnet train --task detection --dataset fashion-canvas-det --model laud_resnet50 --init runs/static/best.pt
  laudnet train -c laudnet/configs/detection-canvas.yaml --init runs/static/best.pt --run-name det
  laudnet train --task instance --dataset coco --data-root ROOT --init resnet50-0676ba61.pth
  torchrun --nproc-per-node 8 -m laudnet train -c my.yaml      (one process per GPU)

--task detection|instance: a torchvision detector (--detector) with --model as its backbone; --dataset
fashion-canvas-det (--data-root: the Fashion-MNIST folder) or coco, whose --data-root holds ROOT/train/ and
ROOT/val/ (images) and ROOT/annotations/instances_train.json and instances_val.json (COCO 2017's train2017/,
val2017/ and instances_{train,val}2017.json are found too)."""


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    from laudnet.train.config import add_train_arguments as add_config_arguments

    parser.formatter_class = argparse.RawDescriptionHelpFormatter  # keeps the epilog's lines
    parser.epilog = TRAIN_EPILOG
    add_config_arguments(parser)


def _check_device(name: str) -> None:
    """Refuse a CUDA device on a machine without one (a one-line error rather than a traceback from deep inside)."""
    if str(name).startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ValueError(f"device {name} was requested but this machine has no CUDA GPU: use --device cpu or auto")


def _check_data_chosen(args: argparse.Namespace) -> None:
    """``laudnet train`` with no data given would start the defaults' long ImageNet-size job: ask for a choice."""
    if getattr(args, "config", None) or any(hasattr(args, key) for key in ("dataset", "data_root")):
        return
    raise ValueError(
        "no data chosen: give --dataset and/or --data-root, or a config file with -c (bare defaults would train "
        "laud_resnet50 for 100 epochs at 224 px); for a first run in minutes on the CPU, try `laudnet demo`"
    )


def run_train(args: argparse.Namespace) -> int:
    def body() -> int:
        from laudnet.train.config import resolve_config
        from laudnet.train.loop import train

        _check_data_chosen(args)
        cfg = resolve_config(args)
        _check_device(cfg.device)
        result = train(cfg)
        if result.interrupted:  # 128 + the signal, as a shell reports a process killed by it: 143 or 130
            return 128 + int(result.stop_signal or 15)
        if result.best_top1 is not None:
            print(f"done: {result.run_dir} (best val top-1 {result.best_top1:.2f}%)")
        elif result.best is not None:  # detection: box AP (mask AP for instance segmentation), in percent
            what = result.best_metric.replace("_", " ").replace(" ap", " AP")
            print(f"done: {result.run_dir} (best {what} {result.best:.2f})")
        return 0

    return _guard("train", body)


# ------------------------------------------------------------------------------------------------------------ eval


def _add_data_overrides(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("data (default: the checkpoint's training config)")
    group.add_argument("--dataset", default=None, help="dataset name")
    group.add_argument("--data-root", default=None, help="data folder")
    group.add_argument("--image-size", type=int, default=None, help="input side")
    group.add_argument("--val-subset", type=int, default=None, help="evaluate only this many images")
    group.add_argument("-b", "--batch-size", type=int, default=None,
                       help="evaluation batch (default: 128; 4 for detection checkpoints)")
    group.add_argument("-j", "--workers", type=int, default=0, help="data loader processes (default: 0)")
    group.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: auto)")
    group.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's choice)")
    group.add_argument("--on-bad-image", choices=("skip", "error"), default=None,
                       help="imagefolder and coco: skip an unreadable image with a warning, or stop naming it "
                       "(default: skip)")


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="a laudnet checkpoint (last.pt or best.pt of a run)")
    parser.add_argument("-m", "--model", default=None, help="refuse a checkpoint of another model than this one")
    parser.add_argument("--json", default=None, help="where to write the JSON (default: <checkpoint>.eval.json)")
    _add_data_overrides(parser)


def checkpoint_model_args(state: dict[str, Any]) -> dict[str, Any]:
    """The `create_model` arguments of a training checkpoint: its ``model_args``, or for a checkpoint written before
    they were stored, the model name, paradigm, granularity, classes and image size (where the model takes one)."""
    from laudnet.train.build import size_kwargs

    if "model_args" in state:
        return dict(state["model_args"])
    return {"name": state["model_name"], "paradigm": state["paradigm"], "granularity": state.get("granularity"),
            "num_classes": state["num_classes"],
            **size_kwargs(state["model_name"], state["config"].get("image_size", 224))}


def load_trained(path: str | Path, model_name: str | None = None) -> tuple[Any, dict[str, Any]]:
    """The model of a laudnet checkpoint (eval mode, on CPU) and the checkpoint dict.

    Raises:
        FileNotFoundError, CheckpointError: no such file, not a laudnet checkpoint, or of another model.
    """
    from laudnet.models import create_model
    from laudnet.train.checkpoint import CheckpointError, load_checkpoint

    if Path(path).is_dir():
        held = sorted(p.name for p in Path(path).glob("*.pt"))
        if not held:
            raise ValueError(f"{path} is a folder, not a checkpoint, and holds no checkpoint (*.pt)")
        pick = Path(path) / ("last.pt" if "last.pt" in held else held[0])
        raise ValueError(f"{path} is a run folder, not a checkpoint; it holds {', '.join(held)}: give one, e.g. {pick}")
    state = load_checkpoint(path, expected_model=model_name)
    if "config" not in state or "paradigm" not in state or "num_classes" not in state:
        raise CheckpointError(f"checkpoint {path} has no training config: it was not written by laudnet train")
    if is_detection(state):
        from laudnet.detection.task import trained_detector

        return trained_detector(state, path), state
    model = create_model(**checkpoint_model_args(state))
    model.load_state_dict(state["model"])
    return model.eval(), state


def is_detection(state: dict[str, Any]) -> bool:
    """Whether a training checkpoint is of a detection or instance-segmentation run."""
    return state.get("task", "classification") != "classification"


def _eval_config(state: dict[str, Any], args: argparse.Namespace):
    from laudnet.train.config import TrainConfig

    values = dict(state["config"])
    for key in ("dataset", "data_root", "image_size", "val_subset", "threads", "on_bad_image"):
        if getattr(args, key, None) is not None:
            values[key] = getattr(args, key)
    values.update(workers=args.workers, device=args.device, resume=None, init=None)
    return TrainConfig(**values)


def evaluate_checkpoint(path: str | Path, args: argparse.Namespace) -> tuple[Any, dict[str, Any], Any]:
    """(EvalResult, checkpoint dict, config) of a checkpoint on its validation set (with ``args``' overrides)."""
    import torch

    from laudnet.data import build_loader
    from laudnet.train.build import build_datasets, check_config_inputs
    from laudnet.train.distributed import resolve_device
    from laudnet.train.evaluation import evaluate

    model, state = load_trained(path, getattr(args, "model", None))
    cfg = _eval_config(state, args)
    _check_device(cfg.device)
    check_config_inputs(cfg)
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    batch_size = args.batch_size or (4 if is_detection(state) else 128)
    if batch_size < 1:
        raise ValueError(f"batch size must be positive, got {batch_size}")
    device = resolve_device(cfg.device)
    if is_detection(state):
        return _evaluate_detector_checkpoint(model, state, cfg, path, batch_size, device), state, cfg
    (val_set,), classes = build_datasets(cfg, ("val",), boxes=True)  # fashion-canvas: boxes for the lift
    if classes != state["num_classes"]:
        raise ValueError(f"{cfg.dataset} has {classes} classes but the checkpoint {path} has {state['num_classes']}")
    loader = build_loader(val_set, batch_size, train=False, num_workers=cfg.workers)
    result = evaluate(model.to(device), loader, device, amp=cfg.amp, channels_last=cfg.channels_last)
    return result, state, cfg


def detection_val_set(state: dict[str, Any], cfg, path: str | Path):
    """The validation set of a detection checkpoint's config; refused when it has classes the detector lacks."""
    from laudnet.detection.task import build_detection_datasets

    (val_set,), classes = build_detection_datasets(cfg, ("val",))
    if classes > state["num_classes"]:
        raise ValueError(f"{cfg.dataset} has category ids up to {classes - 1} but the detector of {path} has "
                         f"{state['num_classes']} classes (background included)")
    return val_set


def _evaluate_detector_checkpoint(model, state: dict[str, Any], cfg, path: str | Path, batch_size: int, device):
    from laudnet.data import build_loader
    from laudnet.detection import collate_detection, evaluate_detector

    loader = build_loader(detection_val_set(state, cfg, path), batch_size, train=False, num_workers=cfg.workers,
                          collate_fn=collate_detection)
    return evaluate_detector(model.to(device), loader, device=device)  # fp32, as the run's validation


def format_eval(result, title: str) -> str:
    """A text table of an :class:`~laudnet.train.evaluation.EvalResult`."""
    from laudnet.train.viz import short_block_name

    lines = [
        title,
        f"  top-1 {result.top1:6.2f} %   top-5 {result.top5:6.2f} %   ({result.num_samples} images)",
        f"  FLOPs per image: dense {result.dense_flops / 1e6:.2f} M, dynamic {result.dynamic_flops / 1e6:.2f} M, "
        f"ratio {result.flops_ratio:.3f}",
        "  block    activation rate",
    ]
    for name, rate in zip(result.block_names, result.block_rates, strict=True):
        lines.append(f"  {short_block_name(name):<8} {rate:6.3f} {'#' * round(20 * min(rate, 1.0))}")
    if result.adaptivity is not None:
        lines += format_adaptivity(result.adaptivity)
    return "\n".join(lines)


def format_lift(lift: float | str | None) -> str:
    """A lift as text: ``3.1``, ``inf`` or ``n/a`` (undefined)."""
    if lift is None:
        return "n/a"
    return f"{float(lift):.2f}" if float(lift) != float("inf") else "inf"


def stage_lift_text(adaptivity) -> str:
    """``s1 1.20, s2 3.10, ...``: the stage lifts of an ``AdaptivityResult`` (empty without boxes)."""
    return ", ".join(f"{s.stage} {format_lift(s.lift)}" for s in adaptivity.stages)


def format_adaptivity(adaptivity) -> list[str]:
    """Lines of the adaptivity section of :func:`format_eval`."""
    from laudnet.train.viz import short_block_name

    a = adaptivity
    low, high = (round(100 * t) for t in a.thresholds)
    units = "blocks" if a.unit == "block" else "channel groups"
    lines = [f"  adaptivity ({a.paradigm}, {a.num_images} images)"]
    if a.stages:
        lines.append(f"    masks on the items: lift {stage_lift_text(a)}  (1 = blind)")
        lines.append("    P(patch computed) in / out of the box: "
                     + ", ".join(f"{s.stage} {_p(s.p_in)}/{_p(s.p_out)}" for s in a.stages))
    lines.append(f"    {units} executed by {low}-{high} % of the images: {a.adaptive_units}/{a.total_units} "
                 f"({100 * a.adaptive_fraction:.0f} %)")
    what = "with a computed patch" if a.paradigm == "spatial" else "executing"
    if a.unit == "group":
        what = "executing a group (mean over groups; adaptive groups)"
    cells = [f"{short_block_name(b.name)} {b.share:.2f}" + (f" ({b.adaptive}/{len(b.shares)})" if a.unit == "group"
                                                            else "") for b in a.blocks]
    lines.append(f"    share of images {what}:")
    per_line = 5 if a.unit == "group" else 8
    for k in range(0, len(cells), per_line):
        lines.append("      " + "  ".join(cells[k : k + per_line]))
    return lines


def _p(p: float | None) -> str:
    return "-" if p is None else f"{p:.2f}"


def run_eval(args: argparse.Namespace) -> int:
    def body() -> int:
        result, state, cfg = evaluate_checkpoint(args.checkpoint, args)
        out = Path(args.json) if args.json else Path(f"{args.checkpoint}.eval.json")
        if is_detection(state):
            from laudnet.detection.report import detection_payload, format_detection_eval

            print(format_detection_eval(result, f"{args.checkpoint}: {_detection_label(state)}, {cfg.dataset} val"))
            _write_json(out, detection_payload(result, state, cfg, args.checkpoint))
            return 0
        from laudnet.train.checkpoint import checkpoint_target

        gran = state.get("granularity")
        what = f"{state['model_name']} {state['paradigm']}" + (f" ({'-'.join(map(str, gran))})" if gran else "")
        print(format_eval(result, f"{args.checkpoint}: {what}, {cfg.dataset} val at {cfg.image_size} px"))
        payload = {
            "checkpoint": str(args.checkpoint),
            "model": state["model_name"],
            "paradigm": state["paradigm"],
            "granularity": gran,
            "target": checkpoint_target(state),
            "dataset": cfg.dataset,
            "image_size": cfg.image_size,
            **result.to_dict(),
        }
        _write_json(out, payload)
        return 0

    return _guard("eval", body)


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {path}")


def _detection_label(state: dict[str, Any]) -> str:
    """``fasterrcnn on laud_resnet50 spatial 4-4-2-1 t=0.5``."""
    from laudnet.train.checkpoint import checkpoint_target

    args = state["model_args"]
    gran = f" {'-'.join(map(str, args['granularity']))}" if args["granularity"] else ""
    target = f" t={checkpoint_target(state)}" if args["paradigm"] != "static" else ""
    return f"{args['kind']} on {state['model_name']} {args['paradigm']}{gran}{target}"


# ------------------------------------------------------------------------------------------------------------- viz


def add_viz_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoints", nargs="+", help="laudnet checkpoints; several runs are drawn side by side")
    parser.add_argument("--labels", nargs="+", default=None, help="legend labels (default: paradigm and target)")
    parser.add_argument("-o", "--out", default="viz", help="output folder (default: viz)")
    parser.add_argument("--num-images", type=int, default=6, help="images in the mask overlays (default: 6)")
    parser.add_argument("--score-threshold", type=float, default=0.5,
                        help="detection checkpoints: draw the predictions scoring at least this (default: 0.5)")
    _add_data_overrides(parser)


def _run_label(state: dict[str, Any]) -> str:
    from laudnet.train.checkpoint import checkpoint_target

    if is_detection(state):
        return _detection_label(state)
    if state["paradigm"] == "static":
        return "static"
    gran = state.get("granularity")
    gran_text = f" {'-'.join(map(str, gran))}" if gran else ""
    return f"{state['paradigm']}{gran_text} t={checkpoint_target(state)}"


def mask_figure(model, cfg, path: Path, num_images: int, title: str) -> Path:
    """Mask overlays of a spatial ``model`` on the first ``num_images`` validation images of ``cfg``'s dataset."""
    import torch

    from laudnet.data import build_dataset
    from laudnet.data.canvas import IMAGENET_MEAN, IMAGENET_STD, FashionCanvas
    from laudnet.train.viz import plot_mask_overlays, spatial_mask_maps

    if num_images < 1:
        raise ValueError(f"--num-images must be positive, got {num_images}")
    kwargs = cfg.dataset_kwargs("val")
    kwargs.pop("num_samples", None)
    dataset = build_dataset(cfg.dataset, cfg.data_root, "val", cfg.image_size, **kwargs)
    count = min(num_images, len(dataset))
    boxes: list[Any] | None = None
    if isinstance(dataset, FashionCanvas):
        samples = [dataset.sample(i) for i in range(count)]
        images = torch.stack([s.image for s in samples])
        shown = torch.stack([s.grey for s in samples])
        boxes = [s.box for s in samples]
        labels = [s.label for s in samples]
    else:
        readable = (p for p in (dataset[i] for i in range(len(dataset))) if p is not None)  # None: unreadable image
        pairs = list(itertools.islice(readable, count))
        images = torch.stack([p[0] for p in pairs])
        labels = [int(p[1]) for p in pairs]
        mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
        shown = (images * std + mean).clamp(0, 1)
        if images.shape[1] == 3 and cfg.dataset.startswith("fashion"):
            shown = shown[:, 0]
    device = next(model.parameters()).device
    maps, rates, logits = spatial_mask_maps(model, images.to(device))
    classes = getattr(dataset, "classes", None)

    def name(k: int) -> str:
        return str(classes[k]) if classes is not None and k < len(classes) else str(k)

    preds = logits.argmax(1).tolist()
    titles = [f"{name(y)} -> {name(p)}" for y, p in zip(labels, preds, strict=True)]
    return plot_mask_overlays(
        shown.cpu(), maps.cpu(), path, boxes=boxes, titles=titles, stage_rates=rates.cpu(), suptitle=title
    )


def run_viz(args: argparse.Namespace) -> int:
    def body() -> int:
        from laudnet.train.viz import RateSeries, plot_activation_rates, plot_execution_shares, plot_stage_lifts

        if args.labels is not None and len(args.labels) != len(args.checkpoints):
            raise ValueError(f"--labels has {len(args.labels)} entries for {len(args.checkpoints)} checkpoints")
        out = Path(args.out)
        series, spatial, targets, adaptive, detectors = [], [], set(), [], []
        for k, ckpt in enumerate(args.checkpoints):
            result, state, cfg = evaluate_checkpoint(ckpt, args)
            label = args.labels[k] if args.labels else _run_label(state)
            if state["paradigm"] != "static":
                targets.add(cfg.target)
            if is_detection(state):
                detectors.append((ckpt, label, state, cfg))
                backbone = result["backbone"]
                series.append(RateSeries(label, result["block_names"], result["block_rates"], backbone["flops_ratio"]))
                if result["adaptivity"] is not None:
                    adaptive.append((label, result["adaptivity"]))
                aps = ", ".join(f"{name} AP {100 * result[t]['AP']:.2f}"
                                for t, name in (("bbox", "box"), ("segm", "mask")) if t in result)
                print(f"{ckpt}: {label}: {aps}, backbone FLOPs ratio {backbone['flops_ratio']:.3f} "
                      f"({result['images']} images)")
                continue
            series.append(RateSeries(label, result.block_names, result.block_rates, result.flops_ratio))
            if result.adaptivity is not None:
                adaptive.append((label, result.adaptivity))
            if state["paradigm"] == "spatial":
                spatial.append((ckpt, label, cfg))
            print(f"{ckpt}: {label}: top-1 {result.top1:.2f}%, FLOPs ratio {result.flops_ratio:.3f} "
                  f"({result.num_samples} images)")
        target = targets.pop() if len(targets) == 1 else None
        path = plot_activation_rates(series, out / "activation_rates.png", target=target)
        print(f"wrote {path}")
        if adaptive:
            path = plot_execution_shares(adaptive, out / "execution_shares.png",
                                         title="How many images execute each block (channel group)")
            print(f"wrote {path}")
        if any(a.stages for _, a in adaptive):
            path = plot_stage_lifts(adaptive, out / "stage_lift.png")
            print(f"wrote {path}")
        for ckpt, label, cfg in spatial:
            model, _ = load_trained(ckpt)
            fname = "masks.png" if len(spatial) == 1 else f"masks-{Path(ckpt).parent.name}-{Path(ckpt).stem}.png"
            box = ", green = item box" if "canvas" in cfg.dataset else ""
            title = f"{label}: red = computed, grey = skipped{box}"
            path = mask_figure(model, cfg, out / fname, args.num_images, title)
            print(f"wrote {path}")
        for ckpt, label, state, cfg in detectors:
            from laudnet.detection.report import detection_figure

            model, _ = load_trained(ckpt)
            fname = ("detections.png" if len(detectors) == 1
                     else f"detections-{Path(ckpt).parent.name}-{Path(ckpt).stem}.png")
            title = f"{label}: predicted boxes (red), ground truth (green); per stage red = computed"
            path = detection_figure(model, detection_val_set(state, cfg, ckpt), out / fname, args.num_images, title,
                                    args.score_threshold)
            print(f"wrote {path}")
        if not spatial and not detectors:
            print("no spatial model among the checkpoints: no mask overlays")
        return 0

    return _guard("viz", body)
