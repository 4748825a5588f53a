"""CUDA-only tests: the `cuda` marker (select them with `pytest tests/cuda -m cuda`; benchmarks/gpu_check.sh does)."""
from __future__ import annotations


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "cuda: needs an NVIDIA GPU")
