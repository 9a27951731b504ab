"""Deployed LAUD backbones inside torchvision's detectors (LAUDNet, Han et al., TPAMI 2024, dense prediction): the
backbone body in the inference engine's form (`laudnet.deploy`), the FPN and the detection heads as they are.

`deploy_detector(detector, dtype, form=..., example=images)` returns a copy of an eval detector whose
``backbone.body`` is a `DeployedBody`: BN folded (the detection backbone's ``FrozenBatchNorm2d`` hold plain BN
statistics, `body_classifier`), hard decisions, channels_last activations in `dtype`; on a GPU the Triton kernels and
one CUDA graph per input shape, on the CPU the PyTorch reference paths. The forms are those of
`laudnet.deploy.deploy_fastest`:

- ``sparse``: `laudnet.deploy.deploy` (skipped work is not computed); with an example, each block's path (sparse or
  dense-masked) chosen by `laudnet.deploy.tune_paths` on the example's padded batch;
- ``dense-masked``: `laudnet.deploy.deploy_dense_masked` (every block dense, the decisions applied as masks), on a
  GPU compiled whole (``torch.compile(dynamic=False)``): for a static backbone, the strongest static form (folded,
  compiled whole, one CUDA graph);
- ``fastest``: both, each timed on the example's padded batch as it will run, the faster kept.

Detection batches are what torchvision's ``GeneralizedRCNNTransform`` makes: images resized, then padded (bottom and
right) to a common size that is a multiple of 32, any aspect ratio. The deployed blocks take any map size, so the
decisions are those of the training form on the same padded batch: ⌈H/S⌉×⌈W/S⌉ patch cells of every block's real
map. The body's features are handed to the FPN in the FPN's dtype (fp32); with ``heads_autocast=torch.bfloat16`` the
FPN's and the heads' convolutions and linears run in bf16 autocast while box coding, NMS and RoIAlign stay fp32.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence

import torch
from torch import Tensor, nn
from torchvision.ops import FrozenBatchNorm2d

from laudnet.deploy import GraphedModel, deploy, deploy_dense_masked, tune_paths
from laudnet.deploy.blocks import COMPILE_SHAPES
from laudnet.deploy.model import DeployedModel
from laudnet.detection.backbone import LaudBackboneBody
from laudnet.models import create_model
from laudnet.models._base import DynamicModel
from laudnet.timing import time_call

FORMS = ("sparse", "dense-masked", "fastest")


def body_classifier(body: LaudBackboneBody) -> DynamicModel:
    """The classification model the body was built from (``create_model(**body.model_args)``, a one-class head that
    nothing uses), holding the body's current weights in eval mode on the body's device: every
    ``FrozenBatchNorm2d`` back to a ``BatchNorm2d`` with the same statistics, parameters and eps, which
    `laudnet.deploy` folds into the convolutions.

    Raises:
        ValueError: a body that does not record its model (built from a model not made by `create_model`), or whose
            weights do not fit the rebuilt model.
    """
    if not body.model_args:
        raise ValueError("this backbone body does not record the model it was built from (model_args): build it with "
                         "laud_fpn_backbone or from a laudnet.create_model model")
    model = create_model(**{**body.model_args, "num_classes": 1})
    missing, unexpected = model.load_state_dict(body.state_dict(), strict=False)
    missing = [k for k in missing if not k.startswith("fc.") and not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise ValueError(f"the backbone body's weights do not fit {body.model_args['name']}: missing "
                         f"{missing[:3]}, unexpected {unexpected[:3]}")
    for name, m in body.named_modules():
        if isinstance(m, FrozenBatchNorm2d):
            model.get_submodule(name).eps = m.eps
    return model.to(next(body.parameters()).device).eval()


class DeployedBody(nn.Module):
    """A deployed backbone body: the stem and blocks of a `DeployedModel`, returning the chosen stages' outputs as
    `LaudBackboneBody` does (an OrderedDict ``{"0": C_a, ...}``), in `out_dtype`.

    Inference only (no gradients). On a CUDA device with `graphed`, each input shape is captured once as a CUDA graph
    (`GraphedModel`) and replayed after; every captured shape keeps its graph and memory pool (`clear_graphs`). The
    features of a replay are the graph's own tensors, rewritten by the next call: the FPN reads them at once.

    Args:
        deployed: the deployed classification model of the body (`deploy` or `deploy_dense_masked`); its head is
            not used.
        returned_layers: stages (1-4) whose outputs are returned.
        form: ``sparse`` or ``dense-masked`` (reported in `form`).
        out_dtype: dtype of the returned features (None: the deployed dtype).
        compile_whole: run the features through ``torch.compile(dynamic=False)`` (the dense-masked form on a GPU).
        graphed: replay each input shape from a CUDA graph.

    Attributes:
        times_ms: median milliseconds of each form timed by `deploy_backbone` (``fastest``); ``errors``: why a form
            could not be built or run.
    """

    def __init__(self, deployed: DeployedModel, returned_layers: Sequence[int], *, form: str = "sparse",
                 out_dtype: torch.dtype | None = torch.float32, compile_whole: bool = False,
                 graphed: bool = False) -> None:
        super().__init__()
        self.deployed = deployed
        self.returned_layers = sorted(returned_layers)
        self.form = form
        self.out_dtype = out_dtype
        self.graphed = graphed
        self.times_ms: dict[str, float] = {}
        self.errors: dict[str, str] = {}
        # A block without a projection writes its output into its input: a returned stage output read by such a
        # block must be copied first, unless the cast to out_dtype copies it (the first block of every stage of
        # laudnet's CNNs has a projection, so this does not happen there).
        same_dtype = out_dtype is None or out_dtype == deployed.dtype
        self._copy = {k for k in self.returned_layers
                      if same_dtype and k < len(deployed.stages) and deployed.stages[k][0].shortcut is None}
        if compile_whole:
            # Every body compiles this one function (one cache entry per body and input shape); past Dynamo's
            # recompile limit (8) it would silently run eagerly.
            cfg = torch._dynamo.config
            for name in ("recompile_limit", "cache_size_limit"):  # the newer name, and the older one where it exists
                if hasattr(cfg, name):
                    setattr(cfg, name, max(getattr(cfg, name), 256))
        self._run = torch.compile(self.features, dynamic=False) if compile_whole else self.features
        self._graphs: dict[tuple, GraphedModel] = {}

    def blocks(self) -> list:
        return self.deployed.blocks()

    def activation_rates(self) -> list[float]:
        """Per-block activation rates of the last forward (synchronises with the device)."""
        return self.deployed.activation_rates()

    def features(self, x: Tensor) -> OrderedDict[str, Tensor]:
        """The stem and blocks on the padded batch `x` (B, C, H, W), without CUDA graphs."""
        d = self.deployed
        if x.dim() != 4 or x.shape[1] != d.in_chans:
            raise ValueError(f"expected an input of shape (B, {d.in_chans}, H, W), got {tuple(x.shape)}")
        # The deployed maskers compute in fp32 on purpose (a decision must not flip with rounding): a caller's
        # autocast region must not move them to bf16.
        with torch.autocast(x.device.type, enabled=False):
            h = d.stem(x.to(dtype=d.dtype, memory_format=torch.channels_last))
            sums = None
            out: OrderedDict[str, Tensor] = OrderedDict()
            for k, stage in enumerate(d.stages, start=1):
                for block in stage:
                    h, sums = block.forward_chained(h, sums)
                if k in self.returned_layers:
                    y = h if self.out_dtype is None else h.to(self.out_dtype)
                    out[str(len(out))] = y.clone() if k in self._copy else y
        return out

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        if not (self.graphed and x.is_cuda):
            return self._run(x)
        key = (tuple(x.shape), x.dtype, x.device)
        graph = self._graphs.get(key)
        if graph is None:
            graph = self._graphs[key] = GraphedModel(self._run, x)
        return OrderedDict(graph(x))

    def clear_graphs(self) -> None:
        """Drop the captured CUDA graphs (after the blocks' paths or imposed decisions changed shape)."""
        self._graphs.clear()

    def tune(self, example: Tensor, *, repeats: int = 10, timer: Callable[..., float] = time_call) -> list[str]:
        """Choose each block's path (sparse or dense-masked) by measurement on `example` (`tune_paths`; on a GPU each
        block and path replayed from its own CUDA graph), starting from all sparse; drops the captured graphs.

        Returns:
            The chosen path of every block.
        """
        for block in self.blocks():
            block.path = "sparse"
        paths = tune_paths(self.deployed, example, graphed=example.is_cuda, repeats=repeats, timer=timer)
        self.clear_graphs()
        return paths


@torch.no_grad()
def deploy_backbone(
    body: LaudBackboneBody,
    dtype: torch.dtype = torch.bfloat16,
    *,
    form: str = "sparse",
    example: Tensor | None = None,
    device: torch.device | str | None = None,
    compile: bool | str = True,
    graphed: bool | None = None,
    out_dtype: torch.dtype | None = torch.float32,
    stem: str = "auto",
    repeats: int = 20,
    timer: Callable[..., float] = time_call,
    setup: Callable[[DeployedModel], None] | None = None,
) -> DeployedBody:
    """A LAUD backbone body in inference form (see the module docstring); the body itself is left unchanged.

    Args:
        body: an eval-mode `LaudBackboneBody`.
        dtype: compute dtype of the body (bf16 on a GPU; fp32 for exact comparisons).
        form: ``sparse``, ``dense-masked`` or ``fastest``.
        example: a padded batch as the detector's transform makes it (``ImageList.tensors``), on the deployment's
            device: the sparse form's paths are tuned on it, ``fastest`` times both forms on it (needed there).
        device: where the deployed body lives (default: the example's, else the body's).
        compile: on a GPU, compile the dense parts: the dense-masked form whole at static shapes, and the sparse
            form's dense-masked block paths (`laudnet.deploy.deploy`'s ``compile``) specialised to each block's
            shapes (True or ``"static"``, what `deploy_fastest` does: the graphs fix the shapes) or with symbolic
            sizes (``"dynamic"``: one compilation per kind of block for every batch and image size — far less
            compilation where many shapes are deployed, slightly slower code; one mode per process). The whole
            network is compiled at static shapes either way: with symbolic sizes it still recompiles for batch 1
            and for square inputs (Dynamo's 0/1 and duck-size specialisations). Ignored on the CPU.
        graphed: replay each input shape from a CUDA graph (default: on a CUDA device).
        out_dtype: dtype of the features handed to the FPN (None: `dtype`).
        stem: the stem's convolution (`laudnet.deploy.deploy`'s ``stem``).
        repeats: timed calls per block and path (tuning, half of them) and per form (``fastest``).
        timer: ``timer(fn, device, repeats=...) -> seconds`` (`laudnet.timing.time_call`).
        setup: called on each deployed model before it is tuned, compiled or captured (benchmarks impose decisions
            with it: the blocks' `forced_keep`).

    Raises:
        ValueError: a body in training mode, an unknown form, ``fastest`` without an example, or a bad example.
        RuntimeError: ``fastest`` where neither form could be built (each form's error in the message).
    """
    if not isinstance(body, LaudBackboneBody):
        raise TypeError(f"deploy_backbone expects a LaudBackboneBody, got {type(body).__name__}")
    if body.training:
        raise ValueError("deploy the backbone of an eval-mode detector (detector.eval())")
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, got {form!r}")
    if form == "fastest" and example is None:
        raise ValueError("form='fastest' times both forms on an example batch: pass example")
    if example is not None and (example.dim() != 4 or example.shape[1] != body.in_chans):
        raise ValueError(f"example must be a padded batch (B, {body.in_chans}, H, W), got {tuple(example.shape)}")
    device = torch.device(device if device is not None else
                          example.device if example is not None else next(body.parameters()).device)
    cuda = device.type == "cuda"
    graphed = cuda if graphed is None else graphed
    if graphed and not cuda:
        raise ValueError("graphed=True replays CUDA graphs: deploy on a CUDA device")
    if compile not in (False, True, *COMPILE_SHAPES):
        raise ValueError(f"compile must be True, False or one of {COMPILE_SHAPES}, got {compile!r}")
    blocks = ("static" if compile is True else compile) if cuda else False
    model = body_classifier(body)

    def build(which: str) -> DeployedBody:
        if which == "sparse":
            deployed = deploy(model, dtype, device=device, compile=blocks, stem=stem)
        else:
            deployed = deploy_dense_masked(model, dtype, device=device, stem=stem)
        if setup is not None:
            setup(deployed)
        built = DeployedBody(deployed, body.returned_layers, form=which, out_dtype=out_dtype, graphed=graphed,
                             compile_whole=which == "dense-masked" and bool(blocks))
        if which == "sparse" and example is not None:
            built.tune(example, repeats=max(3, repeats // 2), timer=timer)
        return built

    if form != "fastest":
        return build(form)
    built, times, errors = {}, {}, {}
    for which in ("sparse", "dense-masked"):
        try:
            candidate = build(which)
            candidate(example)  # compiles and captures before the timing
            times[which] = 1e3 * timer(lambda c=candidate: c(example), device, repeats=repeats)
            built[which] = candidate
        except Exception as e:  # a form this body or device cannot take: the other one still can
            errors[which] = f"{type(e).__name__}: {e}"
    if not built:
        raise RuntimeError(f"no deployment form of the backbone could be built: {errors}")
    chosen = built[min(times, key=times.get)]
    chosen.times_ms, chosen.errors = times, errors
    return chosen


class AutocastModule(nn.Module):
    """`module` run under autocast to `dtype` on its parameters' device, its floating outputs cast back to fp32 (so
    that what follows it — box coding, NMS, RoIAlign — computes as before). Inference wrapper: its state-dict keys
    gain a ``module.`` prefix."""

    def __init__(self, module: nn.Module, dtype: torch.dtype = torch.bfloat16) -> None:
        super().__init__()
        self.module = module
        self.dtype = dtype

    def forward(self, *args, **kwargs):
        device_type = next(self.module.parameters()).device.type
        with torch.autocast(device_type, dtype=self.dtype):
            out = self.module(*args, **kwargs)
        return _to_float(out)


def _to_float(out):
    if isinstance(out, Tensor):
        return out.float() if out.is_floating_point() else out
    if isinstance(out, dict):
        return type(out)((k, _to_float(v)) for k, v in out.items())
    if isinstance(out, list | tuple):
        return type(out)(_to_float(v) for v in out)
    return out


def head_modules(detector: nn.Module) -> list[tuple[nn.Module, str]]:
    """(parent, attribute name) of the FPN and of every detection head that convolves or multiplies: torchvision's
    R-CNN RPN head, box head and predictor, mask head and predictor; RetinaNet's classification and regression
    heads (what `autocast_heads` wraps)."""
    places = [(detector.backbone, "fpn")]
    if hasattr(detector, "roi_heads"):
        places.append((detector.rpn, "head"))
        places += [(detector.roi_heads, name) for name in ("box_head", "box_predictor", "mask_head", "mask_predictor")
                   if getattr(detector.roi_heads, name, None) is not None]
    else:
        places += [(detector.head, "classification_head"), (detector.head, "regression_head")]
    return places


def autocast_heads(detector: nn.Module, dtype: torch.dtype = torch.bfloat16) -> nn.Module:
    """Wrap the detector's FPN and heads (`head_modules`) in `AutocastModule`, in place (inference only); returns the
    detector."""
    for parent, name in head_modules(detector):
        module = getattr(parent, name)
        if not isinstance(module, AutocastModule):
            setattr(parent, name, AutocastModule(module, dtype))
    return detector


@torch.no_grad()
def deploy_detector(
    detector: nn.Module,
    dtype: torch.dtype = torch.bfloat16,
    *,
    form: str = "sparse",
    example: Iterable[Tensor] | Tensor | None = None,
    heads_autocast: torch.dtype | None = None,
    **kwargs,
) -> nn.Module:
    """A copy of an eval detector (`laudnet.detection.create_detector`) whose LAUD backbone body is deployed; the FPN
    and the heads are the detector's own (copied). The detector itself is left unchanged; the copy is for inference.

    Args:
        detector: a torchvision detector on a LAUD backbone, in eval mode.
        dtype: compute dtype of the body.
        form: ``sparse``, ``dense-masked`` or ``fastest`` (see the module docstring).
        example: images as the detector takes them (a list of (C, H, W) tensors, or a batch tensor) on the
            detector's device; the detector's transform pads them into the batch the body is tuned (and, for
            ``fastest``, timed) on — use real images, so that the maskers decide as they will.
        heads_autocast: run the FPN's and the heads' convolutions and linears in autocast to this dtype (e.g.
            ``torch.bfloat16``; `autocast_heads`); None keeps them as they are.
        **kwargs: `deploy_backbone`'s options (``compile``, ``graphed``, ``stem``, ``repeats``, ``timer``,
            ``setup``, ``device``).

    Returns:
        The copy, its ``backbone.body`` a `DeployedBody` (``.form``, ``.times_ms``).
    """
    if detector.training:
        raise ValueError("deploy_detector needs the detector in eval mode (detector.eval())")
    body = detector.backbone.body
    if not isinstance(body, LaudBackboneBody):
        raise TypeError(f"deploy_detector expects a detector on a LAUD backbone, its body is {type(body).__name__}")
    batch = None
    if example is not None:
        batch = detector.transform(list(example))[0].tensors
    fpn_dtype = next(detector.backbone.fpn.parameters()).dtype
    deployed_body = deploy_backbone(body, dtype, form=form, example=batch, out_dtype=fpn_dtype, **kwargs)
    # The memo makes deepcopy take the deployed body where it meets the trained one: nothing of it is copied.
    out = copy.deepcopy(detector, memo={id(body): deployed_body})
    if heads_autocast is not None:
        autocast_heads(out, heads_autocast)
    return out.eval()
