"""Set-up of a LAUDNet training run (Han et al., TPAMI 2024): input checks, datasets, the model and its
initialisation (torchvision weights or a laudnet checkpoint), and the optimiser with its parameter groups.

Shared by `laudnet train` (:mod:`laudnet.train.task`), `laudnet eval`, the detection backbones and the benchmarks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from laudnet.paradigms import GRANULAR_PARADIGMS
from laudnet.train.checkpoint import FORMAT, load_checkpoint
from laudnet.train.config import TrainConfig
from laudnet.train.schedules import group_lr

# ---------------------------------------------------------------------------------------------- inputs and data


def check_config_inputs(cfg: TrainConfig) -> None:
    """Cheap checks of what a run needs, before any data is read: the model name and the data root.

    Raises:
        ValueError: an unknown model (naming the choices; for detection, an unknown backbone) or an empty data root.
        FileNotFoundError: a data root or an ``init`` file that does not exist.
    """
    from laudnet.models import list_models

    if cfg.task != "classification":
        from laudnet.detection.backbone import check_backbone_name

        check_backbone_name(cfg.model)
    elif cfg.model not in list_models():
        raise ValueError(f"unknown model {cfg.model!r}; choose from: {', '.join(list_models())}")
    if cfg.data_root is not None:
        root = Path(cfg.data_root)
        if not root.exists():
            raise FileNotFoundError(f"data root {root} does not exist")
        if not root.is_dir():
            raise ValueError(f"data root {root} is not a folder")
        if not any(root.iterdir()):
            raise ValueError(f"data root {root} is empty")
    if cfg.init is not None and not Path(cfg.init).is_file():
        raise FileNotFoundError(f"init weights file {cfg.init} does not exist")


def build_datasets(
    cfg: TrainConfig, splits: tuple[str, ...] = ("train", "val"), *, boxes: bool = False
) -> tuple[list[Dataset], int]:
    """The datasets of ``splits`` and the number of classes; bad paths fail here with a message naming them.

    With ``boxes``, the non-training splits of ``fashion-canvas`` yield ``(image, label, box)`` (for the localisation
    lift of `laudnet.train.evaluation.evaluate`); the training split never does.
    """
    from laudnet.data import build_dataset, canonical_name, num_classes

    def kwargs(split: str) -> dict[str, Any]:
        kw = cfg.dataset_kwargs(split)
        if boxes and split != "train" and canonical_name(cfg.dataset) == "fashion-canvas":
            kw["return_box"] = True
        return kw

    datasets = [build_dataset(cfg.dataset, cfg.data_root, split, cfg.image_size, **kwargs(split)) for split in splits]
    return datasets, num_classes(cfg.dataset, cfg.data_root)


# -------------------------------------------------------------------------------------- model and initialisation


def model_paradigm(cfg: TrainConfig) -> str:
    """The paradigm the model is built with: ``static`` for static training, else the configured one."""
    return "static" if cfg.mode == "static" else cfg.paradigm


def model_args(cfg: TrainConfig, num_classes: int, paradigm: str | None = None) -> dict[str, Any]:
    """The `create_model` arguments of ``cfg``'s model: granularity only where the paradigm takes one (a static
    teacher of a spatial run ignores it), ``img_size`` and ``masker_norm`` where the model table says the constructor
    takes them."""
    from laudnet.models import model_info

    paradigm = paradigm or model_paradigm(cfg)
    granularity = cfg.granularity if paradigm in GRANULAR_PARADIGMS else None
    args = {"name": cfg.model, "paradigm": paradigm, "granularity": granularity, "num_classes": num_classes,
            **size_kwargs(cfg.model, cfg.image_size)}
    if model_info(cfg.model).takes("masker_norm"):  # the CNNs' masker form (a ViT's maskers have no normalisation)
        args["masker_norm"] = cfg.masker_norm
    return args


def build_model(cfg: TrainConfig, num_classes: int, paradigm: str | None = None) -> nn.Module:
    """The registered model of ``cfg``: ``create_model(**model_args(cfg, num_classes, paradigm))``; the model keeps
    its arguments in ``model.model_args`` (with the resolved granularity), which checkpoints store."""
    from laudnet.models import create_model

    return create_model(**model_args(cfg, num_classes, paradigm))


def size_kwargs(model_name: str, image_size: int) -> dict[str, int]:
    """Builder arguments that depend on the image size: a ViT's position embedding is built for one size (the model
    table says which constructors take ``img_size``)."""
    from laudnet.models import model_info

    return {"img_size": image_size} if model_info(model_name).takes_img_size else {}


def read_init_state(path: str | Path, model_name: str) -> tuple[dict[str, Tensor], str]:
    """The state dict of an ``init`` file and its kind (``laudnet`` checkpoint or ``torchvision`` weights).

    A laudnet checkpoint must be of ``model_name``; its maskers are dropped by :func:`load_init` where the model has
    none.

    Raises:
        FileNotFoundError, ValueError, CheckpointError: unreadable file or a checkpoint of another model.
    """
    from laudnet.models.weights import _read_state_dict

    path = Path(path)
    try:
        peek = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"init weights file {path} does not exist") from None
    except Exception:
        peek = None  # let the readers below produce their precise message
    if isinstance(peek, dict) and peek.get("format") == FORMAT:
        state = load_checkpoint(path, expected_model=model_name)
        return dict(state["model"]), "laudnet"
    return dict(_read_state_dict(path)), "torchvision"


def classifier_prefix(model: nn.Module) -> str:
    """State-dict prefix of the model's classifier: ``fc.`` (torchvision CNNs) or ``head.`` (timm ViTs)."""
    own = model.state_dict()
    for prefix in ("fc.", "head."):
        if f"{prefix}weight" in own:
            return prefix
    raise ValueError(f"{type(model).__name__} has neither an fc nor a head classifier")


