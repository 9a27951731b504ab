"""Helpers shared by tests (imported as a plain module: tests/ is on sys.path through rootdir conftest)."""

import torch
import torchvision

TORCHVISION_BUILDERS = {
    "laud_resnet50": torchvision.models.resnet50,
    "laud_resnet101": torchvision.models.resnet101,
    "laud_regnety_400mf": torchvision.models.regnet_y_400mf,
    "laud_regnety_800mf": torchvision.models.regnet_y_800mf,
}


def randomize_batchnorm(model: torch.nn.Module) -> torch.nn.Module:
    """Non-trivial BN statistics and affine parameters, so that a mapping error cannot hide behind BN's identity."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=g) - 0.5)
    return model
