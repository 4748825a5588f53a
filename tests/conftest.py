"""Shared fixtures: the project root, the specs, and the optional real data beside the checkout (../shared/data)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SPECS = sorted((ROOT / "specs").glob("*.yaml"))
SHARED_DATA = ROOT.parent / "shared" / "data"

# never touch the user's ~/bentoml from tests
os.environ.setdefault("BENTOML_HOME", str(ROOT / ".pytest_cache" / "bentoml"))
# One intra-op thread in the test process and every subprocess it starts: tests run torch, onnxruntime and
# servers side by side on 2 cores, and OpenMP threads waiting on a busy core made small recurrent steps 10-20×
# slower (measured: a GRU step 0.12 s with 1 thread, 2.4-4.6 s with 2 under load).
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not beside this checkout")
    return SHARED_DATA
