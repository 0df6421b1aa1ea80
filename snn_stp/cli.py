"""``snn-stp`` command line (also ``python -m snn_stp``): parse, call the library, print.

Every expected failure (:class:`snn_stp.errors.SnnStpError`, a failed write, Ctrl-C) ends in one
line on stderr, ``snn-stp COMMAND: what is wrong and the fix``, and a non-zero exit status (1, or
130 for an interruption). Anything else is a bug and keeps its traceback; ``--debug`` shows the
traceback of expected failures too.
"""

from __future__ import annotations

import argparse
import errno
import sys
import warnings

#: Exit status of a command stopped by Ctrl-C (128 + SIGINT, as shells report it); a run stopped
#: by another stop signal exits with 128 + that signal (SIGTERM 143, SIGUSR2 140).
INTERRUPTED = 130
#: OSErrors that come from the machine, not from a bug: reported in one line.
ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EACCES, errno.EPERM, errno.EROFS, errno.EIO,
                      errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.EMFILE, errno.ENAMETOOLONG}


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show the traceback of any failure")
    parser = argparse.ArgumentParser(
        prog="snn-stp", parents=[common],
        description="Sparse spiking neural networks by soft threshold pruning: train, resume, evaluate, plot and "
                    "compare runs.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name, parents=(), **kwargs):
        return sub.add_parser(name, parents=[common, *parents], **kwargs)

    cluster = argparse.ArgumentParser(add_help=False)
    slurm = cluster.add_argument_group("where it runs", "with --launcher slurm, each run is a Slurm job submitted "
                                                         "through submitit (docs/cluster.md); the options are sbatch's")
    slurm.add_argument("--launcher", choices=("local", "slurm"),
                       help="local: on this machine (default); slurm: as Slurm job(s)")
    slurm.add_argument("--partition", help="Slurm partition")
    slurm.add_argument("--time", help="time limit of one start of a job: minutes or HH:MM:SS, D-HH:MM (default 60); "
                                      "a longer run is requeued and resumes from its checkpoint")
    slurm.add_argument("--nodes", type=int, help="nodes per job (default 1)")
    slurm.add_argument("--gpus-per-job", type=int, help="GPUs per job, one DDP process each (default 0)")
    slurm.add_argument("--tasks-per-node", type=int,
                       help="DDP processes per node of a CPU job (default: one per GPU, or 1)")
    slurm.add_argument("--cpus-per-job", type=int, help="CPU cores per job (per node), split among its processes")
    slurm.add_argument("--mem", help="memory per node, e.g. 64G")
    slurm.add_argument("--account", help="Slurm account to charge")
    slurm.add_argument("--qos", help="Slurm quality of service")
    slurm.add_argument("--constraint", help="node features the job needs, e.g. a100")
    slurm.add_argument("--slurm-extra", action="append", default=[], metavar="KEY=VALUE",
                       help="any other sbatch option, e.g. --slurm-extra exclusive=user (repeatable)")
    slurm.add_argument("--no-wait", action="store_true",
                       help="submit and exit; collect later (sweep: snn-stp sweep --out DIR or sweep-status DIR)")

    train = add("train", parents=[cluster], help="train (and prune) a model from a config; with none, the embedded default",
                description="Train a model from a YAML config (default: a spiking MLP on the bundled digits pruned "
                            "with LATS, seconds on 2 CPU cores).")
    train.add_argument("--config", help="a YAML config file, or the name of a shipped recipe (see snn-stp list)")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config value, e.g. --set optim.lr=0.05 (repeatable)")
    train.add_argument("--out", help="run directory (default: $SNN_STP_RUNS or ./runs, then "
                                     "<time>-<model>-<scheduler>); one that holds a run is refused unless --overwrite")
    train.add_argument("--overwrite", action="store_true",
                       help="replace the run already in --out (its config, metrics, checkpoints, summary)")
    train.add_argument("--init-from", metavar="CHECKPOINT",
                       help="start from these weights: an snn-stp checkpoint (e.g. the last good one of a diverged "
                            "run) or a dense state_dict such as torchvision's (prune a pretrained model)")
    train.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines")
    train.add_argument("--dry-run", action="store_true",
                       help="build model, optimizer and schedulers and check the data files, then stop")
    evaluate = add("eval", help="evaluate a run directory or checkpoint with its saved threshold")
    evaluate.add_argument("path", help="RUN_DIR (uses checkpoints/last.pt) or a checkpoint file")
    resume = add("resume", parents=[cluster], help="continue a run from its last checkpoint, exactly",
                 description="Continue a run from RUN_DIR/checkpoints/last.pt with the config stored in the "
                             "checkpoint; config.yaml may only change the keys listed in docs/reliability.md.")
    resume.add_argument("run_dir")
    resume.add_argument("--quiet", action="store_true")
    plot = add("plot", help="figures (PNG and PDF) of one or more run directories")
    plot.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories, or a sweep's folder (its runs)")
    plot.add_argument("--per-run", action=argparse.BooleanOptionalAction, default=None,
                      help="draw each run's own figures (default: yes, unless a sweep or more than 8 runs are given; "
                           "its histograms and raster load the run's checkpoint)")
    plot.add_argument("--out", help="folder for the figures (default: RUN_DIR/plots)")
    plot.add_argument("--layers", nargs="*", help="pruned weights for the theta/w histograms (default: first three)")
    plot.add_argument("--raster-layer", help="spiking layer for the spike raster (default: the first)")
    plot.add_argument("--sample", type=int, default=0, help="test sample of the spike raster")
    compare = add("compare", help="Markdown report comparing runs (ANN vs SNN ratios)")
    compare.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories, or a sweep's folder (its runs)")
    compare.add_argument("--out", required=True, help="folder for report.md and its figures")
    compare.add_argument("--levels", default="90,95,98,99", metavar="PERCENTS",
                         help="sparsities of the accuracy table, in %% (default 90,95,98,99)")
    compare.add_argument("--accuracy", choices=("final", "best_val"), default="final",
                         help="the test accuracy of the final epoch (default) or of the best-validation epoch")
    sweep = add("sweep", parents=[cluster],
                help="a grid of runs over config keys, in parallel or on a cluster, resumable; writes results.csv",
                description="Train one run per point of a grid over config keys (scheduler x target sparsity x "
                            "seed x any key), JOBS at a time here or as Slurm jobs. Run it again to continue a killed "
                            "sweep: finished points are skipped, interrupted ones resumed; with only --out, the sweep "
                            "that folder holds. Writes OUT/results.csv.")
    sweep.add_argument("sweep_file", nargs="?", metavar="SWEEP_FILE",
                       help="a YAML file with base, set, grid, variants, launcher and slurm (see docs/training.md)")
    sweep.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                       help="an axis of the grid, e.g. --grid pruning.target_sparsity=0.9,0.95 (repeatable)")
    sweep.add_argument("--config", help="the base config of every point: a YAML file or a shipped recipe")
    sweep.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a setting of every point")
    sweep.add_argument("--out", required=True, help="the sweep's folder: one run directory per point, results.csv")
    sweep.add_argument("--jobs", type=int,
                       help="runs at a time (local: default 1, each gets cores / jobs threads; slurm: default all, "
                            "up to submitit's 256 per array)")
    sweep.add_argument("--dry-run", action="store_true", help="build every point's config and list the points")
    sweep.add_argument("--quiet", action="store_true", help="no line per finished run")
    status = add("sweep-status", help="where each point of a sweep stands (done, queued, running, failed)",
                 description="Show each point of the sweep in SWEEP_DIR: finished, queued or running as a Slurm job, "
                             "failed (with the log to read), interrupted or not started; rewrites results.csv with "
                             "what has finished. snn-stp sweep --out SWEEP_DIR submits what is missing.")
    status.add_argument("sweep_dir", metavar="SWEEP_DIR")
    export = add("export", help="a run's model as a NIR graph or a compact sparse checkpoint",
                 description="Export the model of a run directory (or checkpoint file): --format nir writes a NIR "
                             "graph (BatchNorm folded, pruned zeros kept, neuron parameters and the time step stated; "
                             "read back by snnTorch and Norse in the tests, see docs/deployment.md); --format sparse "
                             "writes only the "
                             "non-zero weights and what rebuilds the model (snn_stp.export.load_sparse); --format "
                             "compact writes a smaller dense model with its zero channels removed (snn-stp eval "
                             "reads it; snn_stp.export.compact).")
    export.add_argument("run", metavar="RUN", help="a run directory or a checkpoint file")
    export.add_argument("--format", required=True, choices=("nir", "sparse", "compact"))
    export.add_argument("--out", required=True, help="the file to write (an existing one only with --overwrite)")
    export.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    export.add_argument("--checkpoint", default="last.pt", choices=("last.pt", "best.pt"),
                        help="which checkpoint of a run directory (default last.pt)")
    export.add_argument("--dt", type=float, default=1e-4,
                        help="nir: seconds one time step stands for (default 1e-4, what snnTorch's reader assumes)")
    export.add_argument("--pool", default="neuron", choices=("neuron", "threshold"),
                        help="nir: max pooling of spikes as SumPool2d + a memoryless LIF (default: snnTorch, Norse "
                             "and SpikingJelly 2.0 run it) or SumPool2d + Threshold (the literal form no reader runs)")
    export.add_argument("--add", default="edges", choices=("edges", "scale"),
                        help="nir: a SEW ResNet's ADD as the sum of the edges entering each consumer (default) or "
                             "as a Scale node of ones (no reader runs it)")
    convert = add("convert-checkpoint", help="rewrite a checkpoint you trust so that it loads without running code",
                  description="Every snn-stp command reads files with torch.load(weights_only=True) and refuses one "
                              "that holds objects other than tensors and plain values. This command UNPICKLES "
                              "SOURCE (it runs whatever code the file holds) and writes its tensors, numbers and "
                              "plain containers to --out (NumPy arrays become tensors, an argparse.Namespace a dict, "
                              "anything else is dropped and listed). Use it only on a file whose origin you trust.")
    convert.add_argument("source", metavar="SOURCE", help="the checkpoint file to convert")
    convert.add_argument("--out", required=True, help="the file to write")
    convert.add_argument("--trust-source", action="store_true",
                         help="required: you vouch that SOURCE cannot run harmful code when unpickled")
    convert.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    deploy = add("deploy-report", help="what it takes to put a run on neuromorphic chips (Loihi 2, SpiNNaker2, "
                                       "Speck, Xylo): NIR support, cores, memory, energy",
                 description="Report, for each target chip, the NIR node types of the run's graph its tool chain "
                             "cannot take, each layer's neurons and synapses against the chip's published per-core "
                             "limits and the cores that needs, the synapse memory with and without pruning under the "
                             "chip's storage rule, and the energy of one inference (effective synaptic operations x "
                             "published pJ per synaptic operation), every figure with its source (docs/deployment.md).")
    deploy.add_argument("run", metavar="RUN", help="a run directory or a checkpoint file")
    deploy.add_argument("--target", required=True, metavar="TARGET",
                        help="loihi2, spinnaker2, speck, xylo, or all (several separated by commas)")
    deploy.add_argument("--format", default="markdown", choices=("markdown", "json"),
                        help="markdown tables (default) or JSON with the same numbers")
    deploy.add_argument("--out", help="write the report to this file (default: print it)")
    deploy.add_argument("--checkpoint", default="last.pt", choices=("last.pt", "best.pt"),
                        help="which checkpoint of a run directory (default last.pt)")
    add("list", help="list the registered models, data sets, threshold schedulers and recipes",
                   description="List the registered models (spiking ones with their ANN twins), data sets, threshold "
                               "schedulers and the shipped recipes.")
    return parser


