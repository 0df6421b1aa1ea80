"""Run a pruned model's layers through torch's sparse kernels (CPU inference).

A baked model still multiplies by its zeros. :func:`to_sparse_inference` replaces each Linear and
Conv2d whose weight is at least ``min_sparsity`` zeros by a module that keeps only the non-zeros
(CSR) and multiplies with ``torch.sparse.mm``: a Linear directly, a convolution as a sparse
matrix product over the unfolded input (im2col). Given an example input, it keeps a layer dense
where the sparse product measured slower on this machine. Outputs equal the dense model's within float
rounding (the sums run in another order). Time it with ``experiments/bench_sparse_inference.py``:
whether this is faster depends on sparsity, layer shape and batch (docs/benchmarks.md).
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn
from torch.nn import functional as F

#: The unfolded input of a convolution is processed in chunks of at most this many values
#: (float32: 256 MB), so that im2col does not multiply the memory of a large batch.
UNFOLD_CHUNK_VALUES = 64 * 2**20


class SparseLinear(nn.Module):
    """``y = x W^T + b`` with ``W`` stored as CSR. Input ``[..., in_features]``."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("weight", _csr(linear.weight.detach()))
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        # W [out, in] @ x^T [in, N], turned back to [N, out] in memory order: the layers that follow
        # (BatchNorm, the neurons) run several times slower on a transposed view.
        out = torch.sparse.mm(self.weight, flat.t()).t().contiguous()
        if self.bias is not None:
            out += self.bias
        return out.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        nnz = self.weight.values().numel()
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"nonzeros={nnz} ({1 - nnz / (self.in_features * self.out_features):.2%} sparse)")


def runs_sparse(layer: nn.Module) -> bool:
    """Whether :class:`SparseLinear` or :class:`SparseConv2d` can stand in for ``layer``."""
    if isinstance(layer, nn.Linear):
        return True
    return (isinstance(layer, nn.Conv2d) and layer.groups == 1 and layer.padding_mode == "zeros"
            and not isinstance(layer.padding, str))


class SparseConv2d(nn.Module):
    """A Conv2d as ``W_csr [out, in * kh * kw] @ unfold(x)``. Input ``[N, C, H, W]``."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        if not runs_sparse(conv):
            raise ValueError("sparse inference runs ungrouped, zero-padded convolutions with numeric padding")
        self.out_channels, self.kernel_size = conv.out_channels, conv.kernel_size
        self.stride, self.padding, self.dilation = conv.stride, conv.padding, conv.dilation
        self.register_buffer("weight", _csr(conv.weight.detach().reshape(conv.out_channels, -1)))
        self.register_buffer("bias", None if conv.bias is None else conv.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        kh, kw = self.kernel_size
        out_h = (h + 2 * self.padding[0] - self.dilation[0] * (kh - 1) - 1) // self.stride[0] + 1
        out_w = (w + 2 * self.padding[1] - self.dilation[1] * (kw - 1) - 1) // self.stride[1] + 1
        per_sample = self.weight.shape[1] * out_h * out_w
        chunk = max(1, UNFOLD_CHUNK_VALUES // per_sample)
        outputs = []
        for part in x.split(chunk):
            columns = F.unfold(part, self.kernel_size, self.dilation, self.padding, self.stride)  # [n, K, L]
            columns = columns.transpose(0, 1).reshape(columns.shape[1], -1)  # [K, n * L]
            out = torch.sparse.mm(self.weight, columns)  # [out, n * L]
            outputs.append(out.reshape(self.out_channels, part.shape[0], out_h * out_w).transpose(0, 1))
        out = torch.cat(outputs).reshape(n, self.out_channels, out_h, out_w)
        if self.bias is not None:
            out = out + self.bias.view(1, -1, 1, 1)
        return out

    def extra_repr(self) -> str:
        nnz = self.weight.values().numel()
        total = self.weight.shape[0] * self.weight.shape[1]
        return (f"out_channels={self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"nonzeros={nnz} ({1 - nnz / total:.2%} sparse)")


def to_sparse_inference(model: nn.Module, min_sparsity: float = 0.5, example_input: torch.Tensor | None = None,
                        repeats: int = 7) -> nn.Module:
    """A copy of a baked ``model`` (eval mode) whose Linear and Conv2d layers with at least
    ``min_sparsity`` zero weights run through sparse kernels; the others stay dense.

    With ``example_input`` (a batch as the model will see it), each candidate layer is timed on the
    input it really receives, dense and sparse (median of ``repeats``, on this machine), and made
    sparse only where that is faster: small layers, convolutions and moderate sparsity often are
    not. The copy's ``sparse_inference`` attribute then holds ``{layer: (dense s, sparse s)}``.

    Raises ``ValueError`` if the model still holds pruning parametrizations (bake it first).
    """
    from torch.nn.utils import parametrize

    if any(parametrize.is_parametrized(m) for m in model.modules()):
        raise ValueError("the model still computes its weights through parametrizations; snn_stp.bake(model) first")
    copied = copy.deepcopy(model).eval()
    candidates = {}
    for name, module in copied.named_modules():
        for child_name, child in module.named_children():
            # Depthwise/grouped convolutions (and other layers) stay dense.
            if runs_sparse(child) and (child.weight == 0).float().mean() >= min_sparsity:
                sparse = SparseLinear(child) if isinstance(child, nn.Linear) else SparseConv2d(child)
                candidates[f"{name}.{child_name}" if name else child_name] = (module, child_name, child, sparse)
    timings = _time_layers(copied, candidates, example_input, repeats) if example_input is not None else {}
    for key, (module, child_name, _, sparse) in candidates.items():
        if key not in timings or timings[key][1] < timings[key][0]:
            setattr(module, child_name, sparse)
    if example_input is not None:
        copied.sparse_inference = timings
    return copied


def _time_layers(model: nn.Module, candidates: dict, example_input: torch.Tensor, repeats: int) -> dict:
    """``{layer: (dense seconds, sparse seconds)}`` on the input each layer receives from ``example_input``."""
    import statistics
    import time

    inputs, handles = {}, []

    def capture(key):
        def hook(_module, args) -> None:
            inputs.setdefault(key, args[0].detach().clone())
        return hook

    for key, (_, _, dense, _) in candidates.items():
        handles.append(dense.register_forward_pre_hook(capture(key)))
    try:
        with torch.no_grad():
            model(example_input)
    finally:
        for handle in handles:
            handle.remove()

    def median_time(layer, x):
        times = []
        with torch.no_grad():
            layer(x)
            for _ in range(repeats):
                start = time.perf_counter()
                layer(x)
                times.append(time.perf_counter() - start)
        return statistics.median(times)

    return {key: (median_time(candidates[key][2], x), median_time(candidates[key][3], x)) for key, x in inputs.items()}


def _csr(weight: torch.Tensor) -> torch.Tensor:
    with warnings.catch_warnings():  # "sparse CSR support is in beta": the operations used here are not
        warnings.simplefilter("ignore", UserWarning)
        return weight.to_sparse_csr()
