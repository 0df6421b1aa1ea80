"""What a forward pass costs and how much it spikes: measurements the training loop takes every
epoch and analysis reads back from the run directory.

This room sits below ``train`` and ``analysis`` (it knows models and spiking neurons, nothing of
training or plotting), so both can use it without importing each other.
"""

from .spikes import SpikeStatistics, firing_rates, spike_statistics
from .operations import DEFAULT_ENERGY_TABLE, ENERGY_TABLES, LayerOps, OperationReport, count_operations

__all__ = ["DEFAULT_ENERGY_TABLE", "ENERGY_TABLES", "LayerOps", "OperationReport", "count_operations",
           "SpikeStatistics", "firing_rates", "spike_statistics"]
