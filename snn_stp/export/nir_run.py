"""Run a NIR graph as the NIR specification defines it, one Euler step of ``dt`` per time step.

A reader independent of the model code, for checking an exported graph where the framework
readers stop (none of snnTorch, Norse and SpikingJelly 2.0 reads ``Threshold`` or ``Scale``, the
literal forms of max pooling of spikes and of a SEW ADD that ``pool="threshold"`` and
``add="scale"`` write). It runs the node types :func:`snn_stp.export.export_nir` writes: ``Input``,
``Output``, ``Affine``, ``Linear``, ``Scale``, ``Conv2d``, ``Flatten``, ``SumPool2d``, ``AvgPool2d``,
``Threshold``, ``LIF`` and ``IF``; a node with several incoming edges receives their sum, as NIR
specifies (the SEW ResNets' ADD connections rely on it).

Neuron step (NIR's ODEs, Euler): LIF ``v += dt / tau * ((v_leak - v) + r * I)``, IF
``v += dt * r * I``; a spike where ``v >= v_threshold`` (SpikingJelly's convention), then
``v = v_reset`` there.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F


def run_nir(graph, inputs: torch.Tensor, dt: float | None = None, record: bool = False,
            dtype: torch.dtype = torch.float32):
    """The graph's output at every time step.

    Args:
        graph: a ``nir.NIRGraph`` (or the path of a ``.nir`` file).
        inputs: ``[T, B, *sample]``, one sample per time step (converted to ``dtype``).
        dtype: the precision the graph runs in (float64 to compare with a model run in float64,
            where no membrane lands within rounding of its threshold by chance).
        dt: time step in seconds; default: the graph's ``metadata["dt"]``.
        record: also return every node's values.

    Returns:
        ``[T, B, *output]``; with ``record``, also ``{node: [T, B, ...]}``.
    """
    import nir

    if not isinstance(graph, nir.NIRGraph):
        graph = nir.read(graph)
    dt = float(dt if dt is not None else graph.metadata["dt"])
    order = _topological_order(graph)
    sources = {name: [a for a, b in graph.edges if b == name] for name in graph.nodes}
    inputs = inputs.to(dtype)
    tensors = {name: {k: torch.as_tensor(np.asarray(v), dtype=dtype)
                      for k, v in vars(node).items() if isinstance(v, np.ndarray)}
               for name, node in graph.nodes.items()}
    voltage: dict[str, torch.Tensor] = {}
    outputs, recorded = [], {name: [] for name in order}
    for x_t in inputs:
        values: dict[str, torch.Tensor] = {}
        for name in order:
            node, p = graph.nodes[name], tensors[name]
            if isinstance(node, nir.Input):
                values[name] = x_t
                continue
            x = sum(values[s] for s in sources[name])
            values[name] = _step(node, p, x, name, voltage, dt)
        outputs.append(values[next(n for n in order if isinstance(graph.nodes[n], nir.Output))])
        if record:
            for name in order:
                recorded[name].append(values[name])
    if record:
        return torch.stack(outputs), {name: torch.stack(v) for name, v in recorded.items()}
    return torch.stack(outputs)


def _step(node, p: dict, x: torch.Tensor, name: str, voltage: dict, dt: float) -> torch.Tensor:
    import nir

    if isinstance(node, nir.Output):
        return x
    if isinstance(node, nir.Affine):
        return F.linear(x, p["weight"], p["bias"])
    if isinstance(node, nir.Linear):
        return F.linear(x, p["weight"])
    if isinstance(node, nir.Conv2d):
        return F.conv2d(x, p["weight"], p["bias"], stride=tuple(int(s) for s in node.stride),
                        padding=tuple(int(s) for s in node.padding), dilation=tuple(int(s) for s in node.dilation),
                        groups=int(node.groups))
    if isinstance(node, nir.Scale):
        return x * p["scale"]
    if isinstance(node, nir.AvgPool2d):
        return F.avg_pool2d(x, tuple(int(k) for k in node.kernel_size), tuple(int(s) for s in node.stride),
                            tuple(int(q) for q in node.padding))
    if isinstance(node, nir.Flatten):
        return x.flatten(int(node.start_dim) + 1, int(node.end_dim) + 1 if int(node.end_dim) >= 0 else int(node.end_dim))
    if isinstance(node, nir.SumPool2d):
        kernel = tuple(int(k) for k in node.kernel_size)
        return F.avg_pool2d(x, kernel, tuple(int(s) for s in node.stride), tuple(int(q) for q in node.padding),
                            divisor_override=1)
    if isinstance(node, nir.Threshold):
        return (x >= p["threshold"]).to(x.dtype)
    if isinstance(node, (nir.LIF, nir.IF)):
        v = voltage.get(name)
        if v is None:
            v = torch.zeros_like(x) + (p["v_leak"] if isinstance(node, nir.LIF) else p["v_reset"])
        if isinstance(node, nir.LIF):
            v = v + dt / p["tau"] * ((p["v_leak"] - v) + p["r"] * x)
        else:
            v = v + dt * p["r"] * x
        spike = (v >= p["v_threshold"]).to(v.dtype)
        voltage[name] = spike * p["v_reset"] + (1 - spike) * v
        return spike
    raise ValueError(f"node {name}: {type(node).__name__} is not run by this reader")


def _topological_order(graph) -> list[str]:
    incoming = {name: {a for a, b in graph.edges if b == name} for name in graph.nodes}
    order, done = [], set()
    while len(order) < len(graph.nodes):
        ready = [n for n in graph.nodes if n not in done and incoming[n] <= done]
        if not ready:
            raise ValueError("the graph has a cycle; this reader runs feed-forward graphs")
        order += ready
        done.update(ready)
    return order
