"""The framework NIR readers, each run the way its documentation says, one time step per call:
``run(graph, steps)`` takes ``steps`` ``[T, B, ...]`` and returns the outputs ``[T, B, ...]``."""

import torch


def run_snntorch(graph, steps):
    from snntorch.import_nir import import_from_nir

    network = import_from_nir(graph)
    with torch.no_grad():
        return torch.stack([network(x)[0] for x in steps])


def run_norse(graph, steps, dt):
    import norse.torch as norse

    network, state, outputs = norse.from_nir(graph, dt=dt), None, []
    with torch.no_grad():
        for x in steps:
            out, state = network(x, state)
            outputs.append(out)
    return torch.stack(outputs)


def run_spikingjelly(graph, steps, dt):
    """SpikingJelly 2.0's importer (``nir_exchange``), in the precision of ``steps``; the state
    returned by each step is passed back, as its documentation requires."""
    from spikingjelly.activation_based.nir_exchange.from_nir import import_from_nir

    network, state, outputs = import_from_nir(graph, dt=dt, dtype=steps.dtype), None, []
    with torch.no_grad():
        for x in steps:
            out, state = network(x, state)
            outputs.append(out)
    return torch.stack(outputs)


def has_spikingjelly_reader() -> bool:
    """SpikingJelly 2.0 has a NIR importer; the 0.0.0.0.14 generation (the CuPy one) has none."""
    import importlib.util

    return importlib.util.find_spec("spikingjelly.activation_based.nir_exchange") is not None


def run_reader(reader: str, graph, steps, one_sample_at_a_time: bool = False):
    """``steps`` through ``reader`` (``snntorch``, ``norse`` or ``spikingjelly``) at the graph's dt.
    ``one_sample_at_a_time``: feed the batch sample by sample (snnTorch and Norse flatten the batch
    axis at a NIR Flatten, see docs/deployment.md)."""
    dt = graph.metadata["dt"]
    run = {"snntorch": lambda g, x: run_snntorch(g, x), "norse": lambda g, x: run_norse(g, x, dt),
           "spikingjelly": lambda g, x: run_spikingjelly(g, x, dt)}[reader]
    if not one_sample_at_a_time:
        return run(graph, steps)
    # A reader that flattened the batch axis returns [T, outputs]: the sample's axis is put back.
    return torch.cat([run(graph, steps[:, i:i + 1]).reshape(steps.shape[0], 1, -1) for i in range(steps.shape[1])],
                     dim=1)
