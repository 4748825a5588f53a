"""`specserve serve [MODEL...]`: stored models over HTTP, each on its task's endpoint (registered on import).

    specserve serve                         every stored model, by its task (classify, segment, generate, ...)
    specserve serve my-cnn char-gru         just these (name, or name:version), the first per endpoint its default
    specserve serve --config serving.yaml   exactly what that serving config says

With models named (or none and no config at all) the serving config is written — the settings of --config, else
of $SPECSERVE_CONFIG, else of the shipped service/serving.yaml, with its `endpoints` replaced by these models — to
--write (default $BENTOML_HOME/specserve/serving.yaml), and `bentoml serve service.service:SpecServe` is exec'd
with SPECSERVE_CONFIG pointing at it. A model missing from the store stops here with one line that names the store
and the command that would make it. Torch is never imported: this reads the store and the task table only.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import yaml

from models.cli.commands import command
from models.errors import SpecserveError

ROOT = Path(__file__).resolve().parents[2]  # holds the `service` package, in a checkout and in site-packages alike
SHIPPED = ROOT / "service" / "serving.yaml"
SPECS = ROOT / "specs"
CONFIG_ENV = "SPECSERVE_CONFIG"


class ServeError(SpecserveError):
    """Nothing to serve, or a model that cannot be served; one line."""


def _add_serve(p: argparse.ArgumentParser) -> None:
    p.add_argument("models", nargs="*", metavar="MODEL",
                   help="stored model (name or name:version); none = every stored model, unless a config is given")
    p.add_argument("--config", type=Path, help=f"serving config (default ${CONFIG_ENV}); with MODELs, only its "
                                               f"settings are kept and its endpoints replaced")
    p.add_argument("--write", type=Path, help="where the serving config made from the models goes (default "
                                              "$BENTOML_HOME/specserve/serving.yaml)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 = all)")
    p.add_argument("--port", type=int, default=3000)
    p.add_argument("--dry-run", action="store_true", help="write the config and print the command; start nothing")


def store_path() -> Path:
    from models.artifact.store import model_store

    return Path(str(model_store()._path))


def spec_hint(name: str) -> str:
    """The command that would make model `name`: `specserve run` of the project spec named so, if one is."""
    for path in sorted(SPECS.glob("*.yaml")) if SPECS.is_dir() else []:
        try:
            if (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("name") == name:
                return f"specserve run {path.relative_to(ROOT)}"
        except (OSError, yaml.YAMLError, AttributeError):
            continue
    return f"specserve run <a spec with name: {name}>"


def endpoint_of(tag: str) -> tuple[str, str]:
    """(endpoint, resolved tag) of a stored model, from its verified card and the task table."""
    from models.artifact.store import StoreError, load_from_store
    from models.task_table import task_kind

    try:
        stored = load_from_store(tag)
    except StoreError as e:
        if "no stored model" in str(e):
            raise ServeError(f"model {tag} is not in the model store {store_path()}; make it with "
                             f"`{spec_hint(tag.split(':')[0])}`") from None
        raise ServeError(str(e)) from None
    kind = task_kind(stored.card.task, stored.card.input.kind)
    assert kind is not None  # the card accepts only the table's pairs
    return kind.endpoint, stored.tag


def every_stored_model() -> list[str]:
    """Names of every model in the store that specserve can serve (others are skipped, with a line each)."""
    from models.artifact.store import model_store

    names = sorted({str(m.tag.name) for m in model_store().list()})
    servable = []
    for name in names:
        try:
            endpoint_of(name)
        except SpecserveError as e:
            print(f"skipped {name}: {e}", file=sys.stderr)
            continue
        servable.append(name)
    if not servable:
        raise ServeError(f"no servable model in the model store {store_path()}; make one with "
                         f"`specserve run specs/<spec>.yaml`")
    return servable


def config_for(models: list[str], base: dict[str, Any]) -> dict[str, Any]:
    """`base` with its endpoints replaced by `models`, each on its task's endpoint (the first its default), keeping
    an endpoint's batching settings where `base` had that endpoint."""
    endpoints: dict[str, dict[str, Any]] = {}
    for model in models:
        endpoint, _ = endpoint_of(model)
        entry = endpoints.setdefault(endpoint, {"models": []})
        if model.split(":")[0] in {m.split(":")[0] for m in entry["models"]}:
            raise ServeError(f"model {model.split(':')[0]} is named twice")
        entry["models"].append(model)
    from models.task_table import ENDPOINTS

    endpoints = {endpoint: endpoints[endpoint] for endpoint in ENDPOINTS if endpoint in endpoints}  # table order
    for endpoint, entry in endpoints.items():
        old = (base.get("endpoints") or {}).get(endpoint) or {}
        if old.get("batching"):
            entry["batching"] = old["batching"]
    return {**base, "endpoints": endpoints}


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ServeError(f"{path}: cannot read the serving config ({e})") from None
    if not isinstance(data, dict):
        raise ServeError(f"{path}: a serving config is a mapping")
    return data


def check_models(config: dict[str, Any], path: Path) -> None:
    """ServeError for the first model of `config` not in the store (one line)."""
    for endpoint, entry in (config.get("endpoints") or {}).items():
        for ref in (entry or {}).get("models") or []:
            tag = ref["tag"] if isinstance(ref, dict) else str(ref)
            try:
                endpoint_of(tag)
            except ServeError as e:
                raise ServeError(f"{path}: {endpoint}: {e}") from None


@command("serve", "serve stored models over HTTP, each on its task's endpoint (exec's `bentoml serve`)")(_add_serve)
def _serve(args: argparse.Namespace) -> int:
    given = args.config or (Path(os.environ[CONFIG_ENV]) if os.environ.get(CONFIG_ENV) else None)
    if args.models or given is None:
        base = read_yaml(given or SHIPPED)
        config = config_for(args.models or every_stored_model(), base)
        path = args.write or store_path().parent / "specserve" / "serving.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"# written by `specserve serve{''.join(' ' + m for m in args.models)}` (settings from "
                        f"{given or SHIPPED})\n" + yaml.safe_dump(config, sort_keys=False))
    else:
        path = given
        config = read_yaml(path)
        check_models(config, path)
    for endpoint, entry in config["endpoints"].items():
        print(f"{endpoint}: {', '.join(str(m) for m in entry['models'])}")
    bentoml = shutil.which("bentoml", path=str(Path(sys.executable).parent)) or shutil.which("bentoml")
    if bentoml is None:
        raise ServeError("the `bentoml` command is not installed beside this Python (pip install bentoml)")
    argv = [bentoml, "serve", "service.service:SpecServe", "--working-dir", str(ROOT), "--host", args.host,
            "--port", str(args.port)]
    print(f"serving config {path.resolve()}\n{CONFIG_ENV}={path.resolve()} {' '.join(argv)}", flush=True)
    if args.dry_run:
        return 0
    os.execve(bentoml, argv, {**os.environ, CONFIG_ENV: str(path.resolve())})
