"""`specserve` command line: one sub-command per step of the line, each a thin layer over the library."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Callable

from .errors import SpecError


def _validate(args: argparse.Namespace) -> int:
    from .builder import infer
    from .spec import load_spec

    failed = 0
    for path in args.specs:
        try:
            inferred = infer(load_spec(path))
        except SpecError as err:
            failed += 1
            print(err, file=sys.stderr)
            continue
        print(f"ok {path}: {inferred.params:,} parameters, output {inferred.output}")
    return 1 if failed else 0


def _summary(args: argparse.Namespace) -> int:
    from .builder import summary_table
    from .spec import load_spec

    print(summary_table(load_spec(args.spec)))
    return 0


COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {}


def command(name: str, help: str):
    """Register a sub-command: the decorated function adds its arguments; `run` does the work."""

    def decorator(add_arguments: Callable[[argparse.ArgumentParser], None]):
        def bind(run: Callable[[argparse.Namespace], int]):
            COMMANDS[name] = (help, add_arguments, run)
            return run

        return bind

    return decorator


def _add_validate(p: argparse.ArgumentParser) -> None:
    p.add_argument("specs", nargs="+", help="spec files")


def _add_summary(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", help="spec file")


command("validate", "check specs: syntax, fields, layers and shapes (exit 1 on any error)")(_add_validate)(_validate)
command("summary", "print the layer table: output shapes, parameters, multiply-adds")(_add_summary)(_summary)


def _load_plugins() -> None:
    # commands of later stages register themselves on import; a missing optional stage is not an error here
    for module in ("models.train_cli", "models.export_cli", "models.serve_cli"):
        try:
            __import__(module)
        except ModuleNotFoundError as err:
            if err.name != module:
                raise


def main(argv: list[str] | None = None) -> int:
    _load_plugins()
    parser = argparse.ArgumentParser(prog="specserve", description="Declarative model training, export and serving.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, add_arguments, run) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_arguments(p)
        p.set_defaults(_handler=run)
    args = parser.parse_args(argv)
    try:
        return args._handler(args)
    except SpecError as err:
        print(err, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # the user gets one line, not a traceback; SPECSERVE_DEBUG=1 shows it
        if os.environ.get("SPECSERVE_DEBUG"):
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    # run the imported module's main: sub-commands register into models.cli.COMMANDS, not into __main__'s copy
    from models.cli import main as _main

    sys.exit(_main())
