"""Analysis: figures and ANN-vs-SNN reports read from run directories.

The measurements themselves (operation counts, energy tables, spike statistics) live in
:mod:`snn_stp.measure`, below training, and are re-exported here.
"""

from ..measure import DEFAULT_ENERGY_TABLE, ENERGY_TABLES, LayerOps, OperationReport, count_operations
from .runs import Run, read_run

__all__ = ["DEFAULT_ENERGY_TABLE", "ENERGY_TABLES", "LayerOps", "OperationReport", "count_operations", "Run",
           "read_run"]
