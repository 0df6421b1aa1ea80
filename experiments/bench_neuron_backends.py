"""Per-step speed of the neuron implementations: multi-step forward + backward.

Times each implementation this machine offers for one neuron layer on ``[T, B, N]`` inputs,
against a plain PyTorch loop over time steps (the same equations, run in the same process), and
checks that it produces the same spikes:

* spikingjelly 0.0.0.0.14 (``pip install "snn-stp[cupy]"``): ``torch`` and, on a GPU with a usable
  CuPy, ``cupy``;
* spikingjelly 2.x: one implementation per process (native ``cuda``, ``triton`` or ``torch`` on a
  GPU, ``torch`` on the CPU); on a GPU each is run in a child process started with
  ``SJ_<NEURON>_CUDA_IMPLEMENTATION`` set.

    python experiments/bench_neuron_backends.py [--device cuda] [--kind lif] [--steps 8] [--batch 32]
                                                [--neurons 16384] [--dtype float32] [--repeats 20]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

import torch

from snn_stp.snn import make_neuron, set_backend, spikingjelly_version
from snn_stp.snn.backends import BackendUnavailableError, is_legacy_spikingjelly
from snn_stp.snn.reference import reference_neuron


def time_step(fn, x: torch.Tensor, repeats: int) -> tuple[float, torch.Tensor]:
    """Median seconds of forward + backward of ``fn`` on ``x``, and its spikes."""
    def once():
        x.grad = None
        out = fn(x)
        out.sum().backward()
        return out
    for _ in range(3):
        once()
    times = []
    for _ in range(repeats):
        if x.is_cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = once()
        if x.is_cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out.detach()


def measure(implementation: str, args) -> None:
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    x = (torch.rand(args.steps, args.batch, args.neurons, device=device, dtype=dtype) * 1.6).requires_grad_()
    cell = torch.nn.Sequential(make_neuron(args.kind)).to(device)
    try:
        choice = set_backend(cell, implementation if implementation != "default" else "auto", device)
    except BackendUnavailableError as error:
        print(f"{implementation:<8} unavailable: {error}")
        return
    from spikingjelly.activation_based import functional

    def run_neuron(inp):
        functional.reset_net(cell)
        return cell(inp)
    ref_s, ref_out = time_step(lambda inp: reference_neuron(inp, args.kind), x, args.repeats)
    s, out = time_step(run_neuron, x, args.repeats)
    flips = (out != ref_out).float().mean().item()
    print(f"{choice.implementation:<8} {s * 1e3:9.3f} ms   plain-torch loop {ref_s * 1e3:9.3f} ms   "
          f"ratio {s / ref_s:6.3f}   spikes differing {flips:.2e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--kind", default="lif", choices=["lif", "if"])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--neurons", type=int, default=16384)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16"])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--only", help=argparse.SUPPRESS)  # child process: one implementation
    args = parser.parse_args()
    if args.only:
        measure(args.only, args)
        return
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"spikingjelly {spikingjelly_version()}, torch {torch.__version__}, {name}; {args.kind} "
          f"[T={args.steps}, B={args.batch}, N={args.neurons}] {args.dtype}, forward + backward, median of {args.repeats}")
    if is_legacy_spikingjelly():
        for implementation in ("torch", "cupy"):
            measure(implementation, args)
    elif device.type != "cuda":
        measure("torch", args)
    else:
        variable = f"SJ_{args.kind.upper()}_CUDA_IMPLEMENTATION"
        for implementation in ("torch", "triton", "cuda"):
            env = {**os.environ, variable: implementation}
            subprocess.run([sys.executable, __file__, *sys.argv[1:], "--only", "default"], env=env, check=False)


if __name__ == "__main__":
    main()
