"""``snn-stp`` command line (also ``python -m snn_stp``): parse, call the library, print."""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="snn-stp", description=__doc__.split(":")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    from .demo import DEMO_SCHEDULERS
    demo = sub.add_parser("demo", help="train and prune a spiking MLP on the bundled digits (about 10 s on 2 CPU cores)",
                          description="Train a spiking MLP (or its ANN twin) on the bundled 8x8 digits with a soft "
                                      "threshold pruning scheduler; print accuracy, sparsity, threshold and implied L1.")
    demo.add_argument("--scheduler", default="lats", choices=DEMO_SCHEDULERS, help="threshold scheduler (default: lats)")
    demo.add_argument("--final-threshold", type=float, default=0.2, metavar="D", help="final threshold D (default: 0.2)")
    demo.add_argument("--epochs", type=int, default=20, help="training epochs (default: 20)")
    demo.add_argument("--lr", type=float, default=0.1, help="peak learning rate of SGD with a cosine schedule")
    demo.add_argument("--time-steps", type=int, default=4, metavar="T", help="simulation time steps (default: 4)")
    demo.add_argument("--ann", action="store_true", help="train the ANN twin (ReLU, no time dimension) instead")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--quiet", action="store_true", help="print only the final line")
    train = sub.add_parser("train", help="train (and prune) a model from a config; with none, the embedded default",
                           description="Train a model from a YAML config (default: a spiking MLP on the bundled "
                                       "digits pruned with LATS, a few minutes on 2 CPU cores).")
    train.add_argument("--config", help="YAML recipe (see experiments/)")
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
    sub.add_parser("list", help="list the registered models, data sets and threshold schedulers",
                   description="List the registered models (spiking ones with their ANN twins), data sets and threshold "
                               "schedulers.")
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
        trainer = Trainer(config, run_dir, resume=args.command == "resume", quiet=args.quiet,
                          dry_run=getattr(args, "dry_run", False))
    except ConfigError as error:
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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "list":
        print_registries()
    elif args.command in ("train", "resume"):
        return run_training(args)
    elif args.command == "eval":
        from .train import evaluate_checkpoint
        result = evaluate_checkpoint(args.path)
        print(f"{result['checkpoint']} (epoch {result['epoch']}, step {result['global_step']}): test accuracy "
              f"{result['test_acc']:.2%} (top-5 {result['test_top5']:.2%}, loss {result['test_loss']:.4f}), weight "
              f"sparsity {result['weight_sparsity']:.2%}, threshold d = {result['threshold']:.4g}")
    elif args.command == "demo":
        from .demo import run_demo
        if args.epochs < 1 or args.time_steps < 1:
            raise SystemExit("snn-stp demo: --epochs and --time-steps must be >= 1")
        quiet = args.quiet
        run_demo(scheduler=args.scheduler, final_threshold=args.final_threshold, epochs=args.epochs, lr=args.lr,
                 time_steps=args.time_steps, spiking=not args.ann, seed=args.seed,
                 log=(lambda m: print(m) if m.startswith("final:") else None) if quiet else print)
    return 0


if __name__ == "__main__":
    sys.exit(main())
