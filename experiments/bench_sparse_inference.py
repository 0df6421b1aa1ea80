"""CPU inference through torch's sparse kernels against the dense baked model, in one process.

    python experiments/bench_sparse_inference.py [--levels 90,95,98,99] [--repeats 5] [--rounds 5]
        [--models mlp,mlp_linear,stds_fc,stds,resnet50] [--quick]

For each model and sparsity: every Linear and Conv2d weight is pruned to exactly that sparsity by
magnitude (uniform per layer), the model is baked, and ``snn_stp.export.to_sparse_inference``
gives two sparse copies: every layer sparse, and "tuned" (given the batch, each layer made sparse
only where its sparse product measured faster). Forward passes (no gradient) of the three are
timed alternately (ABBA, median of the passes), and the outputs compared. That is one round; each
row is ``--rounds`` rounds, and prints the median over the rounds with the smallest and largest in
brackets. Printed per row: dense ms, sparse ms, dense / sparse (the speed-up), tuned speed-up (with
how many layers it made sparse), for models made only of Linear layers the **CSR kernel limit**
(the bare kernels on each layer's real input: dense ``mm`` time / ``torch.sparse.mm`` time,
summed over the layers; what the sparse path would reach if nothing but the products counted) and
the share of it the sparse path reaches, the largest output difference (all-sparse copy) and, for
SNNs, the mean firing rate over every spiking layer (a silent network would agree trivially) and
the fraction of all spikes that differ (a rounding difference right at a threshold can flip one).

Models (as the issue names them): the spiking MLP (the default job's network, 64-256-256-10, T=4,
batch 256) and its Linear layers alone (how much of its time sparsity can touch), the STDS CIFAR net (width 256, T=8, batch 16) and, separately, its two fully connected
layers alone (91% of its weights; the linear-heavy part), and torchvision's ResNet-50 at batch 1
and 32. ``--quick`` runs the STDS net at width 64 and ResNet-50 at batch 8 only (a smoke run).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch
from torch import nn

from snn_stp.export import to_sparse_inference
from snn_stp.models import build_model


def prune_uniformly(model: nn.Module, sparsity: float) -> None:
    """Zero the ``sparsity`` smallest-magnitude weights of every Linear and Conv2d (in place) and
    scale the survivors so that each layer's output keeps its spread (as training a pruned network
    does): without that, a spiking network pruned at random falls silent and the comparison of
    outputs would compare zeros."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                w = module.weight
                k = int(round(sparsity * w.numel()))
                if k:
                    spread = w.norm()
                    cut = w.abs().flatten().kthvalue(k).values
                    w[w.abs() <= cut] = 0
                    w.mul_(spread / w.norm())


def forward_time(model: nn.Module, x: torch.Tensor) -> float:
    from spikingjelly.activation_based import functional

    start = time.perf_counter()
    with torch.no_grad():
        functional.reset_net(model)
        model(x)
    return time.perf_counter() - start


def calibrate_batch_norm(model: nn.Module, x: torch.Tensor) -> None:
    """Set every BatchNorm's running statistics to those of ``x`` and leave the model in eval mode.
    With a fresh model's statistics (mean 0, variance 1) the spiking nets stay below threshold; a
    trained network's BatchNorm normalizes its layers' inputs, as this does."""
    from spikingjelly.activation_based import functional

    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average: after one batch, that batch's statistics
    model.train()
    with torch.no_grad():
        functional.reset_net(model)
        model(x)
    model.eval()


def run_recorded(model: nn.Module, x: torch.Tensor):
    """The model's output and every spiking layer's spikes."""
    from spikingjelly.activation_based import functional, monitor, neuron

    spikes = monitor.OutputMonitor(model, neuron.BaseNode)
    with torch.no_grad():
        functional.reset_net(model)
        out = model(x)
    records = list(spikes.records)
    spikes.remove_hooks()
    return out, records


