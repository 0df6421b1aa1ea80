"""Export a spiking network to NIR, the Neuromorphic Intermediate Representation.

NIR describes neurons in continuous time; SpikingJelly's neurons are discrete. With the time step
``dt`` (seconds; 1e-4 by default, the value snnTorch's reader assumes) the mapping is exact for an
Euler step of the NIR equations:

* LIF (``tau dv/dt = (v_leak - v) + r I``): NIR ``tau = tau_sj * dt``, ``v_leak = v_reset``,
  ``r = 1`` with ``decay_input=True`` (SpikingJelly charges ``(X - (V - V_reset)) / tau``) and
  ``r = tau_sj`` with ``decay_input=False`` (it charges ``X - (V - V_reset) / tau``).
* PLIF: the same with its learned ``tau = 1 / sigmoid(w)``.
* IF (``dv/dt = r I``): ``r = 1 / dt``.
* Hard reset to ``v_reset`` after a spike; the soft reset (subtract the threshold) has no NIR
  form and is refused.

Layers: Linear and Conv2d become ``Affine``/``Linear``/``Conv2d`` with the BatchNorm that follows
them folded in (``w' = w * gamma / sqrt(var + eps)``: a pruned zero stays exactly zero); max
pooling of spikes, which are 0 or 1, is 1 exactly where their sum is at least 1: a ``SumPool2d``
followed by a memoryless spiking neuron (``pool="neuron"``, the default, which every reader runs;
:func:`any_spike_neuron`) or by ``Threshold(0.5)`` (``pool="threshold"``, the literal form, which no
reader runs); a SEW ADD is the sum NIR forms of the edges entering a node (``add="edges"``, the
default: both addends feed each consumer) or a ``Scale`` of ones (``add="scale"``); the voting
readout (mean of groups) is a ``Linear``; dropout is the identity at inference. Each weight node's
metadata holds its sparsity and the modules it came from; the graph's metadata states ``dt``, the
number of time steps, the input encoding and how the output is read.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..errors import SnnStpError, SnnStpWarning, UsageError
from ..snn.neurons import is_spiking_neuron

#: snnTorch's NIR reader hard-codes this time step (seconds); Norse takes it as an argument.
DEFAULT_DT = 1e-4
#: How max pooling of spikes is written: a memoryless neuron every reader runs, or NIR's Threshold.
POOL_FORMS = ("neuron", "threshold")
#: How a SEW ADD is written: as the sum of the edges entering each consumer, or as a Scale node of ones.
ADD_FORMS = ("edges", "scale")
#: The memoryless "any input spiked" neuron after a SumPool2d: LIF with tau = 2 dt and r = 1, so
#: one Euler step from v = 0 gives v = sum / 2 (0, 0.5, 1, ...); it fires at the threshold 0.25, which
#: lies strictly between 0 and 0.5 (snnTorch and Norse fire at v > threshold, SpikingJelly at v >=),
#: and resets to 0, so v is 0 before every step. tau = dt would be exact too but SpikingJelly 2.0
#: refuses tau / dt <= 1; an IF with r = 1 / dt is refused by snnTorch (r != 1).
ANY_SPIKE_TAU_STEPS, ANY_SPIKE_THRESHOLD = 2.0, 0.25


class NotExpressibleError(SnnStpError, ValueError):
    """The model holds something NIR (or this exporter) cannot express; the message says what."""


def check_time_step(dt: float) -> None:
    """A NIR time step must be a positive number of seconds."""
    if not dt > 0:
        raise UsageError(f"the time step dt must be > 0 seconds (one network step in NIR's continuous time), got {dt}")


@dataclass
class _Step:
    """One module of the flattened network, with the dotted name it has in the model."""

    name: str
    module: nn.Module


def export_nir(model: nn.Module, sample_shape: tuple[int, ...], dt: float = DEFAULT_DT, model_name: str = "",
               pool: str = "neuron", add: str = "edges"):
    """The NIR graph of a spiking network of the model zoo (a chain of layers), pruned zeros kept.

    Args:
        model: a spiking ``TwinNetwork`` (``spiking_mlp``, ``stds_cifarnet``, ``nmnist_net``,
            ``dvsgesture_net``, ``cifar10dvs_net``), sparsified or baked; not modified.
        sample_shape: one input sample, without time and batch: ``(64,)`` for the digits MLP,
            ``(C, H, W)`` for images and event frames.
        dt: the time step in seconds that one SpikingJelly step stands for.
        model_name: recorded in the graph's metadata.
        pool: max pooling of spikes as ``SumPool2d`` + a memoryless LIF (``"neuron"``: snnTorch,
            Norse and SpikingJelly 2.0 run it) or ``SumPool2d`` + ``Threshold`` (``"threshold"``:
            the literal form; only :func:`~snn_stp.export.run_nir` runs it).
        add: a SEW ADD as the sum of the edges entering each consumer (``"edges"``) or as a
            ``Scale`` node of ones (``"scale"``; no reader runs it).

    Returns:
        ``nir.NIRGraph`` whose input takes one sample per time step and whose output is the
        network's value at that step; the model's prediction is the mean of the outputs over the
        ``time_steps`` steps (graph metadata).

    Raises:
        NotExpressibleError: a residual network, a soft reset, max pooling of non-spike values,
            or a layer type the exporter does not know.
    """
    import nir

    check_time_step(dt)
    if pool not in POOL_FORMS:
        raise UsageError(f"unknown max-pooling form {pool!r}; valid: {', '.join(POOL_FORMS)}")
    if add not in ADD_FORMS:
        raise UsageError(f"unknown SEW ADD form {add!r}; valid: {', '.join(ADD_FORMS)}")
    if not getattr(model, "spiking", False):
        raise NotExpressibleError(f"{type(model).__name__} is an ANN (spiking=False); NIR export needs the spiking model")
    if hasattr(model, "cnf") and hasattr(model, "net"):  # SEW ResNet: a residual graph
        build = _sew_resnet_graph
    elif isinstance(getattr(model, "encoder", None), nn.Module) and isinstance(getattr(model, "body", None), nn.Module):
        build = _chain_graph
    else:
        raise NotExpressibleError(f"{type(model).__name__} has no NIR mapping in this exporter; exportable: "
                                  "spiking_mlp, stds_cifarnet, nmnist_net, dvsgesture_net, cifar10dvs_net, "
                                  "sew_resnet18/34/50 (cnf ADD)")
    was_training = model.training
    model.eval()  # the shapes are traced through BatchNorm with its running statistics
    try:
        nodes, edges = build(model, sample_shape, dt, pool, add)
    finally:
        model.train(was_training)
    notes = reader_notes(nodes.values())
    for note in notes:
        warnings.warn(note, SnnStpWarning, stacklevel=2)
    metadata = {
        "source": "snn_stp", "model": model_name or type(model).__name__, "dt": float(dt),
        "time_steps": int(model.time_steps),
        "input_encoding": ("direct: the same sample at every time step" if model.input_kind == "static"
                           else "events: one frame per time step"),
        "output": f"the prediction is the mean of the output over the {model.time_steps} time steps",
        "weight_sparsity": _overall_sparsity(nodes),
        "reader_notes": " | ".join(notes) or "none",
        "max_pooling_of_spikes": POOL_NOTES[pool],
    }
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=metadata)


POOL_NOTES = {
    "neuron": (f"SumPool2d then a memoryless LIF (tau = {ANY_SPIKE_TAU_STEPS:g} dt, r = 1, threshold "
               f"{ANY_SPIKE_THRESHOLD:g}, reset to 0): a spike exactly where any pooled input spiked"),
    "threshold": "SumPool2d then Threshold(0.5): 1 exactly where any pooled input spiked",
}


def _chain_graph(model: nn.Module, sample_shape: tuple[int, ...], dt: float, pool: str, add: str
                 ) -> tuple[dict, list]:
    """Nodes and edges of a chain of layers (``encoder``, then ``body``)."""
    import nir
    from spikingjelly.activation_based import layer

    from ..snn.twin import Voting

    steps = _flatten(model)
    shapes = _shapes(steps, sample_shape)
    nodes, edges, previous, spikes = {"input": nir.Input({"input": np.array(sample_shape)})}, [], "input", False
    index = 0
    while index < len(steps):
        step, shape = steps[index], shapes[index]
        module = step.module
        made: list[tuple[str, object]] = []
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            norm = steps[index + 1] if index + 1 < len(steps) else None
            if norm is not None and isinstance(norm.module, (nn.BatchNorm1d, nn.BatchNorm2d)):
                index += 1
            else:
                norm = None
            made.append((step.name, _weight_node(module, norm, shape)))
            spikes = False
        elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            raise NotExpressibleError(f"{step.name}: a BatchNorm that does not follow a Linear or Conv2d cannot be folded")
        elif is_spiking_neuron(module):
            made.append((step.name, _neuron_node(step.name, module, shape, dt)))
            spikes = True
        elif isinstance(module, nn.MaxPool2d):
            if not spikes:
                raise NotExpressibleError(f"{step.name}: max pooling of non-spike values has no NIR form "
                                          "(only max pooling of 0/1 spikes, written as a thresholded sum pool)")
            made += _max_pool_of_spikes(step.name, module, shapes[index + 1], dt, pool)
        elif isinstance(module, nn.Flatten):
            made.append((step.name, nir.Flatten({"input": np.array(shape)}, start_dim=module.start_dim - 1,
                                                end_dim=module.end_dim if module.end_dim < 0 else module.end_dim - 1)))
        elif isinstance(module, (nn.Dropout, layer.Dropout)):
            pass  # the identity at inference
        elif isinstance(module, Voting):
            groups, width = module.group, shape[-1]
            weight = np.kron(np.eye(width // groups), np.full((1, groups), 1.0 / groups)).astype(np.float32)
            made.append((step.name, nir.Linear(weight, metadata={"source": f"{step.name} (mean of groups of {groups})"})))
            spikes = False
        else:
            raise NotExpressibleError(f"{step.name}: {type(module).__name__} has no NIR mapping in this exporter")
        for name, node in made:
            key = name.replace(".", "_")
            nodes[key] = node
            edges.append((previous, key))
            previous = key
        index += 1
    nodes["output"] = nir.Output({"output": np.array(shapes[-1])})
    edges.append((previous, "output"))
    return nodes, edges


def _sew_resnet_graph(model: nn.Module, sample_shape: tuple[int, ...], dt: float, pool: str, add_form: str
                      ) -> tuple[dict, list]:
    """Nodes and edges of a SEW ResNet with ADD connections. NIR sums the edges entering a node, so
    a block's output (its spikes plus its shortcut) is a set of addends: with ``add_form="edges"``
    each addend has an edge into every node that takes the block's output (an identity shortcut
    carries the addends on, so a later consumer may take several); with ``"scale"`` the addends
    enter one ``Scale`` node of ones, whose output feeds the consumers."""
    import nir

    if model.cnf != "ADD":
        raise NotExpressibleError(f"SEW connection {model.cnf}: AND and IAND are logic on spikes and have no NIR "
                                  "form; ADD (a sum of spikes) is exported")
    net = model.net
    shapes = _module_shapes(model, sample_shape)
    nodes, edges = {"input": nir.Input({"input": np.array(sample_shape)})}, []

    def add(name: str, node, sources: tuple[str, ...]) -> tuple[str, ...]:
        """Add ``node`` taking the sum of ``sources``; returns its output as one addend."""
        key = name.replace(".", "_")
        nodes[key] = node
        edges.extend((source, key) for source in sources)
        return (key,)

    def weighted(name: str, conv: nn.Module, norm: nn.Module, sources: tuple[str, ...]) -> tuple[str, ...]:
        folded = _weight_node(conv, _Step(f"{name} norm", norm), shapes[conv][0])
        return add(name, folded, sources)

    def spiking(name: str, cell: nn.Module, sources: tuple[str, ...]) -> tuple[str, ...]:
        return add(name, _neuron_node(name, cell, shapes[cell][0], dt), sources)

    x = weighted("net.conv1", net.conv1, net.bn1, ("input",))
    x = spiking("net.sn1", net.sn1, x)
    if isinstance(net.maxpool, nn.MaxPool2d):
        for name, node in _max_pool_of_spikes("net.maxpool", net.maxpool, shapes[net.maxpool][1], dt, pool):
            x = add(name, node, x)
    for stage in ("layer1", "layer2", "layer3", "layer4"):
        for index, block in enumerate(getattr(net, stage)):
            prefix = f"net.{stage}.{index}"
            block_input, out = x, x
            parts = (1, 2, 3) if hasattr(block, "conv3") else (1, 2)
            for part in parts:
                out = weighted(f"{prefix}.conv{part}", getattr(block, f"conv{part}"), getattr(block, f"bn{part}"), out)
                out = spiking(f"{prefix}.sn{part}", getattr(block, f"sn{part}"), out)
            shortcut = block_input
            if block.downsample is not None:
                conv, norm = [m for m in block.downsample.modules() if isinstance(m, (nn.Conv2d, nn.BatchNorm2d))]
                shortcut = weighted(f"{prefix}.downsample", conv, norm, block_input)
                shortcut = spiking(f"{prefix}.downsample_sn", block.downsample_sn, shortcut)
            x = out + shortcut  # the addends of the block's output
            if add_form == "scale":
                x = add(f"{prefix}.add", nir.Scale(np.ones(shapes[block][1], dtype=np.float32), metadata={
                    "source": f"{prefix}: SEW ADD, the block's spikes plus its shortcut (a Scale of 1 on their sum)"}), x)
    size = shapes[net.avgpool][0][-2:]
    x = add("net.avgpool", nir.AvgPool2d(kernel_size=np.array(size), stride=np.array(size), padding=np.array((0, 0)),
                                         metadata={"source": "AdaptiveAvgPool2d((1, 1))"}), x)
    x = add("net.flatten", nir.Flatten({"input": np.array(shapes[net.avgpool][1])}, start_dim=0, end_dim=-1), x)
    x = add("net.fc", _weight_node(net.fc, None, shapes[net.fc][0]), x)
    add("output", nir.Output({"output": np.array(shapes[net.fc][1])}), x)
    return nodes, edges


def _module_shapes(model: nn.Module, sample_shape: tuple[int, ...]) -> dict:
    """``{module: (input shape, output shape)}`` of one sample (no time or batch dimension), from one
    time step of the model on zeros."""
    from spikingjelly.activation_based import functional

    shapes, handles = {}, []

    def record(module, inputs, output) -> None:
        if inputs and isinstance(inputs[0], torch.Tensor) and isinstance(output, torch.Tensor):
            shapes.setdefault(module, (tuple(inputs[0].shape[2:]), tuple(output.shape[2:])))

    for module in model.modules():
        handles.append(module.register_forward_hook(record))
    try:
        with torch.no_grad():
            functional.reset_net(model)
            model.body(model.encoder(torch.zeros(1, 1, *sample_shape)))
            functional.reset_net(model)
    finally:
        for handle in handles:
            handle.remove()
    return shapes


#: The NIR node types each framework reader runs: its own node map plus nirtorch's defaults (which
#: give snnTorch and SpikingJelly 2.0 ``AvgPool2d``, and all three ``SumPool2d``, as ``LPPool2d``
#: with p = 1). Every entry, and every type left out, is checked against the installed readers by
#: tests/test_nir_readers.py (a one-node graph per type through each reader).
READER_NODE_TYPES = {
    "snnTorch 1.0": {"Input", "Output", "Affine", "Linear", "Conv2d", "Flatten", "SumPool2d", "AvgPool2d", "LIF",
                     "CubaLIF"},
    "Norse 1.1": {"Input", "Output", "Affine", "Linear", "Conv2d", "Flatten", "SumPool2d", "IF", "LIF", "CubaLIF"},
    "SpikingJelly 2.0": {"Input", "Output", "Affine", "Linear", "Conv2d", "Flatten", "SumPool2d", "AvgPool2d", "IF",
                         "LIF", "CubaLIF"},
}


def reader_notes(nodes) -> list[str]:
    """What the framework readers cannot run of these nodes, or run differently, one sentence each."""
    import nir

    nodes = list(nodes)
    kinds = {type(node).__name__ for node in nodes}
    notes = []
    for reader, known in READER_NODE_TYPES.items():
        missing = sorted(kinds - known)
        if missing:
            notes.append(f"{reader} cannot read this graph (no {', '.join(missing)} node); snn_stp.export.run_nir "
                         "runs it" + (" (export with pool='neuron' and add='edges' for the forms the readers run)"
                                      if {"Threshold", "Scale"} & set(missing) else ""))
    if "IF" in kinds:
        notes.append("snnTorch 1.0 refuses a NIR IF neuron with r != 1 (IF is written with r = 1/dt); Norse, "
                     "SpikingJelly 2.0 and snn_stp.export.run_nir run IF as written")
    if any(isinstance(node, nir.LIF) and not np.allclose(node.r, 1.0) for node in nodes):
        notes.append("LIF with decay_input=False is written with r = tau: Norse 1.1 assumes r = 1 (it warns), so its "
                     "outputs differ; snnTorch, SpikingJelly 2.0 and snn_stp.export.run_nir run it as written")
    if any(isinstance(node, nir.Flatten) and node.start_dim >= 0 for node in nodes):
        notes.append("Flatten is written as the NIR spec says (start_dim 0 is the first axis of a sample): snnTorch "
                     "1.0 and Norse 1.1 pass it to torch.nn.Flatten unchanged, which then also flattens the batch, "
                     "so feed them one sample at a time; SpikingJelly 2.0 runs batches")
    if any(isinstance(node, nir.SumPool2d) and np.any(np.asarray(node.padding) != 0) for node in nodes):
        notes.append("a SumPool2d has padding, which the readers' SumPool2d (nirtorch's LPPool2d) ignores: their "
                     "outputs differ; snn_stp.export.run_nir pads as written")
    return notes


def _flatten(model: nn.Module) -> list[_Step]:
    """The model's layers in order, containers opened (``encoder`` first, then ``body``)."""
    steps: list[_Step] = []

    def walk(prefix: str, module: nn.Module) -> None:
        if isinstance(module, nn.Sequential):
            for name, child in module.named_children():
                walk(f"{prefix}.{name}", child)
        else:
            steps.append(_Step(prefix, module))

    walk("encoder", model.encoder)
    walk("body", model.body)
    return steps