def print_registries() -> None:
    from .models import list_models
    from .pruning import THRESHOLD_SCHEDULERS

    print("models (spiking ones also build as their ANN twin with spiking=False):")
    for spec in list_models():
        kind = "SNN + ANN twin" if spec.has_spiking else "ANN"
        print(f"  {spec.name:<16} {kind:<15} {spec.input_kind:<7} {spec.description}")
    from .data import DATASETS
    print("data sets:")
    for spec in DATASETS.values():
        print(f"  {spec.name:<16} {spec.input_kind:<7} {spec.sample:<18} {spec.description}"
              + (" (bundled)" if spec.bundled else ""))
    print("threshold schedulers (rule: sparsify's rule, the first is the default; keys: its settings in the pruning "
          "section, * required; knob: what sets how much it prunes):")
    # The baseline last, after the pruning methods.
    for name, cls in sorted(THRESHOLD_SCHEDULERS.items(), key=lambda item: (not item[1].prunes, item[0])):
        keys = [f"{key}{'*' if required else ''}" for key, (_, required) in cls.user_arguments().items()]
        print(f"  {name:<16} rule {'|'.join(cls.rules):<10} keys: {', '.join(keys) or '-':<38} {cls.summary()}")
        if cls.knob:
            print(f"  {'':<16} knob: {cls.knob}")
    from .train.config import recipe_files
    recipes = recipe_files()
    if recipes:
        from .files import read_yaml
        print(f"recipes (run with snn-stp train --config NAME; the files are in {recipes[0].parent}):")
        for path in recipes:
            recipe = read_yaml(path)
            description = " ".join(str(recipe.get("description", "") if isinstance(recipe, dict) else "").split())
            print(f"  {path.name:<36} {description[:100]}{'...' if len(description) > 100 else ''}")


