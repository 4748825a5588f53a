"""The table of `specserve` sub-commands: each command module registers its commands here on import."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable

Handler = Callable[[argparse.Namespace], int]
COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Handler]] = {}


def command(name: str, help: str):
    """Register a sub-command: the decorated function adds its arguments; the function it binds does the work."""

    def decorator(add_arguments: Callable[[argparse.ArgumentParser], None]):
        def bind(run: Handler) -> Handler:
            COMMANDS[name] = (help, add_arguments, run)
            return run

        return bind

    return decorator


def data_root_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-root", type=Path, default=None,
                   help="folder the spec's data paths are relative to (default $SPECSERVE_DATA_ROOT or ./data)")


def train_override_args(p: argparse.ArgumentParser) -> None:
    """Flags that change the spec's `train` section for this run (merged into the Spec: models.cli.overrides)."""
    p.add_argument("--epochs", type=int, help="override train.epochs")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], help="override train.precision")


def plugin_args(p: argparse.ArgumentParser) -> None:
    """`--plugin MODULE` (repeatable): layers from outside specserve (models/layers/plugins.py). A command that
    reads specs adds this and calls `load_plugin_args(args)` before loading one."""
    from models.layers.plugins import PLUGIN_HELP

    p.add_argument("--plugin", action="append", default=[], metavar="MODULE", help=PLUGIN_HELP)


def load_plugin_args(args: argparse.Namespace) -> None:
    """Import the `--plugin` modules and the installed `specserve.layers` entry points (PluginError if one fails)."""
    from models.layers.plugins import load_plugins

    load_plugins(getattr(args, "plugin", None) or [])
