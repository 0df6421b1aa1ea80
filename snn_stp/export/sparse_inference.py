"""Run a pruned model's layers through torch's sparse kernels (CPU inference).

A baked model still multiplies by its zeros. :func:`to_sparse_inference` replaces each Linear and
Conv2d whose weight is at least ``min_sparsity`` zeros by a module that keeps only the non-zeros
(CSR) and multiplies with ``torch.sparse.mm``: a Linear directly, a convolution as a sparse
matrix product over the unfolded input (im2col). Outputs equal the dense model's within float
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
        bias = linear.bias.detach() if linear.bias is not None else torch.zeros(linear.out_features)
        self.register_buffer("bias_column", bias.clone().view(-1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        # W [out, in] @ x^T [in, N], the bias added in the same call: the fastest form measured here.
        out = torch.addmm(self.bias_column, self.weight, flat.t()).t()  # [N, out]
        return out.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        nnz = self.weight.values().numel()
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"nonzeros={nnz} ({1 - nnz / (self.in_features * self.out_features):.2%} sparse)")


class SparseConv2d(nn.Module):
    """A Conv2d as ``W_csr [out, in * kh * kw] @ unfold(x)``. Input ``[N, C, H, W]``."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        if conv.groups != 1 or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
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


def to_sparse_inference(model: nn.Module, min_sparsity: float = 0.5) -> nn.Module:
    """A copy of a baked ``model`` (eval mode) whose Linear and Conv2d layers with at least
    ``min_sparsity`` zero weights run through sparse kernels; the others stay dense.

    Raises ``ValueError`` if the model still holds pruning parametrizations (bake it first).
    """
    from torch.nn.utils import parametrize

    if any(parametrize.is_parametrized(m) for m in model.modules()):
        raise ValueError("the model still computes its weights through parametrizations; snn_stp.bake(model) first")
    copied = copy.deepcopy(model).eval()
    replacements = []
    for name, module in copied.named_modules():
        for child_name, child in module.named_children():
            if isinstance(child, (nn.Linear, nn.Conv2d)) and (child.weight == 0).float().mean() >= min_sparsity:
                if isinstance(child, nn.Conv2d) and (child.groups != 1 or isinstance(child.padding, str)):
                    continue  # depthwise/grouped convolutions stay dense
                replacements.append((module, child_name, SparseLinear(child) if isinstance(child, nn.Linear)
                                     else SparseConv2d(child)))
    for module, child_name, sparse in replacements:
        setattr(module, child_name, sparse)
    return copied


def _csr(weight: torch.Tensor) -> torch.Tensor:
    with warnings.catch_warnings():  # "sparse CSR support is in beta": the operations used here are not
        warnings.simplefilter("ignore", UserWarning)
        return weight.to_sparse_csr()