def run_training(args) -> int:
    """``train`` or ``resume``: the config of ``train`` built from its arguments (``--config``,
    ``--set``, ``--init-from``), then trained (or the run resumed) by :func:`train_config`."""
    import time
    from pathlib import Path

    on_slurm = _launcher(args) == "slurm"  # refused options before the heavy imports
    from . import rundir
    from .train import load_config

    if args.command == "resume":
        if on_slurm:
            return submit_run(args, None, Path(args.run_dir))
        return train_config(None, Path(args.run_dir), quiet=args.quiet)
    config = load_config(args.config, args.set)
    if args.init_from:
        config.model.init_from = args.init_from
    run_dir = Path(args.out or rundir.runs_root() / f"{time.strftime('%Y%m%d-%H%M%S')}-{config.model.name}-"
                                                    f"{config.pruning.scheduler}")
    if on_slurm and not args.dry_run:
        return submit_run(args, config, run_dir)
    return train_config(config, run_dir, quiet=args.quiet, overwrite=getattr(args, "overwrite", False),
                        dry_run=getattr(args, "dry_run", False))


#: The command-line options of the Slurm launcher (``--partition`` ...) as Slurm option names.
SLURM_ARGUMENTS = ("partition", "time", "nodes", "gpus_per_job", "tasks_per_node", "cpus_per_job", "mem", "account",
                   "qos", "constraint")


