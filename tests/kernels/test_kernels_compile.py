"""The Triton kernels compile for the GPU they target (Hopper, sm_90), ahead of time and without a GPU.

The interpreter tests check what the kernels compute; they cannot see a construct that the interpreter runs but the
compiler rejects (an early `return`, a constexpr branch, a type mismatch between branches). Here each launcher runs
on small CPU tensors with the launch intercepted: the arguments it would pass (pointer dtypes, integers, constexpr
flags, tile shapes, warps, stages) are compiled for sm_90 with Triton's ahead-of-time API and ptxas, in a separate
process (this one imported Triton for its interpreter, `tests/conftest.py`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from laudnet.kernels import _utils, attention, channel, layer, masker, pack, rows, spatial, stem, token

nvidia = pytest.importorskip("triton.backends.nvidia")
if not os.path.exists(os.path.join(os.path.dirname(nvidia.__file__), "bin", "ptxas")):
    pytest.skip("triton's ptxas is not installed", allow_module_level=True)

_PTR = {torch.bfloat16: "*bf16", torch.float16: "*fp16", torch.float32: "*fp32", torch.int32: "*i32",
        torch.int64: "*i64", torch.uint8: "*u8", torch.bool: "*i1"}
_OPTIONS = ("num_warps", "num_stages")
_COMPILER = Path(__file__).with_name("aot_sm90.py")
SM90_SHARED_BYTES = 227 * 1024


@pytest.fixture(name="launches")
def launches_fixture(monkeypatch):
    """Launches recorded instead of run: (kernel source, positional args, keyword args)."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    recorded = []

    def intercept(self, grid):
        return lambda *args, **kwargs: recorded.append((self, args, kwargs))

    monkeypatch.setattr(_utils.LazyKernel, "__getitem__", intercept)
    return recorded


def _spec(lazy, args, kwargs) -> dict:
    """What `aot_sm90.py` compiles: the kernel (its `LazyKernel` by module and name), its signature, constexprs and
    options."""
    fn = lazy.fn
    attr = next(k for k, v in vars(sys.modules[fn.__module__]).items() if v is lazy)
    names = fn.__code__.co_varnames[: fn.__code__.co_argcount]
    consts = {k: v for k, v in kwargs.items() if k not in _OPTIONS}
    sig, values, divisible = {}, dict(zip(names, args, strict=False)), []
    for name in names:
        v = values.get(name)
        if name not in consts and (isinstance(v, torch.Tensor) and v.data_ptr() % 16 == 0
                                   or type(v) is int and v % 16 == 0):
            divisible.append(name)  # as Triton's launcher specialises them
        if name in consts:
            sig[name] = "constexpr"
        elif isinstance(v, torch.Tensor):
            sig[name] = _PTR[v.dtype]
        elif isinstance(v, bool):
            sig[name] = "i1"
        elif isinstance(v, int):
            sig[name] = "i32" if -(2**31) <= v < 2**31 else "i64"
        else:
            sig[name] = "fp32"
    return dict(module=fn.__module__, name=attr, signature=sig, constexprs=consts, divisible=divisible,
                options={k: kwargs[k] for k in _OPTIONS if k in kwargs})


def _compile_all(launches, tmp_path) -> list[dict]:
    """Compile the recorded launches; returns each kernel's `aot_sm90.py` statistics."""
    assert launches, "no kernel was launched"
    specs = tmp_path / "specs.json"
    specs.write_text(json.dumps([_spec(*launch) for launch in launches]))
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parents[2]), env.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, str(_COMPILER), str(specs)], env=env, capture_output=True, text=True,
                          timeout=600)
    if done.returncode == 3:
        pytest.skip(done.stdout.strip())
    assert done.returncode == 0, done.stdout + done.stderr
    stats = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(stats) == len(launches)
    # an H100 / H200 block gets at most 227 KB of shared memory: more fails at launch ("out of resources")
    assert all(s["shared"] <= SM90_SHARED_BYTES for s in stats), stats
    # no register spills to local memory (reported where Triton ships cuobjdump)
    assert all(s.get("local_bytes", 0) == 0 for s in stats), stats
    return stats


def _bf16(*shape):
    return torch.randn(shape).to(torch.bfloat16)


