"""``snn-stp`` command line (also ``python -m snn_stp``): parse, call the library, print."""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="snn-stp", description="Sparse spiking neural networks by soft threshold pruning: train, resume, "
                                    "evaluate, plot and compare runs.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = sub.add_parser("train", help="train (and prune) a model from a config; with none, the embedded default",
                           description="Train a model from a YAML config (default: a spiking MLP on the bundled "
                                       "digits pruned with LATS, seconds on 2 CPU cores).")
    train.add_argument("--config", help="YAML recipe (see experiments/recipes and snn-stp list)")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config value, e.g. --set optim.lr=0.05 (repeatable)")
    train.add_argument("--out", help="run directory (default: runs/<time>-<model>-<scheduler>)")
    train.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines")
    train.add_argument("--dry-run", action="store_true", help="build model, optimizer and schedulers, then stop")
    evaluate = sub.add_parser("eval", help="evaluate a run directory or checkpoint with its saved threshold")
    evaluate.add_argument("path", help="RUN_DIR (uses checkpoints/last.pt) or a checkpoint file")
    resume = sub.add_parser("resume", help="continue a run from its last checkpoint, exactly")
    resume.add_argument("run_dir")
    resume.add_argument("--quiet", action="store_true")
    plot = sub.add_parser("plot", help="figures (PNG and PDF) of one or more run directories")
    plot.add_argument("runs", nargs="+", metavar="RUN_DIR")
    plot.add_argument("--out", help="folder for the figures (default: RUN_DIR/plots)")
    plot.add_argument("--layers", nargs="*", help="pruned weights for the theta/w histograms (default: first three)")
    plot.add_argument("--raster-layer", help="spiking layer for the spike raster (default: the first)")
    plot.add_argument("--sample", type=int, default=0, help="test sample of the spike raster")
    compare = sub.add_parser("compare", help="Markdown report comparing runs (ANN vs SNN ratios)")
    compare.add_argument("runs", nargs="+", metavar="RUN_DIR")
    compare.add_argument("--out", required=True, help="folder for report.md and its figures")
    sub.add_parser("list", help="list the registered models, data sets, threshold schedulers and recipes",
                   description="List the registered models (spiking ones with their ANN twins), data sets, threshold "
                               "schedulers and the recipes in experiments/recipes.")
    return parser


def print_registries() -> None:
    from .models import list_models
    from .pruning import THRESHOLD_SCHEDULERS

    print("models (spiking ones also build as their ANN twin with spiking=False):")
    for spec in list_models():
        kind = "SNN + ANN twin" if spec.has_spiking else "ANN"
        print(f"  {spec.name:<16} {kind:<15} {spec.input:<7} {spec.description}")
    from .data import DATASETS
    print("data sets:")
    for spec in DATASETS.values():
        print(f"  {spec.name:<16} {spec.kind:<7} {spec.sample:<18} {spec.description}")
    print("threshold schedulers:")
    for name, cls in sorted(THRESHOLD_SCHEDULERS.items()):
        summary = (cls.__doc__ or "").strip().splitlines()[0]
        print(f"  {name:<16} {summary}")
    recipes = recipe_files()
    if recipes:
        import yaml
        print(f"recipes ({recipes[0].parent}; run with snn-stp train --config FILE):")
        for path in recipes:
            description = " ".join(str(yaml.safe_load(path.read_text()).get("description", "")).split())
            print(f"  {path.name:<36} {description[:100]}{'...' if len(description) > 100 else ''}")


def recipe_files():
    """The YAML recipes of a checkout (``experiments/recipes``), if this is one."""
    from pathlib import Path
    folder = Path(__file__).resolve().parents[1] / "experiments" / "recipes"
    return sorted(folder.glob("*.yaml")) if folder.is_dir() else []


def run_training(args) -> int:
    import time
    from pathlib import Path

    from .train import ConfigError, Trainer, TrainingDiverged, load_config

    try:
        if args.command == "resume":
            run_dir = Path(args.run_dir)
            config = load_config(run_dir / "config.yaml")
        else:
            config = load_config(args.config, args.set)
            run_dir = Path(args.out or Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-{config.model.name}-"
                                                      f"{config.pruning.scheduler}")
        if config.train.steady_allocator:
            from .train.allocator import use_steady_allocator
            use_steady_allocator()
        trainer = Trainer(config, run_dir, resume=args.command == "resume", quiet=args.quiet,
                          dry_run=getattr(args, "dry_run", False))
    except (ConfigError, ValueError, TypeError, FileNotFoundError, ImportError) as error:
        # Bad settings or missing data: the message says what is wrong, a traceback would not help.
        raise SystemExit(f"snn-stp {args.command}: {error}")
    if getattr(args, "dry_run", False):
        parameters = sum(p.numel() for p in trainer.model.parameters())
        print(f"dry run: {config.model.name} ({'spiking' if trainer.spiking else 'ANN'}, {parameters:,} parameters), "
              f"{len(pruning_names(trainer.model))} pruned weights, {config.pruning.scheduler} threshold scheduler, "
              f"{trainer.steps_per_epoch} steps per epoch x {config.train.epochs} epochs on {config.data.name}")
        return 0
    from .train import distributed
    try:
        summary = trainer.fit()
    except TrainingDiverged as error:
        raise SystemExit(f"snn-stp {args.command}: {error}")
    finally:
        distributed.teardown(trainer.ctx)
    if trainer.ctx.is_main:
        print(f"final test accuracy {summary['final_test_acc']:.2%}, weight sparsity {summary['weight_sparsity']:.2%}, "
              f"threshold d = {summary['threshold']:.4g}, implied L1 lambda = {summary['l1_coefficient']:.4g}; "
              f"run directory {run_dir}")
    return 0


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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "list":
        print_registries()
    elif args.command in ("train", "resume"):
        return run_training(args)
    elif args.command == "plot":
        from .analysis.plots import plot_runs
        files = plot_runs(args.runs, args.out, args.layers, args.raster_layer, args.sample)
        print(f"wrote {len(files)} files:")
        for path in files:
            print(f"  {path}")
    elif args.command == "compare":
        from .analysis.report import compare_runs
        print(f"wrote {compare_runs(args.runs, args.out)}")
    elif args.command == "eval":
        from .train import evaluate_checkpoint
        result = evaluate_checkpoint(args.path)
        print(f"{result['checkpoint']} (epoch {result['epoch']}, step {result['global_step']}): test accuracy "
              f"{result['test_acc']:.2%} (top-5 {result['test_top5']:.2%}, loss {result['test_loss']:.4f}), weight "
              f"sparsity {result['weight_sparsity']:.2%}, threshold d = {result['threshold']:.4g}")
        print_analysis(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
