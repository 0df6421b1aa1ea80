"""snn_stp: sparse spiking neural networks by soft threshold pruning.

The public surface of the pruning core is re-exported here::

    import snn_stp
    names = snn_stp.sparsify(model)                       # w = S_d(theta) on conv/linear weights
    sched = snn_stp.build_threshold_scheduler("lats", model, optimizer,
                                              final_threshold=D, total_steps=T, lr_scheduler=lrs)
    ...  optimizer.step(); lrs.step(); sched.step()

The re-exports are resolved on first use (PEP 562): the pruning core imports torch, which the
command line's ``--help`` and ``list`` should not wait for.
"""

import importlib
import importlib.util

__version__ = "0.1.0"


def __getattr__(name: str):
    if importlib.util.find_spec(f"{__name__}.{name}") is not None:
        # A submodule not imported yet ("from snn_stp import cli" asks here first): let the import
        # system load it rather than loading the pruning core.
        raise AttributeError(name)
    # import_module, not "from . import pruning": that form looks the name up on this module first,
    # which would call this function again.
    pruning = importlib.import_module(".pruning", __name__)
    if name == "__all__":
        return list(pruning.__all__) + ["__version__"]
    if name in pruning.__all__:
        return getattr(pruning, name)
    raise AttributeError(f"module 'snn_stp' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__getattr__("__all__")))
