"""Helpers shared by tests (imported as a plain module: tests/ is on sys.path through rootdir conftest)."""

import csv
import importlib.util
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
import torchvision

ROOT = Path(__file__).resolve().parents[1]


def run_benchmark(name: str, *args, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``benchmarks/<name>.py`` with ``args`` in a subprocess from the repository root (one intra-op thread: on a
    shared 2-core machine two threads per process measured many times slower)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / f"{name}.py"), *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)

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


def make_fashion_items(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """28×28 uint8 items whose class decides their shape (a bar at a class-dependent angle), so they are learnable."""
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % 10
    yy, xx = np.mgrid[0:28, 0:28] - 13.5
    images = np.zeros((count, 28, 28), np.uint8)
    for k, label in enumerate(labels):
        angle = np.pi * label / 10 + rng.normal(0, 0.05)
        dist = np.abs(np.cos(angle) * yy - np.sin(angle) * xx)
        bar = (dist < 3) & (np.hypot(yy, xx) < 12)
        images[k][bar] = rng.integers(150, 256, size=int(bar.sum()))
    return images, labels


def write_fashion_mnist(root: Path, train: int, test: int) -> Path:
    """The four Fashion-MNIST files in `root`, with `train` and `test` generated items (`make_fashion_items`)."""
    from laudnet.data.idx import write_idx

    for prefix, count, seed in (("train", train, 1), ("t10k", test, 2)):
        images, labels = make_fashion_items(count, seed)
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", labels.astype(np.uint8))
    return root


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


def csv_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a CSV file (a run's metrics.csv) as dicts."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def check_png(path: Path, min_side: int = 200) -> None:
    """`path` is a PNG of at least `min_side` pixels a side that is not blank."""
    import matplotlib.image

    assert path.is_file(), path
    image = matplotlib.image.imread(path)
    assert image.shape[0] >= min_side and image.shape[1] >= min_side and image.std() > 0.01


def free_port() -> int:
    """A TCP port free on this machine now (for a gloo process group's MASTER_PORT)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
