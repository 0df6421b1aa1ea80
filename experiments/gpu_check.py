"""Every GPU-only check in one command, with a Markdown report naming the card.

    python experiments/gpu_check.py [--out gpu_check.md] [--quick]

Sections (each skipped, with the reason, where this machine cannot run it):

1. Neurons: SpikingJelly's GPU implementations (CuPy under spikingjelly 0.0.0.0.14; native CUDA and
   Triton under 2.x) against the plain PyTorch loop: spikes equal, forward + backward time, at
   T = 4, 8, 32 (``experiments/bench_neuron_backends.py`` in child processes).
2. AMP training steps of ``stds_cifarnet`` and ``sew_resnet18`` on random CIFAR-shaped tensors:
   sparsified / dense step time (same process, ABBA order), peak memory, samples per second.
3. NCCL DDP over every GPU present: a sparsified model trained a few LATS steps under
   DistributedDataParallel; every rank must hold the same threshold and weights.

Meant to finish in well under 15 minutes on one GPU (``--quick``: about a third). On a machine
without CUDA it writes the report with every section marked skipped and exits 0.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

HERE = Path(__file__).resolve().parent


def neuron_section(args) -> list[str]:
    lines = ["## 1. Neurons: GPU implementations against the PyTorch loop", ""]
    if not torch.cuda.is_available():
        return lines + ["Skipped: no CUDA device (torch sees none).", ""]
    lines += ["Forward + backward of one LIF layer, `[T, B=32, N=16384]` float32, median of the repeats. "
              "`ratio` is the implementation's time over the plain PyTorch loop's, in the same process.", "",
              "```"]
    for steps in (4, 8, 32):
        command = [sys.executable, str(HERE / "bench_neuron_backends.py"), "--device", "cuda", "--steps", str(steps),
                   "--repeats", "5" if args.quick else "20"]
        proc = subprocess.run(command, capture_output=True, text=True, timeout=240)
        lines += [f"$ T={steps}"] + proc.stdout.strip().splitlines()
        if proc.returncode:
            lines += [f"(exit {proc.returncode}) " + line for line in proc.stderr.strip().splitlines()[-5:]]
    return lines + ["```", ""]


def _step_time(model, optimizer, scheduler, scaler, x, y, repeats: int) -> float:
    def step():
        with torch.autocast("cuda", dtype=torch.float16):
            loss = nn.functional.cross_entropy(model(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        if scheduler is not None:
            scheduler.step()
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def amp_section(args) -> list[str]:
    import snn_stp
    from snn_stp.models import build_model

    lines = ["## 2. AMP training steps: sparsified against dense", ""]
    if not torch.cuda.is_available():
        return lines + ["Skipped: no CUDA device.", ""]
    batch, repeats = 64, 5 if args.quick else 15
    lines += [f"Random CIFAR-shaped inputs `[{batch}, 3, 32, 32]`, SGD (momentum 0.9), fp16 autocast with a "
              "GradScaler; the sparsified model also steps LATS. Median step time over "
              f"{repeats} steps per round, rounds in ABBA order after 3 warm-up steps.", "",
              "| model | dense step (ms) | sparsified step (ms) | sparsified / dense | peak memory dense / sparsified (MiB) "
              "| samples/s sparsified |", "|---|---|---|---|---|---|"]
    device = torch.device("cuda")
    for name, options in (("stds_cifarnet", {}), ("sew_resnet18", {"stem": "cifar", "num_classes": 10})):
        torch.manual_seed(0)
        x = torch.randn(batch, 3, 32, 32, device=device)
        y = torch.randint(0, 10, (batch,), device=device)
        setups = {}
        for kind in ("dense", "sparsified"):
            model = build_model(name, device=device, **options)
            scheduler = None
            if kind == "sparsified":
                snn_stp.sparsify(model, initial_threshold=1e-3)
            optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
            if kind == "sparsified":
                scheduler = snn_stp.build_threshold_scheduler("lats", model, optimizer, l1=1e-3)
            setups[kind] = (model, optimizer, scheduler, torch.amp.GradScaler("cuda"))
        peaks, times = {}, {"dense": [], "sparsified": []}
        for kind in ("dense", "sparsified"):
            torch.cuda.reset_peak_memory_stats()
            _step_time(*setups[kind], x, y, 3)
            peaks[kind] = torch.cuda.max_memory_allocated() / 2**20
        for kind in ("dense", "sparsified", "sparsified", "dense"):
            times[kind].append(_step_time(*setups[kind], x, y, repeats))
        dense, sparse = statistics.mean(times["dense"]), statistics.mean(times["sparsified"])
        lines.append(f"| {name} | {dense * 1e3:.2f} | {sparse * 1e3:.2f} | {sparse / dense:.3f} | "
                     f"{peaks['dense']:.0f} / {peaks['sparsified']:.0f} | {batch / sparse:,.0f} |")
        del setups
        torch.cuda.empty_cache()
    return lines + [""]


def _ddp_worker(rank: int, world: int, port: int, results) -> None:
    import torch.distributed as dist

    import snn_stp

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("nccl", rank=rank, world_size=world)
    torch.cuda.set_device(rank)
    torch.manual_seed(0)  # the same initial model on every rank
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 32 * 32, 10)).cuda()
    snn_stp.sparsify(model)
    network = nn.parallel.DistributedDataParallel(model, device_ids=[rank])
    optimizer = torch.optim.SGD(network.parameters(), lr=0.05, momentum=0.9)
    scheduler = snn_stp.build_threshold_scheduler("lats", model, optimizer, l1=0.05)
    generator = torch.Generator(device="cuda").manual_seed(rank)  # each rank its own batches
    for _ in range(5):
        x = torch.randn(16, 3, 32, 32, device="cuda", generator=generator)
        y = torch.randint(0, 10, (16,), device="cuda", generator=generator)
        optimizer.zero_grad()
        nn.functional.cross_entropy(network(x), y).backward()
        optimizer.step()
        scheduler.step()
    checksum = torch.stack([p.detach().double().sum() for p in model.parameters()]).sum()
    gathered = [torch.zeros_like(checksum) for _ in range(world)]
    dist.all_gather(gathered, checksum)
    if rank == 0:
        results.put((scheduler.threshold, [float(v) for v in gathered],
                     snn_stp.weight_sparsity(model).global_sparsity))
    dist.destroy_process_group()


def ddp_section(args) -> list[str]:
    lines = ["## 3. NCCL DistributedDataParallel", ""]
    if not torch.cuda.is_available():
        return lines + ["Skipped: no CUDA device.", ""]
    import torch.distributed as dist
    import torch.multiprocessing as mp

    if not dist.is_nccl_available():
        return lines + ["Skipped: this torch build has no NCCL.", ""]
    world = torch.cuda.device_count()
    context = mp.get_context("spawn")
    results = context.SimpleQueue()
    port = 29500 + os.getpid() % 1000
    start = time.perf_counter()
    mp.start_processes(_ddp_worker, args=(world, port, results), nprocs=world, start_method="spawn")
    threshold, checksums, sparsity = results.get()
    same = len(set(checksums)) == 1
    lines += [f"{world} GPU(s), NCCL {'.'.join(map(str, torch.cuda.nccl.version()))}: 5 LATS steps of a sparsified "
              f"conv net, each rank on its own batches, in {time.perf_counter() - start:.1f} s (process start "
              "included).", "",
              f"- threshold after 5 steps: {threshold:.6g}; weight sparsity {sparsity:.2%}",
              f"- parameter checksums of the ranks: {', '.join(f'{c:.12g}' for c in checksums)} -> "
              f"{'identical' if same else 'DIFFERENT (failure)'}", ""]
    if not same:
        raise SystemExit("\n".join(lines))
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="gpu_check.md", help="the Markdown report")
    parser.add_argument("--quick", action="store_true", help="fewer repeats (about a third of the time)")
    args = parser.parse_args()
    from snn_stp.snn import spikingjelly_version

    started = time.perf_counter()
    card = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device"
    head = [f"# GPU check: {card}", "",
            f"- torch {torch.__version__} (CUDA {torch.version.cuda}), spikingjelly {spikingjelly_version()}, "
            f"Python {platform.python_version()}",
            f"- GPUs: {torch.cuda.device_count()}; date {time.strftime('%Y-%m-%d %H:%M %Z')}", ""]
    body = []
    for section in (neuron_section, amp_section, ddp_section):
        part = section(args)
        body += part
        skipped = [line for line in part if line.startswith("Skipped")]
        print(f"{part[0][3:]}: {skipped[0] if skipped else 'done'}", flush=True)
    body.append(f"Total time {time.perf_counter() - started:.0f} s.")
    Path(args.out).write_text("\n".join(head + body) + "\n")
    print(f"report: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
