"""One kernel convention: every public op is registered in `dispatch.OPS` and chooses between its Triton launcher and
its reference by `resolve_impl` (env `LAUDNET_KERNELS`, then `impl`, then the device), the channel ops included."""

import inspect

import pytest
import torch

import laudnet.kernels as K
from laudnet.kernels import channel, dispatch
from laudnet.kernels._utils import triton_available

OP_NAMES = sorted(dispatch.OPS)


def test_every_public_op_is_registered():
    public = {name for name, fn in vars(K).items() if getattr(fn, "__module__", None) == dispatch.__name__}
    public.discard("resolve_impl")
    assert public <= set(dispatch.OPS)
    assert {"channel_index", "channel_conv1x1_out", "channel_conv3x3", "channel_conv1x1_in"} <= set(dispatch.OPS)
    for name in ("channel_index", "channel_conv1x1_out", "channel_conv3x3", "channel_conv1x1_in"):
        assert getattr(channel, name) is getattr(dispatch, name)  # deploy and the benchmarks call them from there


@pytest.mark.parametrize("name", OP_NAMES)
def test_implementations_take_the_op_arguments(name):
    """Each implementation needs no argument the op lacks; each argument of the op reaches an implementation."""
    op_params = set(inspect.signature(getattr(dispatch, name)).parameters) - {"impl"}
    taken = set()
    for impl in dispatch.OPS[name]:
        params = inspect.signature(impl.get()).parameters
        required = {p for p, v in params.items() if v.default is inspect.Parameter.empty}
        assert required <= op_params, (impl.path, required - op_params)
        taken |= set(params)
    assert op_params <= taken, op_params - taken


def _call_with_spies(monkeypatch, name, **kwargs):
    """Call op `name` on one-element CPU tensors with both implementations replaced by spies; returns the side run."""
    ran = []
    op = getattr(dispatch, name)
    params = inspect.signature(op).parameters
    for side, impl in zip(("triton", "reference"), dispatch.OPS[name], strict=True):
        monkeypatch.setattr(impl, "_fn", lambda *a, _side=side, **kw: ran.append(_side))
        monkeypatch.setattr(impl, "params", frozenset(params))
    args = [torch.zeros(1) for p, v in params.items() if v.default is inspect.Parameter.empty]
    op(*args, **kwargs)
    assert len(ran) == 1
    return ran[0]


@pytest.mark.parametrize("name", OP_NAMES)
def test_choice_follows_env_then_impl_then_device(monkeypatch, name):
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # Triton on CPU tensors is allowed (interpreted)
    for env in ("", "auto"):
        monkeypatch.setenv("LAUDNET_KERNELS", env)
        assert _call_with_spies(monkeypatch, name) == "reference"  # CPU tensors
        assert _call_with_spies(monkeypatch, name, impl="reference") == "reference"
        assert _call_with_spies(monkeypatch, name, impl="torch") == "reference"
        if triton_available():
            assert _call_with_spies(monkeypatch, name, impl="triton") == "triton"
    for env in ("reference", "torch"):
        monkeypatch.setenv("LAUDNET_KERNELS", env)
        assert _call_with_spies(monkeypatch, name, impl="triton") == "reference"  # the env overrides the call
    if triton_available():
        monkeypatch.setenv("LAUDNET_KERNELS", "triton")
        assert _call_with_spies(monkeypatch, name, impl="reference") == "triton"
    monkeypatch.setenv("LAUDNET_KERNELS", "cuda")
    with pytest.raises(ValueError, match="LAUDNET_KERNELS must be one of"):
        _call_with_spies(monkeypatch, name)
    monkeypatch.setenv("LAUDNET_KERNELS", "auto")
    with pytest.raises(ValueError, match="impl must be one of"):
        _call_with_spies(monkeypatch, name, impl="cuda")


def test_ops_keep_their_signature_and_reject_bad_calls():
    sig = inspect.signature(dispatch.channel_conv1x1_out)
    assert list(sig.parameters) == ["x", "w1", "b1", "idx", "counts", "impl", "config"]
    assert "compacted" in dispatch.channel_conv1x1_out.__doc__
    with pytest.raises(TypeError):
        dispatch.window_sums(torch.zeros(1, 2, 2, 3))  # window missing
    with pytest.raises(TypeError):
        dispatch.window_sums(torch.zeros(1, 2, 2, 3), 2, windows=3)