@pytest.mark.parametrize("form", ["gather_gelu", "planes_heads", "scatter", "plain"])
def test_row_gemm_compiles(launches, tmp_path, form):
    src, wt, bias = _bf16(64, 64), _bf16(64, 192), _bf16(192)
    idx, cnt = torch.arange(64, dtype=torch.int32), torch.tensor([40], dtype=torch.int32)
    kw = {}
    if form == "gather_gelu":
        rows.rows_linear_triton(src, wt, bias, idx, cnt, "gelu", **kw)
    elif form == "planes_heads":
        rows.rows_linear_triton(src, wt, bias, idx, cnt, planes=3, heads=(torch.ones(4, 4, dtype=torch.bool), 16),
                                **kw)
    elif form == "scatter":
        rows.rows_linear_triton(src, wt, bias, None, cnt, out=_bf16(64, 192), out_idx=idx,
                                keep=torch.ones(64, dtype=torch.bool), scale=_bf16(192), **kw)
    else:
        rows.rows_linear_triton(src, wt, None, **kw)
    stats = _compile_all(launches, tmp_path)
    assert all(s["async_copies"] > 0 for s in stats), stats  # the K loop's loads are software-pipelined


@pytest.mark.parametrize("form", ["score", "rows_count", "every_row"])
def test_layer_norm_compiles(launches, tmp_path, form):
    x, w, b = _bf16(2, 17, 384), _bf16(384), _bf16(384)
    if form == "score":
        token.layer_norm_score_triton(x, w, b, 1e-6, torch.randn(384), torch.randn(1))
    elif form == "rows_count":
        token.rows_layer_norm_triton(x.view(34, 384), torch.arange(34, dtype=torch.int32),
                                     torch.tensor([20], dtype=torch.int32), w, b, 1e-6)
    else:
        token.rows_layer_norm_triton(x.view(34, 384), None, None, w, b, 1e-6)
    _compile_all(launches, tmp_path)


def test_pooled_decisions_compile(launches, tmp_path):
    """The ViT head and sub-block maskers' decisions: token mean and stacked linear in one program per sample."""
    token.pooled_decisions_triton(_bf16(2, 197, 384), torch.randn(8, 384), torch.randn(8))
    _compile_all(launches, tmp_path)


@pytest.mark.parametrize(("tokens", "run", "cls"), [(True, False, False), (True, True, True), (False, True, True)])
def test_packing_compiles(launches, tmp_path, tokens, run, cls):
    pack.pack_rows_triton(torch.rand(3, 17) < 0.5 if tokens else None, torch.rand(3) < 0.5 if run else None, (3, 17),
                          cls)
    _compile_all(launches, tmp_path)


@pytest.mark.parametrize("count", [False, True])
def test_spatial_kernels_compile(launches, tmp_path, count):
    """The sparse conv kernels with and without a device-side count (the CUDA-graph forms exit early past it)."""
    h1 = _bf16(2, 8, 8, 64).contiguous(memory_format=torch.contiguous_format)
    pidx = torch.tensor([[0, 0, 0], [1, 1, 1]], dtype=torch.int32)
    cnt = torch.tensor([1], dtype=torch.int32) if count else None
    y = spatial.gather_conv3x3_triton(h1, _bf16(64, 64, 3, 3), _bf16(64), pidx, 4, 1, count=cnt)
    spatial.conv1x1_scatter_add_triton(y, _bf16(128, 64, 1, 1), _bf16(128), _bf16(2, 8, 8, 128), pidx, 4, count=cnt)
    spatial.pixel_conv1x1_triton(h1, _bf16(64, 64, 1, 1), _bf16(64), torch.arange(2, dtype=torch.int32), count=cnt,
                                 per_sample=True, compact=True)
    stats = _compile_all(launches, tmp_path)
    assert all(s["async_copies"] > 0 for s in stats), stats  # the early exit leaves the K loops pipelined


def test_layer_rows_kernel_compiles(launches, tmp_path):
    out = _bf16(4, 8, 8, 64)
    layer.rows_add_relu_triton(out, _bf16(2, 8, 8, 64), torch.tensor([0, 3], dtype=torch.int64))
    _compile_all(launches, tmp_path)


