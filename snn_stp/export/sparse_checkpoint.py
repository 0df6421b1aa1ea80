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
``metadata`` plain values about the file's origin (``training``: the checkpoint's epoch, step and
             whether its run had finished); not needed to rebuild the model.

Each non-zero costs 4 value bytes + 4 index bytes; the fixed part (layout, model arguments and
the container) is about 1.5 KB. Loading rebuilds the model and gives outputs identical to the
baked model (the same numbers reach the same layers).

A file is untrusted input: :func:`load_sparse` checks every field against the others (dtypes,
lengths, positions inside their tensor and ascending, the model's shapes) and bounds what the
file may make it allocate by what the file stores (:data:`MAX_ELEMENTS_PER_STORED` elements per
stored number, :data:`MODULES_PER_TENSOR` modules per tensor) before anything dense exists.
"""

from __future__ import annotations

import math
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn
from torch.nn.modules.module import register_module_module_registration_hook

from ..errors import SnnStpError, SnnStpWarning
from ..pruning.sparsify import DEFAULT_PRUNABLE_TYPES

FORMAT = "snn-stp sparse 1"


def save_sparse(model: nn.Module, model_arguments: dict, path: str | Path, sparse: list[str] | None = None,
                metadata: dict | None = None) -> dict:
    """Write ``model``'s weights to ``path`` with the pruned tensors stored as their non-zeros.

    Args:
        model: a baked model (plain tensors; see :func:`snn_stp.bake`).
        model_arguments: what ``build_model`` needs to rebuild it (``train.builders.model_arguments``).
        path: the file to write (written atomically).
        sparse: state-dict names stored sparse; default: every weight of a Linear or Conv layer.
        metadata: plain values stored as the file's ``metadata`` (``snn-stp export`` records the
            checkpoint's training progress there, e.g. whether the run had finished).

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
        "metadata": dict(metadata or {}),
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
    """The model of a sparse checkpoint, rebuilt (plain modules, eval mode) with its weights.

    The file is checked before anything dense is allocated (see :func:`_check_payload` and
    :data:`MAX_ELEMENTS_PER_STORED`): a damaged or hostile one (an index outside its tensor,
    sizes that disagree, a wrong dtype, a shape far larger than the file could describe) is a
    one-line :class:`~snn_stp.errors.CheckpointError` naming the file, the tensor and the fault.
    """
    from ..errors import CheckpointError
    from ..models import build_model
    from ..train.checkpoint import load_file

    # Missing, empty, truncated or code-running files are refused there. torch refuses a storage
    # whose declared size disagrees with the bytes stored for it (reserving, never touching, the
    # declared size first), so each loaded tensor is at most as large as the file.
    payload = load_file(path, map_location="cpu")
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an snn-stp sparse checkpoint (snn-stp export RUN --format sparse writes one)")
    entries = _check_payload(payload, path)
    arguments = payload["model"]
    # The architecture on the meta device first (shapes, no memory): what it would allocate must
    # be what the layout declares, which _check_payload bounded by the file's size. Its modules
    # are bounded by the layout too: a three-entry file asking for depth=10**6 would otherwise
    # spend half an hour building a million modules.
    limit = MODULES_PER_TENSOR * (len(entries) + 1)
    try:
        with torch.device("meta"), _module_budget(limit):
            skeleton = build_model(**arguments, device="meta")
    except _TooManyModules:
        raise _invalid(path, f"its model arguments build model {_quoted(arguments['name'])} of more than {limit:,} "
                             f"modules, for {len(entries):,} tensors in the layout") from None
    except (TypeError, ValueError, KeyError, AttributeError, IndexError, RuntimeError, OverflowError,
            SnnStpError) as error:
        # The arguments come from the file: what the builder refuses them with is the file's fault.
        raise _invalid(path, f"its model arguments do not build a model ({type(error).__name__}: "
                             f"{_one_line(error)})") from None
    _check_fits(skeleton, entries, path, arguments["name"])
    del skeleton
    model = build_model(**arguments, device="cpu")
    values, indices, dense = payload["values"], payload["indices"], payload["dense"]
    state = {}
    for name, shape, kind, start, count in entries:
        if kind == "sparse":
            flat = torch.zeros(math.prod(shape), dtype=values.dtype)
            flat[indices[start:start + count].long()] = values[start:start + count]
            state[name] = flat.view(shape)
        else:
            state[name] = dense[start:start + count].view(shape)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or any(not key.endswith("num_batches_tracked") for key in missing):
        raise CheckpointError(f"{path} does not fit the model it names: missing {missing}, unexpected {unexpected}")
    return model.to(device).eval()


#: How many tensor elements a sparse checkpoint may declare per number it stores (its non-zero
#: values plus its dense values), before anything is allocated: 10**4 is a whole model at 99.99%
#: zeros, ten times the sparsity of the sparsest runs (99.9%), and the dense parameters (biases,
#: BatchNorm) count as stored, so a real model loads even with every pruned weight zero. A file
#: of N numbers thus rebuilds at most 10**4 (N + 1) float32 values (40 KB per stored number), or
#: :data:`MIN_ELEMENTS_ALLOWED`, whichever is more; a hostile file that declares a 10**12-element
#: weight beside three stored numbers is refused before any memory is taken.
MAX_ELEMENTS_PER_STORED = 10**4
#: The declared elements always allowed (4 MiB of float32), for tiny models with everything pruned.
MIN_ELEMENTS_ALLOWED = 2**20

#: Modules a model may register per tensor of its layout while it is built. The zoo's models
#: register at most 1.7 per state_dict tensor (parameter-free neurons, pooling and containers
#: included; ResNets under 1); 10 leaves room for other architectures.
MODULES_PER_TENSOR = 10

#: The tensors of the payload and the dtypes each may have.
_TENSOR_DTYPES = {"values": (torch.float32,), "indices": (torch.int32, torch.int64), "dense": (torch.float32,)}


def _check_payload(payload: dict, path) -> list[tuple[str, tuple[int, ...], str, int, int]]:
    """The layout of an ``snn-stp sparse 1`` payload as ``(name, shape, kind, start, count)``
    tuples, once every field is consistent; else a :class:`CheckpointError` saying what is wrong.

    Checked, with no allocation beyond the file's own size: the keys; ``values``/``dense`` are
    contiguous 1-D float32, ``indices`` contiguous 1-D int32/int64 with one index per value (a
    contiguous tensor holds no more elements than the bytes the file stored for it; a stride-0
    view could claim any number); each layout entry's name, shape (non-negative ints), kind, and
    its ``start``/``count`` continuing where the previous entry of its kind ended, the counts
    adding up to the stored tensors; a dense entry holds exactly its shape's elements, a sparse one
    at most that many, with positions in ``[0, elements)`` and strictly ascending (no repeats); and
    the declared elements of all entries within :data:`MAX_ELEMENTS_PER_STORED` per stored number.
    """
    missing = [key for key in ("model", "layout", *_TENSOR_DTYPES) if key not in payload]
    if missing:
        raise _invalid(path, f"it has no {', '.join(map(repr, missing))}")
    arguments = payload["model"]
    if (not isinstance(arguments, dict) or not all(isinstance(key, str) for key in arguments)
            or not isinstance(arguments.get("name"), str)):
        raise _invalid(path, "'model' is not the build_model arguments (a mapping of names with a 'name')")
    for key, dtypes in _TENSOR_DTYPES.items():
        tensor = payload[key]
        if not isinstance(tensor, torch.Tensor):
            raise _invalid(path, f"{key!r} is a {type(tensor).__name__}, not a tensor")
        allowed = " or ".join(_dtype_name(d) for d in dtypes)
        if tensor.layout != torch.strided:
            raise _invalid(path, f"{key!r} is a {str(tensor.layout).removeprefix('torch.')} tensor, not a plain 1-D "
                                 f"{allowed} one")
        if tensor.dtype not in dtypes:
            raise _invalid(path, f"{key!r} is {_dtype_name(tensor.dtype)}, not {allowed}")
        if tensor.dim() != 1:
            raise _invalid(path, f"{key!r} has shape {tuple(tensor.shape)}, not one dimension")
        if not tensor.is_contiguous():
            # A stride-0 view of one stored number could claim any length.
            raise _invalid(path, f"{key!r} is a view of {tensor.numel():,} numbers with stride {tensor.stride()[0]}, "
                                 "not a contiguous tensor")
    values, indices, dense = payload["values"], payload["indices"], payload["dense"]
    if values.numel() != indices.numel():
        raise _invalid(path, f"'values' holds {values.numel():,} numbers but 'indices' {indices.numel():,} "
                             "(one position per value)")
    layout = payload["layout"]
    if not isinstance(layout, (list, tuple)):
        raise _invalid(path, f"'layout' is a {type(layout).__name__}, not a list of entries")

    entries, names = [], set()
    ends = {"sparse": 0, "dense": 0}
    stored = {"sparse": values.numel(), "dense": dense.numel()}
    declared = 0
    for number, entry in enumerate(layout):
        if not isinstance(entry, (list, tuple)) or len(entry) != 5:
            raise _invalid(path, f"layout entry {number} is not (name, shape, kind, start, count)")
        name, shape, kind, start, count = entry
        if not isinstance(name, str) or not name:
            raise _invalid(path, f"layout entry {number} has no tensor name")
        where = f"tensor {_quoted(name)}"
        if name in names:
            raise _invalid(path, f"{where} appears twice in the layout")
        names.add(name)
        if not isinstance(shape, (list, tuple)) or not all(_is_count(size) for size in shape):
            raise _invalid(path, f"{where} has shape {_quoted(shape)}; a shape is a list of integers >= 0")
        if kind not in ends:
            raise _invalid(path, f"{where} has kind {_quoted(kind)}; valid: 'sparse', 'dense'")
        if not _is_count(start) or not _is_count(count):
            raise _invalid(path, f"{where} has start {_quoted(start)} and count {_quoted(count)}; both are "
                                 "integers >= 0")
        shape = tuple(shape)
        elements = math.prod(shape)
        stored_as = "values" if kind == "sparse" else "dense"
        if start != ends[kind]:
            raise _invalid(path, f"{where} starts at {start:,} in {stored_as!r}, not at {ends[kind]:,} where the "
                                 f"previous {kind} tensor ended (tensors are stored one after the other)")
        if start + count > stored[kind]:
            raise _invalid(path, f"{where} needs {stored_as!r}[{start:,}:{start + count:,}], but {stored_as!r} holds "
                                 f"{stored[kind]:,} numbers")
        if kind == "dense" and count != elements:
            raise _invalid(path, f"{where} of shape {shape} needs {elements:,} values, the layout gives {count:,}")
        if kind == "sparse" and count > elements:
            raise _invalid(path, f"{where} of shape {shape} ({elements:,} elements) has {count:,} non-zeros")
        ends[kind] = start + count
        declared += elements
        entries.append((name, shape, kind, start, count))
    for kind, stored_as in (("sparse", "values"), ("dense", "dense")):
        if ends[kind] != stored[kind]:
            raise _invalid(path, f"the layout's {kind} tensors use {ends[kind]:,} of the {stored[kind]:,} numbers in "
                                 f"{stored_as!r}")
    allowed = _elements_allowed(values.numel() + dense.numel())
    if declared > allowed:
        name, shape, *_ = max(entries, key=lambda e: math.prod(e[1]))
        raise _invalid(path, f"its tensors declare {declared:,} elements ({declared * 4 / 2**30:,.1f} GiB as float32; "
                             f"the largest, {_quoted(name)}, has shape {shape}), more than the {allowed:,} that "
                             f"{values.numel() + dense.numel():,} stored numbers can describe (at most "
                             f"{MAX_ELEMENTS_PER_STORED:,} per stored number, 99.99% zeros)")
    for name, shape, kind, start, count in entries:
        if kind != "sparse" or count == 0:
            continue
        positions = indices[start:start + count]  # a view: nothing allocated beyond these O(count) checks
        elements = math.prod(shape)
        low, high = int(positions.min()), int(positions.max())
        if low < 0:
            at = int((positions < 0).nonzero()[0])
            raise _invalid(path, f"tensor {_quoted(name)} has the negative index {low:,} (its non-zero {at:,})")
        if high >= elements:
            at = int((positions >= elements).nonzero()[0])
            raise _invalid(path, f"tensor {_quoted(name)} has index {high:,} (its non-zero {at:,}), outside its "
                                 f"{elements:,} elements (shape {shape})")
        steps = positions[1:] <= positions[:-1]
        if bool(steps.any()):
            at = int(steps.nonzero()[0]) + 1
            raise _invalid(path, f"tensor {_quoted(name)} has index {int(positions[at]):,} after "
                                 f"{int(positions[at - 1]):,} (its non-zero {at:,}): positions must be strictly "
                                 "ascending, each element stored once")
    return entries


def _check_fits(skeleton: nn.Module, entries: list, path, model_name: str) -> None:
    """``skeleton`` (the named model on the meta device) has exactly the layout's tensors and shapes,
    and no more elements in all than the layout was allowed to declare."""
    shapes = {name: tuple(tensor.shape) for name, tensor in skeleton.state_dict().items()
              if not name.endswith("num_batches_tracked")}
    layout = {name: shape for name, shape, *_ in entries}
    missing = [name for name in shapes if name not in layout]
    unexpected = [name for name in layout if name not in shapes]
    if missing or unexpected:
        raise _invalid(path, f"model {_quoted(model_name)} does not fit the layout: missing "
                             f"{_quoted(missing)}, unexpected {_quoted(unexpected)}")
    for name, shape in layout.items():
        if shapes[name] != shape:
            raise _invalid(path, f"tensor {_quoted(name)} has shape {shape} in the file but {shapes[name]} in "
                                 f"model {_quoted(model_name)}")
    # Non-persistent buffers are outside the state_dict: bound them too.
    total = sum(t.numel() for t in (*skeleton.parameters(), *skeleton.buffers()))
    stored = sum(count for *_, count in entries)
    if total > _elements_allowed(stored):
        raise _invalid(path, f"model {_quoted(model_name)} holds {total:,} elements, more than the "
                             f"{_elements_allowed(stored):,} its {stored:,} stored numbers can describe")


class _TooManyModules(Exception):
    pass


@contextmanager
def _module_budget(limit: int) -> Iterator[None]:
    """Raise :class:`_TooManyModules` once this thread registers more than ``limit`` submodules
    (torch's global module registration hook, removed on exit)."""
    thread, registered = threading.get_ident(), 0

    def count(module: nn.Module, name: str, submodule: nn.Module | None) -> None:
        nonlocal registered
        if threading.get_ident() == thread:
            registered += 1
            if registered > limit:
                raise _TooManyModules(registered)

    handle = register_module_module_registration_hook(count)
    try:
        yield
    finally:
        handle.remove()


def _elements_allowed(stored: int) -> int:
    """The tensor elements a file of ``stored`` numbers may declare (see :data:`MAX_ELEMENTS_PER_STORED`)."""
    return max(MAX_ELEMENTS_PER_STORED * (stored + 1), MIN_ELEMENTS_ALLOWED)


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _invalid(path, problem: str):
    from ..errors import CheckpointError
    return CheckpointError(f"{path} is not a valid sparse checkpoint: {problem}")


def _is_count(value) -> bool:
    """A non-negative Python int (not a bool, a float or a tensor)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _quoted(value, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters: names come from the file and may be hostile
    (megabytes long, holding newlines); repr keeps the message on one line."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _one_line(error: Exception) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 300 else text[:297] + "..."


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
