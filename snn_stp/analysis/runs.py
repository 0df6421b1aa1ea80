"""Reading a run directory back: its config, per-epoch metrics, summary and model.

Plots, reports and the CLI read runs through this module only (see :mod:`snn_stp.rundir` for the
files and what survives a kill); none of them touches live training objects.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .. import rundir
from ..errors import RunDirectoryError
from ..files import read_yaml
from ..rundir import best_record  # noqa: F401  (part of this module's API; the rule lives in rundir)


@dataclass
class Run:
    """What a run directory holds: ``config`` (dict), ``metrics`` (one dict per epoch), ``summary``."""

    path: Path
    config: dict
    metrics: list[dict]
    summary: dict

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def label(self) -> str:
        model = self.config["model"]
        return f"{self.name} ({model['name']} {'SNN' if self.spiking else 'ANN'}, {self.config['pruning']['scheduler']})"

    @property
    def spiking(self) -> bool:
        return bool(self.config["model"]["spiking"])

    @property
    def last(self) -> dict:
        return self.metrics[-1]


def read_run(path: str | Path) -> Run:
    """Load a run directory (see :mod:`snn_stp.rundir` for what survives a kill); an incomplete or
    unreadable one is a :class:`RunDirectoryError` naming the file."""
    path = Path(path)
    if not path.is_dir():
        raise RunDirectoryError(f"{path} is not a run directory (it does not exist or is a file); give the --out "
                                "folder of snn-stp train")
    for required in (rundir.CONFIG, rundir.METRICS):
        if not (path / required).is_file():
            raise RunDirectoryError(f"{path} is not a run directory: {required} is missing")
    metrics = rundir.read_metrics(path)
    if not metrics:
        raise RunDirectoryError(f"{path / rundir.METRICS} has no finished epoch yet; nothing to plot or compare")
    config = read_yaml(path / rundir.CONFIG)
    if not isinstance(config, dict) or not isinstance(config.get("model"), dict):
        raise RunDirectoryError(f"{path / rundir.CONFIG} is not a run's config (no model section)")
    return Run(path, config, metrics, rundir.read_summary(path))


def config_key(config: dict, ignore) -> tuple:
    """A run's config as a hashable key, without the keys in ``ignore`` (runs with equal keys are
    the same setting)."""
    from ..train.config import flatten

    return tuple(sorted((k, repr(v)) for k, v in flatten(config).items() if k not in ignore))


def is_sweep(path: str | Path) -> bool:
    """Whether ``path`` is a sweep's folder (``snn-stp sweep --out``)."""
    return (Path(path) / rundir.SWEEP_RESULTS).is_file()


def run_paths(paths: list[str | Path]) -> list[Path]:
    """``paths`` with each sweep folder replaced by its finished runs (the subfolders with a summary)."""
    found = []
    for path in map(Path, paths):
        if is_sweep(path):
            runs = sorted(p for p in path.iterdir() if (p / rundir.SUMMARY).is_file())
            if not runs:
                raise RunDirectoryError(f"the sweep {path} has no finished run yet; run its snn-stp sweep command")
            found += runs
        else:
            found.append(path)
    return found


def load_model(run: Run, checkpoint: str = "last.pt"):
    """The run's model rebuilt from its config with the checkpoint's weights (CPU, eval mode)."""
    from ..train.restore import restore_checkpoint

    restored = restore_checkpoint(run.path, checkpoint)
    return restored.model, restored.config