@pytest.mark.parametrize("group_size", [8, 4])
@pytest.mark.parametrize("stride", [1, 2])
def test_channel_kernels_compile(launches, tmp_path, group_size, stride):
    """Channel skipping: the index lists, conv1 onto the active channels, the gathered 3x3 and conv3 reading them
    (with the next masker's pooling), in the weight layouts deployment packs; the GEMMs' K loops pipelined."""
    cin, width = 128, 64
    w1, w2, w3 = channel.pack_bottleneck_weights(_bf16(width, cin), _bf16(width, width, 3, 3), _bf16(cin, width))
    mask = torch.zeros(2, width // group_size, dtype=torch.bool)
    mask[:, ::2] = True
    idx, counts = channel.channel_index_triton(mask, group_size, kmax=width)
    x = _bf16(2, 8, 8, cin)
    h1 = channel.channel_conv1x1_out_triton(x, w1, _bf16(width), idx, counts)
    h2 = channel.channel_conv3x3_triton(h1, w2, _bf16(width), idx, counts, stride, group_size=group_size)
    res = _bf16(2, h2.shape[1], h2.shape[2], cin)
    channel.channel_conv1x1_in_triton(h2, w3, _bf16(cin), idx, counts, res, out=res,
                                      pool_out=torch.zeros(2, cin, dtype=torch.float32))
    stats = _compile_all(launches, tmp_path)
    assert all(s["async_copies"] > 0 for s in stats[1:]), stats  # the three GEMMs' loads are pipelined


def test_stem_kernel_compiles(launches, tmp_path):
    """ResNet's 7x7 and RegNet's 3x3 stem convolutions on 3 bf16 channels."""
    x = _bf16(2, 32, 32, 3)
    stem.stem_conv_triton(x, _bf16(64, 3, 7, 7), _bf16(64), (7, 7), 2, 3)
    stem.stem_conv_triton(x, _bf16(32, 3, 3, 3), _bf16(32), (3, 3), 2, 1)
    stats = _compile_all(launches, tmp_path)
    assert all(s["async_copies"] > 0 for s in stats), stats  # the kernel-row loop's loads are pipelined


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_varlen_attention_compiles(launches, tmp_path, dtype):
    """DeiT-S's heads (6 x 64) with and without skipped heads; the key loop's bound is read on the device."""
    q, k, v = (torch.randn(40, 6, 64).to(dtype) for _ in range(3))
    cu = torch.tensor([0, 17, 40], dtype=torch.int32)
    attention.varlen_attention_triton(q, k, v, cu, 23, 0.125)
    attention.varlen_attention_triton(q, k, v, cu, 23, 0.125, torch.ones(2, 6, dtype=torch.bool))
    _compile_all(launches, tmp_path)


def test_masker_kernels_compile(launches, tmp_path):
    """Window sums (tiled and per window), decisions with compacted lists, the channel masker's MLP."""
    x = _bf16(2, 8, 8, 64)
    masker.window_sums_triton(x, 4)
    masker.window_sums_triton(x, 8, split=1)
    sums = torch.randn(2, 2, 2, 64)
    masker.masker_decide_triton(sums, torch.randn(64), torch.randn(1), (8, 8), 4)  # one program: lists inline
    masker.masker_decide_triton(torch.randn(4, 8, 8, 64), torch.randn(64), torch.randn(1), (32, 32), 4)  # two
    masker.channel_masker_triton(torch.randn(2, 64), 64, torch.randn(16, 64), torch.randn(16), torch.randn(8, 16),
                                 torch.randn(8))
    _compile_all(launches, tmp_path)


def test_tile_configs_fit_sm90(launches, tmp_path):
    """Every named tile configuration (the ones `_utils.pick_config` chooses from and the benchmarks sweep) compiles on
    DeiT-S / ResNet shapes within an SM's shared memory, its K loop pipelined."""
    src, wt = _bf16(512, 384), _bf16(384, 1536)
    for cfg in spatial.CONV1X1_CONFIGS.values():
        rows.rows_linear_triton(src, wt, None, None, torch.tensor([300], dtype=torch.int32), "gelu", config=cfg)
    h1 = _bf16(2, 14, 14, 256)
    pidx = torch.tensor([[0, 0, 0], [1, 2, 1]], dtype=torch.int32)
    for cfg in spatial.CONV3X3_CONFIGS.values():
        spatial.gather_conv3x3_triton(h1, _bf16(256, 256, 3, 3), _bf16(256), pidx, 4, 1, config=cfg)
    stats = _compile_all(launches, tmp_path)
    assert all(s["async_copies"] > 0 for s in stats), stats
