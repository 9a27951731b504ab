"""Helpers shared by tests (imported as a plain module: tests/ is on sys.path through rootdir conftest)."""

import importlib.util
import sys
from pathlib import Path

import torch
import torchvision

ROOT = Path(__file__).resolve().parents[1]

TORCHVISION_BUILDERS = {
    "laud_resnet50": torchvision.models.resnet50,
    "laud_resnet101": torchvision.models.resnet101,
    "laud_regnety_400mf": torchvision.models.regnet_y_400mf,
    "laud_regnety_800mf": torchvision.models.regnet_y_800mf,
}


def load_benchmark(name: str):
    """The script benchmarks/<name>.py as a module (benchmarks/ is not a package), registered under its name (a
    dataclass looks its module up while it is defined); loaded once per test session."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
        sys.modules[name] = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(sys.modules[name])
        except BaseException:
            del sys.modules[name]
            raise
    return sys.modules[name]


def randomize_batchnorm(model: torch.nn.Module) -> torch.nn.Module:
    """Non-trivial BN statistics and affine parameters, so that a mapping error cannot hide behind BN's identity."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):  # the maskers' input normalisation included
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            if m.affine:
                m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.data.copy_(torch.rand(m.num_features, generator=g) - 0.5)
    return model


VIT_TINY = dict(img_size=32, patch_size=8, depth=3, embed_dim=48, num_heads=3)  # 16 patch tokens + the class token


def skipping_vit(paradigm: str, name: str = "laud_deit_tiny", std: float = 0.5, **kw):
    """A small LAUD-ViT in eval whose maskers skip about half of everything (random weights, no execute bias) and
    whose norms are not the identity."""
    import laudnet

    model = laudnet.create_model(name, paradigm=paradigm, num_classes=5, **{**VIT_TINY, **kw})
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "masker" in n:
                p.copy_(torch.randn(p.shape, generator=g) * (std if p.dim() > 1 else 0.1))
            elif "norm" in n:
                p.add_(torch.randn(p.shape, generator=g) * 0.3)
    return model.eval()


def impose_model_decisions(deployed, model) -> None:
    """Give each deployed ViT block the decisions the model's blocks took in their last forward."""
    for block, info in zip(deployed.blocks, model.collect_info(), strict=True):
        block.forced = tuple(info.masks[k] > 0.5 if k in info.masks else None for k in ("token", "head", "layer"))