def _shapes(steps: list[_Step], sample_shape: tuple[int, ...]) -> list[tuple[int, ...]]:
    """The input shape of every step (one sample, no batch) and, last, the output shape. The
    model is in eval mode (see :func:`export_nir`); the neurons, which hold state, are skipped."""
    x = torch.zeros(1, *sample_shape)
    shapes = []
    with torch.no_grad():
        for step in steps:
            shapes.append(tuple(x.shape[1:]))
            if not is_spiking_neuron(step.module):
                x = step.module(x)
    shapes.append(tuple(x.shape[1:]))
    return shapes


def _weight_node(module: nn.Module, norm: _Step | None, shape: tuple[int, ...]):
    import nir

    weight = module.weight.detach().double()
    bias = module.bias.detach().double() if module.bias is not None else None
    source = type(module).__name__
    if norm is not None:
        bn = norm.module
        scale = bn.weight.detach().double() / torch.sqrt(bn.running_var.double() + bn.eps)
        # Multiplying by the scale keeps every pruned zero exactly zero.
        weight = weight * scale.view(-1, *([1] * (weight.dim() - 1)))
        bias = bn.bias.detach().double() - bn.running_mean.double() * scale + (0 if bias is None else bias * scale)
        source += f" + {norm.name} (BatchNorm folded)"
    w = weight.float().numpy()
    metadata = {"source": source, "sparsity": float((w == 0).mean()), "nonzeros": int((w != 0).sum()),
                "weights": int(w.size)}
    if isinstance(module, nn.Linear):
        if bias is None:
            return nir.Linear(w, metadata=metadata)
        return nir.Affine(w, bias.float().numpy(), metadata=metadata)
    if module.groups != 1 or module.padding_mode != "zeros" or isinstance(module.padding, str):
        raise NotExpressibleError(f"{type(module).__name__}: only zero-padded, ungrouped convolutions with "
                                  "numeric padding are exported")
    b = bias.float().numpy() if bias is not None else np.zeros(w.shape[0], dtype=np.float32)
    return nir.Conv2d(input_shape=tuple(shape[-2:]), weight=w, stride=module.stride, padding=module.padding,
                      dilation=module.dilation, groups=1, bias=b, metadata=metadata)


