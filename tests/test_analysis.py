"""Operation counts against hand computation, spike statistics, plots and the comparison report."""

import os
import re
import socket

import pytest
import torch
from torch import nn

import snn_stp
from snn_stp.measure import ENERGY_TABLES, count_operations
from snn_stp.analysis import plots
from snn_stp.analysis.report import compare_runs
from snn_stp.models import build_model
from snn_stp.snn import make_neuron, stateless
from snn_stp.measure import spike_statistics
from snn_stp.train import Trainer, load_config

from conftest import metrics_records


# -- counts ----------------------------------------------------------------------------------

def test_synaptic_operations_of_a_linear_layer_by_hand():
    fc = nn.Linear(3, 2, bias=False)
    with torch.no_grad():
        fc.weight.copy_(torch.tensor([[1.0, 0.0, 2.0], [0.0, 0.0, 3.0]]))  # non-zero fan-out: 1, 0, 2
    model = stateless(fc, spiking=True)
    spikes = torch.tensor([[[1.0, 0.0, 1.0]], [[0.0, 1.0, 1.0]]])  # [T=2, B=1, 3]
    report = count_operations(model, spikes, spiking=True, batch_size=1)
    (layer,) = report.layers
    assert layer.kind == "sop"
    assert layer.effective == (1 + 2) + (0 + 2)  # spikes x non-zero fan-out, over time
    assert layer.dense == (2 + 2) * 2  # 4 spikes x 2 outputs
    assert layer.input_spikes == 4


def test_synaptic_operations_of_a_convolution_respect_padding_and_pruned_weights():
    conv = nn.Conv2d(1, 1, 3, padding=1, bias=False)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0, 1, 1] = 0.5  # centre
        conv.weight[0, 0, 0, 0] = -0.7  # top-left corner
    spikes = torch.zeros(1, 1, 3, 3)
    spikes[0, 0, 0, 0] = 1.0  # one spike in the corner
    report = count_operations(conv, spikes, spiking=True)
    # Outputs reached: (0,0) through the centre weight, (1,1) through the corner weight; with all
    # nine weights, the corner spike reaches the 2x2 outputs around it (padding feeds nothing).
    assert (report.layers[0].effective, report.layers[0].dense) == (2, 4)


def test_pruned_weights_are_not_counted_and_counts_use_the_effective_weights():
    fc = nn.Linear(4, 3, bias=False)
    with torch.no_grad():
        fc.weight.copy_(torch.tensor([[0.5, 0.05, -0.5, 0.3], [0.02, 0.4, 0.0, -0.6], [0.9, -0.01, 0.2, 0.03]]))
    snn_stp.sparsify(fc, initial_threshold=0.1)  # theta keeps all 12 values; w has 7 non-zeros
    assert int((fc.parametrizations.weight.original != 0).sum()) == 11
    assert int((fc.weight != 0).sum()) == 7
    report = count_operations(fc, torch.rand(2, 4))  # an ANN: MACs
    assert report.layers[0].kind == "mac"
    assert report.layers[0].dense == 12 and report.layers[0].effective == 7
    assert report.energy_pj() == pytest.approx(7 * ENERGY_TABLES["45nm_fp32"]["mac_pj"])


def test_direct_encoded_first_layer_counts_macs_once_not_per_time_step():
    model = build_model("spiking_mlp", hidden=16, time_steps=5).eval()
    snn_stp.sparsify(model, initial_threshold=0.08)
    x = torch.rand(3, 64)
    report = count_operations(model, x)
    first = report.layers[0]
    assert first.name == "encoder.0" and first.kind == "mac"
    assert first.effective == int((model.encoder[0].weight != 0).sum())  # each non-zero weight once per sample
    assert first.dense == 64 * 16
    assert all(layer.kind == "sop" for layer in report.layers[1:])
    table = ENERGY_TABLES["45nm_int8"]
    int8 = count_operations(model, x, energy_table="45nm_int8")
    assert int8.energy_pj() == pytest.approx(int8.total("mac") * table["mac_pj"] + int8.total("sop") * table["ac_pj"])
    with pytest.raises(ValueError, match="unknown energy table 'tpu'; valid: 45nm_fp32, 45nm_fp16, 45nm_int8"):
        count_operations(model, x, energy_table="tpu")


