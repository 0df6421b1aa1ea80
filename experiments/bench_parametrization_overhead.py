"""Training-step overhead of the soft threshold parametrization.

For each network, times a full training step (forward, backward, SGD step, threshold step) of a
sparsified copy and of the dense original, in one process, alternating the two (ABBA order) so
that drift in machine speed hits both alike; prints the medians and the ratio sparsified / dense.
Target: ratio <= 1.05.

    python experiments/bench_parametrization_overhead.py [--repeats 15] [--batch 128] [--device cpu]
                                                         [--system-allocator]

By default it measures under the conditions ``snn-stp train`` runs with: glibc told to keep freed
memory (``snn_stp.train.allocator``). With glibc's defaults (``--system-allocator``) freed memory
is returned to the system and page-faulted back in; the sparsified step allocates its effective
weights (for ResNet-18, 44 MB per step), which shifts when that happens and dominates the CPU
ratio. Report both.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torchvision
from spikingjelly.activation_based import functional, layer, neuron, surrogate
from torch import nn

import snn_stp
from snn_stp.train.allocator import use_steady_allocator


def spiking_cnn() -> nn.Module:
    """A small multi-step convolutional SNN on [T, B, 3, 32, 32] (two 64-channel convs)."""
    def lif():
        return neuron.LIFNode(tau=2.0, detach_reset=True, surrogate_function=surrogate.ATan())
    net = nn.Sequential(
        layer.Conv2d(3, 64, 3, padding=1, bias=False), layer.BatchNorm2d(64), lif(), layer.MaxPool2d(2),
        layer.Conv2d(64, 64, 3, padding=1, bias=False), layer.BatchNorm2d(64), lif(), layer.MaxPool2d(2),
        layer.Flatten(), layer.Linear(64 * 8 * 8, 10))
    functional.set_step_mode(net, "m")
    return net


def make_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, spiking: bool, sparsified: bool):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    threshold = None
    if sparsified:
        threshold = snn_stp.build_threshold_scheduler("lats", model, optimizer, l1=1e-3)

    def step():
        optimizer.zero_grad(set_to_none=True)
        out = model(x)
        if spiking:
            out = out.mean(0)
        nn.functional.cross_entropy(out, y).backward()
        optimizer.step()
        if threshold is not None:
            threshold.step()
        if spiking:
            functional.reset_net(model)
    return step


def timed(step, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def compare(name: str, dense: nn.Module, x: torch.Tensor, y: torch.Tensor, spiking: bool, repeats: int,
            device: torch.device) -> float:
    sparse = copy.deepcopy(dense)
    snn_stp.sparsify(sparse, initial_threshold=0.0)
    steps = {"dense": make_step(dense, x, y, spiking, False), "sparsified": make_step(sparse, x, y, spiking, True)}
    for step in steps.values():  # warm-up (allocator, autograd graph caches)
        for _ in range(2):
            step()
    times = {k: [] for k in steps}
    order = list(steps)
    for _ in range(repeats):
        for key in order:
            times[key].append(timed(steps[key], device))
        order.reverse()  # ABBA: neither variant always runs right after the other
    dense_ms = statistics.median(times["dense"]) * 1e3
    sparse_ms = statistics.median(times["sparsified"]) * 1e3
    ratio = sparse_ms / dense_ms
    print(f"{name:<38} dense {dense_ms:8.1f} ms   sparsified {sparse_ms:8.1f} ms   ratio {ratio:.3f}")
    return ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--time-steps", type=int, default=4)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--system-allocator", action="store_true",
                        help="keep glibc's default malloc behaviour instead of snn-stp train's steady allocator")
    args = parser.parse_args()
    steady = not args.system_allocator and use_steady_allocator()
    device = torch.device(args.device)
    torch.manual_seed(0)
    allocator = "steady allocator (as snn-stp train)" if steady else "system allocator defaults"
    print(f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}), "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, {allocator}, median of {args.repeats} steps")
    y = torch.randint(0, 10, (args.batch,), device=device)

    resnet = torchvision.models.resnet18(num_classes=10).to(device)
    x = torch.randn(args.batch, 3, 32, 32, device=device)
    ratios = [compare(f"ResNet-18, 32x32, batch {args.batch}", resnet, x, y, False, args.repeats, device)]

    snn = spiking_cnn().to(device)
    x = torch.rand(args.time_steps, args.batch, 3, 32, 32, device=device)
    ratios.append(compare(f"spiking CNN, T={args.time_steps}, batch {args.batch}", snn, x, y, True,
                          args.repeats, device))
    print(f"worst ratio {max(ratios):.3f} (target <= 1.05)")


if __name__ == "__main__":
    main()
