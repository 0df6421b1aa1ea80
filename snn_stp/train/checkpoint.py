"""Checkpoint files: atomic writes (a kill never corrupts the previous checkpoint), reads that never
run code, clear errors on reading anything that is not one, and the RNG states that make a resumed
run exact.

Every file is read with ``torch.load(weights_only=True)``: only tensors, numbers, strings and
plain containers come out, so a file built to run code when unpickled (a ``__reduce__`` returning
``os.system``) is refused before anything runs. What snn-stp writes holds nothing else: the config
as a plain dict, the RNG states as tensors, ints and tuples. Checkpoints of earlier versions held
NumPy's RNG state as an ``ndarray``; NumPy arrays of numbers are allowed when reading (the one
non-torch type, see :data:`NUMPY_ARRAY_GLOBALS`), so those still load. Anything else (a file from
other code that pickled an ``argparse.Namespace``, or a hostile one) gets one line naming what it
would have called and the command that converts a file the user trusts (:func:`convert_trusted`).
"""

from __future__ import annotations

import argparse
import pickle
import random
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from ..errors import CheckpointError
from ..files import link_atomic, write_atomic

#: Keys every training checkpoint holds (see ``Trainer.state_dict``).
STATE_KEYS = ("model", "optimizer", "lr_scheduler", "threshold_scheduler", "epoch", "global_step", "config")

#: The command that rewrites a file the user trusts into one that loads safely (``{path}``: the file).
CONVERT_COMMAND = "snn-stp convert-checkpoint {path} --out CONVERTED.pt --trust-source"


def _numpy_array_globals() -> list:
    """What unpickling a NumPy array of numbers needs: the reconstructor (under NumPy 2's name and
    NumPy 1's, which older files carry), ``ndarray`` and ``dtype``. None of them calls anything
    else; an array's items are still unpickled under the same restrictions."""
    from numpy._core.multiarray import _reconstruct
    numeric = [type(np.dtype(code)) for code in "?bBhHiIlLqQefd"]  # the classes of bool, int, uint, float dtypes
    return [_reconstruct, (_reconstruct, "numpy.core.multiarray._reconstruct"), np.ndarray, np.dtype, *numeric]


@contextmanager
def _reading_allowed() -> Iterator[None]:
    with torch.serialization.safe_globals(_numpy_array_globals()):
        yield


def save_atomic(state: dict[str, Any], path: str | Path) -> None:
    """``torch.save`` to a temporary file in the same folder, flush to disk, then rename over ``path``."""
    write_atomic(path, lambda f: torch.save(state, f))


def link(source: str | Path, path: str | Path) -> None:
    """``path`` becomes the same checkpoint as ``source`` (a hard link, replaced atomically)."""
    link_atomic(source, path)


def _check_present(path: Path) -> None:
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder, not a checkpoint file; give RUN_DIR/checkpoints/last.pt or the "
                              "run directory where a command takes one")
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes): the write that made it did not finish; use another "
                              "checkpoint (snn-stp resume repairs a run directory's own)")


def _refused_globals(path: Path, error: Exception) -> str | None:
    """What a refused file would have called, e.g. ``posix.system`` (from the file's pickle opcodes
    when it is in torch's zip format, else from torch's message); None when the unpickler did not
    refuse an object but met bytes that are no pickle at all (a damaged file)."""
    allowed = {f"{g.__module__}.{g.__qualname__}" if not isinstance(g, tuple) else g[1]
               for g in _numpy_array_globals()}
    try:
        names = [name for name in torch.serialization.get_unsafe_globals_in_checkpoint(path) if name not in allowed]
    except Exception:  # noqa: BLE001 - not a zip file, or damaged: fall back to torch's message
        names = []
    if names:
        return ", ".join(names)
    # torch words it "Unsupported global: GLOBAL posix.system was not an allowed global" or "Trying to
    # load unsupported GLOBAL posix.system whose module posix is blocked"; a damaged file gives
    # "Unsupported operand", which is no refusal.
    named = re.search(r"GLOBAL ([\w.]+)", str(error))
    if named:
        return named.group(1)
    built = re.search(r"Can only build .*? but got (<class '[\w.]+'>)", str(error))
    return built.group(1) if built else None


def load_file(path: str | Path, map_location="cpu") -> Any:
    """Whatever ``torch.save`` wrote to ``path``, read without running code (tensors, numbers,
    strings, plain containers, NumPy arrays of numbers). A missing, truncated or foreign file, or
    one that holds anything else, is a :class:`CheckpointError` naming it."""
    path = Path(path)
    _check_present(path)
    try:
        with _reading_allowed():
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # noqa: BLE001 - unpickling damaged bytes can raise almost any type
        # (UnpicklingError, EOFError, BadZipFile, OverflowError on a garbage frame length, ...).
        refused = _refused_globals(path, error) if isinstance(error, pickle.UnpicklingError) else None
        if refused:
            raise CheckpointError(
                f"{path} was refused: loading it would call {refused}, which a file of tensors "
                "and plain values never needs (it comes from other code, or was made to run code when loaded); "
                "snn-stp never unpickles such objects. If you trust where the file comes from, convert it once: "
                f"{CONVERT_COMMAND.format(path=path)}") from None
        problem = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise CheckpointError(f"{path} is not a readable checkpoint (truncated, corrupt or another kind of file: "
                              f"{problem})") from None