def test_firing_rate_and_silent_neurons_of_a_hand_made_spike_tensor():
    # An IF neuron with threshold 1 and hard reset fires exactly where its input is 1 (else 0).
    model = nn.Sequential(make_neuron({"kind": "if"}))
    spikes = torch.zeros(4, 2, 5)  # [T, B, neurons]
    spikes[0, 0, 0] = spikes[1, 1, 0] = spikes[2, 0, 3] = 1.0
    stats = spike_statistics(model, spikes)
    assert stats.rates == {"0": 3 / 40}
    assert stats.silent == {"0": 3 / 5}  # neurons 1, 2 and 4 never fire
    assert stats.total_rate == 3 / 40


# -- run directories, plots, report ------------------------------------------------------------

@pytest.fixture(scope="module")
def runs(small_run, tmp_path_factory):
    """The shared small SNN run and its ANN twin, trained alike."""
    ann = tmp_path_factory.mktemp("runs") / "ann"
    config = load_config(overrides=["model.options={hidden: 32}", "train.epochs=2", "data.batch_size=32",
                                    "train.analysis_samples=64", "model.spiking=false"])
    Trainer(config, ann, quiet=True).fit()
    return {"snn": small_run, "ann": ann}


def test_training_logs_spike_statistics_and_operations(runs):
    snn, ann = metrics_records(runs["snn"]), metrics_records(runs["ann"])
    last = snn[-1]
    assert set(last["firing_rate"]) == {"body.0", "body.2"} and set(last["silent_fraction"]) == {"body.0", "body.2"}
    assert 0 < last["mean_firing_rate"] < 1
    assert last["ops"]["energy_table"] == "45nm_fp32"
    assert last["ops"]["sops_effective"] <= last["ops"]["sops_dense"]
    assert last["ops"]["macs_dense"] == 64 * 32  # the direct-encoded first layer only
    assert "firing_rate" not in ann[-1] and ann[-1]["ops"]["sops_dense"] == 0
    assert ann[-1]["ops"]["macs_dense"] == 64 * 32 + 32 * 32 + 32 * 10


def test_each_run_figure_has_its_axes_and_series(runs):
    run = plots.read_run(runs["snn"])
    fig = plots.plot_threshold(run)
    ax, twin = fig.axes
    assert ax.get_xlabel() == "optimizer step" and ax.get_ylabel() == "threshold d (weight units)"
    assert twin.get_ylabel().startswith("implied L1 coefficient")
    assert [line.get_label() for line in ax.get_lines()] == ["threshold d"]
    assert list(ax.get_lines()[0].get_ydata()) == [m["threshold"] for m in run.metrics]
    fig = plots.plot_sparsity(run)
    labels = [line.get_label() for line in fig.axes[0].get_lines()]
    assert labels == ["pruned layers", "all weights", "encoder.0.weight", "body.1.0.weight", "body.3.0.weight"]
    assert fig.axes[0].get_ylabel() == "weight sparsity (% zeros)" and fig.axes[0].get_xlabel() == "epoch"
    fig = plots.plot_support_changes(run)
    assert [c.get_label() for c in fig.axes[0].containers] == ["pruned (non-zero -> 0)", "regrown (0 -> non-zero)"]
    assert [patch.get_height() for patch in fig.axes[0].containers[0]] == [m["pruned"] for m in run.metrics]
    fig = plots.plot_accuracy(run)
    assert [line.get_label() for line in fig.axes[0].get_lines()] == ["test (top-1)", "train (top-1)"]
    fig = plots.plot_layers(run)
    assert [ax.get_xlabel() for ax in fig.axes] == ["weight sparsity (% zeros)",
                                                    "firing rate (spikes per neuron per time step)"]
    assert [t.get_text() for t in fig.axes[1].get_yticklabels()] == ["body.0", "body.2"]
    fig = plots.plot_histograms(run, ["body.1.0.weight"])
    assert fig.axes[0].get_title() == "body.1.0.weight" and fig.axes[0].get_xlabel() == "value (weight units)"
    assert [t.get_text().split(" (")[0] for t in fig.axes[0].get_legend().get_texts()] == [
        "latent θ", "w = S_d(θ), non-zero"]
    fig = plots.plot_raster(run, "body.2", sample=3)
    assert fig.axes[0].get_xlabel() == "time step" and "body.2, test sample 3" in fig.axes[0].get_title()
    with pytest.raises(ValueError, match="no spiking layer 'body.9'"):
        plots.plot_raster(run, "body.9")


