"""``snn-stp deploy-report``: what a pruned spiking network needs of Loihi 2, SpiNNaker2, Speck and
Xylo (``snn_stp.export.deploy``), with numbers checked by hand."""

import json
import math
from pathlib import Path

import pytest
import torch

import snn_stp
from snn_stp.errors import UsageError
from snn_stp.export.deploy import ENERGY_PER_SOP, TARGETS, build_report, parse_targets, render, targets_table
from snn_stp.export.deploy.render import number
from snn_stp.models import build_model

from conftest import error_line, sets, snn_stp as snn_stp_command  # snn_stp is the package here

ROOT = Path(__file__).resolve().parents[1]
ALL = list(TARGETS)
SHAPE = (2, 9, 9)


def tiny(zero_channel: bool = False):
    """The N-MNIST net at its smallest (4 channels, 9x9 frames, fc 16), sparsified and baked: some
    weights are zero but no channel is. BatchNorm keeps its identity statistics, so a zero channel
    (``zero_channel``: encoder.0's output channel 1) is a constant 0 that compaction removes."""
    torch.manual_seed(0)
    model = build_model("nmnist_net", channels=4, hidden=16, image_size=9, time_steps=4).eval()
    snn_stp.sparsify(model, initial_threshold=0.02)
    snn_stp.bake(model)
    if zero_channel:
        with torch.no_grad():
            model.encoder[0].weight[1] = 0
    return model


def report_of(model, shape=SHAPE, sops=None, targets=ALL):
    operations = {"sops_effective": sops, "samples": 3, "source": "given by the test"}
    return build_report(model, shape, targets, operations, source={"checkpoint": "test"}, model_name="test")


def target(report, name):
    return next(entry for entry in report["targets"] if entry["name"] == name)


@pytest.fixture(scope="module")
def pruned_report():
    return report_of(tiny(), sops=12_345.0)


def test_a_layer_gets_whole_cores_by_its_neurons_and_its_synapse_memory():
    """One hidden layer of 8,193 neurons reading 32 inputs: 262,176 synapses. Loihi 2: ceil(8,193 /
    8,192) = 2 cores by neurons, ceil(262,176 bytes / 131,072) = 3 by memory, so 3; SpiNNaker2 (no
    neuron limit): 3. Pruning 16 neurons' inputs (512 synapses) leaves 261,664 bytes: 2 cores."""
    torch.manual_seed(0)
    model = build_model("spiking_mlp", in_channels=32, hidden=8193, depth=1, time_steps=2).eval()
    before = report_of(model, shape=(32,), targets=["loihi2", "spinnaker2"])
    loihi, spinnaker = (target(before, name)["layers"][0] for name in ("loihi2", "spinnaker2"))
    assert (loihi["neurons"], loihi["stored_synapses"]) == (8193, 32 * 8193)
    assert (loihi["cores_by_neurons"], loihi["cores_by_memory"], loihi["cores"]) == (2, 3, 3)
    assert (spinnaker["cores_by_neurons"], spinnaker["cores"]) == (None, 3)
    with torch.no_grad():
        model.encoder[0].weight[:16] = 0
    after = report_of(model, shape=(32,), targets=["loihi2", "spinnaker2"])
    loihi, spinnaker = (target(after, name)["layers"][0] for name in ("loihi2", "spinnaker2"))
    assert (loihi["stored_synapses"], loihi["cores"], spinnaker["cores"]) == (261_664, 2, 2)
    assert loihi["cores_without_pruning"] == 3
    # With the readout (10 neurons, 81,930 synapses: one core): 3 cores, ceil(3 / 128) = 1 chip.
    assert (target(after, "loihi2")["cores"], target(after, "loihi2")["chips"]) == (3, 1)


