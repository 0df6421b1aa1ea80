"""Pruned models out of the toolkit: NIR graphs, compact sparse checkpoints, sparse CPU inference."""

from .nir_graph import DEFAULT_DT, NotExpressibleError, export_nir
from .nir_run import run_nir
from .runs import FORMATS, export_run, sample_shape
from .sparse_checkpoint import load_sparse, save_sparse
from .sparse_inference import SparseConv2d, SparseLinear, to_sparse_inference

__all__ = ["DEFAULT_DT", "FORMATS", "NotExpressibleError", "export_nir", "export_run", "load_sparse", "run_nir",
           "sample_shape", "save_sparse", "SparseConv2d", "SparseLinear", "to_sparse_inference"]