def _launcher(args, configured: str = "local") -> str:
    """``--launcher``, else ``configured`` (a sweep file's); Slurm options without the Slurm launcher
    and ``--no-wait`` without it are refused, since they would be ignored."""
    from .errors import UsageError
    launcher = args.launcher or configured
    if launcher != "slurm":
        given = [f"--{name.replace('_', '-')}" for name in SLURM_ARGUMENTS if getattr(args, name) is not None]
        given += ["--slurm-extra"] * bool(args.slurm_extra) + ["--no-wait"] * args.no_wait
        if given:
            raise UsageError(f"{', '.join(given)} {'is a Slurm option' if len(given) == 1 else 'are Slurm options'}: "
                             "add --launcher slurm (or launcher: slurm in the sweep file)")
    return launcher


def _slurm_settings(args) -> dict:
    """The Slurm options given on the command line, by their names in a sweep file's ``slurm``."""
    from .errors import UsageError
    from .files import parse_value
    found = {name: getattr(args, name) for name in SLURM_ARGUMENTS if getattr(args, name) is not None}
    if "time" in found and found["time"].isdigit():
        found["time"] = int(found["time"])
    for item in args.slurm_extra:
        key, _, value = item.partition("=")
        if not key.strip() or not _:
            raise UsageError(f"--slurm-extra {item!r} must look like KEY=VALUE, e.g. --slurm-extra exclusive=user")
        found.setdefault("extra", {})[key.strip()] = parse_value(value, f"--slurm-extra {item!r}")
    return found


def submit_run(args, config, run_dir) -> int:
    """``train`` (``config``) or ``resume`` (None) as one Slurm job: submitted, then waited for
    (unless ``--no-wait``) and reported as the command would report it here. Requeued at each time
    limit, the job resumes from its checkpoint; Ctrl-C cancels it (it saves a checkpoint)."""
    import signal

    from . import rundir
    from .errors import RunDirectoryError, TrainingInterrupted
    from .launch import Job, Work
    from .launch.slurm import RUN_JOBS_FILE, SLURM_FOLDER, SlurmLauncher, read_records, slurm_options
    from .train import load_config

    if config is not None:
        rundir.refuse_existing(run_dir, args.overwrite)
        command = ["train", "--quiet", "--out", str(run_dir), *(["--config", args.config] if args.config else []),
                   *[part for item in args.set for part in ("--set", item)],
                   *(["--init-from", args.init_from] if args.init_from else [])]
    elif rundir.run_state(run_dir) not in ("resume", "done"):
        raise RunDirectoryError(f"{run_dir} holds no checkpoint to resume ({rundir.CHECKPOINTS}/{rundir.LAST} is "
                                "missing); start the run with snn-stp train")
    else:
        command = ["resume", "--quiet", str(run_dir)]
    folder = run_dir / SLURM_FOLDER
    launcher = SlurmLauncher(run_logged, slurm_options(_slurm_settings(args), "the command line"),
                             folder / RUN_JOBS_FILE, folder)
    for record, state in launcher.live().values():
        raise RunDirectoryError(f"{run_dir} already has Slurm job {record['job_id']} ({state.lower()}) for it; wait "
                                f"for it (squeue -j {record['job_id']}), or cancel it (scancel {record['job_id']}) "
                                "and submit again")
    log = folder / f"{args.command}.log"
    job = Job(str(run_dir), config, resume=config is None, overwrite=bool(getattr(args, "overwrite", False)),
              command=tuple(command))
    launcher.submit([Work(run_dir.name, job, str(log))])
    record = read_records(folder / RUN_JOBS_FILE)[run_dir.name]
    print(f"Slurm job {record['job_id']} {launcher.describe()}: {args.command} {run_dir}; the run's output goes to "
          f"{log}, Slurm's to {record['stderr']}", flush=True)
    if args.no_wait:
        print(f"not waiting: squeue -j {record['job_id']} shows it; it finishes by itself (requeued from its "
              f"checkpoint at each time limit), then snn-stp eval {run_dir}")
        return 0
    try:
        ended = next(launcher.as_finished(lambda text: print(text, flush=True)))
    except KeyboardInterrupt:
        note = launcher.cancel()
        then = (f"continue with snn-stp resume {run_dir} --launcher slurm" if rundir.run_state(run_dir) == "resume"
                else "no checkpoint was written: submit the same command again")
        raise TrainingInterrupted(f"interrupted; {note}: {then}", signal.SIGINT) from None
    if ended.code != 0:
        from .sweeps import last_line
        return _fail(args.command, f"{last_line(log)} ({ended.note}; the run's output {log})")
    print(final_line(rundir.read_summary(run_dir), load_config(str(run_dir / rundir.CONFIG)), run_dir))
    return 0


