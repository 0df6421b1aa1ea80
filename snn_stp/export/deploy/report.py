"""``snn-stp deploy-report``: what it takes to put a trained, pruned spiking run on each chip of
:mod:`.targets`, as one dictionary of plain values (the JSON form; :mod:`.render` draws it).

For each target: the NIR node types of the run's graph its tool chain cannot take; each layer's
neurons and synapses against the chip's per-core limits and the cores that gives (the rule is in
the report); the synapse memory without pruning, with it, and after the zero channels are
removed, in the unit the chip stores (bytes, kernel-memory entries, weights); and the energy of
one inference, effective synaptic operations x the chip's published pJ per synaptic operation.
Every result sits next to the inputs it is computed from.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import torch
from torch import nn

from ... import pruning, rundir
from ...errors import DatasetNotFoundError, UsageError
from ..nir_graph import DEFAULT_DT
from .counting import LayerCount, count_compact_layers, count_layers, nir_node_types
from .targets import ENERGY_PER_SOP, SPECK_KERNEL_MEMORY, SPECK_NEURON_MEMORY, TARGETS, Target, parse_targets

#: Version of the report's JSON layout.
REPORT_FORMAT = "snn-stp deploy-report 1"
#: picojoules to microjoules.
PJ_PER_UJ = 1e6


def deploy_report(run: str | Path, targets: str | list[str] = "all", checkpoint: str = rundir.LAST) -> dict:
    """The deployment report of a run directory's checkpoint (or of a checkpoint file).

    Args:
        run: a run directory (its ``checkpoints/<checkpoint>``) or a training checkpoint file.
        targets: ``all``, a name of :data:`~.targets.TARGETS`, several joined by commas, or a list.
        checkpoint: which checkpoint of a run directory (``last.pt`` or ``best.pt``).

    Returns:
        the report (:func:`build_report`) with ``source``: the checkpoint, its epoch, step and
        weight sparsity (of the pruned layers), as :func:`~snn_stp.export.runs.training_progress`
        gives them.

    The synaptic operations are measured on the checkpoint's model with the training loop's own
    analysis (:func:`snn_stp.train.evaluation.analyze`, ``train.analysis_samples`` test samples);
    where the data set is not on this machine, the ``ops`` the run recorded for that epoch in
    ``metrics.jsonl`` are used, and the report says which.
    """
    from ...train.restore import checkpoint_file, restore_checkpoint
    from ..runs import sample_shape, training_progress

    names = parse_targets(",".join(targets) if isinstance(targets, (list, tuple)) else targets)
    path = checkpoint_file(run, checkpoint)
    restored = restore_checkpoint(path)
    model, config = restored.model, restored.config
    if not getattr(model, "spiking", False):
        raise UsageError(f"{path} is an ANN run (model.spiking is false); deploy-report maps spiking networks onto "
                         "neuromorphic chips: give the run of a spiking model")
    source = {**training_progress(path, config, restored.state), "checkpoint": str(path),
              "weight_sparsity": pruning.weight_sparsity(model).global_sparsity}
    baked = pruning.bake(copy.deepcopy(model))
    shape = sample_shape(baked, config)
    operations = measure_operations(restored)
    return build_report(baked, shape, names, operations, source, model_name=config.model.name)


def measure_operations(restored) -> dict:
    """Effective synaptic operations per inference (one sample, all its time steps) of a restored
    checkpoint: measured now with :func:`snn_stp.train.evaluation.analyze` on the first
    ``train.analysis_samples`` test samples, or, where the data set is not here, the ``ops`` the
    run recorded in ``metrics.jsonl`` at the checkpoint's epoch. ``sops_effective`` is None when
    neither exists; ``source`` says which it is."""
    from ...train.builders import make_dataset
    from ...train.evaluation import analyze

    config, model = restored.config, restored.model
    wanted = config.train.analysis_samples
    if not wanted:
        reason = "train.analysis_samples is 0 in the run's config"
    else:
        try:
            test_set = make_dataset(config, "test", model)
        except DatasetNotFoundError as error:
            reason = f"the test split is not on this machine ({str(error).splitlines()[0]})"
        else:
            ops = analyze(model, test_set, config, torch.device("cpu")).get("ops")
            samples = min(wanted, len(test_set))
            if ops:
                return {**_ops(ops), "samples": samples,
                        "source": f"measured now on the first {samples} test samples of {config.data.name} with "
                                  "snn_stp.train.evaluation.analyze (snn_stp.measure.count_operations)"}
            reason = f"the test split of {config.data.name} is empty"
    run_dir = restored.path.parent.parent if restored.path.parent.name == rundir.CHECKPOINTS else None
    if run_dir is not None and (run_dir / rundir.METRICS).is_file():
        for record in reversed(rundir.read_metrics(run_dir)):
            if record.get("epoch") == restored.epoch and record.get("ops"):
                return {**_ops(record["ops"]), "samples": wanted,
                        "source": f"{run_dir / rundir.METRICS}, epoch {restored.epoch}: recorded while training, "
                                  f"on the first {wanted} test samples (not measured now: {reason})"}
    return {"sops_effective": None, "sops_dense": None, "macs_effective": None, "samples": 0,
            "source": f"not measured: {reason}, and metrics.jsonl has no operation counts for epoch {restored.epoch}"}


def _ops(ops: dict) -> dict:
    return {"sops_effective": float(ops["sops_effective"]), "sops_dense": float(ops["sops_dense"]),
            "macs_effective": float(ops["macs_effective"])}


def build_report(baked: nn.Module, sample_shape: tuple[int, ...], targets: list[str], operations: dict,
                 source: dict | None = None, dt: float = DEFAULT_DT, model_name: str = "") -> dict:
    """The report of a baked spiking network of the zoo (not modified).

    Args:
        baked: the model with plain weights (:func:`snn_stp.bake`), pruned zeros in place.
        sample_shape: one input sample without time and batch (``(C, H, W)`` or ``(features,)``).
        targets: names of :data:`~.targets.TARGETS`.
        operations: ``sops_effective`` (synaptic operations per inference, or None), ``samples``
            and ``source`` (where the count comes from); ``macs_effective`` optional.
        source: what the model is (checkpoint, epoch, weight sparsity), copied into the report.
        dt, model_name: the NIR export's time step (seconds) and model name.

    Returns:
        ``{"format", "source", "model", "operations", "nir", "layers", "compaction", "targets",
        "energy_reference"}``: plain values only (the JSON form).
    """
    unknown = [name for name in targets if name not in TARGETS]
    if unknown:
        parse_targets(",".join(unknown))  # the error that lists the valid ones
    layers = count_layers(baked, sample_shape)
    compact_layers, compaction = count_compact_layers(baked, sample_shape)
    nir = nir_node_types(baked, sample_shape, dt, model_name)
    sops = operations.get("sops_effective")
    report = {
        "format": REPORT_FORMAT,
        "source": dict(source or {}),
        "model": {"name": model_name or type(baked).__name__, "sample_shape": list(sample_shape),
                  "time_steps": int(getattr(baked, "time_steps", 1)),
                  "input_kind": getattr(baked, "input_kind", "static")},
        "operations": {**operations, "unit": "synaptic operations per inference (one sample, all time steps)"},
        "nir": nir,
        "layers": [layer.as_dict() for layer in layers],
        "compaction": {"summary": compaction,
                       "layers": [layer.as_dict() for layer in compact_layers] if compact_layers else None},
        "targets": [],
        "energy_reference": [_energy(chip, ENERGY_PER_SOP[chip], sops) for chip in ENERGY_PER_SOP],
    }
    for name in targets:
        target = TARGETS[name]
        entry = {"name": name, "chip": target.chip, "storage": target.storage,
                 "figures": {key: figure.as_dict() for key, figure in target.figures.items()},
                 "mapping_rule": target.mapping_rule, "nir": unsupported_nodes(target, nir)}
        mapper = {"sparse": _sparse, "channels": _speck, "dense": _xylo}[target.storage]
        entry.update(mapper(target, layers, compact_layers))
        entry["energy"] = (_energy(target.energy, ENERGY_PER_SOP[target.energy], sops, target.energy_note)
                           if target.energy else {"chip": None, "pj_per_sop": None, "energy_uj": None,
                                                  "source": target.energy_note})
        report["targets"].append(entry)
    return report


def unsupported_nodes(target: Target, nir: dict) -> dict:
    """The node types of the exported graph (``nir``: :func:`.counting.nir_node_types`) that the
    target's tool chain does not take, with the tool chain's supported set and its source."""
    toolchain = target.toolchain
    found = {"toolchain": toolchain.name, "supported": sorted(toolchain.node_types), "source": toolchain.source}
    if "error" in nir:
        return {**found, "unsupported": None, "note": f"no NIR graph: {nir['error']}"}
    missing = sorted(set(nir["node_types"]) - toolchain.node_types)
    return {**found, "unsupported": missing,
            "unsupported_counts": {kind: nir["node_types"][kind] for kind in missing}}


def _energy(chip: str, figure, sops: float | None, note: str = "") -> dict:
    """Energy of one inference: synaptic operations x pJ per synaptic operation, in microjoules."""
    energy = None if sops is None else sops * figure.value / PJ_PER_UJ
    return {"chip": chip, "pj_per_sop": figure.value, "sops": sops, "energy_uj": energy,
            "source": f"{note}: {figure.source}" if note else figure.source}


def _memory(target: Target, unit: str, dense: float, unstructured: float, compact: float | None,
            with_pruning: float) -> dict:
    """Synapse memory in ``unit``: ``dense`` (every weight stored), ``unstructured_pruning`` (the
    run as it is), ``zero_channels_removed`` (after ``export --format compact``; None where the
    compaction does not apply), ``with_pruning`` (what the target's storage rule makes of the
    pruning) and the ``saving`` against dense."""
    return {"unit": unit, "rule": target.memory_rule, "dense": dense, "unstructured_pruning": unstructured,
            "zero_channels_removed": compact, "with_pruning": with_pruning, "saving": dense - with_pruning,
            "saving_fraction": (dense - with_pruning) / dense if dense else 0.0}


def to_bytes(count: int, bits: float) -> int:
    """Bytes that ``count`` values of ``bits`` bits each take (rounded up to a whole byte)."""
    return math.ceil(count * bits / 8)


def _sparse(target: Target, layers: list[LayerCount], compact_layers: list[LayerCount] | None) -> dict:
    """Loihi 2 and SpiNNaker2: neurons and non-zero synapses on whole cores."""
    figures = target.figures
    bits = figures["bits_per_synapse"].value
    memory_per_core = figures["synapse_memory_per_core"].value
    per_core = figures["neurons_per_core"].value if "neurons_per_core" in figures else None
    rows = []
    for layer in layers:
        memory = to_bytes(layer.nonzero_connections, bits)
        by_neurons = math.ceil(layer.neurons / per_core) if per_core else None
        by_memory = math.ceil(memory / memory_per_core)
        cores = max(1, by_neurons or 0, by_memory)
        dense_cores = max(1, by_neurons or 0, math.ceil(to_bytes(layer.connections, bits) / memory_per_core))
        rows.append({"layer": layer.name, "neurons": layer.neurons, "neurons_per_core": per_core,
                     "cores_by_neurons": by_neurons, "stored_synapses": layer.nonzero_connections,
                     "synapse_bytes": memory, "synapse_bytes_per_core": memory_per_core,
                     "cores_by_memory": by_memory, "cores": cores, "cores_without_pruning": dense_cores})
    cores = sum(row["cores"] for row in rows)
    chips = math.ceil(cores / figures["cores_per_chip"].value)
    compact = None if compact_layers is None else \
        to_bytes(sum(layer.nonzero_connections for layer in compact_layers), bits)
    unstructured = to_bytes(sum(layer.nonzero_connections for layer in layers), bits)
    unit = f"bytes ({figures['bits_per_synapse'].value:g} bits per stored synapse)"
    return {"layers": rows, "cores": cores, "cores_without_pruning": sum(row["cores_without_pruning"] for row in rows),
            "cores_per_chip": figures["cores_per_chip"].value, "chips": chips, "fits_one_chip": chips <= 1,
            "checks": [],
            "memory": _memory(target, unit, to_bytes(sum(layer.connections for layer in layers), bits),
                              unstructured, compact, unstructured)}


def speck_memory(layer: LayerCount) -> tuple[int, int]:
    """Sinabs' kernel and neuron memory of a layer on a Speck core, in entries:
    ``c * 2^(ceil(log2(kx*ky)) + ceil(log2(f)))`` and ``f * 2^(ceil(log2(fx)) + ceil(log2(fy)))``."""
    channels_in = layer.map_input[0]
    channels_out = layer.output_shape[0]
    fx, fy = (layer.output_shape[1], layer.output_shape[2]) if layer.kind == "conv" else (1, 1)
    kx, ky = layer.kernel
    kernel = channels_in * 2 ** (_log2(kx * ky) + _log2(channels_out))
    neurons = channels_out * 2 ** (_log2(fx) + _log2(fy))
    return kernel, neurons


def _log2(value: int) -> int:
    return math.ceil(math.log2(value)) if value > 1 else 0


def assign_speck_cores(needs: list[tuple[int, int]]) -> list[int | None]:
    """A distinct Speck core for each layer's (kernel, neuron) memory (entries) that holds both, by
    bipartite matching; None for a layer left without one."""
    sizes = [(k * 1024, n * 1024) for k, n in zip(SPECK_KERNEL_MEMORY, SPECK_NEURON_MEMORY)]
    owner: dict[int, int] = {}

    def place(layer: int, seen: set[int]) -> bool:
        for core, (kernel, neurons) in enumerate(sizes):
            if core in seen or needs[layer][0] > kernel or needs[layer][1] > neurons:
                continue
            seen.add(core)
            if core not in owner or place(owner[core], seen):
                owner[core] = layer
                return True
        return False

    for layer in range(len(needs)):
        place(layer, set())
    found: list[int | None] = [None] * len(needs)
    for core, layer in owner.items():
        found[layer] = core
    return found


def _speck(target: Target, layers: list[LayerCount], compact_layers: list[LayerCount] | None) -> dict:
    """Speck: one layer per core, each core with its own kernel and neuron memory."""
    needs = [speck_memory(layer) for layer in layers]
    cores = assign_speck_cores(needs)
    rows = [{"layer": layer.name, "in_channels": layer.map_input[0], "out_channels": layer.output_shape[0],
             "kernel": list(layer.kernel),
             "output_map": list(layer.output_shape[1:]) if layer.kind == "conv" else [1, 1],
             "kernel_memory": kernel, "neuron_memory": neurons, "core": core,
             "core_kernel_memory": None if core is None else SPECK_KERNEL_MEMORY[core] * 1024,
             "core_neuron_memory": None if core is None else SPECK_NEURON_MEMORY[core] * 1024}
            for layer, (kernel, neurons), core in zip(layers, needs, cores)]
    available = int(target.figures["cores_per_chip"].value)
    checks = [{"check": "layers <= cores", "value": len(layers), "limit": available, "ok": len(layers) <= available}]
    checks += [{"check": f"{row['layer']}: a core holds kernel memory {row['kernel_memory']} and neuron memory "
                         f"{row['neuron_memory']}", "value": row["core"], "limit": None, "ok": row["core"] is not None}
               for row in rows]
    kernel_limit = 16
    checks += [{"check": f"{layer.name}: kernel {layer.kernel[0]}x{layer.kernel[1]} <= {kernel_limit}x{kernel_limit}",
                "value": max(layer.kernel), "limit": kernel_limit, "ok": max(layer.kernel) <= kernel_limit}
               for layer in layers if max(layer.kernel) > kernel_limit]
    dense = sum(kernel for kernel, _ in needs)
    compact = None if compact_layers is None else sum(speck_memory(layer)[0] for layer in compact_layers)
    return {"layers": rows, "cores": len(layers), "cores_without_pruning": len(layers), "cores_per_chip": available,
            "chips": 1, "fits_one_chip": all(check["ok"] for check in checks),
            "checks": checks,
            "neuron_memory": {"dense": sum(n for _, n in needs),
                              "zero_channels_removed": None if compact_layers is None else
                              sum(speck_memory(layer)[1] for layer in compact_layers),
                              "unit": "neuron-memory entries (16-bit states)"},
            "memory": _memory(target, "kernel-memory entries (8-bit weights, address-rounded as Sinabs computes)",
                              dense, dense, compact, dense if compact is None else compact)}


def _xylo(target: Target, layers: list[LayerCount], compact_layers: list[LayerCount] | None) -> dict:
    """Xylo: one SNN core of dense Linear layers with a shared hidden-neuron pool."""
    figures = target.figures
    rows = [{"layer": layer.name, "kind": layer.kind, "role": role, "neurons": layer.neurons,
             "inputs": layer.input_shape[0] if layer.kind == "linear" else math.prod(layer.input_shape),
             "max_fanout_of_inputs_nonzero": layer.max_fanout_nonzero,
             "max_fanout_of_inputs_dense": layer.max_fanout_dense}
            for layer, role in zip(layers, _roles(len(layers)))]
    convs = [layer.name for layer in layers if layer.kind == "conv"]
    inputs = rows[0]["inputs"] if rows else 0
    hidden = sum(layer.neurons for layer in layers[:-1])
    outputs = layers[-1].neurons if layers else 0
    recurrent = layers[1:-1]
    fanout = max((layer.max_fanout_nonzero for layer in recurrent), default=0)
    fanout_dense = max((layer.max_fanout_dense for layer in recurrent), default=0)
    checks = [
        {"check": "no convolution (Xylo has none)", "value": ", ".join(convs) or "none", "limit": None,
         "ok": not convs},
        {"check": "inputs of the first layer <= input_channels", "value": inputs,
         "limit": figures["input_channels"].value, "ok": inputs <= figures["input_channels"].value},
        {"check": "neurons of every layer but the last <= hidden_neurons", "value": hidden,
         "limit": figures["hidden_neurons"].value, "ok": hidden <= figures["hidden_neurons"].value},
        {"check": "neurons of the last layer <= output_neurons", "value": outputs,
         "limit": figures["output_neurons"].value, "ok": outputs <= figures["output_neurons"].value},
        {"check": "non-zero outgoing weights of a hidden neuron to hidden neurons <= max_fanout (pruned; "
                  f"{fanout_dense} without pruning)", "value": fanout, "limit": figures["max_fanout"].value,
         "ok": fanout <= figures["max_fanout"].value},
    ]
    fits = all(check["ok"] for check in checks)
    dense = to_bytes(sum(layer.weights for layer in layers), figures["bits_per_weight"].value)
    compact = None if compact_layers is None else \
        to_bytes(sum(layer.weights for layer in compact_layers), figures["bits_per_weight"].value)
    return {"layers": rows, "cores": 1, "cores_without_pruning": 1, "cores_per_chip": 1, "chips": 1,
            "fits_one_chip": fits, "checks": checks,
            "memory": _memory(target, f"bytes ({figures['bits_per_weight'].value:g}-bit weights of dense matrices)",
                              dense, dense, compact, dense if compact is None else compact)}


def _roles(count: int) -> list[str]:
    return ["readout" if i == count - 1 else "input" if i == 0 else "hidden" for i in range(count)]
