"""Every GPU-only check in one command, with a Markdown report naming the card.

    python experiments/gpu_check.py [--out gpu_check.md] [--quick] [--sections 1,2,3,4]

Sections (each skipped, with the reason, where this machine cannot run it):

1. Neurons: SpikingJelly's GPU implementations (CuPy under spikingjelly 0.0.0.0.14; native CUDA and
   Triton under 2.x) against the plain PyTorch loop: spikes equal, forward + backward time, at
   T = 4, 8, 32 (``experiments/bench_neuron_backends.py`` in child processes).
2. AMP training steps of ``stds_cifarnet`` and ``sew_resnet18`` on random CIFAR-shaped tensors:
   sparsified / dense step time (same process, ABBA order), peak memory, samples per second.
3. NCCL DDP over every GPU present: a sparsified model trained a few LATS steps under
   DistributedDataParallel; every rank must hold the same threshold and weights.
4. The training engine on CUDA (``snn-stp train``, AMP on, the bundled digits): every threshold
   scheduler for a few epochs; the same run twice (repeatable?); and a run killed after its third
   checkpoint write (SIGKILL, through the ``SNN_STP_FAULT`` hook), resumed, against a straight run.

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


#: ``--set`` options of each scheduler on the default job (the spiking MLP on the digits).
ENGINE_METHODS = {
    "lats": [], "lats_epoch": [], "slats": [], "pgh": ["pruning.beta=0.1"], "sine": [], "linear": [],
    "fixed": ["pruning.init=inverse", "pruning.final_threshold=0.05"],
    "lats (target 95%)": ["pruning.scheduler=lats", "pruning.target_sparsity=0.95"],
    "gmp": ["pruning.target_sparsity=0.9"],
    "gradr": ["pruning.alpha=0.01", "pruning.target_sparsity=0.95"],
    "str": ["pruning.trainable_threshold_init=-5", "optim.threshold_weight_decay=0.03"],
    "dense": [],
}


def _train(out: Path, settings: list[str], environment: dict | None = None, command: str = "train") -> dict:
    """``snn-stp train`` (or ``resume``) in a child process; its summary (or the exit status and error)."""
    import json

    args = [sys.executable, "-m", "snn_stp", command, "--quiet"]
    args += [str(out)] if command == "resume" else ["--out", str(out)]
    for setting in settings:
        args += ["--set", setting]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=240, env={**os.environ, **(environment or {})})
    summary = out / "summary.json"
    if proc.returncode or not summary.exists():
        return {"exit": proc.returncode, "error": (proc.stderr.strip().splitlines() or ["(no output)"])[-1]}
    return json.loads(summary.read_text())


def _weights(run: Path) -> dict:
    from snn_stp.train import checkpoint

    return checkpoint.load(run / "checkpoints" / "last.pt")["model"]


def engine_section(args) -> list[str]:
    import tempfile

    lines = ["## 4. The training engine on CUDA (`snn-stp train`, AMP)", ""]
    if not torch.cuda.is_available():
        return lines + ["Skipped: no CUDA device.", ""]
    epochs = 3 if args.quick else 6
    common = [f"train.epochs={epochs}", "train.device=cuda", "train.amp=true"]
    lines += [f"The default job (spiking MLP, T = 4, the bundled digits), {epochs} epochs, each scheduler in its own "
              "process (process start and data loading included in the seconds).", "",
              "| scheduler | test accuracy | weight sparsity | final d | seconds |", "|---|---|---|---|---|"]
    root = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    failures = []
    for index, (method, extra) in enumerate(ENGINE_METHODS.items()):
        scheduler = [] if any(s.startswith("pruning.scheduler=") for s in extra) else [f"pruning.scheduler={method}"]
        summary = _train(root / f"m{index}", common + scheduler + extra)
        if "error" in summary:
            failures.append(method)
            lines.append(f"| {method} | FAILED (exit {summary['exit']}): {summary['error']} | | | |")
            continue
        lines.append(f"| {method} | {summary['final_test_acc']:.2%} | {summary['weight_sparsity']:.2%} | "
                     f"{summary['threshold']:.4g} | {summary['seconds']:.1f} |")
    # Repeatability and exact resume (checkpoints every 10 steps; the kill lands after the third).
    resume = common + ["pruning.scheduler=lats", "train.checkpoint_every_steps=10"]
    straight, again = _train(root / "straight", resume), _train(root / "again", resume)
    killed = _train(root / "killed", resume, {"SNN_STP_FAULT": "last.pt:after:3"})
    resumed = _train(root / "killed", [], command="resume")
    lines.append("")
    if any("error" in s for s in (straight, again, resumed)):
        failures.append("resume")
        lines.append(f"- repeat/resume runs failed: {straight.get('error')}, {again.get('error')}, {resumed.get('error')}")
    else:
        reference = _weights(root / "straight")
        for name, run in (("the same run again", "again"), ("killed after its 3rd checkpoint, then resumed", "killed")):
            other = _weights(root / run)
            largest = max((reference[k].double() - other[k].double()).abs().max().item()
                          for k in reference if reference[k].is_floating_point())
            lines.append(f"- {name}: test accuracy {straight['final_test_acc']:.4%} vs "
                         f"{(again if run == 'again' else resumed)['final_test_acc']:.4%}; largest weight "
                         f"difference {largest:.3g}{' (identical)' if largest == 0 else ''}")
        lines.append(f"- the killed run's own exit: {killed.get('exit', 0)} (-9: SIGKILL, as planned)")
    if failures:
        raise SystemExit("\n".join(lines + ["", f"failed: {', '.join(failures)}"]))
    return lines + [""]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="gpu_check.md", help="the Markdown report")
    parser.add_argument("--quick", action="store_true", help="fewer repeats (about a third of the time)")
    parser.add_argument("--sections", default="1,2,3,4", help="which sections to run (default: all)")
    args = parser.parse_args()
    from snn_stp.snn import spikingjelly_version

    started = time.perf_counter()
    card = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device"
    head = [f"# GPU check: {card}", "",
            f"- torch {torch.__version__} (CUDA {torch.version.cuda}), spikingjelly {spikingjelly_version()}, "
            f"Python {platform.python_version()}",
            f"- GPUs: {torch.cuda.device_count()}; date {time.strftime('%Y-%m-%d %H:%M %Z')}", ""]
    body, failed = [], False
    sections = (neuron_section, amp_section, ddp_section, engine_section)
    for number in sorted({int(n) for n in args.sections.split(",")}):
        try:
            part, outcome = sections[number - 1](args), "done"
        except SystemExit as failure:  # a failed check: its lines go into the report, the rest still run
            part, outcome, failed = str(failure).splitlines() + [""], "FAILED", True
        body += part
        skipped = [line for line in part if line.startswith("Skipped")]
        print(f"{part[0][3:]}: {skipped[0] if skipped else outcome}", flush=True)
        # Written after every section, so that a run cut short keeps what it measured.
        Path(args.out).write_text("\n".join(head + body + [f"Total time {time.perf_counter() - started:.0f} s."]) + "\n")
    print(f"report: {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
