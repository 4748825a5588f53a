"""Fixtures of the service tests: real stored models in a throwaway BentoML home (the server: live_server.py)."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Iterator

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # helper modules beside this file, under any import mode
import stored_models  # noqa: E402
from live_server import Server, serve  # noqa: E402


@pytest.fixture(scope="session")
def stored(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, str]]]:
    """(BENTOML_HOME, model name → tag): the test models, trained for seconds on the real datasets, stored."""
    home = tmp_path_factory.mktemp("bentoml")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BENTOML_HOME", str(home))
        yield home, stored_models.make_all(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def server(stored: tuple[Path, dict[str, str]], tmp_path_factory: pytest.TempPathFactory,
           request: pytest.FixtureRequest) -> Iterator[Server]:
    """A real `bentoml serve` of the stored test models on a free port, for one test module, stopped after. A module
    may set SERVER_CONFIG, a dict of serving-config keys that replace live_server.serving_config's (e.g. workers),
    and SERVER_ENV, environment variables for the server."""
    home, tags = stored
    overrides = getattr(request.module, "SERVER_CONFIG", None)
    with serve(home, tags, tmp_path_factory.mktemp("server"), overrides=overrides,
               extra_env=getattr(request.module, "SERVER_ENV", None)) as running:
        yield running