def load_init(model: nn.Module, state_dict: dict[str, Tensor]) -> bool:
    """Load static weights into ``model`` (maskers stay fresh); returns whether the classifier was loaded.

    The classifier (``fc`` of the CNNs, ``head`` of the ViTs) is skipped when its number of classes differs from the
    model's (fine-tuning on other classes).
    """
    from laudnet.models.weights import load_backbone_weights

    own = model.state_dict()
    prefix = classifier_prefix(model)
    key = f"{prefix}weight"
    sd = {k: v for k, v in state_dict.items() if "masker" not in k or k in own}
    head_fits = key in sd and sd[key].shape == own[key].shape
    load_backbone_weights(model, sd, exclude_head=not head_fits, head_prefix=prefix)
    return head_fits


def zero_init_residual(model: nn.Module) -> None:
    """Set the scale of every block's last BN to 0, so each residual block starts as its shortcut.

    From scratch, torchvision's init makes the residual sums grow with depth; on fashion-canvas at 64 px, SGD at lr 0.05
    then diverged in the first steps (loss 12 after 8 steps, chance is 2.3). Starting the branches at zero (Goyal et
    al., 2017) keeps the early network shallow in effect.
    """
    for block in model.dynamic_blocks():
        if hasattr(block, "conv_bn_pairs"):  # CNN bottlenecks; ViT blocks (pre-norm) need no such start
            nn.init.zeros_(block.conv_bn_pairs()["conv3"][1].weight)


# --------------------------------------------------------------------------------------------------- optimiser


def _exempt_from_decay(name: str, param: Tensor) -> bool:
    # The ViT convention (DeiT, timm): biases, norm scales (1-D) and the position embedding and class token are not
    # decayed: shrinking them toward zero is no regulariser of the mapping, only a bias on the token geometry.
    return param.ndim <= 1 or name.rsplit(".", 1)[-1] in ("pos_embed", "cls_token")


def build_optimizer(cfg: TrainConfig, model: nn.Module, lr: float) -> torch.optim.Optimizer:
    """SGD (Nesterov as configured) or AdamW, with a backbone group and a masker group at ``masker_lr_mult`` × lr
    (`laudnet.train.schedules.group_lr`).

    Weight decay applies to every parameter, as in the official recipe, unless ``decay_all`` is off: then
    biases, norm scales, the position embedding and the class token get none (each in its own ``*_no_decay`` group).
    """
    groups = []
    for group in ("backbone", "masker"):
        params = [(n, p) for n, p in model.named_parameters()
                  if p.requires_grad and ("masker" in n) == (group == "masker")]
        exempt = [] if cfg.decay_all else [p for n, p in params if _exempt_from_decay(n, p)]
        decayed = [p for n, p in params if cfg.decay_all or not _exempt_from_decay(n, p)]
        start_lr = group_lr(group, lr, cfg.masker_lr_mult)
        if decayed or group == "backbone":
            groups.append({"params": decayed, "lr": start_lr, "name": group, "weight_decay": cfg.weight_decay})
        if exempt:
            groups.append({"params": exempt, "lr": start_lr, "name": f"{group}_no_decay", "weight_decay": 0.0})
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), weight_decay=cfg.weight_decay)
    return torch.optim.SGD(
        groups,
        lr=lr,
        momentum=cfg.momentum,
        nesterov=cfg.nesterov and cfg.momentum > 0,
        weight_decay=cfg.weight_decay,
    )


