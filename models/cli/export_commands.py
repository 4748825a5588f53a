"""`specserve export`, `specserve run` and `specserve generate` (registered into models.cli.commands on import)."""
from __future__ import annotations

import argparse
from pathlib import Path

from models.cli.commands import command, data_root_arg, train_override_args


def _add_export(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", type=Path, help="run directory")
    p.add_argument("--checkpoint", choices=["best", "last"], default="best")
    p.add_argument("--quantize", choices=["none", "dynamic", "static"], help="override export.quantize")
    p.add_argument("--store", action="store_true", help="also save the export to the BentoML model store")
    data_root_arg(p)


@command("export", "export a run to ONNX, prove parity on real samples, quantize if the spec asks")(_add_export)
def _export(args: argparse.Namespace) -> int:
    from models.pipeline import export_run, store_export

    exported = export_run(args.run, data_root=args.data_root, checkpoint=args.checkpoint, quantize_method=args.quantize)
    print(f"exported {exported.export.path} ({exported.export.exporter}, opset {exported.export.opset})")
    if args.store:
        print(f"stored {store_export(exported)}")
    return 0


def _add_run(p: argparse.ArgumentParser) -> None:
    p.add_argument("specs", nargs="+", help="spec files")
    train_override_args(p)
    p.add_argument("--runs", type=Path, default=Path("runs"), help="where run directories go (default runs/)")
    p.add_argument("--device")
    p.add_argument("--quiet", action="store_true")
    data_root_arg(p)


@command("run", "the whole line for each spec: validate → train → export → verify → store")(_add_run)
def _run(args: argparse.Namespace) -> int:
    from models.pipeline import run_line
    from models.train.loop import TrainOptions

    for spec in args.specs:
        name = Path(spec).stem
        out = args.runs / name
        if out.exists():  # each `run` trains afresh; the previous run is kept aside, not overwritten
            out.rename(args.runs / f"{name}.previous-{int(out.stat().st_mtime)}")
        options = TrainOptions(out=out, device=args.device, data_root=args.data_root, quiet=args.quiet)
        overrides = {"epochs": args.epochs, "precision": args.precision}
        print(run_line(spec, options, train_overrides=overrides, quiet=args.quiet).summary(), flush=True)
    return 0


def _add_generate(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", type=Path, help="run directory of a character model")
    p.add_argument("prefix", help="text to continue")
    p.add_argument("--length", type=int, default=100)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)


@command("generate", "continue a text prefix with a trained character model")(_add_generate)
def _generate(args: argparse.Namespace) -> int:
    from models.train.generate import generate_from_run

    print(generate_from_run(args.run, args.prefix, args.length, args.temperature, args.top_k, args.seed))
    return 0
