"""``snn-stp deploy-report``: what it takes to put a trained, pruned spiking run on a neuromorphic chip.

:mod:`.targets` holds the chips (their NIR support, published limits and energies, with sources),
:mod:`.counting` counts the network, :mod:`.report` maps it onto each chip and :mod:`.render`
writes the result as Markdown or JSON.
"""

from .render import FORMATS, render
from .report import build_report, deploy_report
from .targets import ENERGY_PER_SOP, TARGETS, TOOLCHAIN_NODE_TYPES, parse_targets, targets_table

__all__ = ["ENERGY_PER_SOP", "FORMATS", "TARGETS", "TOOLCHAIN_NODE_TYPES", "build_report", "deploy_report",
           "parse_targets", "render", "targets_table"]