@pytest.mark.slow  # every figure of two runs as PNG and PDF (each figure is checked by the test above)
def test_plot_command_writes_png_and_pdf(runs, tmp_path, capsys):
    from snn_stp import cli
    assert cli.main(["plot", str(runs["snn"]), str(runs["ann"]), "--out", str(tmp_path)]) == 0
    names = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()}
    per_run = {"threshold", "sparsity", "support_changes", "accuracy", "layers", "histograms"}
    for kind in ("png", "pdf"):
        assert {f"snn/{n}.{kind}" for n in per_run | {"raster"}} <= names
        assert {f"ann/{n}.{kind}" for n in per_run} <= names and f"ann/raster.{kind}" not in names
        assert {f"accuracy_vs_sparsity.{kind}", f"accuracy_vs_energy.{kind}"} <= names
    assert (tmp_path / "snn" / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    runs_list = [plots.read_run(runs["snn"]), plots.read_run(runs["ann"])]
    fig = plots.plot_accuracy_vs_energy(runs_list)
    assert fig.axes[0].get_xlabel() == "estimated energy per sample (µJ, table 45nm_fp32)"
    assert len(fig.axes[0].get_lines()) == 2


def test_compare_report_rows_and_ratios(runs, tmp_path):
    report = compare_runs([runs["snn"], runs["ann"]], tmp_path).read_text()
    snn, ann = metrics_records(runs["snn"])[-1], metrics_records(runs["ann"])[-1]
    assert "| snn | spiking_mlp | yes | lats |" in report and "| ann | spiking_mlp | no | lats |" in report
    if "SLURM_JOB_ID" not in os.environ:  # where each run trained, the table's last column
        assert report.count(f" | local on {socket.gethostname()} |") == 2
    assert "45nm_fp32: 4.6 pJ per MAC, 0.9 pJ per accumulate" in report and "not a measurement" in report
    row = re.search(r"\| energy effective \(µJ\) \| (\S+) \| (\S+) \| (\S+) \|", report)
    expected = snn["ops"]["energy_pj_effective"] / ann["ops"]["energy_pj_effective"]
    assert float(row.group(3)) == pytest.approx(expected, rel=1e-3)
    row = re.search(r"\| test accuracy \(%\) \| (\S+) \| (\S+) \| (\S+) \|", report)
    assert float(row.group(3)) == pytest.approx(snn["test_acc"] / ann["test_acc"], rel=1e-3)
    assert (tmp_path / "accuracy_vs_sparsity.png").is_file() and "![accuracy vs weight sparsity]" in report


def test_transposed_convolutions_are_counted_like_sparsify_prunes_them():
    up = nn.ConvTranspose2d(1, 1, 2, stride=2, bias=False)
    with torch.no_grad():
        up.weight.copy_(torch.tensor([[[[1.0, 0.0], [2.0, 3.0]]]]))  # 3 non-zero of 4
    model = nn.Sequential(up)
    x = torch.ones(1, 1, 3, 3)
    report = count_operations(model, x, spiking=False)
    (layer,) = report.layers
    # Every input element reaches 4 outputs through the 2x2 kernel (stride 2: no overlap).
    assert layer.name == "0" and layer.dense == 9 * 4 and layer.effective == 9 * 3
    assert [n for n, _ in snn_stp.select_modules(model)] == ["0"]


def test_the_report_shows_D_only_for_schedulers_that_use_it():
    from snn_stp.analysis.report import _uses_D

    assert _uses_D({"scheduler": "slats", "final_threshold": 0.2})
    assert _uses_D({"scheduler": "lats", "final_threshold": 0.2, "l1": None})
    assert not _uses_D({"scheduler": "lats", "final_threshold": 0.2, "l1": 0.01})  # l1 sets it
    for name in ("gmp", "str", "gradr", "dense"):
        assert not _uses_D({"scheduler": name, "final_threshold": 0.2})


def test_plots_import_pareto_and_never_the_reverse():
    """The Pareto module saves its figure with the shared helper (analysis.figures), so it needs
    nothing from plots: the two modules depend on each other one way only, at the top of the file."""
    import ast
    from pathlib import Path

    from snn_stp.analysis import figures

    def imported(name: str) -> set[str]:
        tree = ast.parse((Path(snn_stp.__file__).parent / "analysis" / f"{name}.py").read_text())
        return {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level == 1}

    assert "plots" not in imported("pareto") and "pareto" in imported("plots")
    assert {"plots", "pareto"}.isdisjoint(imported("figures"))
    assert plots.save is figures.save
