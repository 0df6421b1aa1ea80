"""``snn-stp export``: a trained run's model out of the toolkit, as NIR or as a sparse checkpoint."""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

from .. import pruning, rundir
from ..data import dataset_spec
from ..errors import SnnStpWarning, UsageError
from ..files import atomic_path
from ..model_registry import MODELS
from ..train.builders import model_arguments, run_epochs
from ..train.restore import checkpoint_file, restore_checkpoint
from .compact import compact, save_compact
from .nir_graph import DEFAULT_DT, check_time_step, export_nir
from .sparse_checkpoint import save_sparse

FORMATS = ("nir", "sparse", "compact")


class UnfinishedRunWarning(SnnStpWarning):
    """The exported checkpoint is from a run that has not finished its schedule."""


def export_run(run: str | Path, format: str, out: str | Path, checkpoint: str = rundir.LAST, dt: float = DEFAULT_DT,
               overwrite: bool = False, pool: str = "neuron", add: str = "edges") -> dict:
    """Export the model of a run directory (or of a checkpoint file).

    Args:
        run: a run directory (its ``checkpoints/<checkpoint>``) or a checkpoint file.
        format: ``nir`` (a NIR graph file; tested with snnTorch, Norse and SpikingJelly 2.0, see
            docs/deployment.md),
            ``sparse`` (a checkpoint of the non-zero weights) or ``compact`` (a smaller dense model
            with its zero channels removed, :mod:`.compact`; ``snn-stp eval`` reads it).
        out: the file to write.
        checkpoint: which checkpoint of a run directory (``last.pt`` or ``best.pt``).
        dt: NIR only: the time step in seconds that one step of the network stands for.
        overwrite: replace ``out`` if it exists (never a file of a run directory).
        pool, add: NIR only: how max pooling of spikes and a SEW ADD are written (see
            :func:`~snn_stp.export.export_nir`; the defaults are the forms snnTorch, Norse and
            SpikingJelly 2.0 run).

    Returns:
        what was written: ``path``, ``format``, ``weight_sparsity``, ``training`` (the checkpoint's
        progress, also stored in the file: see :func:`training_progress`) and the format's own figures.

    A checkpoint of a run that has not finished is exported with an :class:`UnfinishedRunWarning`.
    """
    if format not in FORMATS:
        raise UsageError(f"unknown export format {format!r}; valid: {', '.join(FORMATS)}")
    check_time_step(dt)  # before the checkpoint is read
    out = Path(out)
    path = checkpoint_file(run, checkpoint)
    check_output_file(out, overwrite, path)
    restored = restore_checkpoint(path)
    model, config, state = restored.model, restored.config, restored.state
    training = training_progress(path, config, state)
    if not training["finished"]:
        warnings.warn(f"{path} is from an unfinished run (epoch {training['epoch']} of {training['epochs']}, step "
                      f"{training['global_step']}): the export holds its weights as they were then, and says so in "
                      "its metadata ('training')", UnfinishedRunWarning, stacklevel=2)
    sparsity = pruning.weight_sparsity(model).global_sparsity
    baked = pruning.bake(copy.deepcopy(model))
    arguments = model_arguments(config)
    out.parent.mkdir(parents=True, exist_ok=True)
    if format == "sparse":
        sizes = save_sparse(baked, arguments, out, metadata={"training": training})
        return {"path": str(out), "format": format, "weight_sparsity": sparsity, "training": training, **sizes}
    if format == "compact":
        dense = sum(p.numel() for p in baked.parameters())
        shape = sample_shape(baked, config)
        plan = compact(baked, shape)
        save_compact(baked, config, plan, shape, out, metadata={"training": training})
        return {"path": str(out), "format": format, "weight_sparsity": sparsity, "training": training,
                "removed_channels": plan.removed, "channels": sum(plan.channels.values()),
                "kept_zero_channels": len(plan.kept_zero), "parameters": sum(p.numel() for p in baked.parameters()),
                "dense_parameters": dense}
    import nir

    graph = export_nir(baked, sample_shape(baked, config), dt=dt, model_name=config.model.name, pool=pool, add=add)
    graph.metadata["training"] = training
    with atomic_path(out) as temporary:
        nir.write(str(temporary), graph)
    return {"path": str(out), "format": format, "weight_sparsity": sparsity, "training": training, "dt": dt,
            "time_steps": graph.metadata["time_steps"], "nodes": len(graph.nodes)}


def check_output_file(out: Path, overwrite: bool, source: Path) -> None:
    """Refuse to write ``out`` over an existing file unless ``overwrite``, and over a run's own
    files (its checkpoints, config, metrics, summary: the run would be lost) or ``source`` always."""
    if out.is_dir():
        raise UsageError(f"--out {out} is a folder; give the name of the file to write")
    run_file = out.parent.name == rundir.CHECKPOINTS and rundir.holds_run(out.parent.parent) or \
        out.name in rundir.RUN_ENTRIES and rundir.holds_run(out.parent)
    if run_file or out.exists() and out.resolve() == source.resolve():
        owner = out.parent.parent if out.parent.name == rundir.CHECKPOINTS else out.parent
        raise UsageError(f"--out {out} is a file of the run directory {owner}; an export never replaces a run's "
                         "files: choose another --out")
    if out.exists() and not overwrite:
        raise UsageError(f"--out {out} exists; choose another --out or pass --overwrite to replace it")


def training_progress(path: Path, config, state: dict) -> dict:
    """How far the run of checkpoint ``path`` had got: ``checkpoint``, ``epoch`` and ``global_step``
    of the checkpoint, the run's ``epochs``, and ``finished`` (the run wrote its summary, or the
    checkpoint is at its last epoch or ``train.max_steps``)."""
    epochs, steps = run_epochs(config), config.train.max_steps
    run_dir = path.parent.parent if path.parent.name == rundir.CHECKPOINTS else None
    finished = bool(run_dir is not None and (run_dir / rundir.SUMMARY).is_file()) or state["epoch"] >= epochs \
        or bool(steps and state["global_step"] >= steps)
    return {"checkpoint": path.name, "epoch": int(state["epoch"]), "epochs": int(epochs),
            "global_step": int(state["global_step"]), "finished": finished}


def sample_shape(model, config) -> tuple[int, ...]:
    """One input sample of ``config``'s model per time step, without time and batch: ``(features,)``
    or ``(C, H, W)``. The data set's (``config.data``, downsampled as its frames are), checked
    against what the model's registry entry accepts (:meth:`ModelSpec.input_shape`): a mismatch
    is an ``InputShapeError`` naming both. ``model`` is not read (the registry knows the input)."""
    spec = MODELS[config.model.name]
    data = dataset_spec(config.data.name)
    downsample = config.data.downsample if data.input_kind == "events" else None
    return spec.input_shape(model_arguments(config), dataset=data, downsample=downsample)
