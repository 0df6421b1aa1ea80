"""Compact checkpoints of pruned models: only the non-zero weights, and what rebuilds the model.

File layout (one ``torch.save`` mapping, four tensors however many layers):

``format``   ``"snn-stp sparse 1"``.
``model``    the ``build_model`` arguments (name, classes, channels, spiking, options).
``layout``   per state-dict entry: ``(name, shape, kind, start, count)``; ``kind`` is ``sparse`` (a
             pruned weight: its non-zeros in COO form) or ``dense`` (biases, normalization, PLIF
             leaks: every value).
``values``   float32: the non-zero weights of every pruned tensor, one after the other.
``indices``  int32 (int64 for a tensor of 2**31 values or more): the position of each value in its
             flattened tensor, i.e. torch's COO indices raveled, ascending.
``dense``    float32: the dense entries, one after the other.

Each non-zero costs 4 value bytes + 4 index bytes; the fixed part (layout, model arguments and
the container) is about 1.5 KB. Loading rebuilds the model and gives outputs identical to the
baked model (the same numbers reach the same layers).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from ..errors import SnnStpWarning
from ..pruning.sparsify import DEFAULT_PRUNABLE_TYPES

FORMAT = "snn-stp sparse 1"


def save_sparse(model: nn.Module, model_arguments: dict, path: str | Path, sparse: list[str] | None = None) -> dict:
    """Write ``model``'s weights to ``path`` with the pruned tensors stored as their non-zeros.

    Args:
        model: a baked model (plain tensors; see :func:`snn_stp.bake`).
        model_arguments: what ``build_model`` needs to rebuild it (``train.builders.model_arguments``).
        path: the file to write (written atomically).
        sparse: state-dict names stored sparse; default: every weight of a Linear or Conv layer.

    Returns:
        sizes in bytes: ``file``, ``nonzeros`` (count), ``sparse_payload`` (values + indices),
        ``dense_payload``, and ``overhead`` (the rest).
    """
    from ..files import atomic_path

    state = {k: v.detach().cpu() for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    names = set(sparse if sparse is not None else _prunable_weights(model))
    values, indices, dense, layout = [], [], [], []
    value_count = dense_count = stored_weights = 0
    for name, tensor in state.items():
        if name in names:
            coo = tensor.float().to_sparse().coalesce()  # torch's COO: [dims, nnz] indices, ascending
            values.append(coo.values())
            indices.append(_ravel(coo.indices(), tensor.shape))
            layout.append((name, tuple(tensor.shape), "sparse", value_count, coo.values().numel()))
            value_count += coo.values().numel()
            stored_weights += tensor.numel()
        else:
            dense.append(tensor.float().flatten())
            layout.append((name, tuple(tensor.shape), "dense", dense_count, tensor.numel()))
            dense_count += tensor.numel()
    # int32 positions unless a tensor has 2**31 values or more.
    index_type = torch.int64 if any(state[name].numel() >= 2**31 for name in names if name in state) else torch.int32
    payload = {
        "format": FORMAT, "model": dict(model_arguments), "layout": layout,
        "values": torch.cat(values) if values else torch.zeros(0),
        "indices": torch.cat(indices).to(index_type) if indices else torch.zeros(0, dtype=torch.int32),
        "dense": torch.cat(dense) if dense else torch.zeros(0),
    }
    with atomic_path(Path(path)) as temporary:
        # torch's legacy container: the zip one aligns every tensor to 64 bytes and adds a header per
        # record, about 1.4 KB more, 15% of a pruned digits MLP's file. torch.load reads both.
        torch.save(payload, temporary, _use_new_zipfile_serialization=False)
    file_bytes = Path(path).stat().st_size
    sparse_bytes = payload["values"].numel() * 4 + payload["indices"].numel() * payload["indices"].element_size()
    dense_bytes = payload["dense"].numel() * 4
    if sparse_bytes > stored_weights * 4:
        warnings.warn(f"the pruned tensors are {1 - value_count / stored_weights:.1%} zeros: their non-zeros with "
                      f"indices take {sparse_bytes:,} bytes, more than the {stored_weights * 4:,} bytes of the dense "
                      "tensors (below 50% zeros the index bytes outweigh the skipped zeros)", SnnStpWarning, stacklevel=2)
    return {"file": file_bytes, "nonzeros": value_count, "sparse_payload": sparse_bytes, "dense_payload": dense_bytes,
            "overhead": file_bytes - sparse_bytes - dense_bytes}


def load_sparse(path: str | Path, device: torch.device | str = "cpu") -> nn.Module:
    """The model of a sparse checkpoint, rebuilt (plain modules, eval mode) with its weights."""
    from ..errors import CheckpointError
    from ..models import build_model

    payload = torch.load(Path(path), map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an snn-stp sparse checkpoint (snn-stp export RUN --format sparse writes one)")
    model = build_model(**payload["model"], device="cpu")
    state = {}
    for name, shape, kind, start, count in payload["layout"]:
        if kind == "sparse":
            positions = payload["indices"][start:start + count].long()
            coo = torch.sparse_coo_tensor(_unravel(positions, shape), payload["values"][start:start + count],
                                          size=shape, check_invariants=True)
            state[name] = coo.to_dense()
        else:
            state[name] = payload["dense"][start:start + count].view(shape)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or any(not key.endswith("num_batches_tracked") for key in missing):
        raise CheckpointError(f"{path} does not fit the model it names: missing {missing}, unexpected {unexpected}")
    return model.to(device).eval()


def _prunable_weights(model: nn.Module) -> list[str]:
    """The weights of every layer type sparsify prunes by default (convolutions and Linear)."""
    return [f"{name}.weight" if name else "weight" for name, module in model.named_modules()
            if isinstance(module, DEFAULT_PRUNABLE_TYPES)]


def _ravel(indices: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """``[dims, nnz]`` COO indices -> positions in the flattened tensor."""
    flat = torch.zeros(indices.shape[1], dtype=torch.int64)
    for dim, size in enumerate(shape):
        flat = flat * size + indices[dim]
    return flat


def _unravel(flat: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Positions in the flattened tensor -> ``[dims, nnz]`` COO indices."""
    return torch.stack(torch.unravel_index(flat, tuple(shape))) if shape else flat.view(0, -1)