def _neuron_node(name: str, module: nn.Module, shape: tuple[int, ...], dt: float):
    import nir
    from spikingjelly.activation_based import neuron

    if module.v_reset is None:
        raise NotExpressibleError(f"{name}: soft reset (v_reset=None: subtract the threshold) has no NIR form; "
                                  "NIR neurons reset to v_reset (train with a hard reset to export)")
    full = lambda value: np.full(shape, float(value), dtype=np.float32)  # noqa: E731
    if isinstance(module, neuron.ParametricLIFNode):
        tau = 1.0 / torch.sigmoid(module.w.detach()).item()
        kind = f"PLIF (learned tau {tau:.6g} steps)"
    elif isinstance(module, neuron.LIFNode):
        tau = float(module.tau)
        kind = f"LIF (tau {tau:.6g} steps)"
    elif isinstance(module, neuron.IFNode):
        return nir.IF(r=full(1.0 / dt), v_threshold=full(module.v_threshold), v_reset=full(module.v_reset),
                      metadata={"source": f"IF, time step {dt} s"})
    else:
        raise NotExpressibleError(f"{name}: {type(module).__name__} has no NIR mapping in this exporter")
    decay_input = bool(getattr(module, "decay_input", True))
    return nir.LIF(tau=full(tau * dt), r=full(1.0 if decay_input else tau), v_leak=full(module.v_reset),
                   v_threshold=full(module.v_threshold), v_reset=full(module.v_reset),
                   metadata={"source": f"{kind}, decay_input={decay_input}, hard reset, time step {dt} s"})