def test_energy_is_synaptic_operations_times_the_published_energy_per_operation(pruned_report):
    sops = 12_345.0
    assert target(pruned_report, "loihi2")["energy"]["energy_uj"] == pytest.approx(sops * 23.6 / 1e6)
    assert target(pruned_report, "loihi2")["energy"]["chip"] == "Loihi"  # none published for Loihi 2
    assert target(pruned_report, "spinnaker2")["energy"]["energy_uj"] == pytest.approx(sops * 10 / 1e6)
    for name in ("speck", "xylo"):
        energy = target(pruned_report, name)["energy"]
        assert energy["energy_uj"] is None and energy["source"].startswith("none published")
    reference = {row["chip"]: row["energy_uj"] for row in pruned_report["energy_reference"]}
    assert reference == pytest.approx({"Loihi": sops * 23.6e-6, "SpiNNaker2": sops * 10e-6,
                                       "TrueNorth": sops * 2.5e-6, "Tianjic": sops * 1.54e-6})
    assert {chip: figure.value for chip, figure in ENERGY_PER_SOP.items()} == {
        "Loihi": 23.6, "SpiNNaker2": 10.0, "TrueNorth": 2.5, "Tianjic": 1.54}


def test_speck_saves_memory_only_when_a_zero_channel_is_removed(pruned_report):
    """Unstructured zeros save synapse memory on the sparse chips, none on Speck's dense kernels;
    a removed zero channel of encoder.0 (4 -> 3 channels) shrinks body.2.0's kernel memory from
    c x 2^(ceil(log2 9) + ceil(log2 4)) = 4 x 64 = 256 entries to 3 x 64 = 192."""
    speck, loihi = target(pruned_report, "speck")["memory"], target(pruned_report, "loihi2")["memory"]
    assert sum(layer["zero_channels"] for layer in pruned_report["layers"]) == 0
    assert speck["saving"] == 0 and speck["with_pruning"] == speck["dense"]
    nonzero = sum(layer["nonzero_connections"] for layer in pruned_report["layers"])
    assert loihi["with_pruning"] == nonzero < loihi["dense"] and loihi["saving"] > 0

    channel = report_of(tiny(zero_channel=True))
    speck = target(channel, "speck")
    assert speck["memory"]["saving"] == 256 - 192 > 0
    rows = {row["layer"]: row for row in speck["layers"]}
    assert (rows["body.2.0"]["in_channels"], rows["body.2.0"]["kernel_memory"]) == (4, 256)
    compacted = {layer["name"]: layer for layer in channel["compaction"]["layers"]}
    assert compacted["body.2.0"]["input_shape"][0] == 3


def test_xylo_cannot_take_the_convolutions_and_the_others_can(pruned_report):
    assert set(pruned_report["nir"]["node_types"]) >= {"Conv2d", "Input", "Output"}
    xylo = target(pruned_report, "xylo")
    assert "Conv2d" in xylo["nir"]["unsupported"]
    assert xylo["nir"]["unsupported_counts"]["Conv2d"] == 2
    assert not xylo["fits_one_chip"]
    assert xylo["checks"][0] == {"check": "no convolution (Xylo has none)", "value": "encoder.0, body.2.0",
                                 "limit": None, "ok": False}
    for name in ("loihi2", "spinnaker2", "speck"):
        assert "Conv2d" not in target(pruned_report, name)["nir"]["unsupported"]
    # What is unsupported comes from the graph: every listed type is in it, none is supported.
    for entry in pruned_report["targets"]:
        unsupported = set(entry["nir"]["unsupported"])
        assert unsupported <= set(pruned_report["nir"]["node_types"])
        assert not unsupported & set(entry["nir"]["supported"])


def test_speck_layers_go_to_cores_whose_memory_holds_them(pruned_report):
    """Kernel and neuron memory by Sinabs' formulas, each layer on a distinct core big enough."""
    rows = {row["layer"]: row for row in target(pruned_report, "speck")["layers"]}
    # encoder.0: c 2, f 4, 3x3 kernel, 9x9 map: K = 2 x 2^(4 + 2) = 128, N = 4 x 2^(4 + 4) = 1024.
    assert (rows["encoder.0"]["kernel_memory"], rows["encoder.0"]["neuron_memory"]) == (128, 1024)
    # body.7.0: Linear 16 -> 16 reading a 4x2x2 map: K = 4 x 2^(2 + 4) = 256, N = 16.
    assert (rows["body.7.0"]["kernel_memory"], rows["body.7.0"]["neuron_memory"]) == (256, 16)
    cores = [row["core"] for row in rows.values()]
    assert None not in cores and len(set(cores)) == len(cores)
    for row in rows.values():
        assert row["kernel_memory"] <= row["core_kernel_memory"] and row["neuron_memory"] <= row["core_neuron_memory"]


