"""Shared fixtures: the project root, the specs, and the optional real data beside the checkout (../shared/data)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SPECS = sorted((ROOT / "specs").glob("*.yaml"))
SHARED_DATA = ROOT.parent / "shared" / "data"

# never touch the user's ~/bentoml from tests
os.environ.setdefault("BENTOML_HOME", str(ROOT / ".pytest_cache" / "bentoml"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not beside this checkout")
    return SHARED_DATA