def linear_inputs(model: nn.Module, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(weight, input as [rows, in])`` of every Linear of ``model`` on ``x``."""
    from spikingjelly.activation_based import functional

    captured, handles = [], []
    for module in model.modules():
        if isinstance(module, nn.Linear):
            handles.append(module.register_forward_hook(
                lambda m, inputs, _out: captured.append((m.weight.detach(), inputs[0].reshape(-1, m.in_features)))))
    with torch.no_grad():
        functional.reset_net(model)
        model(x)
    for handle in handles:
        handle.remove()
    return captured


def kernel_times(layers: list[tuple[torch.Tensor, torch.Tensor]], repeats: int) -> tuple[float, float]:
    """Median seconds of the bare products over ``layers``: dense ``mm(x, W^T)`` and CSR
    ``sparse.mm(W, x^T)`` (alternated), each summed over the layers."""
    csr = [(w.to_sparse_csr(), x.t().contiguous()) for w, x in layers]
    dense_t, sparse_t = [], []
    for _ in range(repeats):
        for order in ((0, 1), (1, 0)):
            for which in order:
                start = time.perf_counter()
                with torch.no_grad():
                    for (w, x), (w_csr, x_t) in zip(layers, csr):
                        torch.mm(x, w.t()) if which == 0 else torch.sparse.mm(w_csr, x_t)
                (dense_t if which == 0 else sparse_t).append(time.perf_counter() - start)
    return statistics.median(dense_t), statistics.median(sparse_t)


def spread(values: list[float], digits: int = 2) -> str:
    """``median (min-max)`` of ``values``."""
    return f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def compare(name: str, build, x: torch.Tensor, levels, repeats: int, rounds: int) -> list[str]:
    rows = []
    for level in levels:
        torch.manual_seed(0)
        dense = build()
        prune_uniformly(dense, level)
        calibrate_batch_norm(dense, x)
        sparse = to_sparse_inference(dense, min_sparsity=0.5)
        tuned = to_sparse_inference(dense, min_sparsity=0.5, example_input=x)
        models = {"dense": dense, "sparse": sparse, "tuned": tuned}
        only_linear = all(not isinstance(m, nn.Conv2d) for m in dense.modules())
        layers = linear_inputs(dense, x) if only_linear else []
        for model in models.values():  # warm-up
            forward_time(model, x)
        per_round = {key: [] for key in ("dense", "sparse", "tuned", "speedup", "tuned_speedup", "limit", "reached")}
        for _ in range(rounds):
            times = {kind: [] for kind in models}
            for _ in range(repeats):
                for kind in ("dense", "sparse", "tuned", "tuned", "sparse", "dense"):
                    times[kind].append(forward_time(models[kind], x))
            d, s, t = (statistics.median(times[kind]) for kind in ("dense", "sparse", "tuned"))
            per_round["dense"].append(d * 1e3)
            per_round["sparse"].append(s * 1e3)
            per_round["tuned"].append(t * 1e3)
            per_round["speedup"].append(d / s)
            per_round["tuned_speedup"].append(d / t)
            if layers:
                kernel_dense, kernel_sparse = kernel_times(layers, repeats)
                per_round["limit"].append(kernel_dense / kernel_sparse)
                per_round["reached"].append((d / s) / (kernel_dense / kernel_sparse))
        (a, spikes_a), (b, spikes_b) = run_recorded(dense, x), run_recorded(sparse, x)
        difference = (a - b).abs().max().item()
        if spikes_a:  # every spiking layer's spikes, not only the output: a silent network agrees trivially
            total = sum(r.numel() for r in spikes_a)
            rate = f"{sum(float(r.sum()) for r in spikes_a) / total:.3f}"
            flipped = f"{sum(float((r != q).sum()) for r, q in zip(spikes_a, spikes_b)) / total:.1e}"
        else:
            rate = flipped = "-"
        kept = sum(1 for dense_s, sparse_s in tuned.sparse_inference.values() if sparse_s < dense_s)
        limit = f"{spread(per_round['limit'])}x | {spread([100 * r for r in per_round['reached']], 0)}%" \
            if layers else "- | -"
        rows.append(f"| {name} | {level:.0%} | {spread(per_round['dense'])} | {spread(per_round['sparse'])} | "
                    f"{spread(per_round['speedup'])}x | {spread(per_round['tuned_speedup'])}x "
                    f"({kept}/{len(tuned.sparse_inference)}) | {limit} | {difference:.1e} | {rate} | {flipped} |")
        print(rows[-1], flush=True)
    return rows


#: The rows ``--models`` chooses from.
MODELS = ("mlp", "mlp_linear", "stds_fc", "stds", "resnet50")


class FullyConnectedPart(nn.Module):
    """The STDS net's two fully connected layers with their neurons: ``[T, B, 16384] -> [T, B, 100]``."""

    def __init__(self, width: int):
        super().__init__()
        net = build_model("stds_cifarnet", width=width, time_steps=8)
        linears = [m for m in net.body if any(isinstance(c, nn.Linear) for c in m.modules())][:2]
        neurons = [m for m in net.body if type(m).__name__.endswith("Node")][-2:]
        self.layers = nn.Sequential(linears[0], neurons[0], linears[1], neurons[1])

    def forward(self, x):
        return self.layers(x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", default="90,95,98,99", help="sparsities in %% (default 90,95,98,99)")
    parser.add_argument("--repeats", type=int, default=5,
                        help="ABBA rounds per row of the small models (default 5); the STDS net and ResNet-50 "
                             "get a third of them (at least 1)")
    parser.add_argument("--rounds", type=int, default=5,
                        help="independent rounds per row (default 5): the median and the range over them are printed")
    parser.add_argument("--models", default=",".join(MODELS),
                        help=f"which rows, comma-separated (default all: {','.join(MODELS)})")
    parser.add_argument("--quick", action="store_true", help="smaller STDS width and ResNet batch (smoke run)")
    args = parser.parse_args()
    chosen = args.models.split(",")
    unknown = sorted(set(chosen) - set(MODELS))
    if unknown:
        parser.error(f"unknown model(s) {unknown}; valid: {', '.join(MODELS)}")
    levels = [float(v) / 100 for v in args.levels.split(",")]
    torch.set_num_threads(os.cpu_count() or 1)
    heavy = max(1, args.repeats // 3)
    print(f"CPU: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch "
          f"{torch.__version__}; each round the median of {args.repeats * 2} forward passes ({heavy * 2} for the STDS "
          f"net and ResNet-50), ABBA order; {args.rounds} rounds: median (min-max)\n")
    print("| model | sparsity | dense ms | sparse ms | speed-up (dense / sparse) | tuned speed-up (layers sparse) | "
          "CSR kernel limit | share of the limit reached | max output difference | firing rate | spikes differing |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    torch.manual_seed(0)
    width = 64 if args.quick else 256
    if "mlp" in chosen:
        compare("spiking MLP 64-256-256-10, T=4, batch 256",
                lambda: build_model("spiking_mlp", in_channels=64, time_steps=4), torch.rand(256, 64) * 4,
                levels, args.repeats, args.rounds)
    if "mlp_linear" in chosen:
        compare("the spiking MLP's 3 Linear layers alone, 1024 rows (T x batch)",
                lambda: nn.Sequential(*[m for m in build_model("spiking_mlp", in_channels=64).modules()
                                        if isinstance(m, nn.Linear)]), torch.rand(1024, 64), levels, args.repeats,
                args.rounds)
    if "stds_fc" in chosen:
        compare(f"STDS net fc layers ({width * 64}-2048-100), T=8, batch 16", lambda: FullyConnectedPart(width),
                (torch.rand(8, 16, width * 64) < 0.1).float(), levels, args.repeats, args.rounds)
    if "stds" in chosen:
        compare(f"STDS CIFAR net width {width}, T=8, batch 16",
                lambda: build_model("stds_cifarnet", width=width, time_steps=8), torch.rand(16, 3, 32, 32), levels,
                heavy, args.rounds)
    if "resnet50" in chosen:
        for batch in ((8,) if args.quick else (1, 32)):
            compare(f"ResNet-50 (ANN), batch {batch}", lambda: build_model("resnet50"),
                    torch.randn(batch, 3, 224, 224), levels, heavy, args.rounds)


if __name__ == "__main__":
    main()
