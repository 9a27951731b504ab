"""Training checkpoints: atomic writes, and loads that fail with a one-line error naming the file.

A checkpoint is a dict saved with :func:`torch.save`, tagged with a format marker, a format version and the model
name. Writing goes to a temporary file in the same folder, which is flushed, fsynced and renamed over the target
(``os.replace`` is atomic on POSIX), so a crash or a SIGTERM during a save leaves the previous checkpoint intact.

Loads use ``weights_only=True``: checkpoints hold only tensors and plain containers, and a foreign pickle cannot run
code. :func:`capture_rng_state` / :func:`restore_rng_state` store the Python, numpy and torch generators in that form.
"""

from __future__ import annotations

import os
import pickle
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

FORMAT = "laudnet-checkpoint"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used (corrupt, foreign, of another model or a newer format)."""


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any], model_name: str | None = None) -> Path:
    """Save ``state`` atomically to ``path``.

    Args:
        path: destination; its folder is created if needed.
        state: what to save (model/optimiser/scheduler state dicts, epoch, ...). Must hold ``model_name`` unless
            ``model_name`` is given.
        model_name: the registered model name, stored so a load can refuse another model's checkpoint.

    Returns:
        The path written.
    """
    path = Path(path)
    name = model_name if model_name is not None else state.get("model_name")
    if not isinstance(name, str) or not name:
        raise ValueError("save_checkpoint needs the model name: pass model_name= or put 'model_name' in state")
    payload = {**state, "format": FORMAT, "format_version": FORMAT_VERSION, "model_name": name}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # includes KeyboardInterrupt: never leave a half-written temp file behind
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def _fsync_dir(folder: Path) -> None:
    # Makes the rename itself durable; not supported on every platform/filesystem, hence best effort.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_checkpoint(
    path: str | os.PathLike, expected_model: str | None = None, map_location: str | torch.device = "cpu"
) -> dict[str, Any]:
    """Load a laudnet checkpoint.

    Args:
        path: the file.
        expected_model: refuse a checkpoint of another model name (None: accept any).
        map_location: where tensors go (default CPU).

    Returns:
        The saved dict, including ``format``, ``format_version`` and ``model_name``.

    Raises:
        FileNotFoundError: the file does not exist.
        CheckpointError: truncated or corrupt, not a laudnet checkpoint, newer format, or another model.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        # torch's message is a paragraph; its useful part is the line after "WeightsUnpickler error:".
        lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
        marker = next((k for k, line in enumerate(lines) if line.endswith("WeightsUnpickler error:")), None)
        detail = lines[marker + 1] if marker is not None and marker + 1 < len(lines) else (lines or [""])[0]
        raise CheckpointError(
            f"checkpoint {path} is corrupt or not a laudnet checkpoint: it is not a torch file of tensors and plain "
            f"containers ({detail})"
        ) from err
    except Exception as err:  # corrupt bytes surface as many types: RuntimeError, EOFError, IndexError, ...
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt ({first})") from err
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        what = (
            f"a dict with keys {', '.join(map(str, list(state)[:4]))}{', ...' if len(state) > 4 else ''}"
            if isinstance(state, dict)
            else f"a {type(state).__name__}"
        )
        raise CheckpointError(
            f"{path} is not a laudnet checkpoint (it holds {what}); a plain state dict such as torchvision weights is "
            "an initialisation, not a checkpoint to resume or evaluate"
        )
    version = state.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format version {version!r}; this laudnet reads versions up to {FORMAT_VERSION}"
        )
    if expected_model is not None and state.get("model_name") != expected_model:
        raise CheckpointError(
            f"checkpoint {path} is of model {state.get('model_name')!r}, not the requested {expected_model!r}"
        )
    return state


def checkpoint_target(state: dict[str, Any]) -> float | None:
    """The FLOPs target a training checkpoint was trained for (a training setting, in its ``config``); None for a
    static network."""
    return None if state["paradigm"] == "static" else state["config"].get("target")


def capture_rng_state() -> dict[str, Any]:
    """The Python, numpy, torch CPU and CUDA generator states, in a form ``weights_only`` loads accept."""
    np_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "bit_generator": np_state["bit_generator"],
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Restore generators saved by :func:`capture_rng_state` (CUDA only when saved and available)."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": np_state["bit_generator"],
            "state": {"key": np_state["key"].numpy().astype(np.uint32), "pos": np_state["pos"]},
            "has_gauss": np_state["has_gauss"],
            "gauss": np_state["gauss"],
        }
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
