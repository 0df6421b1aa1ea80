"""Where runs execute: worker processes on this machine (:class:`LocalPool`) or jobs on a Slurm
cluster (:mod:`snn_stp.launch.slurm`, through submitit). Both take :class:`Job` s and report each
as it finishes, so a sweep is the same loop on a laptop and on a cluster."""

from .job import Finished, Job, Work
from .local import LocalPool

__all__ = ["Finished", "Job", "LocalPool", "Work"]
