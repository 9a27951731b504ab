"""Process-group helpers for ``torchrun``: the same training code runs as one process or as one process per GPU.

``torchrun`` exports ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` (and ``MASTER_ADDR``/``MASTER_PORT``); without them the
helpers behave as a world of one, so a laptop run needs no launcher. NCCL is used for CUDA devices, gloo for CPU.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class WorldInfo:
    """Where this process sits: ``rank`` among ``world_size``, ``local_rank`` on its host."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def world_info_from_env() -> WorldInfo:
    """Rank, world size and local rank from the torchrun environment; 0/1/0 without it."""
    rank, world, local = _env_int("RANK"), _env_int("WORLD_SIZE"), _env_int("LOCAL_RANK")
    info = WorldInfo(rank=rank or 0, world_size=world or 1, local_rank=local if local is not None else (rank or 0))
    if not 0 <= info.rank < info.world_size:
        raise ValueError(f"RANK={info.rank} is outside 0..{info.world_size - 1} (WORLD_SIZE={info.world_size})")
    return info


def launched_by_torchrun() -> bool:
    """True when the torchrun variables are set (``RANK`` and ``WORLD_SIZE``)."""
    return _env_int("RANK") is not None and _env_int("WORLD_SIZE") is not None


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """``auto`` means CUDA when available, else CPU; anything else is parsed by :class:`torch.device`."""
    if str(name) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def init_distributed(
    device: str | torch.device = "auto", timeout_s: float | None = None
) -> tuple[WorldInfo, torch.device]:
    """Join the process group when launched by torchrun; otherwise do nothing.

    Args:
        device: ``auto``, ``cpu`` or ``cuda[:N]``. Under torchrun ``cuda`` becomes ``cuda:LOCAL_RANK`` and uses NCCL;
            ``cpu`` uses gloo.
        timeout_s: collective timeout (default: torch's, 10 min for NCCL and 30 for gloo); short values make a dead
            peer fail fast in tests.

    Returns:
        ``(world info, device this process should use)``.
    """
    device = resolve_device(device)
    info = world_info_from_env()
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("device cuda was requested but CUDA is not available")
        index = info.local_rank if launched_by_torchrun() else (device.index or 0)
        device = torch.device("cuda", index)
        torch.cuda.set_device(device)
    if launched_by_torchrun() and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        # device_id binds NCCL to this GPU up front (avoids the first collective guessing it).
        kwargs: dict = {"device_id": device} if backend == "nccl" else {}
        if timeout_s is not None:
            kwargs["timeout"] = timedelta(seconds=timeout_s)
        dist.init_process_group(backend=backend, rank=info.rank, world_size=info.world_size, **kwargs)
    return info, device


def is_dist() -> bool:
    """True inside an initialised process group."""
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_dist() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def is_main_process() -> bool:
    """True on rank 0 (and without a process group): the process that logs and writes checkpoints."""
    return get_rank() == 0


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Mean of ``tensor`` over all processes (a new tensor; the input is left unchanged). Identity without DDP."""
    out = tensor.detach().clone()
    if not is_dist():
        return out
    # Integer tensors would truncate the division; reduce in floating point.
    if not out.is_floating_point():
        out = out.double()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out.div_(get_world_size())


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum of ``tensor`` over all processes (a new tensor). Identity without DDP."""
    out = tensor.detach().clone()
    if is_dist():
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def barrier() -> None:
    """Wait for every process (no-op without DDP)."""
    if is_dist():
        dist.barrier()


def cleanup() -> None:
    """Leave the process group if one was joined."""
    if is_dist():
        dist.destroy_process_group()


def broadcast_buffers(module: torch.nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s buffers (BN running statistics) to every process, in place (no-op without DDP).

    DDP broadcasts buffers at the start of each forward, so after the last training step every rank still holds the
    statistics of its own last batch; syncing them before validation makes all ranks evaluate (and checkpoint) one
    model.
    """
    if is_dist():
        for buffer in module.buffers():
            dist.broadcast(buffer.data, src=src)


def state_digest(module: torch.nn.Module) -> str:
    """SHA-256 of every parameter and buffer of ``module`` (names, dtypes, shapes and exact bytes, in name order)."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        # Viewed as bytes: bit-exact, and independent of the dtype (numpy has no bfloat16).
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def gather_digests(module: torch.nn.Module) -> list[str]:
    """:func:`state_digest` of every process's replica, in rank order (a list of one without DDP).

    Data-parallel replicas must hold bit-identical weights after every optimiser step; this is the check.
    """
    digest = state_digest(module)
    if not is_dist():
        return [digest]
    out: list[str | None] = [None] * get_world_size()
    dist.all_gather_object(out, digest)
    return [str(d) for d in out]
