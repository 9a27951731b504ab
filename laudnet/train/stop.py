"""Stopping a training run on SIGTERM or SIGINT without losing anything: the signal sets a flag, and the run saves
``last.pt`` after the optimiser step in flight, every process at the same step (:func:`stop_requested`).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

import torch

from laudnet.train import distributed as dist_utils


class StopFlag:
    """Set by SIGTERM or SIGINT; the loop checks it after each optimiser step and saves before stopping.

    ``timeout``, Slurm and Kubernetes signal the whole process group and Ctrl-C does the same: the DataLoader workers
    ignore both signals (see :func:`laudnet.data.build_loader`), so they keep serving batches until the main process
    has saved ``last.pt`` and shuts them down. A second SIGINT aborts at once (``KeyboardInterrupt``), without saving.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.set = False
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _handler(self, signum, frame) -> None:
        if self.set and signum == signal.SIGINT and self.signum == signal.SIGINT:
            raise KeyboardInterrupt  # Ctrl-C twice: the user does not want to wait for the save
        self.set = True
        self.signum = self.signum or signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else "stop signal (to another process)"

    @contextlib.contextmanager
    def installed(self) -> Iterator[StopFlag]:
        # Signal handlers can only be installed from the main thread; elsewhere (a notebook worker thread) the run
        # simply keeps the default behaviour.
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        self._previous = {s: signal.signal(s, self._handler) for s in self.SIGNALS}
        try:
            yield self
        finally:
            for s, previous in self._previous.items():
                signal.signal(s, previous)



def stop_requested(flag: StopFlag, device: torch.device) -> bool:
    """Whether any process has been asked to stop (collective under DDP)."""
    # Every rank must stop at the same step (a signal may reach them at different times): agree by a max-reduce.
    if not dist_utils.is_dist():
        return flag.set
    t = torch.tensor([1.0 if flag.set else 0.0], device=device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return bool(t.item())
