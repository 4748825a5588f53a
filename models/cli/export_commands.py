"""`specserve export`, `specserve run` and `specserve generate` (registered into models.cli.commands on import)."""
from __future__ import annotations

import argparse
from pathlib import Path

from models.cli.commands import command, data_root_arg, load_plugin_args, plugin_args, train_override_args
from models.errors import SpecserveError


class ExportUsageError(SpecserveError):
    """The export's source and --weights do not go together."""


def _add_export(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", type=Path, help="a run directory, or a spec file (with --weights)")
    p.add_argument("--weights", help="for a spec: 'init' (its initialisation, --seed) or a weights file "
                                     "(safetensors, or a torch state_dict such as torchvision's)")
    p.add_argument("--seed", type=int, default=0, help="for --weights init: the initialisation's seed")
    p.add_argument("--out", type=Path, help="for a spec: where the export goes (default runs/<name>/export)")
    p.add_argument("--checkpoint", choices=["best", "last"], default="best")
    p.add_argument("--quantize", choices=["none", "dynamic", "static"], help="override export.quantize")
    p.add_argument("--store", action="store_true", help="also save the export to the BentoML model store")
    data_root_arg(p)
    plugin_args(p)


@command("export", "export a run (or a spec with --weights) to ONNX, prove parity, quantize if the spec asks")(_add_export)
def _export(args: argparse.Namespace) -> int:
    load_plugin_args(args)  # a run's spec may name plugin layers: they must be registered first
    from models.pipeline import export_run, export_spec, store_export
    from models.spec.load import load_spec

    if args.source.is_dir():
        if args.weights:
            raise ExportUsageError(f"{args.source} is a run: it exports its own checkpoint; --weights goes with a spec")
        exported = export_run(args.source, data_root=args.data_root, checkpoint=args.checkpoint,
                              quantize_method=args.quantize)
    else:
        if not args.weights:
            raise ExportUsageError(f"{args.source}: exporting a spec needs --weights init or --weights FILE")
        spec = load_spec(args.source)
        out = args.out or Path("runs") / spec.name / "export"
        exported = export_spec(spec, args.weights, out=out, seed=args.seed, quantize_method=args.quantize)
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
    plugin_args(p)


@command("run", "the whole line for each spec: validate → train → export → verify → store")(_add_run)
def _run(args: argparse.Namespace) -> int:
    load_plugin_args(args)  # a run's spec may name plugin layers: they must be registered first
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
    plugin_args(p)


@command("generate", "continue a text prefix with a trained character model")(_add_generate)
def _generate(args: argparse.Namespace) -> int:
    load_plugin_args(args)  # a run's spec may name plugin layers: they must be registered first
    from models.train.generate import generate_from_run

    print(generate_from_run(args.run, args.prefix, args.length, args.temperature, args.top_k, args.seed))
    return 0