def any_spike_neuron(shape: tuple[int, ...], dt: float, source: str):
    """A NIR LIF of ``shape`` that spikes at a step exactly where its input is at least 1, for
    inputs that are sums of 0/1 spikes, and keeps no state between steps (see
    :data:`ANY_SPIKE_TAU_STEPS`)."""
    import nir

    full = lambda value: np.full(shape, float(value), dtype=np.float32)  # noqa: E731
    return nir.LIF(tau=full(ANY_SPIKE_TAU_STEPS * dt), r=full(1.0), v_leak=full(0.0),
                   v_threshold=full(ANY_SPIKE_THRESHOLD), v_reset=full(0.0),
                   metadata={"source": f"{source}: 1 where any input spiked (memoryless LIF, time step {dt} s)"})


def _max_pool_of_spikes(name: str, module: nn.MaxPool2d, out_shape: tuple[int, ...], dt: float, form: str):
    import nir

    pair = lambda v: np.array(v if isinstance(v, (tuple, list)) else (v, v))  # noqa: E731
    if module.dilation not in (1, (1, 1)) or module.ceil_mode:
        raise NotExpressibleError(f"{name}: max pooling with dilation or ceil_mode has no NIR form")
    stride = module.stride if module.stride is not None else module.kernel_size
    pool = nir.SumPool2d(kernel_size=pair(module.kernel_size), stride=pair(stride), padding=pair(module.padding),
                         metadata={"source": f"{name}: MaxPool2d of spikes = 1 where SumPool2d >= 1 ({form} form)"})
    if form == "neuron":
        any_spike = any_spike_neuron(out_shape, dt, name)
    else:
        any_spike = nir.Threshold(np.full(out_shape, 0.5, dtype=np.float32),
                                  metadata={"source": f"{name}: 1 where any input spiked"})
    return [(f"{name}.sum", pool), (f"{name}.any", any_spike)]


def _overall_sparsity(nodes: dict) -> float:
    """Zero fraction over the weight nodes, from the counts in their metadata."""
    counted = [node.metadata for node in nodes.values() if "weights" in node.metadata]
    total = sum(m["weights"] for m in counted)
    return sum(m["weights"] - m["nonzeros"] for m in counted) / total if total else math.nan