def train_config(config, run_dir, quiet: bool = False, overwrite: bool = False, dry_run: bool = False) -> int:
    """Train ``config`` (a :class:`snn_stp.train.Config`) into ``run_dir``, or resume the run there
    (``config`` None), as ``snn-stp train`` (``resume``) does, printing the same lines; returns 0.
    The run directory is locked for the whole run (one writer per run); a new run that fails
    before its first checkpoint leaves no folder behind (``overwrite``: replace the run it holds)."""
    import contextlib
    import os
    import shutil
    from pathlib import Path

    from . import rundir

    run_dir = Path(run_dir)
    # Rank 0 writes the run (torchrun's other ranks only compute); a dry run writes nothing; resume
    # locks only a folder that exists (load_resume_state says what is wrong with a missing one).
    writes = int(os.environ.get("RANK", "0")) == 0 and not dry_run and (config is not None or run_dir.is_dir())
    created = config is not None and not run_dir.exists()
    if writes and config is not None:
        # Refused before the lock too, so that a refused command leaves the folder as it was (the
        # lock file names its holder); checked again under the lock.
        rundir.refuse_existing(run_dir, overwrite)
    with rundir.writer_lock(run_dir) if writes else contextlib.nullcontext():
        try:
            return _train_locked(config, run_dir, quiet, overwrite, dry_run)
        except BaseException:
            if writes and created and not (run_dir / rundir.CHECKPOINTS / rundir.LAST).exists():
                shutil.rmtree(run_dir, ignore_errors=True)  # nothing to resume: no empty or half-made folder stays
            raise


def _train_locked(config, run_dir, quiet: bool, overwrite: bool, dry_run: bool) -> int:
    from .train import Trainer
    from .train.resume import load_resume_state

    state = None
    if config is None:
        config, state = load_resume_state(run_dir)
    if dry_run:
        from .train.builders import check_data_present
        check_data_present(config)
    if config.train.steady_allocator:
        from .train.allocator import use_steady_allocator
        use_steady_allocator()
    trainer = Trainer(config, run_dir, state=state, quiet=quiet, dry_run=dry_run, overwrite=overwrite)
    if dry_run:
        parameters = sum(p.numel() for p in trainer.model.parameters())
        print(f"dry run: {config.model.name} ({'spiking' if trainer.spiking else 'ANN'}, {parameters:,} parameters), "
              f"{len(pruning_names(trainer.model))} pruned weights, {config.pruning.scheduler} threshold scheduler, "
              f"{trainer.steps_per_epoch} steps per epoch x {trainer.epochs} epochs on {config.data.name} "
              f"(data files present)")
        return 0
    from .train import distributed
    finished = False
    try:
        summary = trainer.fit()
        finished = True
    finally:
        distributed.teardown(trainer.ctx, finished)
    if trainer.ctx.is_main:
        print(final_line(summary, config, run_dir))
    return 0


def final_line(summary: dict, config, run_dir) -> str:
    """The run's outcome in one line: every accuracy with the epoch, checkpoint and sparsity it
    belongs to. A run stopped by ``train.max_steps`` before an epoch ended has no test accuracy yet."""
    target = summary.get("target_sparsity")
    asked = f" (target {target:.2%})" if target is not None else ""
    calibrated = f", calibrated D = {summary['final_threshold']:.4g}" \
        if target is not None and summary.get("final_threshold") is not None else ""
    state = (f"threshold d = {summary['threshold']:.4g}{calibrated}, implied L1 lambda = "
             f"{describe_l1(summary)}; run directory {run_dir}")
    sparsity = (f"weight sparsity {summary['pruned_layer_sparsity']:.2%} of the pruned layers{asked} "
                f"({summary['all_weight_sparsity']:.2%} of all weights)")
    if summary["final_test_acc"] is None:
        return (f"stopped at step {summary['global_step']} (train.max_steps = {config.train.max_steps}) before the "
                f"first epoch ended, so no test accuracy yet; {sparsity}, {state}")
    stopped = (f"stopped at step {summary['global_step']} (train.max_steps = {config.train.max_steps}) after "
               f"{summary['epochs_done']} epoch(s); " if summary["stopped_early"] else "")
    final = f"final test accuracy {summary['final_test_acc']:.2%} at {sparsity} (epoch {summary['epochs_done']}, last.pt)"
    return f"{stopped}{final}; {describe_best(summary, config)}; {state}"


