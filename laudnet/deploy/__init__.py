"""Inference engine: deployed (BN-folded, hard-mask, sparse-executing) LAUD models."""

import sys as _sys
import types as _types

from laudnet.deploy.blocks import DeployedBlock as DeployedBlock
from laudnet.deploy.blocks import deploy_block as deploy_block
from laudnet.deploy.fold import fold_conv_bn as fold_conv_bn
from laudnet.deploy.graphs import GraphedModel as GraphedModel
from laudnet.deploy.model import DeployedModel as DeployedModel
from laudnet.deploy.model import deploy as deploy
from laudnet.deploy.model import deploy_dense_masked as deploy_dense_masked
from laudnet.deploy.tune import Deployment as Deployment
from laudnet.deploy.tune import deploy_fastest as deploy_fastest
from laudnet.deploy.tune import tune_paths as tune_paths
from laudnet.deploy.vit import DeployedViT as DeployedViT
from laudnet.deploy.vit import deploy_vit as deploy_vit


class _CallablePackage(_types.ModuleType):
    """`laudnet.deploy` is both this package and the `deploy` function: once the package is imported, Python binds
    the name `laudnet.deploy` to the package, so the package forwards calls to :func:`deploy`."""

    def __call__(self, *args, **kwargs):
        return deploy(*args, **kwargs)


_sys.modules[__name__].__class__ = _CallablePackage
