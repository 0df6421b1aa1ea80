"""One path from a checkpoint to what it holds: its config, its model and its threshold state.

Every command that reads a trained model (``eval``, ``export``, ``plot``'s histograms and raster,
the analysis API) goes through :func:`restore_checkpoint`: the model is rebuilt from the
checkpoint's own configuration (never from a ``config.yaml`` that may have been edited since) and
given the checkpoint's weights and pruning buffers, so it computes with the threshold d it was
saved with. ``resume`` reads the same file but continues training (:mod:`.resume`, the Trainer);
``train --init-from`` takes only the weights into a new model (:func:`.builders.load_weights`,
which also reads foreign dense state_dicts).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import rundir
from ..data import dataset_spec
from ..errors import RunDirectoryError
from . import checkpoint as ckpt
from .builders import make_model
from .config import Config, from_dict


@dataclass
class RestoredCheckpoint:
    """A checkpoint's contents, rebuilt.

    Attributes:
        path: the checkpoint file.
        config: the configuration the run was trained with (from the checkpoint).
        model: sparsified, in eval mode, with the saved weights, thresholds and masks.
        state: the checkpoint as loaded (epoch, global_step, optimizer and scheduler states, ...).
    """

    path: Path
    config: Config
    model: nn.Module
    state: dict[str, Any]

    @property
    def threshold_state(self) -> dict[str, Any]:
        """The threshold scheduler's saved state (its ``threshold`` is d at this checkpoint)."""
        return self.state["threshold_scheduler"]

    @property
    def epoch(self) -> int:
        return int(self.state["epoch"])

    @property
    def global_step(self) -> int:
        return int(self.state["global_step"])


def checkpoint_file(path: str | Path, checkpoint: str = rundir.LAST) -> Path:
    """``path`` itself when it is a file, else the run directory's ``checkpoints/<checkpoint>``;
    a folder without it is a :class:`RunDirectoryError` saying what the folder holds."""
    path = Path(path)
    if not path.is_dir():
        return path
    found = path / rundir.CHECKPOINTS / checkpoint
    if not found.exists():
        held = f"it holds: {rundir.describe(path)}" if rundir.holds_run(path) else "it holds no run"
        raise RunDirectoryError(f"{path} holds no {rundir.CHECKPOINTS}/{checkpoint} (is it a run directory? {held}); "
                                "give a run directory or a checkpoint file")
    return found


def restore_checkpoint(path: str | Path, checkpoint: str = rundir.LAST,
                       device: torch.device | str = "cpu") -> RestoredCheckpoint:
    """Read a checkpoint file (or a run directory's ``checkpoints/<checkpoint>``) and rebuild its
    model on ``device``. The file is read with ``weights_only=True`` (:func:`.checkpoint.load`)."""
    path = checkpoint_file(path, checkpoint)
    state = ckpt.load(path)
    config = from_dict(state["config"])
    model = make_model(config, dataset_spec(config.data.name).num_classes, torch.device(device),
                       load_initial_weights=False)
    model.load_state_dict(state["model"])
    return RestoredCheckpoint(path, config, model.eval(), state)