def describe_best(summary: dict, config) -> str:
    """best.pt in words: its epoch, test accuracy and sparsity, and which epochs it was chosen among."""
    if not config.data.validation_fraction:
        return "no best.pt (data.validation_fraction is 0: no validation split to choose on)"
    rule = summary.get("best_rule") or "every epoch"
    if summary.get("best_epoch") is None:
        return f"no best.pt: no epoch was among {rule}"
    sparsity = summary.get("best_weight_sparsity")
    return (f"best.pt: epoch {summary['best_epoch']}, the best validation accuracy among {rule}: test accuracy "
            f"{summary['test_acc_at_best_val']:.2%} at weight sparsity "
            f"{'unknown' if sparsity is None else format(sparsity, '.2%')} of the pruned layers")


def describe_l1(summary: dict) -> str:
    """The run's L1 coefficient and what it is (LATS: its constant lambda; others: the LR-weighted mean)."""
    l1 = summary["l1_coefficient"]
    if l1 is None:
        return "none (an adaptive optimizer)"
    from .train.engine import format_l1
    kind = "constant" if summary.get("l1_coefficient_constant") else "LR-weighted mean over the run"
    return f"{format_l1(l1)} ({kind})" if l1 >= 0 else f"{format_l1(l1)[:-1]}; {kind})"


def pruning_names(model) -> list[str]:
    from .pruning import pruned_layers
    return [layer.name for layer in pruned_layers(model)]


def print_analysis(result: dict) -> None:
    """Operation counts, energy (with its table) and spike statistics of an evaluation."""
    ops = result.get("ops")
    if not ops:
        return
    print(f"per sample: MACs {ops['macs_effective']:,.0f} effective / {ops['macs_dense']:,.0f} dense, synaptic "
          f"operations {ops['sops_effective']:,.0f} effective / {ops['sops_dense']:,.0f} dense; estimated energy "
          f"{ops['energy_pj_effective'] / 1e6:.4g} uJ effective / {ops['energy_pj_dense'] / 1e6:.4g} uJ dense "
          f"(table {ops['energy_table']}: an estimate for neuromorphic hardware, not a measurement)")
    for name, layer in result.get("layer_ops", {}).items():
        print(f"  {name}: {layer['kind'].upper()}s {layer['effective']:,.0f} effective / {layer['dense']:,.0f} dense")
    if "firing_rate" in result:
        print(f"mean firing rate {result['mean_firing_rate']:.4f} (spikes per neuron per time step)")
        for name, rate in result["firing_rate"].items():
            print(f"  {name}: firing rate {rate:.4f}, silent neurons {result['silent_fraction'][name]:.2%}")


def dispatch(args) -> int:
    if args.command == "list":
        print_registries()
    elif args.command in ("train", "resume"):
        return run_training(args)
    elif args.command == "plot":
        _output_folder(args.out, "the figures")
        from .analysis.plots import plot_runs
        files = plot_runs(args.runs, args.out, args.layers, args.raster_layer, args.sample, args.per_run)
        print(f"wrote {len(files)} files:")
        for path in files:
            print(f"  {path}")
    elif args.command == "compare":
        _output_folder(args.out, "report.md and its figures")
        from .analysis.report import compare_runs
        print(f"wrote {compare_runs(args.runs, args.out, _levels(args.levels), args.accuracy)}")
    elif args.command == "sweep":
        return run_sweep_command(args)
    elif args.command == "sweep-status":
        return run_sweep_status(args)
    elif args.command == "export":
        return run_export(args)
    elif args.command == "deploy-report":
        return run_deploy_report(args)
    elif args.command == "convert-checkpoint":
        return run_convert(args)
    elif args.command == "eval":
        from .train import evaluate_checkpoint
        from .train.checkpoint import CompactModelFile
        try:
            result = evaluate_checkpoint(args.path)
        except CompactModelFile:
            return evaluate_compact_file(args.path)
        print(f"{result['checkpoint']} (epoch {result['epoch']}, step {result['global_step']}): test accuracy "
              f"{result['test_acc']:.2%} (top-5 {result['test_top5']:.2%}, loss {result['test_loss']:.4f}), weight "
              f"sparsity {result['pruned_layer_sparsity']:.2%} of the pruned layers ({result['all_weight_sparsity']:.2%} "
              f"of all weights; not counted: {_not_counted(result['parameter_counts'])}), threshold d = "
              f"{result['threshold']:.4g}")
        print_analysis(result)
    return 0


def evaluate_compact_file(path: str) -> int:
    """``snn-stp eval`` of a compact model (``export --format compact``)."""
    from .export.compact import evaluate_compact

    result = evaluate_compact(path)
    print(f"{path} (compact model of {result['checkpoint']}, epoch {result['epoch']}): test accuracy "
          f"{result['test_acc']:.2%} (top-5 {result['test_top5']:.2%}, loss {result['test_loss']:.4f}), "
          f"{result['parameters']:,} parameters ({result['removed_channels']:,} channels removed), weight sparsity "
          f"{result['weight_sparsity']:.2%} of its {result['weights']:,} weights")
    print_analysis(result)
    return 0


