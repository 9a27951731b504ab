"""Whole-model latency prediction: static vs dynamic latency per image from per-block activation rates.

`predict_model("resnet50", "layer", density=0.5, hardware="v100")` returns a `Prediction` with the static and dynamic
latency per image (ms), their ratio and a per-block breakdown. Densities are a single activation rate for every block
or one rate per block (the per-block rates that `laudnet eval` reports for a trained model).

The LAUD-ViTs (`deit_tiny`, `deit_small`, `vit_base`) take the paradigms `static` or a `+`-combination of `token`,
`head` and `layer` (`token+head+layer`); a block's density is then the rate of each part it skips: the fraction of
tokens kept (class token included), of heads kept, and the probability that the attention and the MLP sub-block run.
Their blocks are costed by `transformer_block` as laudnet's inference engine runs them (`laudnet.deploy.vit`), plus
the patch embedding, class/position embedding, final norm and classifier.

Two fidelities: `compat="paper"` reproduces the official simulator (FP32, residual stages only, no stem/head, with its
quirks); the default (`compat=None`) fixes those quirks and also costs the stem, the pooling, the classifier and the
ResNet stage-1 projection (which the official total leaves out). In the default mode the dynamic plain bottlenecks are
composed as laudnet's inference engine runs them (`laudnet.latency.blocks`: fused scatter-add, conv1 once, sync-free
index lists, compacted channels, layer skipping as whole-map patches), masker and index building included.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace

from laudnet.latency.blocks import block_cost, transformer_block
from laudnet.latency.geometry import ModelGeometry, ViTGeometry, get_geometry, get_vit_geometry, is_vit
from laudnet.latency.hardware import HardwareSpec, load_hardware
from laudnet.latency.ops import ZERO, Cost, OpModel, get_op_model
from laudnet.paradigms import check_cnn_paradigm, parse_vit_paradigm, stage_granularity

COMPAT_MODES = (None, "paper")
VIT_TOKEN_BUCKET = 8  # laudnet.deploy.vit.deploy_vit's default: the attention's kept-token count rounded up to 8


@dataclass
class BlockPrediction:
    """One block: latency per image (ms) of the static and the dynamic block."""

    stage: int
    index: int
    density: float
    granularity: int | None
    static_ms: float
    dynamic_ms: float

    @property
    def ratio(self) -> float:
        return self.dynamic_ms / self.static_ms


@dataclass
class Prediction:
    """Latency prediction for one model, paradigm, device and batch (all latencies per image, ms)."""

    model: str
    paradigm: str
    hardware: str
    precision: str
    batch: int
    compat: str | None
    granularity: list[int] | None
    static_ms: float
    dynamic_ms: float
    blocks: list[BlockPrediction]
    other_ms: float = 0.0  # stem, pooling, classifier (0 in compat mode, which leaves them out)
    stages: list[dict] = field(default_factory=list)
    graphed: bool = False  # static and dynamic networks both replayed as one CUDA graph

    @property
    def ratio(self) -> float:
        return self.dynamic_ms / self.static_ms

    def to_dict(self) -> dict:
        out = asdict(self)
        out["ratio"] = self.ratio
        for b, d in zip(self.blocks, out["blocks"], strict=True):
            d["ratio"] = b.ratio
        return out


def _densities(geom: ModelGeometry | ViTGeometry, density: float | Sequence[float] | None,
               per_block_densities: Sequence[float] | None) -> list[float]:
    if per_block_densities is not None and density is not None and not isinstance(density, (int, float)):
        raise ValueError("give either density or per_block_densities, not two lists")
    # fix: the rate list is sized from the model's own depths (the official script hard-codes ResNet-50's)
    values = per_block_densities if per_block_densities is not None else density
    if values is None:
        raise ValueError("a density (activation rate) is needed for a dynamic paradigm")
    if isinstance(values, (int, float)):
        values = [float(values)] * geom.num_blocks
    values = [float(v) for v in values]
    if len(values) != geom.num_blocks:
        raise ValueError(f"{geom.name} has {geom.num_blocks} blocks (depths {geom.depths}); "
                         f"got {len(values)} densities")
    bad = [v for v in values if not 0.0 <= v <= 1.0]
    if bad:
        raise ValueError(f"densities must lie in [0, 1], got {bad[:5]}")
    return values


def _stage_granularity(geom: ModelGeometry, paradigm: str, granularity) -> list[int] | None:
    """The models' per-stage granularity (`laudnet.paradigms.stage_granularity`: default for None), checked against
    the stage sizes (spatial S) or bottleneck widths (channel G); None for the paradigms without one."""
    gran = stage_granularity(paradigm, granularity, len(geom.stages))
    if paradigm == "spatial":
        for st, s in zip(geom.stages, gran, strict=True):
            if st.size % s:
                raise ValueError(f"spatial granularity {s} does not divide the stage size {st.size} "
                                 f"(stage sizes {[x.size for x in geom.stages]})")
    elif paradigm == "channel":
        for st, g in zip(geom.stages, gran, strict=True):
            if st.width % g:
                raise ValueError(f"channel granularity {g} does not divide the bottleneck width {st.width} "
                                 f"(widths {[x.width for x in geom.stages]})")
    return None if gran[0] is None else list(gran)


def _head_cost(op: OpModel, geom: ModelGeometry) -> Cost:
    """Stem, max-pool (ResNet), global pool and classifier: fixed, the official total leaves them out."""
    if geom.family == "resnet":
        stem = op.conv(3, geom.stem_channels, 112, 112, 7, stride=2) + op.avg_pool(geom.stem_channels, 112, 112, 56, 56)
    else:
        stem = op.conv(3, geom.stem_channels, 112, 112, 3, stride=2)
    last = geom.stages[-1]
    return stem + op.avg_pool(last.out_channels, last.size, last.size, 1, 1) + op.fc(last.out_channels,
                                                                                     geom.num_classes)


def predict_model(model_name: str, paradigm: str, density: float | Sequence[float] | None = 0.5,
                  granularity: str | int | Sequence[int] | None = None, hardware: str | HardwareSpec = "v100",
                  batch: int | None = None, compat: str | None = None, precision: str | None = None,
                  per_block_densities: Sequence[float] | None = None, graphed: bool = False) -> Prediction:
    """Predict static and dynamic latency of a whole model.

    Args:
        model_name: `resnet50`, `resnet101`, `regnety_400mf`, `regnety_800mf`, or the ViTs `deit_tiny`,
            `deit_small`, `vit_base` (or `laud_` names).
        paradigm: CNNs: `spatial`, `channel`, `layer` or `static` (dynamic = static). ViTs: `static` or a
            `+`-combination of `token`, `head` and `layer`.
        density: activation rate for every block, or a list with one rate per block (ViTs: the rate of each part
            the paradigm skips).
        granularity: spatial patch size S per stage (`"4-4-2-1"`) or channel group size G per stage (`"8-8-8-8"`);
            a single number applies to every stage (the grammar of `laudnet.paradigms.parse_granularity`). None
            takes the models' default (`laudnet.paradigms.DEFAULT_GRANULARITY`: spatial 4-4-2-1, channel 8-8-8-8).
        hardware: preset name, spec file path, or a `HardwareSpec`.
        batch: images per batch (default: the device's, 128 for data-centre GPUs, 1 for Jetsons).
        compat: None (fixed model) or `"paper"` (official simulator, FP32, residual stages only).
        precision: override the device's default precision (`fp32`, `tf32`, `bf16`, `fp16`).
        per_block_densities: alternative to a list-valued `density`.
        graphed: both networks replayed as one CUDA graph (as `DeployedModel.graphed` runs): every kernel costs the
            spec's `graph_launch_time` instead of its eager `launch_time`. Needs a spec that has one
            (`laudnet calibrate --device cuda` measures it); matters most at small batches.

    Raises:
        ValueError: unknown model/paradigm/hardware/compat mode, densities outside [0, 1] or of the wrong count, a
            granularity that does not divide the stage (spatial) or the bottleneck width (channel), a CNN paradigm or
            a granularity or compat mode for a ViT, a ViT paradigm for a CNN.
    """
    if compat not in COMPAT_MODES:
        raise ValueError(f"unknown compat mode {compat!r}; choose None or 'paper'")
    vit = isinstance(model_name, str) and is_vit(model_name)
    if vit:
        paradigm, parts = parse_vit_paradigm(paradigm)
        if granularity is not None:
            raise ValueError(f"{model_name} is a ViT: its paradigms (token, head, layer) take no granularity, "
                             f"got {granularity!r}")
        if compat == "paper":
            raise ValueError("compat='paper' reproduces the official CNN simulator; it does not apply to the ViTs")
    else:
        check_cnn_paradigm(paradigm)
    hw = load_hardware(hardware)
    if graphed:
        if compat == "paper":
            raise ValueError("graphed predictions belong to the default mode, not compat='paper'")
        if hw.graph_launch_time is None:
            raise ValueError(f"hardware {hw.name!r} has no graph_launch_time: calibrate the device "
                             "(laudnet calibrate --device cuda) or add graph_launch_time to its spec file")
        hw = hw.graphed()
    if precision is not None:
        hw = hw.with_precision(precision)
    elif compat == "paper" and hw.precision != "fp32":
        hw = hw.with_precision("fp32")  # the paper's model is FP32-only
    batch = hw.batch if batch is None else batch
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be a positive integer, got {batch!r}")
    op = get_op_model(hw, batch, compat == "paper")
    if vit:
        pred = _predict_vit(op, get_vit_geometry(model_name), paradigm, parts, density, per_block_densities)
        return replace(pred, graphed=graphed)
    geom = get_geometry(model_name)
    gran = _stage_granularity(geom, paradigm, granularity)
    dens = [1.0] * geom.num_blocks if paradigm == "static" else _densities(geom, density, per_block_densities)

    per_image_ms = 1e3 / batch
    blocks: list[BlockPrediction] = []
    for b, d in zip(geom.blocks(), dens, strict=True):
        g = gran[b.stage] if gran else None
        static = block_cost(op, b, "static", 1.0, 0)
        dynamic = static if paradigm == "static" else block_cost(op, b, paradigm, d, g or 0)
        blocks.append(BlockPrediction(b.stage, b.index, d, g, static.latency * per_image_ms,
                                      dynamic.latency * per_image_ms))
    other = ZERO if compat == "paper" else _head_cost(op, geom)
    other_ms = other.latency * per_image_ms
    stages = []
    for si in range(len(geom.stages)):
        sb = [b for b in blocks if b.stage == si]
        s_ms, d_ms = sum(b.static_ms for b in sb), sum(b.dynamic_ms for b in sb)
        stages.append({"stage": si, "blocks": len(sb), "granularity": gran[si] if gran else None,
                       "static_ms": s_ms, "dynamic_ms": d_ms, "ratio": d_ms / s_ms})
    return Prediction(
        model=geom.name, paradigm=paradigm, hardware=hw.name, precision=hw.precision, batch=batch, compat=compat,
        granularity=gran, static_ms=sum(b.static_ms for b in blocks) + other_ms,
        dynamic_ms=sum(b.dynamic_ms for b in blocks) + other_ms, blocks=blocks, other_ms=other_ms, stages=stages,
        graphed=graphed)


def _vit_other_cost(op: OpModel, g: ViTGeometry) -> Cost:
    """Patch embedding (a stride-`patch` conv), class token and position embedding, final norm, classifier."""
    embed = op.conv(3, g.dim, g.grid, g.grid, g.patch, stride=g.patch) + op.elementwise(g.tokens, g.dim)
    return embed + op.layernorm(g.tokens, g.dim) + op.fc(g.dim, g.num_classes)


def _predict_vit(op: OpModel, g: ViTGeometry, paradigm: str, parts: frozenset[str],
                 density: float | Sequence[float] | None, per_block_densities: Sequence[float] | None) -> Prediction:
    dens = [1.0] * g.num_blocks if paradigm == "static" else _densities(g, density, per_block_densities)
    per_image_ms = 1e3 / op.batch
    static = transformer_block(op, g.tokens, g.dim, g.heads, g.mlp_ratio, engine=True, maskers=frozenset())
    blocks: list[BlockPrediction] = []
    for i, d in enumerate(dens):
        dynamic = static if paradigm == "static" else transformer_block(
            op, g.tokens, g.dim, g.heads, g.mlp_ratio, token_density=d if "token" in parts else 1.0,
            head_density=d if "head" in parts else 1.0, attn_density=d if "layer" in parts else 1.0,
            mlp_density=d if "layer" in parts else 1.0, engine=True, maskers=parts, token_bucket=VIT_TOKEN_BUCKET)
        blocks.append(BlockPrediction(0, i, d, None, static.latency * per_image_ms, dynamic.latency * per_image_ms))
    other_ms = _vit_other_cost(op, g).latency * per_image_ms
    s_ms, d_ms = sum(b.static_ms for b in blocks), sum(b.dynamic_ms for b in blocks)
    stages = [{"stage": 0, "blocks": len(blocks), "granularity": None, "static_ms": s_ms, "dynamic_ms": d_ms,
               "ratio": d_ms / s_ms}]
    return Prediction(model=g.name, paradigm=paradigm, hardware=op.hw.name, precision=op.hw.precision,
                      batch=op.batch, compat=None, granularity=None, static_ms=s_ms + other_ms,
                      dynamic_ms=d_ms + other_ms, blocks=blocks, other_ms=other_ms, stages=stages)
