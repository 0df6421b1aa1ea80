"""Continuing a run: the checkpoint is the source of truth, config.yaml may only change harmless keys."""

from __future__ import annotations

import warnings
from pathlib import Path

from .. import rundir
from ..errors import ConfigError, RunDirectoryError
from . import checkpoint as ckpt
from ..files import read_yaml
from .config import RESUME_MUTABLE_KEYS, Config, differences, from_dict, validate


def load_resume_state(run_dir: str | Path) -> tuple[Config, dict]:
    """The config to continue with and the state of ``run_dir/checkpoints/last.pt``.

    The config stored in the checkpoint is what the run was started with. ``config.yaml`` may
    differ from it only in :data:`RESUME_MUTABLE_KEYS` (those edits are taken); any other
    difference is a :class:`ConfigError` listing the keys. A missing config.yaml is restored from
    the checkpoint.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        what = "is a file, not a run directory" if run_dir.exists() else "does not exist"
        raise RunDirectoryError(f"{run_dir} {what}; snn-stp resume takes the --out folder of a run")
    last = run_dir / rundir.CHECKPOINTS / rundir.LAST
    if not last.exists():
        held = f"it holds {rundir.describe(run_dir)}" if rundir.holds_run(run_dir) else "it holds no run"
        raise RunDirectoryError(f"{run_dir} has no checkpoints/{rundir.LAST} to resume from ({held}); start it again "
                                f"with snn-stp train --out {run_dir} --overwrite")
    state = ckpt.load(last)
    saved = from_dict(state["config"])
    edited_path = run_dir / rundir.CONFIG
    if not edited_path.exists():
        warnings.warn(f"{edited_path} is missing; continuing with the config stored in {last} (config.yaml is "
                      "written again)", rundir.RunFileWarning, stacklevel=2)
        return saved, state
    try:
        edited = from_dict(read_yaml(edited_path) or {})
    except ConfigError as error:
        message = str(error)
        raise ConfigError(message if message.startswith(str(edited_path)) else f"{edited_path}: {message}") from None
    changed = differences(saved, edited)
    refused = {key: values for key, values in changed.items() if key not in RESUME_MUTABLE_KEYS}
    if refused:
        listing = ", ".join(f"{key} ({a!r} in the checkpoint, {b!r} in config.yaml)" for key, (a, b) in refused.items())
        raise ConfigError(
            f"{edited_path} differs from the config the run was started with: {listing}. A resumed run keeps its "
            f"config; undo the edit (resume accepts changes to {', '.join(RESUME_MUTABLE_KEYS)} only), or start a "
            f"new run from these weights: snn-stp train --config {edited_path} --init-from {last} --out NEW_RUN_DIR")
    try:
        validate(edited)
    except ConfigError as error:
        raise ConfigError(f"{edited_path}: {error}") from None
    return edited, state