def _output_folder(out: str | None, what: str) -> None:
    """``--out`` of a command that writes a folder must not name a file."""
    from pathlib import Path

    from .errors import UsageError
    if out is not None and Path(out).exists() and not Path(out).is_dir():
        raise UsageError(f"--out {out} is a file; this command writes a folder ({what}): give a folder")


def _levels(text: str) -> tuple[float, ...]:
    from .errors import UsageError
    try:
        levels = tuple(float(v) / 100 for v in text.split(","))
    except ValueError:
        raise UsageError(f"--levels {text!r} must be sparsities in %, e.g. 90,95,98,99") from None
    if not all(0 < v < 1 for v in levels):
        raise UsageError(f"--levels {text!r}: each sparsity must be between 0 and 100 (%)")
    return levels


def run_sweep_command(args) -> int:
    from pathlib import Path

    from .sweeps import RESULTS, plan, read_sweep, run_sweep, saved_sweep_file

    source = args.sweep_file
    if source is None and not args.grid:
        source = saved_sweep_file(args.out, "give a sweep file with a grid, or --grid key=v1,v2")  # continue, collect
    sweep = read_sweep(source, args.grid, args.config, args.set, args.launcher, _slurm_settings(args))
    _launcher(args, sweep.launcher)
    if args.dry_run:
        planned = plan(sweep, Path(args.out))
        print(f"{len(planned)} point(s) in {args.out}, every config checked:")
        for point, state in planned:
            print(f"  {point.name}: {state}")
        return 0
    rows = run_sweep(sweep, args.out, sweep.launcher_for(args.out, run_logged, args.jobs), args.quiet,
                     wait=not args.no_wait)
    if args.no_wait:
        print(f"submitted; snn-stp sweep-status {args.out} shows where each point stands, and snn-stp sweep --out "
              f"{args.out} waits for them, collects {Path(args.out) / RESULTS} and submits what is missing")
        return 0
    failed = [row["name"] for row in rows if row["status"] == "failed"]
    print(f"wrote {Path(args.out) / RESULTS} ({len(rows) - len(failed)} of {len(rows)} run(s) finished)")
    if failed:
        return _fail("sweep", f"{len(failed)} run(s) failed: {', '.join(failed[:5])}; their logs are in "
                              f"{Path(args.out) / 'logs'}; fix the cause and run the same command again")
    return 0


def run_sweep_status(args) -> int:
    """``sweep-status``: a line per point, counts, and results.csv rewritten when no sweep holds the folder."""
    from collections import Counter
    from pathlib import Path

    from . import rundir
    from .sweeps import RESULTS, read_sweep, saved_sweep_file, sweep_status, write_results

    out = Path(args.sweep_dir)
    sweep = read_sweep(saved_sweep_file(out, "give the --out of a sweep that ran"))
    found = sweep_status(sweep, out)
    width = max(len(point.name) for point, _, _ in found)
    for point, status, detail in found:
        print(f"  {point.name:<{width}}  {status:<11} {detail}".rstrip())
    counts = Counter(status for _, status, _ in found)
    print(f"{len(found)} point(s) in {out}: " + ", ".join(f"{n} {status}" for status, n in counts.most_common()))
    try:
        with rundir.writer_lock(out, "sweep"):
            write_results([(point, status) for point, status, _ in found], out,
                          {point.name: status for point, status, _ in found})
        print(f"wrote {out / RESULTS}")
    except rundir.FolderInUse:
        print(f"{out / RESULTS} is left to the sweep that is waiting for these runs")
    return 0


def run_logged(job, log_path: str) -> int:
    """A launched job (a :class:`snn_stp.launch.Job`, run by a sweep's worker process or a Slurm
    job): its config trained into its run directory by :func:`train_config`, as ``snn-stp train``
    would (or the run there resumed), in this process, with the output appended to ``log_path``
    under the equivalent command line; returns that command's exit status. The config arrives as
    built, never through command-line text."""
    import argparse
    import contextlib
    import shlex
    import traceback
    from pathlib import Path

    command = "resume" if job.resume else "train"
    # What a failure's message reads of the command's arguments (see _interrupted_hint).
    args = argparse.Namespace(command=command, debug=False, run_dir=job.run_dir, out=job.run_dir)
    with open(log_path, "a") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        print(f"$ snn-stp {shlex.join(job.command_line)}", flush=True)
        try:
            return _run_reported(args, lambda: train_config(None if job.resume else job.config, Path(job.run_dir),
                                                            quiet=True, overwrite=job.overwrite))
        except SystemExit as error:
            return error.code if isinstance(error.code, int) else 1
        except Exception:  # a bug: its traceback goes to the log, the sweep goes on
            traceback.print_exc()
            return 1


