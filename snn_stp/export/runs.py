"""``snn-stp export``: a trained run's model out of the toolkit, as NIR or as a sparse checkpoint."""

from __future__ import annotations

import copy
import inspect
from pathlib import Path

from .. import pruning, rundir
from ..errors import UsageError
from ..files import atomic_path
from ..model_registry import MODELS
from ..train.builders import model_arguments, model_from_checkpoint
from .nir_graph import DEFAULT_DT, check_time_step, export_nir
from .sparse_checkpoint import save_sparse

FORMATS = ("nir", "sparse")


def export_run(run: str | Path, format: str, out: str | Path, checkpoint: str = rundir.LAST, dt: float = DEFAULT_DT) -> dict:
    """Export the model of a run directory (or of a checkpoint file).

    Args:
        run: a run directory (its ``checkpoints/<checkpoint>``) or a checkpoint file.
        format: ``nir`` (a NIR graph file; tested with snnTorch and Norse, see docs/deployment.md)
            or ``sparse`` (a compact checkpoint of the non-zero weights).
        out: the file to write.
        checkpoint: which checkpoint of a run directory (``last.pt`` or ``best.pt``).
        dt: NIR only: the time step in seconds that one step of the network stands for.

    Returns:
        what was written: ``path``, ``format``, ``weight_sparsity`` and the format's own figures.
    """
    if format not in FORMATS:
        raise UsageError(f"unknown export format {format!r}; valid: {', '.join(FORMATS)}")
    check_time_step(dt)  # before the checkpoint is read
    run = Path(run)
    path = run / rundir.CHECKPOINTS / checkpoint if run.is_dir() else run
    model, config = model_from_checkpoint(path)
    sparsity = pruning.weight_sparsity(model).global_sparsity
    baked = pruning.bake(copy.deepcopy(model))
    arguments = model_arguments(config)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if format == "sparse":
        sizes = save_sparse(baked, arguments, out)
        return {"path": str(out), "format": format, "weight_sparsity": sparsity, **sizes}
    import nir

    graph = export_nir(baked, sample_shape(baked, config), dt=dt, model_name=config.model.name)
    with atomic_path(out) as temporary:
        nir.write(str(temporary), graph)
    return {"path": str(out), "format": format, "weight_sparsity": sparsity, "dt": dt,
            "time_steps": graph.metadata["time_steps"], "nodes": len(graph.nodes)}


def sample_shape(model, config) -> tuple[int, ...]:
    """One input sample of ``config``'s model, without time and batch: ``(features,)`` for a model
    whose first layer is a Linear, ``(channels, size, size)`` for a convolutional one (its
    ``image_size`` option, else the model's default; for a SEW ResNet its stem's: 32 for cifar,
    224 for imagenet, 128 for dvs)."""
    from torch import nn

    first = next(m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d)))
    if isinstance(first, nn.Linear):
        return (first.in_features,)
    size = config.model.options.get("image_size")
    stem = config.model.options.get("stem", "imagenet") if config.model.name.startswith("sew_resnet") else None
    if size is None and stem is not None:  # SEW ResNet: the stem's input size
        size = {"cifar": 32, "imagenet": 224, "dvs": 128}[stem]
    if size is None:
        parameter = inspect.signature(MODELS[config.model.name].builder).parameters.get("image_size")
        size = parameter.default if parameter is not None else 32
    return (first.in_channels, int(size), int(size))
