"""snn_stp: sparse spiking neural networks by soft threshold pruning.

The public surface of the pruning core is re-exported here::

    import snn_stp
    names = snn_stp.sparsify(model)                       # w = S_d(theta) on conv/linear weights
    sched = snn_stp.build_threshold_scheduler("lats", model, optimizer,
                                              final_threshold=D, total_steps=T, lr_scheduler=lrs)
    ...  optimizer.step(); lrs.step(); sched.step()
"""

from .pruning import *  # noqa: F401,F403
from .pruning import __all__ as _pruning_all

__version__ = "0.1.0"
__all__ = list(_pruning_all) + ["__version__"]
