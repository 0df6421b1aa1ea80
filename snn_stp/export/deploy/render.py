"""The deployment report (:func:`.report.build_report`) as Markdown tables a person reads, or as
JSON with the same numbers. Each result is printed next to the inputs it is computed from."""

from __future__ import annotations

import json
import math

FORMATS = ("markdown", "json")


def number(value) -> str:
    """A count as ``12,345``, another number to 4 significant digits, None as ``n/a``."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int) or (isinstance(value, float) and math.isfinite(value) and value == int(value)
                                  and abs(value) < 1e15):
        return f"{int(value):,}"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def render(report: dict, format: str) -> str:
    """The report as ``markdown`` or ``json`` text (ending with a newline)."""
    if format == "json":
        return json.dumps(report, indent=2) + "\n"
    if format == "markdown":
        return to_markdown(report)
    raise ValueError(f"unknown report format {format!r}; valid: {', '.join(FORMATS)}")


def _table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell if isinstance(cell, str) else number(cell) for cell in row) + " |"
              for row in rows]
    return lines + [""]


def _percent(value) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.2%}"


def to_markdown(report: dict) -> str:
    source, model, ops = report["source"], report["model"], report["operations"]
    lines = [f"# Deployment report: {model['name']}", ""]
    if source:
        lines += [f"Checkpoint `{source.get('checkpoint')}`: epoch {source.get('epoch')} of {source.get('epochs')} "
                  f"(step {source.get('global_step')}{'' if source.get('finished', True) else ', unfinished run'}), "
                  f"weight sparsity {_percent(source.get('weight_sparsity'))} of the pruned layers.", ""]
    lines += [f"Input: one sample of shape {tuple(model['sample_shape'])} per time step ({model['input_kind']}), "
              f"{model['time_steps']} time steps per inference.", ""]
    lines += _network(report)
    lines += _operations(ops, model)
    for target in report["targets"]:
        lines += _target(target, ops)
    lines += ["## Energy per inference on reference chips", "",
              "Effective synaptic operations per inference x the chip's published energy per synaptic operation "
              "(an estimate from one published figure, not a measurement).", ""]
    lines += _table(["chip", "pJ/SOP", "SOPs per inference", "energy (µJ) = SOPs x pJ / 10^6", "source"],
                    [[row["chip"], row["pj_per_sop"], row["sops"], row["energy_uj"], row["source"]]
                     for row in report["energy_reference"]])
    return "\n".join(lines).rstrip("\n") + "\n"


def _network(report: dict) -> list[str]:
    lines = ["## The network, per sample and time step", "",
             "Neurons: the elements a layer outputs (the input of the spiking layer it feeds; `readout`: no "
             "spiking layer follows, a chip needs non-spiking neurons there). Connections: each weight once per "
             "output position (weights x output positions; an upper bound where zero padding leaves border "
             "positions fewer inputs).", ""]
    rows = [[f"`{layer['name']}`", layer["kind"], "x".join(map(str, layer["input_shape"])),
             "x".join(map(str, layer["output_shape"])), f"{number(layer['neurons'])} ({layer['neuron']})",
             layer["weights"], layer["nonzero_weights"], layer["output_positions"], layer["connections"],
             layer["nonzero_connections"], layer["zero_channels"]] for layer in report["layers"]]
    lines += _table(["layer", "kind", "input", "output", "neurons", "weights", "non-zero weights",
                     "output positions", "connections", "non-zero connections", "zero channels"], rows)
    lines += [f"Zero channels: {report['compaction']['summary']}.", ""]
    nir = report["nir"]
    if "error" in nir:
        lines += [f"NIR graph: none, {nir['error']}", ""]
    else:
        kinds = ", ".join(f"`{kind}` x{count}" for kind, count in nir["node_types"].items())
        lines += [f"NIR graph (as `snn-stp export --format nir` writes it by default): {nir['nodes']} nodes: {kinds}.",
                  ""]
    return lines


def _operations(ops: dict, model: dict) -> list[str]:
    lines = ["## Synaptic operations", ""]
    if ops.get("sops_effective") is None:
        return lines + [f"No synaptic operation count: {ops['source']}. The energy columns below are n/a.", ""]
    lines += [f"{number(ops['sops_effective'])} effective synaptic operations (accumulates of an input spike into a "
              f"non-zero weight) per inference: one sample over its {model['time_steps']} time steps, the mean "
              f"over {number(ops.get('samples'))} samples; source: {ops['source']}."]
    if ops.get("macs_effective"):
        lines += [f"Not included: {number(ops['macs_effective'])} multiply-accumulates per inference of layers "
                  "whose input is not spikes (the first layer of a directly encoded input), which a chip that "
                  "takes only spikes leaves to the host."]
    return lines + [""]


def _target(target: dict, ops: dict) -> list[str]:
    lines = [f"## {target['chip']} (`{target['name']}`)", "", "### NIR node types it cannot take", ""]
    nir = target["nir"]
    if nir["unsupported"] is None:
        lines += [nir["note"]]
    elif nir["unsupported"]:
        listed = ", ".join(f"`{kind}` ({nir['unsupported_counts'][kind]} node(s))" for kind in nir["unsupported"])
        lines += [f"{nir['toolchain']} cannot take: {listed}."]
    else:
        lines += [f"None: {nir['toolchain']} takes every node type of the graph."]
    lines += [f"It takes: {', '.join(nir['supported'])} (source: {nir['source']}).", "", "### Limits used", ""]
    lines += _table(["figure", "value", "unit", "source"],
                    [[key, figure["value"], figure["unit"], figure["source"]]
                     for key, figure in target["figures"].items()])
    lines += ["### Cores", "", f"Rule: {target['mapping_rule']}.", ""]
    lines += {"sparse": _sparse_cores, "channels": _speck_cores, "dense": _xylo_cores}[target["storage"]](target)
    memory = target["memory"]
    lines += ["### Memory: what pruning saves", "", f"Rule: {memory['rule']}. Unit: {memory['unit']}.", ""]
    lines += _table(["without pruning (dense)", "unstructured pruning", "zero channels removed",
                     "with pruning, under this rule", "saving", "saving (%)"],
                    [[memory["dense"], memory["unstructured_pruning"], memory["zero_channels_removed"],
                      memory["with_pruning"], memory["saving"], _percent(memory["saving_fraction"])]])
    energy = target["energy"]
    lines += ["### Energy per inference", ""]
    if energy["pj_per_sop"] is None:
        lines += [f"Not estimated: {energy['source']}.", ""]
    else:
        lines += _table(["chip", "pJ/SOP", "SOPs per inference", "energy (µJ) = SOPs x pJ / 10^6", "source"],
                        [[energy["chip"], energy["pj_per_sop"], energy["sops"], energy["energy_uj"], energy["source"]]])
    return lines


def _sparse_cores(target: dict) -> list[str]:
    rows = [[f"`{row['layer']}`", row["neurons"], row["neurons_per_core"], row["cores_by_neurons"],
             row["stored_synapses"], row["synapse_bytes"], row["synapse_bytes_per_core"], row["cores_by_memory"],
             row["cores"], row["cores_without_pruning"]] for row in target["layers"]]
    lines = _table(["layer", "neurons", "neurons per core", "ceil(neurons / per core)",
                    "stored synapses (non-zero connections)", "synapse bytes", "bytes per core",
                    "ceil(bytes / per core)", "cores", "cores without pruning"], rows)
    return lines + [f"Total: {number(target['cores'])} cores ({number(target['cores_without_pruning'])} without "
                    f"pruning); chips = ceil({number(target['cores'])} / {number(target['cores_per_chip'])}) = "
                    f"{number(target['chips'])}.", ""]


def _checks(target: dict) -> list[str]:
    return _table(["check", "value", "limit", "ok"],
                  [[check["check"], check["value"], check["limit"], check["ok"]] for check in target["checks"]])


def _speck_cores(target: dict) -> list[str]:
    rows = [[f"`{row['layer']}`", row["in_channels"], row["out_channels"], "x".join(map(str, row["kernel"])),
             "x".join(map(str, row["output_map"])), row["kernel_memory"], row["neuron_memory"], row["core"],
             row["core_kernel_memory"], row["core_neuron_memory"]] for row in target["layers"]]
    lines = _table(["layer", "c (in)", "f (out)", "kernel kx x ky", "output map fx x fy", "kernel memory",
                    "neuron memory", "core", "core's kernel memory", "core's neuron memory"], rows)
    neuron = target["neuron_memory"]
    lines += [f"Neuron memory in all: {number(neuron['dense'])} {neuron['unit']} "
              f"({number(neuron['zero_channels_removed'])} with the zero channels removed).", ""]
    return lines + _checks(target) + [f"Fits on one chip: {number(target['fits_one_chip'])}.", ""]


def _xylo_cores(target: dict) -> list[str]:
    rows = [[f"`{row['layer']}`", row["kind"], row["role"], row["neurons"], row["inputs"],
             row["max_fanout_of_inputs_nonzero"], row["max_fanout_of_inputs_dense"]] for row in target["layers"]]
    lines = _table(["layer", "kind", "role", "neurons", "inputs", "max non-zero fan-out of its inputs",
                    "fan-out without pruning"], rows)
    return lines + _checks(target) + [f"Fits on one chip: {number(target['fits_one_chip'])}.", ""]