def test_json_and_markdown_carry_the_same_numbers(pruned_report):
    data = json.loads(render(pruned_report, "json"))
    assert data == json.loads(json.dumps(pruned_report))
    text = render(pruned_report, "markdown")
    for layer in data["layers"]:
        row = next(line for line in text.splitlines() if line.startswith(f"| `{layer['name']}` | {layer['kind']}"))
        for key in ("weights", "nonzero_weights", "output_positions", "connections", "nonzero_connections"):
            assert f"| {number(layer[key])} |" in row, (key, row)
    for entry in data["targets"]:
        section = text.split(f"(`{entry['name']}`)")[1].split("\n## ")[0]
        memory = entry["memory"]
        assert (f"| {number(memory['dense'])} | {number(memory['unstructured_pruning'])} | "
                f"{number(memory['zero_channels_removed'])} | {number(memory['with_pruning'])} | "
                f"{number(memory['saving'])} |") in section
        if entry["storage"] == "sparse":
            assert f"Total: {number(entry['cores'])} cores" in section
            for row in entry["layers"]:
                assert f"| {number(row['cores_by_memory'])} | {number(row['cores'])} |" in section
        if entry["energy"]["energy_uj"] is not None:
            assert f"| {number(entry['energy']['sops'])} | {number(entry['energy']['energy_uj'])} |" in section
    assert number(data["operations"]["sops_effective"]) in text


def test_targets_are_named_one_by_one_or_all():
    assert parse_targets("all") == ALL == ["loihi2", "spinnaker2", "speck", "xylo"]
    assert parse_targets("speck, loihi2,speck") == ["speck", "loihi2"]
    with pytest.raises(UsageError, match=r"^unknown target 'tpu'; valid: loihi2, spinnaker2, speck, xylo, all "):
        parse_targets("loihi2,tpu")


@pytest.mark.slow  # a subprocess that imports torch (about 2 s)
def test_the_cli_refuses_an_unknown_target_with_the_valid_ones(tmp_path):
    process = snn_stp_command("deploy-report", tmp_path / "no-run", "--target", "truenorth")
    assert error_line(process, "deploy-report") == ("unknown target 'truenorth'; valid: loihi2, spinnaker2, speck, "
                                                    "xylo, all (several separated by commas)")


def test_the_docs_table_is_the_code_table():
    """docs/deployment.md's table of targets, figures and sources is targets_table()'s own."""
    assert targets_table() in (ROOT / "docs" / "deployment.md").read_text()


@pytest.mark.slow
def test_a_trained_run_s_report_through_the_command(tmp_path):
    run, out = tmp_path / "run", tmp_path / "report.json"
    trained = snn_stp_command("train", "--quiet", "--out", run, *sets(
        "model.options={hidden: 16}", "train.epochs=1", "data.batch_size=256", "train.analysis_samples=8"))
    assert trained.returncode == 0, trained.stderr
    written = snn_stp_command("deploy-report", run, "--target", "all", "--format", "json", "--out", out)
    assert written.returncode == 0, written.stderr
    assert written.stdout == f"wrote {out}: the json deployment report for loihi2, spinnaker2, speck, xylo\n"
    report = json.loads(out.read_text())
    assert report["source"]["epoch"] == 1 and report["source"]["checkpoint"] == str(run / "checkpoints" / "last.pt")
    assert report["operations"]["samples"] == 8
    assert report["operations"]["source"].startswith("measured now on the first 8 test samples of digits")
    sops = report["operations"]["sops_effective"]
    assert target(report, "spinnaker2")["energy"]["energy_uj"] == pytest.approx(sops * 10 / 1e6)
    markdown = snn_stp_command("deploy-report", run, "--target", "xylo", "--checkpoint", "best.pt")
    assert markdown.returncode == 0, markdown.stderr
    assert markdown.stdout.startswith("# Deployment report: spiking_mlp\n")
    assert "## SynSense Xylo Audio 2 (SYNS61201) (`xylo`)" in markdown.stdout and "`loihi2`" not in markdown.stdout
    refused = snn_stp_command("deploy-report", run, "--target", "xylo", "--out", run / "summary.json")
    assert error_line(refused, "deploy-report").startswith(f"--out {run / 'summary.json'} is a file of the run ")
    assert math.isfinite(report["source"]["weight_sparsity"])