#: The ``format`` of a compact model file (``snn-stp export --format compact``): not a training
#: checkpoint, but ``snn-stp eval`` reads it.
COMPACT_FORMAT = "snn_stp.compact"


class CompactModelFile(CheckpointError):
    """The file is a compact model (``export --format compact``), not a training checkpoint."""


def load(path: str | Path, map_location="cpu") -> dict[str, Any]:
    """A training checkpoint written by snn-stp (model, optimizer, schedulers, RNG, config)."""
    state = load_file(path, map_location)
    if isinstance(state, dict) and state.get("format") == COMPACT_FORMAT:
        raise CompactModelFile(f"{path} is a compact model (snn-stp export --format compact), not a training "
                               "checkpoint: snn-stp eval evaluates it; resume and export need the run's checkpoint")
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


# -- converting a trusted file ------------------------------------------------------------------
def _plain(value: Any, where: str, report: dict[str, list[str]]) -> Any:
    """``value`` as tensors, numbers, strings and plain containers; what cannot be is dropped (and
    listed in ``report``)."""
    if isinstance(value, torch.Tensor):
        return value.detach().as_subclass(torch.Tensor) if type(value) not in (torch.Tensor, torch.nn.Parameter) \
            else value
    if isinstance(value, np.generic) and value.dtype.kind in "biuf":  # before float: np.float64 is a float
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str, bytes, torch.dtype, torch.device)):
        return value
    if isinstance(value, np.ndarray) and value.dtype.kind in "biuf":
        report["converted"].append(f"{where} (NumPy array -> tensor)")
        return torch.from_numpy(value.copy())
    if isinstance(value, argparse.Namespace):
        report["converted"].append(f"{where} (argparse.Namespace -> dict)")
        value = vars(value)
    if isinstance(value, torch.Size):
        return tuple(value)
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if not isinstance(key, (str, int, float, bool)) and key is not None:
                report["dropped"].append(f"{where}[{key!r}] (key of type {type(key).__name__})")
                continue
            converted = _plain(item, f"{where}[{key!r}]", report)
            if converted is not _DROPPED:
                out[key] = converted
        return out
    if isinstance(value, (list, tuple)):
        items = [_plain(item, f"{where}[{i}]", report) for i, item in enumerate(value)]
        items = [item for item in items if item is not _DROPPED]
        return items if isinstance(value, list) else tuple(items)
    report["dropped"].append(f"{where} ({type(value).__module__}.{type(value).__qualname__})")
    return _DROPPED


_DROPPED = object()


def convert_trusted(source: str | Path, out: str | Path, overwrite: bool = False) -> dict[str, list[str]]:
    """Rewrite a checkpoint the user trusts into one that :func:`load_file` reads: NumPy arrays
    become tensors, an ``argparse.Namespace`` a dict, and any other object is dropped. This
    UNPICKLES ``source`` (``weights_only=False``): it runs whatever code the file holds, so it is
    only for a file whose origin the user vouches for (the command asks for ``--trust-source``).
    Returns what was converted and what was dropped; ``out`` is written atomically and read back."""
    source, out = Path(source), Path(out)
    _check_present(source)
    if out.exists() and not overwrite:
        raise CheckpointError(f"{out} exists; choose another --out or pass --overwrite to replace it")
    try:
        state = torch.load(source, map_location="cpu", weights_only=False)
    except Exception as error:  # noqa: BLE001 - see load_file
        raise CheckpointError(f"{source} is not a readable checkpoint ({str(error).splitlines()[0] if str(error) else type(error).__name__})") from None
    report: dict[str, list[str]] = {"converted": [], "dropped": []}
    plain = _plain(state, "file", report)
    if plain is _DROPPED:
        raise CheckpointError(f"{source} holds a {type(state).__qualname__}, not tensors or a mapping of them; "
                              "nothing to convert")
    save_atomic(plain, out)
    load_file(out)
    return report


# -- RNG state ----------------------------------------------------------------------------------
def rng_state() -> dict[str, Any]:
    """The RNG states of torch, NumPy and Python as tensors, numbers and tuples (NumPy's key as an
    int64 tensor: an ``ndarray`` would need NumPy's unpickler when read)."""
    name, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": (name, torch.from_numpy(keys.astype(np.int64)), int(position), int(has_gauss),
                       float(cached_gaussian))}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore :func:`rng_state` (or the ``ndarray`` form of checkpoints from earlier versions)."""
    torch.set_rng_state(state["torch"])
    name, keys, position, has_gauss, cached_gaussian = state["numpy"]
    keys = keys.numpy() if isinstance(keys, torch.Tensor) else np.asarray(keys)
    np.random.set_state((name, keys.astype(np.uint32), position, has_gauss, cached_gaussian))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
