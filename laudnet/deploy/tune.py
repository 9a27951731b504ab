"""Per-block choice between the sparse and the dense-masked path, decided by measurement on the target device.

Skipping only pays where the skipped work outweighs the cost of skipping (maskers, index lists, less efficient
kernels): at high activation rates, and for small blocks, the dense path can be faster. The
choice depends on the device and on the rates a trained model shows on real data, so it is measured: each block runs
both paths on the input it receives from a representative batch, and keeps the faster (`tune_paths`). One level up,
`deploy_fastest` measures the whole tuned network against the dense-masked network compiled whole, and keeps the
faster of the two.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from laudnet.deploy.graphs import GraphedModel
from laudnet.deploy.graphs import graph_replay as graph_replay  # the benchmarks import it from here too
from laudnet.deploy.model import DeployedModel, deploy, deploy_dense_masked
from laudnet.deploy.packed import varlen_available
from laudnet.deploy.vit import deploy_vit
from laudnet.models.vit import LaudViT
from laudnet.timing import time_call as time_call  # the default timer; scripts import it from here too


@torch.no_grad()
def tune_paths(deployed: DeployedModel, example: Tensor, *, repeats: int = 10,
               timer: Callable[..., float] = time_call, graphed: bool = False,
               conditional: bool = False) -> list[str]:
    """Set each dynamic block's `path` to whichever of ``sparse`` and ``dense`` runs faster on `example`.

    Args:
        deployed: a deployed model (its blocks' decisions are made by its maskers, or imposed with `forced_keep`).
        example: a representative input batch (same batch size as in production).
        repeats: timed calls per block and path.
        timer: ``timer(fn, device, repeats=...) -> seconds``; the default, `laudnet.timing.time_call`, takes the
            median of CUDA-event timings on a GPU after three warm-up calls.
        graphed: time each block and path replayed from its own CUDA graph — what a model run through
            `DeployedModel.graphed` pays, without the per-kernel launch cost of eager calls, which dominates at
            small batches (CUDA only).
        conditional: with `graphed`, capture each block with conditional nodes, as
            ``deployed.graphed(example, conditional=True)`` will run it (a block no sample executes costs its masker
            only).

    Returns:
        The chosen path of every block, in order.
    """
    if graphed and example.device.type != "cuda":
        raise ValueError("tune_paths(graphed=True) times CUDA graphs: it needs a CUDA input")
    inputs: list[Tensor] = []
    sums_in: list[Tensor | None] = []
    blocks = deployed.blocks()
    deployed.forward_features(example, block_inputs=inputs, block_sums=sums_in)
    device = example.device
    chosen = []
    for i, block in enumerate(blocks):
        if block.paradigm == "static":
            chosen.append(block.path)
            continue
        x, sums = inputs[i], sums_in[i]
        costs = {}
        for path in ("sparse", "dense"):
            block.path = path
            # As in the chain: with the masker sums the predecessor hands over, making those the successor needs
            # (a sparse block accumulates them in its last kernel, a dense one pools its output in one more pass).
            # Blocks may write into their input and sums: each call gets copies (the same cost on both sides).
            call = lambda b=block, x=x, s=sums: b.forward_chained(x.clone(), None if s is None else s.clone())  # noqa: E731
            if graphed:
                call = graph_replay(call, conditional, what="tune_paths(graphed=True): a block")
            costs[path] = timer(call, device, repeats=repeats)
        block.path = min(costs, key=costs.get)
        chosen.append(block.path)
    return chosen


FORMS = ("sparse", "dense-masked")


@dataclass
class Deployment:
    """The fastest measured form of a deployed model; call it like the model (inputs shaped like the example).

    Attributes:
        form: ``"sparse"`` (skipped work not computed: `deploy` with per-block paths from `tune_paths` for a CNN,
            `deploy_vit` with device-side lists for a ViT) or ``"dense-masked"`` (`deploy_dense_masked`, compiled
            whole).
        run: the chosen callable (a `GraphedModel` on a GPU).
        times_ms: median milliseconds of every form that could be built and run; ``errors``: why the others not.
    """

    form: str
    run: Callable[[Tensor], Tensor]
    times_ms: dict[str, float]
    errors: dict[str, str]

    def __call__(self, x: Tensor) -> Tensor:
        return self.run(x)


@torch.no_grad()
def deploy_fastest(model: nn.Module, example: Tensor, dtype: torch.dtype = torch.bfloat16, *,
                   compile: bool | str = True,
                   repeats: int = 20, timer: Callable[..., float] = time_call,
                   setup: Callable[[nn.Module], None] | None = None,
                   forms: tuple[str, ...] = FORMS, stem: str = "auto", conditional: bool = False) -> Deployment:
    """Deploy a trained (eval) model in each form and keep the one that runs `example` fastest, measured as it will
    run: skipping only pays at the batch sizes and rates where the skipped work outweighs its bookkeeping,
    so choosing paths block by block (`tune_paths`) is not enough for "never slower than
    static".

    The forms, both the same function as the eval model:

    * ``"sparse"``: for a CNN `deploy(model, dtype, compile=compile)` (on a GPU ``compile="static"``: the graph
      fixes the shapes) with each block's path chosen by `tune_paths`;
      for a ViT `deploy_vit(model, dtype)`, on a GPU with ``capturable=True`` and varlen attention where available;
    * ``"dense-masked"``: `deploy_dense_masked(model, dtype)`, every block dense with its decisions as masks,
      compiled whole (``torch.compile(dynamic=False)``) when `compile` — the static network's fused form plus the
      maskers.

    On a GPU each form is captured as one CUDA graph (`GraphedModel`) and timed by replay; elsewhere both run eagerly
    (and `compile` applies to the CNN sparse form's stem and head only). A form that fails to build or capture is
    left out with its error in `errors`.

    Args:
        model: a LAUD model (ResNet, RegNet or ViT) in eval mode.
        example: a representative batch, on the device the deployment runs on; the batch size is fixed.
        dtype: compute dtype.
        compile: use `torch.compile` where the forms do.
        repeats: timed calls per form.
        timer: ``timer(fn, device, repeats=...) -> seconds``.
        setup: called on each deployed model before it is tuned, compiled and captured (benchmarks impose decisions
            with it: the CNN blocks' `forced_keep`, the ViT blocks' `forced`).
        forms: the forms to consider (a subset of `FORMS`).
        stem: the CNN stem's convolution in both forms (see `deploy`).
        conditional: tune and capture the CNN sparse form with conditional CUDA-graph nodes (a block that no sample
            executes launches nothing; `DeployedModel.graphed`).
    """
    if model.training:
        raise ValueError("deploy_fastest needs the model in eval mode (model.eval())")
    if not forms or set(forms) - set(FORMS):
        raise ValueError(f"forms must be a non-empty subset of {FORMS}, got {forms}")
    model._check_input(example)  # a bad example is the caller's error, not a form that fails to build
    cuda = example.device.type == "cuda"
    vit = isinstance(model, LaudViT)
    if vit and (stem not in ("auto", "cudnn") or conditional):
        raise ValueError("stem and conditional are CNN options (a ViT embeds patches with one GEMM; its sub-blocks "
                         "are not captured in conditional nodes)")

    def prepared(deployed: nn.Module) -> nn.Module:
        if setup is not None:
            setup(deployed)
        return deployed

    def sparse() -> Callable[[Tensor], Tensor]:
        if vit:
            attention = "varlen" if cuda and varlen_available() and dtype in (torch.bfloat16, torch.float16) \
                else "bucket"
            deployed = prepared(deploy_vit(model, dtype, device=example.device, capturable=cuda, attention=attention))
            return deployed.graphed(example) if cuda else deployed
        # captured at fixed shapes anyway: the dense-masked blocks compiled at static shapes (`deploy(compile=
        # "static")`), which Inductor specialises better than dynamic shapes (chosen by measurement, see the README)
        shapes = "static" if compile is True and cuda else compile
        deployed = prepared(deploy(model, dtype, device=example.device, compile=shapes, stem=stem))
        tune_paths(deployed, example, graphed=cuda, repeats=max(3, repeats // 2), timer=timer, conditional=conditional)
        return deployed.graphed(example, conditional=conditional) if cuda else deployed

    def dense_masked() -> Callable[[Tensor], Tensor]:
        deployed = prepared(deploy_dense_masked(model, dtype, device=example.device, stem=stem))
        fn = torch.compile(deployed, dynamic=False) if compile and cuda else deployed
        return GraphedModel(fn, example) if cuda else fn

    times, errors, runs = {}, {}, {}
    for form in forms:
        build = {"sparse": sparse, "dense-masked": dense_masked}[form]
        try:
            run = build()
            times[form] = 1e3 * timer(lambda run=run: run(example), example.device, repeats=repeats)
            runs[form] = run
        except Exception as e:  # a form this model or device cannot take: the other one still can
            errors[form] = f"{type(e).__name__}: {e}"
    if not runs:
        raise RuntimeError(f"no deployment form could be built: {errors}")
    form = min(times, key=times.get)
    return Deployment(form, runs[form], times, errors)
