"""Checkpoint files: atomic writes (a kill never corrupts the previous checkpoint), clear errors on
reading anything that is not one, and the RNG states that make a resumed run exact."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import CheckpointError
from ..files import link_atomic, write_atomic

#: Keys every training checkpoint holds (see ``Trainer.state_dict``).
STATE_KEYS = ("model", "optimizer", "lr_scheduler", "threshold_scheduler", "epoch", "global_step", "config")


def save_atomic(state: dict[str, Any], path: str | Path) -> None:
    """``torch.save`` to a temporary file in the same folder, flush to disk, then rename over ``path``."""
    write_atomic(path, lambda f: torch.save(state, f))


def link(source: str | Path, path: str | Path) -> None:
    """``path`` becomes the same checkpoint as ``source`` (a hard link, replaced atomically)."""
    link_atomic(source, path)


def load_file(path: str | Path, map_location="cpu") -> Any:
    """Whatever ``torch.save`` wrote to ``path``; a missing, truncated or foreign file is a
    :class:`CheckpointError` naming it."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder, not a checkpoint file; give RUN_DIR/checkpoints/last.pt or the "
                              "run directory where a command takes one")
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes): the write that made it did not finish; use another "
                              "checkpoint (snn-stp resume repairs a run directory's own)")
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except Exception as error:  # noqa: BLE001 - unpickling damaged bytes can raise almost any type
        # (UnpicklingError, EOFError, BadZipFile, OverflowError on a garbage frame length, ...).
        problem = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise CheckpointError(f"{path} is not a readable checkpoint (truncated, corrupt or another kind of file: "
                              f"{problem})") from None


def load(path: str | Path, map_location="cpu") -> dict[str, Any]:
    """A training checkpoint written by snn-stp (model, optimizer, schedulers, RNG, config)."""
    state = load_file(path, map_location)
    missing = [key for key in STATE_KEYS if not isinstance(state, dict) or key not in state]
    if missing:
        kind = f"a {type(state).__name__}" if not isinstance(state, dict) else "a mapping without " + ", ".join(missing)
        raise CheckpointError(f"{path} is not an snn-stp training checkpoint ({kind}); snn-stp eval and resume need "
                              "RUN_DIR/checkpoints/*.pt; to start from other weights use snn-stp train --init-from")
    return state


def model_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The model weights in ``path``: an snn-stp checkpoint (its ``model``), a plain state_dict (e.g.
    torchvision's), or a dict holding one under ``state_dict``/``model``."""
    state = load_file(path)
    if isinstance(state, dict):
        for key in ("model", "state_dict", "model_state_dict"):
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} holds no model weights (expected a state_dict of tensors, or a checkpoint with "
                              "one under 'model' or 'state_dict')")
    return state


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
