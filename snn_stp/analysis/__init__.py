"""Analysis: operation counts and energy estimates, plots of run directories, ANN-vs-SNN reports."""

from .compute import DEFAULT_ENERGY_TABLE, ENERGY_TABLES, LayerOps, OperationReport, count_operations

__all__ = ["DEFAULT_ENERGY_TABLE", "ENERGY_TABLES", "LayerOps", "OperationReport", "count_operations"]
