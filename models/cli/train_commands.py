"""`specserve train` and `specserve evaluate` (registered into models.cli.commands on import)."""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from models.cli.commands import command, data_root_arg, load_plugin_args, plugin_args, train_override_args


def _add_train(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", help="spec file")
    p.add_argument("--out", type=Path, help="run directory (default runs/<spec name>)")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: CUDA when available)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--max-steps", type=int, help="at most this many steps per epoch (smoke runs)")
    p.add_argument("--compile", action="store_true", help="torch.compile the network")
    p.add_argument("--quiet", action="store_true", help="no per-epoch output")
    train_override_args(p)
    data_root_arg(p)
    plugin_args(p)


@command("train", "train a spec; checkpoints, metrics.json and curves.png go to the run directory")(_add_train)
def _train(args: argparse.Namespace) -> int:
    load_plugin_args(args)  # a run's spec may name plugin layers: they must be registered first
    from models.spec.load import load_spec
    from models.spec.overrides import with_train_overrides
    from models.train.loop import TrainOptions, train

    spec = with_train_overrides(load_spec(args.spec), {"epochs": args.epochs, "precision": args.precision})
    result = train(spec, TrainOptions(out=args.out, device=args.device, data_root=args.data_root, resume=args.resume,
                                      max_steps=args.max_steps, compile=args.compile, quiet=args.quiet))
    final = {k: v for k, v in result.final.items() if isinstance(v, (int, float))}
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun only rank 0 evaluates and reports
        print(f"run {result.run.path}: {json.dumps(final)}")
    return 0


def _add_evaluate(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", type=Path, help="run directory")
    p.add_argument("--checkpoint", choices=["best", "last"], default="best")
    p.add_argument("--device")
    data_root_arg(p)
    plugin_args(p)


@command("evaluate", "evaluate a run's checkpoint on the held-out data")(_add_evaluate)
def _evaluate(args: argparse.Namespace) -> int:
    load_plugin_args(args)  # a run's spec may name plugin layers: they must be registered first
    from models.train.loop import evaluate_run

    metrics = evaluate_run(args.run, args.checkpoint, args.data_root, args.device)
    print(json.dumps({k: v for k, v in metrics.items() if k != "confusion_matrix"}, indent=2))
    return 0
