"""`specserve validate` and `specserve summary`: the spec alone, no data and no training."""
from __future__ import annotations

import argparse
import sys

from models.build import infer, summary_table
from models.cli.commands import command, load_plugin_args, plugin_args
from models.errors import SpecError
from models.spec.load import load_spec


def _add_validate(p: argparse.ArgumentParser) -> None:
    p.add_argument("specs", nargs="+", help="spec files")
    plugin_args(p)


@command("validate", "check specs: syntax, fields, layers and shapes (exit 1 on any error)")(_add_validate)
def _validate(args: argparse.Namespace) -> int:
    load_plugin_args(args)
    failed = 0
    for path in args.specs:
        try:
            inferred = infer(load_spec(path))
        except SpecError as err:  # every spec is checked: one bad file does not hide the next one's problems
            failed += 1
            print(err, file=sys.stderr)
            continue
        print(f"ok {path}: {inferred.params:,} parameters, output {inferred.output}")
    return 1 if failed else 0


def _add_summary(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", help="spec file")
    plugin_args(p)


@command("summary", "print the layer table: output shapes, parameters, multiply-adds")(_add_summary)
def _summary(args: argparse.Namespace) -> int:
    load_plugin_args(args)
    print(summary_table(load_spec(args.spec)))
    return 0
