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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "list":
        print_registries()
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
