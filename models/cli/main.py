"""`specserve` command line: one sub-command per step of the line, each a thin layer over the library.

Errors the user caused (every SpecserveError) are printed as one line: exit 1 for a spec, 2 for anything else
(data, runs, checkpoints, exports, the store). Any other exception is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import sys

from models.cli import export_commands, serve_commands, spec_commands, train_commands  # noqa: F401  (register their commands)
from models.cli.commands import COMMANDS
from models.errors import SpecError, SpecserveError


def main(argv: list[str] | None = None) -> int:
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
    except SpecserveError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
