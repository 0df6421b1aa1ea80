"""Figures from run directories (never from live training objects); one figure per question.

Every function returns a ``matplotlib.figure.Figure`` with labelled axes (units included), a
legend where there are several series, and a title naming the run; :func:`plot_runs` writes
them as PNG and PDF.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from matplotlib.ticker import MaxNLocator

from ..errors import UsageError
from .figures import plt, save  # pyplot with the file-only backend selected
from .pareto import wanted as pareto_wanted, write_pareto
from .runs import Run, is_sweep, load_model, read_run, run_paths


def _series(run: Run, key: str) -> list:
    return [m[key] for m in run.metrics]


def _legend_with_twin(ax, twin, **options) -> None:
    """One legend for the series of an axis and of its twin (right-hand) axis."""
    handles, labels = ax.get_legend_handles_labels()
    twin_handles, twin_labels = twin.get_legend_handles_labels()
    ax.legend(handles + twin_handles, labels + twin_labels, **options)


def _integer_x(ax) -> None:
    """Epochs and time steps are whole numbers."""
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def plot_threshold(run: Run):
    """Threshold d and the implied L1 coefficient against the optimizer step."""
    fig, ax = plt.subplots(figsize=(6.4, 4))
    steps = _series(run, "step")
    ax.plot(steps, _series(run, "threshold"), "o-", color="tab:blue", label="threshold d")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("threshold d (weight units)")
    twin = ax.twinx()
    l1 = [float("nan") if v is None else v for v in _series(run, "l1_coefficient")]  # None: Adam, no L1 objective
    negative = any(v < 0 for v in l1)  # d fell: no L1 penalty then, a reward for |w|
    twin.plot(steps, l1, "s--", color="tab:red",
              label="implied L1 coefficient λ" + (" (below 0: d fell, no penalty)" if negative else ""))
    if negative:
        twin.axhline(0, color="tab:red", linewidth=0.8, linestyle=":")
    twin.set_ylabel("implied L1 coefficient λ = (1-μ)/(1-τ)·Δd/lr + wd·d")
    _legend_with_twin(ax, twin, loc="lower right")
    ax.set_title(f"Threshold schedule: {run.label}")
    fig.tight_layout()
    return fig


def plot_sparsity(run: Run):
    """Weight sparsity against the epoch: of the pruned layers together (the paper's figure), of all
    weights (layers left dense included), and of each pruned layer."""
    fig, ax = plt.subplots(figsize=(6.4, 4))
    epochs = _series(run, "epoch")
    ax.plot(epochs, [100 * v for v in _series(run, "weight_sparsity")], "k-", linewidth=2.5, label="pruned layers")
    if all("all_weight_sparsity" in m for m in run.metrics):  # runs written before it was logged lack it
        ax.plot(epochs, [100 * m["all_weight_sparsity"] for m in run.metrics], "k--", linewidth=2, label="all weights")
    for layer in run.metrics[-1]["layer_sparsity"]:
        ax.plot(epochs, [100 * m["layer_sparsity"][layer] for m in run.metrics], linewidth=1, label=layer)
    granularity = run.config.get("pruning", {}).get("granularity", "weight")
    if granularity == "channel":
        ax.plot(epochs, [100 * m.get("channel_sparsity", 0.0) for m in run.metrics], "k:", linewidth=2,
                label="zero channels (pruned layers)")
    # A method that trains in rounds (imp): where each round starts, after its pruning and rewind.
    for before, record in zip(run.metrics, run.metrics[1:]):
        if record.get("round", 0) != before.get("round", 0):
            ax.axvline(record["epoch"] - 0.5, color="0.6", linewidth=0.8, linestyle="--")
    ax.set_xlabel("epoch")
    ax.set_ylabel("weight sparsity (% zeros)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize="small")
    _integer_x(ax)
    kind = "" if granularity == "weight" else f" ({granularity} granularity)"
    ax.set_title(f"Weight sparsity{kind}: {run.label}")
    fig.tight_layout()
    return fig


def plot_support_changes(run: Run):
    """Weights newly pruned and regrown in each epoch, with the threshold for reference."""
    fig, ax = plt.subplots(figsize=(6.4, 4))
    epochs = np.asarray(_series(run, "epoch"))
    ax.bar(epochs - 0.2, _series(run, "pruned"), width=0.4, color="tab:orange", label="pruned (non-zero -> 0)")
    ax.bar(epochs + 0.2, _series(run, "regrown"), width=0.4, color="tab:green", label="regrown (0 -> non-zero)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("weights per epoch (count)")
    twin = ax.twinx()
    twin.plot(epochs, _series(run, "threshold"), "k.-", label="threshold d")
    twin.set_ylabel("threshold d (weight units)")
    _legend_with_twin(ax, twin, loc="center right", fontsize="small")
    _integer_x(ax)
    ax.set_title(f"Pruned and regrown weights: {run.label}")
    fig.tight_layout()
    return fig


def plot_accuracy(run: Run):
    """Train and test accuracy against the epoch."""
    fig, ax = plt.subplots(figsize=(6.4, 4))
    epochs = _series(run, "epoch")
    ax.plot(epochs, [100 * v for v in _series(run, "test_acc")], "o-", label="test (top-1)")
    ax.plot(epochs, [100 * v for v in _series(run, "train_acc")], "--", label="train (top-1)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy (%)")
    ax.legend()
    _integer_x(ax)
    ax.set_title(f"Accuracy: {run.label}")
    fig.tight_layout()
    return fig


def plot_layers(run: Run):
    """Final per-layer weight sparsity and (spiking models) firing rate, side by side."""
    last = run.last
    spiking = "firing_rate" in last
    fig, axes = plt.subplots(1, 2 if spiking else 1, figsize=(11 if spiking else 6.4, 4), squeeze=False)
    names = list(last["layer_sparsity"])
    ax = axes[0][0]
    ax.barh(names, [100 * last["layer_sparsity"][n] for n in names], color="tab:blue", label="weight sparsity")
    ax.set_xlabel("weight sparsity (% zeros)")
    ax.set_ylabel("pruned layer")
    ax.set_xlim(0, 100)
    ax.invert_yaxis()
    if spiking:
        ax2 = axes[0][1]
        neurons = list(last["firing_rate"])
        ax2.barh(neurons, list(last["firing_rate"].values()), color="tab:red", label="firing rate")
        ax2.set_xlabel("firing rate (spikes per neuron per time step)")
        ax2.set_ylabel("spiking layer")
        ax2.invert_yaxis()
    fig.suptitle(f"Per-layer sparsity{' and firing rate' if spiking else ''} at epoch {last['epoch']}: {run.label}")
    fig.tight_layout()
    return fig


def plot_histograms(run: Run, layers: list[str] | None = None, max_layers: int = 3):
    """Histograms of the latent theta and the effective w = S_d(theta) of chosen pruned layers."""
    from ..pruning import pruned_layers

    model, _ = load_model(run)
    available = {layer.name: layer for layer in pruned_layers(model)}
    chosen = layers or list(available)[:max_layers]
    unknown = [name for name in chosen if name not in available]
    if unknown:
        raise UsageError(f"--layers: no pruned layer {unknown}; pruned layers: {', '.join(available)}")
    fig, axes = plt.subplots(1, len(chosen), figsize=(4.2 * len(chosen), 3.6), squeeze=False)
    for ax, name in zip(axes[0], chosen):
        theta = available[name].theta.detach().flatten().numpy()
        w = available[name].weight.detach().flatten().numpy()
        bins = np.linspace(min(theta.min(), w.min()), max(theta.max(), w.max()), 80)
        ax.hist(theta, bins=bins, alpha=0.6, label="latent θ")
        ax.hist(w[w != 0], bins=bins, alpha=0.6, label=f"w = S_d(θ), non-zero ({(w != 0).mean():.1%})")
        ax.set_yscale("log")
        ax.set_xlabel("value (weight units)")
        ax.set_ylabel("count")
        ax.set_title(name, fontsize="medium")
        ax.legend(fontsize="small")
    fig.suptitle(f"θ and w at the last checkpoint: {run.label}")
    fig.tight_layout()
    return fig


def plot_raster(run: Run, layer: str | None = None, sample: int = 0, max_neurons: int = 256):
    """Spike raster of one test sample for one spiking layer: time step against neuron index."""
    from spikingjelly.activation_based import monitor, neuron

    from ..data import make_loader
    from ..train.builders import make_dataset

    model, config = load_model(run)
    if not getattr(model, "spiking", False):
        raise UsageError(f"{run.name} is an ANN run; spike rasters need a spiking model")
    dataset = make_dataset(config, "test", model)
    if not 0 <= sample < len(dataset):
        raise UsageError(f"--sample {sample}: the test set has samples 0 to {len(dataset) - 1}")
    x, label = next(iter(make_loader(dataset, config.data.name, 1, True, sampler=[sample])))
    recorder = monitor.OutputMonitor(model, neuron.BaseNode, function_on_output=lambda s: s.detach().clone())
    try:
        with torch.no_grad():
            model(x)
        names = list(recorder.monitored_layers)
        chosen = layer or names[0]
        if chosen not in names:
            raise UsageError(f"--raster-layer: no spiking layer {chosen!r}; spiking layers: {', '.join(names)}")
        spikes = recorder[chosen][0][:, 0].reshape(recorder[chosen][0].shape[0], -1)[:, :max_neurons]
    finally:
        recorder.remove_hooks()
    times, cells = np.nonzero(spikes.numpy())
    fig, ax = plt.subplots(figsize=(6.4, 4))
    ax.scatter(times, cells, marker="|", s=60, color="k", label="spike")
    ax.set_xlabel("time step")
    ax.set_ylabel(f"neuron index (first {spikes.shape[1]})")
    ax.set_xlim(-0.5, spikes.shape[0] - 0.5)
    ax.set_ylim(-0.5, spikes.shape[1] - 0.5)
    _integer_x(ax)
    ax.set_title(f"Spikes of {chosen}, test sample {sample} (label {int(label[0])}): {run.name}")
    fig.tight_layout()
    return fig


#: Beyond this many runs, one point (and legend entry) per run says nothing: the cross-run figures are
#: the Pareto figure's seed means per scheduler instead (:mod:`snn_stp.analysis.pareto`).
MAX_RUN_LEGEND = 8


def plot_accuracy_vs_sparsity(runs: list[Run]):
    """Final test accuracy against final weight sparsity, one point per run: filled, the sparsity of the
    pruned layers; hollow, of all weights (joined to it). For seed means per scheduler, see
    :func:`snn_stp.analysis.pareto.pareto_figure`."""
    fig, ax = plt.subplots(figsize=(6.4, 4))
    for run in runs:
        accuracy, pruned = 100 * run.last["test_acc"], 100 * run.last["weight_sparsity"]
        (point,) = ax.plot(pruned, accuracy, "o", markersize=8, label=run.label)
        if "all_weight_sparsity" in run.last:
            everything = 100 * run.last["all_weight_sparsity"]
            ax.plot([everything, pruned], [accuracy, accuracy], ":", color=point.get_color(), linewidth=1)
            ax.plot(everything, accuracy, "o", markersize=8, markerfacecolor="none", color=point.get_color())
    ax.set_xlabel("weight sparsity (% zeros)")
    ax.set_ylabel("test accuracy (%)")
    ax.legend(fontsize="small")
    ax.set_title("Accuracy vs weight sparsity (filled: pruned layers, hollow: all weights)", fontsize="medium")
    fig.tight_layout()
    return fig


def plot_accuracy_vs_energy(runs: list[Run]):
    """Final test accuracy against the estimated energy per sample (effective operations)."""
    fig, ax = plt.subplots(figsize=(6.4, 4))
    tables = set()
    for run in runs:
        ops = run.last.get("ops")
        if ops is None:
            continue
        tables.add(ops["energy_table"])
        ax.plot(ops["energy_pj_effective"] / 1e6, 100 * run.last["test_acc"], "o", markersize=8, label=run.label)
    ax.set_xscale("log")
    ax.set_xlabel(f"estimated energy per sample (µJ, table {', '.join(sorted(tables)) or 'n/a'})")
    ax.set_ylabel("test accuracy (%)")
    ax.legend(fontsize="small")
    ax.set_title("Accuracy vs estimated energy (effective operations)")
    fig.tight_layout()
    return fig


RUN_FIGURES = {"threshold": plot_threshold, "sparsity": plot_sparsity, "support_changes": plot_support_changes,
               "accuracy": plot_accuracy, "layers": plot_layers}


def plot_runs(paths: list[str | Path], out: str | Path | None = None, layers: list[str] | None = None,
              raster_layer: str | None = None, sample: int = 0, per_run: bool | None = None) -> list[Path]:
    """Write the figures of each run (into ``RUN/plots`` or ``out/<run>``; the θ/w histograms and
    the raster load the run's checkpoint) and, for several runs, the cross-run figures (into ``out``,
    the sweep's ``plots`` or the first run's ``plots``): one point per run for up to
    :data:`MAX_RUN_LEGEND` runs, the Pareto figure and table beyond two runs.
    ``per_run`` (default: unless a sweep folder or more than :data:`MAX_RUN_LEGEND` runs are given)
    says whether to draw the per-run figures. Returns the files."""
    sweeps = [Path(p) for p in paths if is_sweep(p)]
    runs = [read_run(p) for p in run_paths(paths)]
    if per_run is None:
        per_run = not sweeps and len(runs) <= MAX_RUN_LEGEND
    written = []
    for run in runs if per_run else []:
        folder = Path(out) / run.name if out else run.path / "plots"
        for name, function in RUN_FIGURES.items():
            written += save(function(run), folder, name)
        if (run.path / "checkpoints" / "last.pt").is_file():
            written += save(plot_histograms(run, layers), folder, "histograms")
            if "firing_rate" in run.last:
                written += save(plot_raster(run, raster_layer, sample), folder, "raster")
    if len(runs) > 1:
        folder = Path(out) if out else (sweeps[0] if sweeps else runs[0].path) / "plots"
        if len(runs) <= MAX_RUN_LEGEND:
            written += save(plot_accuracy_vs_sparsity(runs), folder, "accuracy_vs_sparsity")
            written += save(plot_accuracy_vs_energy(runs), folder, "accuracy_vs_energy")
        if pareto_wanted(len(runs), bool(sweeps)):
            written += write_pareto(runs, folder)
    return written
