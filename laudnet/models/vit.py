"""LAUD-ViT: timm's VisionTransformer (DeiT-Ti/S, ViT-B/16) with token, head and layer skipping (LAUDNet's ViT
extension, after AdaViT).

The model is built from timm's own VisionTransformer (never with downloaded weights), whose modules it takes over:
the blocks become `DynamicViTBlock`s holding timm's layers, so the state-dict keys are timm's exactly and timm weight
files load unchanged (`load_timm_weights`); maskers are the only new keys. timm is an optional dependency
(``pip install laudnet[vit]``): it is imported when a ViT is built, so the rest of laudnet works without it.

Supported: class-token ViTs without register or distillation tokens, pre-norm timm `Block`s with standard attention,
pooling by class token or token mean, a fixed input size (the position embedding's).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from laudnet.blocks.vit import DynamicViTBlock, check_keep_ratio
from laudnet.model_table import MODEL_TABLE
from laudnet.models._base import DynamicModel
from laudnet.models._registry import register_model
from laudnet.models.weights import load_backbone_weights
from laudnet.paradigms import parse_vit_paradigm


@dataclass(frozen=True)
class ViTCfg:
    """Architecture table entry: timm's model name and the shape values that are checked before timm builds it."""

    timm_name: str
    embed_dim: int
    num_heads: int
    patch_size: int = 16


MODEL_CFGS = {info.arch: ViTCfg(info.origin, embed_dim=info.dim, num_heads=info.heads, patch_size=info.patch_size)
              for info in MODEL_TABLE.values() if info.family == "vit"}


def _import_timm(name: str):
    try:
        import timm
    except ImportError:
        raise ImportError(f"the LAUD-ViTs need timm (for {name}): pip install 'laudnet[vit]'") from None
    return timm


def _check_shape(cfg: ViTCfg, img_size, timm_kwargs: dict) -> tuple[int, int]:
    patch = timm_kwargs.get("patch_size", cfg.patch_size)
    dim = timm_kwargs.get("embed_dim", cfg.embed_dim)
    heads = timm_kwargs.get("num_heads", cfg.num_heads)
    size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    if len(size) != 2 or not all(isinstance(s, int) and s > 0 for s in size):
        raise ValueError(f"image size must be a positive int or (height, width), got {img_size!r}")
    if not isinstance(patch, int) or patch < 1:
        raise ValueError(f"patch size must be a positive integer, got {patch!r}")
    if size[0] % patch or size[1] % patch:
        raise ValueError(f"image size {size[0]}x{size[1]} is not a multiple of the patch size {patch}")
    if not isinstance(heads, int) or heads < 1 or dim % heads:
        raise ValueError(f"{heads!r} attention heads do not divide the embedding width {dim}")
    return size


