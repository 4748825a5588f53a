"""Layers from outside specserve: plugin modules named on the command line, and installed packages.

A plugin is a Python module that registers layers when imported, with the same decorator the built-in layers use:

    from models.layers.builtin import Args, Signal, register

    @register("my_gate", ranks=(3,))
    def my_gate(args: Args, x: Signal) -> torch.nn.Module: ...

It joins with `--plugin my_package.layers` (repeatable) on the commands that read specs, or, for an installed
package, with an entry point in the group `specserve.layers` (pyproject: `[project.entry-points."specserve.layers"]
my_layers = "my_package.layers"`), loaded by the same commands. Either way a plugin is code you chose to run: it is
imported like any Python module, with your permissions; name only modules you trust.

A plugin changes what specs can say, not what specserve produces: the layers it registers are built, trained and
exported like any other, and an exported ONNX graph consists of standard operators, so serving it never needs the
plugin (nor Python).
"""
from __future__ import annotations

import importlib
import importlib.metadata
from typing import Iterable

from models.errors import SpecserveError

ENTRY_POINT_GROUP = "specserve.layers"
PLUGIN_HELP = ("import this Python module before reading specs, so the layers it registers can be used; repeatable. "
               "A plugin is code you choose to run: it is imported with your permissions, so name only modules you "
               f"trust. Installed packages' '{ENTRY_POINT_GROUP}' entry points are loaded too. Exported ONNX graphs "
               "never need the plugin.")

_loaded: dict[str, str] = {}  # plugin → where it came from ("--plugin" or the distribution of an entry point)


class PluginError(SpecserveError):
    """A plugin that cannot be imported, fails while registering, or registers a name that is taken."""


def _import(module: str, origin: str) -> None:
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as err:
        if err.name and (module == err.name or module.startswith(err.name + ".")):
            raise PluginError(f"plugin {module} ({origin}): no module named {err.name} (is it installed, or on "
                              "PYTHONPATH?)") from None
        raise PluginError(f"plugin {module} ({origin}) failed while importing: {err}") from None
    except SpecserveError as err:
        raise PluginError(f"plugin {module} ({origin}): {err}") from None
    except Exception as err:  # noqa: BLE001 - whatever the plugin raised, say which plugin and what
        detail = (str(err).strip().splitlines() or [""])[0]
        raise PluginError(f"plugin {module} ({origin}) failed while importing: {type(err).__name__}: {detail}") from None


def load_plugins(modules: Iterable[str] = (), *, entry_points: bool = True) -> list[str]:
    """Import each plugin module (each once per process), then the installed `specserve.layers` entry points;
    returns the plugins loaded by this call. Raises PluginError naming the plugin."""
    new: list[str] = []
    for module in modules:
        module = module.strip()
        if not module or not all(part.isidentifier() for part in module.split(".")):
            raise PluginError(f"--plugin takes a module path like my_package.layers, got {module!r}")
        if module not in _loaded:
            _import(module, "--plugin")
            _loaded[module] = "--plugin"
            new.append(module)
    if entry_points:
        for point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            key = f"{point.name}={point.value}"
            if key in _loaded:
                continue
            origin = f"entry point {point.name} of {point.dist.name if point.dist else 'an installed package'}"
            module, _, attr = point.value.partition(":")
            _import(module.strip(), origin)
            if attr:  # "package.module:register" names a function that registers the layers
                try:
                    target = point.load()
                    if callable(target):
                        target()
                except SpecserveError as err:
                    raise PluginError(f"plugin {point.value} ({origin}): {err}") from None
                except Exception as err:  # noqa: BLE001
                    raise PluginError(f"plugin {point.value} ({origin}) failed: {type(err).__name__}: {err}") from None
            _loaded[key] = origin
            new.append(point.value)
    return new


def loaded_plugins() -> dict[str, str]:
    """Plugins loaded in this process, with where each came from."""
    return dict(_loaded)
