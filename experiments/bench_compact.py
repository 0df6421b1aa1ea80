"""Step time of a compact model (zero channels removed) against the masked dense model.

For the digits_dvs network (``nmnist_net``: 32-channel convs, fc 512, T = 8, 17x17 event frames) and
its ANN twin, zeroes a fraction s of the output channels of every hidden layer (their BatchNorm
shift made negative, so that compaction may remove them), compacts a copy (checked: the same
predictions), and times an inference step (forward, no gradient) and a training step (forward,
backward, SGD step) of both in one process, alternating them (ABBA) so machine drift hits both
alike. Prints medians over the repeats with their min-max spread, the ratio compact / dense, and
the ideal ratio 1 - s (the layer widths shrink by 1 - s; convs between two compacted layers shrink
by (1 - s)^2, so some layers can beat it).

    python experiments/bench_compact.py [--network nmnist_net|stds_cifarnet] [--width 128] [--sparsities 0.5,0.75]
        [--repeats 9] [--batch 32] [--device cpu]

``--network stds_cifarnet`` times the STDS CIFAR net (``--width`` channels, fc 2048, 32x32 images,
direct encoding, T = 8 for the SNN) instead: a network whose step is dominated by its convolutions,
where the fixed per-layer costs (neurons' state, BatchNorm, framework overhead) weigh less.

Goal (issue 23): compact / dense within 1 / 0.8 of the ideal, i.e. at least 0.8 of the ideal speed-up.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from torch import nn

from snn_stp.export.compact import compact
from snn_stp.models import build_model

#: One sample of each network's input (no time or batch axis).
SAMPLES = {"nmnist_net": (2, 17, 17), "stds_cifarnet": (3, 32, 32)}


def network(name: str, spiking: bool, width: int) -> nn.Module:
    steps = {"time_steps": 8} if spiking else {}
    if name == "stds_cifarnet":
        return build_model(name, num_classes=10, spiking=spiking, width=width, **steps)
    return build_model(name, num_classes=10, in_channels=2, spiking=spiking, channels=32, hidden=512, image_size=17,
                       **steps)


@torch.no_grad()
def zero_channels(model: nn.Module, fraction: float) -> None:
    """Zero the first ``fraction`` of the output channels of every weight layer but the last, and
    make their BatchNorm constant negative (a channel that cannot fire: removable)."""
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))][:-1]
    norms = {id(layer): None for layer in layers}
    modules = list(model.modules())
    for index, module in enumerate(modules):
        if id(module) in norms:
            follower = next((m for m in modules[index + 1:] if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d))
                             or isinstance(m, (nn.Conv2d, nn.Linear))), None)
            norms[id(module)] = follower if isinstance(follower, (nn.BatchNorm1d, nn.BatchNorm2d)) else None
    for layer in layers:
        count = int(fraction * layer.weight.shape[0])
        layer.weight[:count] = 0
        if layer.bias is not None:
            layer.bias[:count] = -1.0
        norm = norms[id(layer)]
        if norm is not None:
            norm.bias[:count] = -1.0
            norm.running_mean[:count] = 0.0


def inputs(model: nn.Module, sample: tuple[int, ...], batch: int, device) -> torch.Tensor:
    """Event frames (``[T, B, ...]`` for the SNN) or images (``[B, ...]``, the SNN repeats them)."""
    if getattr(model, "input_kind", "static") == "static":
        return torch.rand((batch, *sample), device=device)
    shape = (8, batch, *sample) if model.spiking else (batch, *sample)
    return (torch.rand(shape, device=device) < 0.2).float()


def step_time(model: nn.Module, x: torch.Tensor, train: bool) -> float:
    labels = torch.zeros(x.shape[1] if x.dim() == 5 else x.shape[0], dtype=torch.long, device=x.device)  # events: [T, B, ...]
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-6) if train else None
    model.train(train)
    start = time.perf_counter()
    if train:
        loss = nn.functional.cross_entropy(model(x), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    else:
        with torch.no_grad():
            model(x)
    if x.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def measure(dense: nn.Module, small: nn.Module, x: torch.Tensor, train: bool, repeats: int) -> tuple[list, list]:
    for model in (dense, small):  # warm-up
        step_time(model, x, train)
    times = {id(dense): [], id(small): []}
    for _ in range(repeats):
        for model in (dense, small, small, dense):  # ABBA
            times[id(model)].append(step_time(model, x, train))
    return times[id(dense)], times[id(small)]


def summary(values: list[float]) -> str:
    return f"{1000 * statistics.median(values):.1f} ms ({1000 * min(values):.1f}-{1000 * max(values):.1f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--network", default="nmnist_net", choices=sorted(SAMPLES))
    parser.add_argument("--width", type=int, default=128, help="stds_cifarnet: its channels (default 128)")
    parser.add_argument("--sparsities", default="0.5,0.75")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    sample = SAMPLES[args.network]
    described = "nmnist_net (32 ch, fc 512, 17x17 events" if args.network == "nmnist_net" else \
        f"stds_cifarnet ({args.width} ch, fc 2048, 32x32 images"
    print(f"{described}, T = 8 for the SNN), batch {args.batch}, {name}, torch {torch.__version__}")
    for spiking in (True, False):
        for fraction in (float(s) for s in args.sparsities.split(",")):
            torch.manual_seed(0)
            dense = network(args.network, spiking, args.width).eval()
            zero_channels(dense, fraction)
            small = copy.deepcopy(dense)
            plan = compact(small, sample)
            dense, small = dense.to(device), small.to(device)
            x = inputs(dense, sample, args.batch, device)
            with torch.no_grad():
                same = torch.equal(dense.eval()(x).argmax(-1), small.eval()(x).argmax(-1))
            print(f"{'SNN' if spiking else 'ANN'} channel sparsity {fraction:.0%}: {plan.removed} channels removed, "
                  f"parameters {sum(p.numel() for p in small.parameters()):,} of "
                  f"{sum(p.numel() for p in dense.parameters()):,}, same predictions: {same}")
            for train in (False, True):
                a, b = measure(dense, small, x, train, args.repeats)
                ratio = statistics.median(b) / statistics.median(a)
                ideal = 1 - fraction
                print(f"  {'training' if train else 'inference'}: dense {summary(a)}, compact {summary(b)}; "
                      f"compact / dense {ratio:.2f} (ideal {ideal:.2f}: {ideal / ratio:.0%} of the ideal speed-up)")


if __name__ == "__main__":
    main()