class LaudViT(DynamicModel):
    """Vision Transformer with token, head and layer skipping.

    Args:
        cfg: the timm architecture.
        paradigm: ``static`` or a ``+``-combination of ``token``, ``head`` and ``layer`` (e.g. ``token+head+layer``).
        granularity: must be None (the ViT paradigms have none).
        num_classes: classifier outputs.
        img_size: input side (int) or (height, width); a multiple of the patch size.
        token_keep_ratio: None for learned per-token decisions, or a fixed keep ratio in (0, 1] of the patch tokens
            per block (the token paradigm's fixed-ratio baseline, see `laudnet.blocks.vit.TokenMasker`).
        **timm_kwargs: passed to `timm.create_model` (e.g. ``depth``, ``embed_dim``, ``num_heads``, ``patch_size``,
            ``mlp_ratio``, ``drop_path_rate``).
    """

    def __init__(
        self,
        cfg: ViTCfg,
        *,
        paradigm: str = "token+head+layer",
        granularity=None,
        num_classes: int = 1000,
        img_size: int | tuple[int, int] = 224,
        token_keep_ratio: float | None = None,
        **timm_kwargs,
    ) -> None:
        super().__init__()
        self.paradigm, parts = parse_vit_paradigm(paradigm)
        if granularity is not None:
            raise ValueError(f"ViT paradigms take no granularity, got {granularity!r}")
        check_keep_ratio(token_keep_ratio)
        if token_keep_ratio is not None and "token" not in parts:
            raise ValueError(f"a token keep ratio needs the token paradigm, got paradigm {paradigm!r}")
        self.granularity = (None,)
        self.token_keep_ratio = token_keep_ratio
        size = _check_shape(cfg, img_size, timm_kwargs)
        timm = _import_timm(cfg.timm_name)
        from timm.models.vision_transformer import Block

        tv = timm.create_model(cfg.timm_name, pretrained=False, num_classes=num_classes, img_size=size, **timm_kwargs)
        if tv.cls_token is None or tv.num_prefix_tokens != 1 or tv.no_embed_class or tv.dynamic_img_size:
            raise ValueError("only class-token ViTs with a fixed-size position embedding and no extra tokens work")
        if tv.global_pool not in ("token", "avg") or tv.attn_pool is not None:
            raise ValueError(f"pooling {tv.global_pool!r} is not supported (class token or token mean)")
        if not all(type(b) is Block for b in tv.blocks):
            raise ValueError("only timm's pre-norm vision_transformer.Block is supported")
        self.img_size = size
        self.in_chans = tv.patch_embed.proj.in_channels
        self.patch_size = tv.patch_embed.patch_size[0]
        self.global_pool = tv.global_pool
        self.num_classes = num_classes
        self.embed_dim = tv.embed_dim
        self.patch_embed = tv.patch_embed
        self.cls_token = tv.cls_token
        self.pos_embed = tv.pos_embed
        self.pos_drop, self.patch_drop, self.norm_pre = tv.pos_drop, tv.patch_drop, tv.norm_pre
        self.blocks = nn.Sequential(*[DynamicViTBlock(b, self.paradigm, token_keep_ratio) for b in tv.blocks])
        self.norm, self.fc_norm, self.head_drop, self.head = tv.norm, tv.fc_norm, tv.head_drop, tv.head

    @property
    def num_tokens(self) -> int:
        """Tokens per image: patches plus the class token."""
        return (self.img_size[0] // self.patch_size) * (self.img_size[1] // self.patch_size) + 1

    def stages(self) -> list[nn.Sequential]:
        return [self.blocks]

    def _check_input(self, x: Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != self.in_chans:
            raise ValueError(f"expected an input of shape (B, {self.in_chans}, H, W), got {tuple(x.shape)}")
        hw = (int(x.shape[2]), int(x.shape[3]))
        if hw[0] % self.patch_size or hw[1] % self.patch_size:
            raise ValueError(f"image size {hw[0]}x{hw[1]} is not a multiple of the patch size {self.patch_size}")
        if hw != self.img_size:
            raise ValueError(
                f"this model takes {self.img_size[0]}x{self.img_size[1]} images (its position embedding has "
                f"{self.num_tokens} tokens), got {hw[0]}x{hw[1]}; build it with img_size={hw[0]}"
            )
        self._last_hw = hw

    # --- FLOPs ----------------------------------------------------------------------------------------------------
    def dense_flops(self, hw: tuple[int, int] = (224, 224)) -> float:
        """MACs of the static network per image at input size hw (patch embedding, blocks, classifier)."""
        if hw[0] % self.patch_size or hw[1] % self.patch_size:
            raise ValueError(f"image size {hw[0]}x{hw[1]} is not a multiple of the patch size {self.patch_size}")
        n_patches = (hw[0] // self.patch_size) * (hw[1] // self.patch_size)
        embed = n_patches * self.in_chans * self.patch_size**2 * self.embed_dim
        blocks = sum(b.dense_flops(n_patches + 1) for b in self.blocks)
        pool = n_patches * self.embed_dim if self.global_pool == "avg" else 0
        head = self.head.in_features * self.head.out_features if isinstance(self.head, nn.Linear) else 0
        return embed + blocks + pool + head

    # --- forward --------------------------------------------------------------------------------------------------
    def embed(self, x: Tensor) -> Tensor:
        """Patch embedding, class token and position embedding: (B, N, C) tokens."""
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        return self.norm_pre(self.patch_drop(self.pos_drop(x)))

    def forward_features(self, x: Tensor) -> Tensor:
        self._check_input(x)
        return self.norm(self.blocks(self.embed(x)))

    def forward_head(self, x: Tensor) -> Tensor:
        x = x[:, 0] if self.global_pool == "token" else x[:, 1:].mean(1)
        return self.head(self.head_drop(self.fc_norm(x)))


def load_timm_weights(
    model: LaudViT, state_dict: Mapping[str, Tensor] | str | os.PathLike, *, exclude_head: bool = False
) -> LaudViT:
    """Load a timm state dict (or a file holding one) into a LAUD-ViT of the same architecture, in place.

    Args:
        model: e.g. `laud_deit_small` for timm's ``deit_small_patch16_224``.
        state_dict: the state dict, or a path to a file saved with `torch.save`.
        exclude_head: skip the classifier (``head.*``) keys, to fine-tune on a dataset with other classes.

    Raises:
        ValueError: unexpected keys, missing backbone keys or shape mismatches (each named), or an unreadable file.
        FileNotFoundError: the file does not exist.
    """
    return load_backbone_weights(model, state_dict, exclude_head=exclude_head, head_prefix="head.")


def _create_vit(variant: str, **kwargs) -> LaudViT:
    return LaudViT(MODEL_CFGS[variant], **kwargs)


@register_model
def laud_deit_tiny(**kwargs) -> LaudViT:
    """LAUD-DeiT-Ti: timm `deit_tiny_patch16_224` with token, head and layer skipping."""
    return _create_vit("deit_tiny", **kwargs)


@register_model
def laud_deit_small(**kwargs) -> LaudViT:
    """LAUD-DeiT-S: timm `deit_small_patch16_224` with token, head and layer skipping."""
    return _create_vit("deit_small", **kwargs)


@register_model
def laud_vit_base(**kwargs) -> LaudViT:
    """LAUD-ViT-B/16: timm `vit_base_patch16_224` with token, head and layer skipping."""
    return _create_vit("vit_base", **kwargs)