def _run_reported(args, work) -> int:
    """``work()`` as every command runs (:func:`main`, and a sweep's worker, which starts fresh: the
    plugins are imported here): an expected failure is one ``snn-stp COMMAND: ...`` line on stderr and an exit
    status; anything else is raised."""
    from .errors import SnnStpError, TrainingInterrupted

    warnings.showwarning = _show_warning
    try:
        from .plugins import load_plugins
        load_plugins()
        return work()
    except SnnStpError as error:
        if args.debug:
            raise
        return _fail(args.command, error, 128 + error.signal_number if isinstance(error, TrainingInterrupted) else 1)
    except KeyboardInterrupt:
        if args.debug:
            raise
        return _fail(args.command, _interrupted_hint(args), INTERRUPTED)
    except OSError as error:
        if args.debug or error.errno not in ENVIRONMENT_ERRNOS:
            raise
        where = f" ({error.filename})" if error.filename else ""
        return _fail(args.command, f"{error.strerror or error}{where}")


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """The project's warnings (a torn metrics line, a regenerated file) as one ``snn-stp: warning:`` line."""
    from .errors import SnnStpWarning
    if issubclass(category, SnnStpWarning):
        print(f"snn-stp: warning: {message}", file=sys.stderr)
    else:
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def _not_counted(counts: dict) -> str:
    return ", ".join(f"{counts[key]:,} {key}" for key in ("bias", "normalization", "other")) + " parameters"


def run_export(args) -> int:
    from .export import export_run

    result = export_run(args.run, args.format, args.out, args.checkpoint, args.dt, args.overwrite, args.pool, args.add)
    if args.format == "nir":
        print(f"wrote {result['path']}: NIR graph of {result['nodes']} nodes, weight sparsity "
              f"{result['weight_sparsity']:.2%}, {result['time_steps']} time steps of {result['dt']:g} s")
    elif args.format == "compact":
        print(f"wrote {result['path']}: {result['parameters']:,} parameters of {result['dense_parameters']:,} "
              f"({result['removed_channels']:,} of {result['channels']:,} hidden channels removed; "
              f"{result['kept_zero_channels']} zero channel(s) kept, whose BatchNorm constant reaches the next "
              f"layer), weight sparsity {result['weight_sparsity']:.2%} before compaction")
    else:
        print(f"wrote {result['path']}: {result['file']:,} bytes for {result['nonzeros']:,} non-zero weights "
              f"(weight sparsity {result['weight_sparsity']:.2%}; non-zeros {result['sparse_payload']:,} bytes, dense "
              f"parameters {result['dense_payload']:,} bytes, the rest {result['overhead']:,} bytes)")
    return 0


def run_deploy_report(args) -> int:
    """``deploy-report``: the report printed, or written atomically to ``--out`` (never over a file
    of the run directory)."""
    from pathlib import Path

    from .export.deploy import deploy_report, parse_targets, render
    from .export.runs import check_output_file
    from .files import write_text_atomic
    from .train.restore import checkpoint_file

    targets = parse_targets(args.target)  # an unknown target fails before the run is read
    if args.out:
        check_output_file(Path(args.out), True, checkpoint_file(args.run, args.checkpoint))
    text = render(deploy_report(args.run, targets, args.checkpoint), args.format)
    if not args.out:
        print(text, end="")
        return 0
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out, text)
    print(f"wrote {args.out}: the {args.format} deployment report for {', '.join(targets)}")
    return 0


def run_convert(args) -> int:
    from .train.checkpoint import convert_trusted

    if not args.trust_source:
        return _fail("convert-checkpoint", f"converting unpickles {args.source}, which runs any code the file holds; "
                                           "pass --trust-source only if you trust where the file comes from")
    report = convert_trusted(args.source, args.out, args.overwrite)
    print(f"wrote {args.out}: the tensors and plain values of {args.source} (it now loads without running code)")
    for kind in ("converted", "dropped"):
        for entry in report[kind]:
            print(f"  {kind} {entry}")
    return 0


def _fail(command: str, message: str, status: int = 1) -> int:
    print(f"snn-stp {command}: {' '.join(str(message).split())}", file=sys.stderr)
    return status


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return _run_reported(args, lambda: dispatch(args))


def _interrupted_hint(args) -> str:
    """What a Ctrl-C outside the training loop (or a second one inside it) left behind."""
    from pathlib import Path

    from . import rundir
    if args.command == "sweep":
        return "interrupted; the finished runs are kept and each interrupted run saved a checkpoint: run the same " \
               "snn-stp sweep command again to continue"
    run_dir = getattr(args, "run_dir", None) or (getattr(args, "out", None) if args.command == "train" else None)
    if run_dir and (Path(run_dir) / rundir.CHECKPOINTS / rundir.LAST).exists():
        return (f"interrupted; the last checkpoint {Path(run_dir) / rundir.CHECKPOINTS / rundir.LAST} is kept: "
                f"snn-stp resume {run_dir}")
    return "interrupted before any checkpoint was written; nothing to resume"


if __name__ == "__main__":
    sys.exit(main())
