"""The trainer, resume, export and onnxruntime on a real NVIDIA GPU; every test is skipped where torch sees none.

    .venv/bin/python -m pytest tests/cuda -m cuda -q     # on a GPU machine (benchmarks/gpu_check.sh runs this)

Tiny specs and few steps (well under a minute in all): these prove that the CUDA paths work, not how fast they are
(benchmarks/train_cuda.py and benchmarks/gpu_check.sh measure that).
"""
from __future__ import annotations

import ctypes
import importlib.metadata
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from models.artifact import runtime
from models.spec.load import load_spec, load_spec_text
from models.train.checkpoint import load_checkpoint
from models.train.loop import TrainOptions, train
from tests.conftest import ROOT
from tests.train.test_train import TINY_DIGITS, _final_weights, write_spec

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device (torch.cuda.is_available() is False)")]


def test_bf16_channels_last_run_lowers_the_loss(tmp_path):
    spec = load_spec_text(TINY_DIGITS.replace("EPOCHS", "3"), "tiny-digits.yaml")
    spec = spec.with_train(precision="bf16", channels_last=True)
    result = train(spec, TrainOptions(out=tmp_path / "run", device="cuda", quiet=True, max_steps=40))
    losses = [h["train"]["loss"] for h in result.history]
    assert losses[-1] < losses[0], losses
    assert all(np.isfinite(losses)), losses
    conv = next(p for p in result.net.parameters() if p.dim() == 4)
    assert conv.device.type == "cuda"
    assert conv.is_contiguous(memory_format=torch.channels_last), "channels-last was asked for but not applied"
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["hardware"].startswith("CUDA: "), metrics["hardware"]
    assert load_spec(tmp_path / "run" / "spec.yaml").train.precision == "bf16"  # the run records what it trained with


# ------------------------------------------------------------------ SIGKILL mid-epoch, then --resume
# cuDNN's default algorithms are not bitwise reproducible from one process to the next (some accumulate with
# atomics), so two uninterrupted CUDA runs may already differ in the last bits. Both runs here use PyTorch's
# deterministic algorithms: what is tested is that --resume restores everything (weights, optimizer, schedule, the
# CPU and CUDA random states), as tests/train/test_train.py's CPU test does, to the same 1e-6.
_DETERMINISTIC_CLI = ("import sys, torch; torch.use_deterministic_algorithms(True, warn_only=True); "
                      "from models.cli.main import main; sys.exit(main())")


def _train_command(spec_path: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-c", _DETERMINISTIC_CLI, "train", str(spec_path), "--out", str(out), "--device", "cuda",
            "--quiet", *extra]


def _env() -> dict[str, str]:
    return {**os.environ, "CUBLAS_WORKSPACE_CONFIG": ":4096:8"}  # cuBLAS's deterministic mode needs this


def test_sigkill_then_resume_on_cuda_matches_uninterrupted_run(tmp_path):
    epochs = 6  # a GPU epoch of this spec is well under a second: room for the kill to land before the end
    spec_path = write_spec(tmp_path, TINY_DIGITS.replace("EPOCHS", str(epochs)).replace("batch_size: 16", "batch_size: 4"))
    reference = tmp_path / "reference"
    done = subprocess.run(_train_command(spec_path, reference), cwd=ROOT, env=_env(), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    killed = tmp_path / "killed"
    proc = subprocess.Popen(_train_command(spec_path, killed), cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    pointer = killed / "checkpoints" / "last.json"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if pointer.exists() and json.loads(pointer.read_text() or "{}").get("epoch", 0) >= 2:
            break
        time.sleep(0.01)
    assert proc.poll() is None, f"the run to be killed ended first (exit {proc.returncode})"
    time.sleep(0.1)  # into epoch 3
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = load_checkpoint(killed / "checkpoints", "last").pointer["epoch"]
    assert 2 <= finished < epochs, f"the kill should land before the run finished (last checkpoint: epoch {finished})"

    resumed = subprocess.run(_train_command(spec_path, killed, "--resume"), cwd=ROOT, env=_env(), capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    history = json.loads((killed / "metrics.json").read_text())["history"]
    assert [h["epoch"] for h in history] == list(range(1, epochs + 1))
    ref_history = json.loads((reference / "metrics.json").read_text())["history"]
    assert history[-1]["test"]["accuracy"] == ref_history[-1]["test"]["accuracy"]
    assert history[-1]["train"]["loss"] == pytest.approx(ref_history[-1]["train"]["loss"], rel=1e-6)
    ref, got = _final_weights(reference), _final_weights(killed)
    for name in ref:
        torch.testing.assert_close(got[name], ref[name], rtol=0, atol=1e-6)


# ------------------------------------------------------------------ a CUDA-trained run → ONNX → onnxruntime
@pytest.fixture(scope="module")
def cuda_run(tmp_path_factory) -> Path:
    """A tiny digits run trained on CUDA (bf16 autocast, the trainer's default there)."""
    out = tmp_path_factory.mktemp("cuda-run") / "run"
    spec = load_spec_text(TINY_DIGITS.replace("EPOCHS", "2"), "tiny-digits.yaml")
    train(spec, TrainOptions(out=out, device="cuda", quiet=True, max_steps=60))
    return out


def _export(run: Path):
    # imported here: models.pipeline needs bentoml (the store), the training tests above do not
    from models.pipeline import export_run

    return export_run(run, quiet=True)


def test_cuda_trained_run_exports_and_passes_parity_on_cpu(cuda_run):
    exported = _export(cuda_run)
    assert exported.parity.passed
    assert exported.parity.providers == [runtime.CPU]  # the proof is on CPU, whatever device trained the weights
    assert (exported.directory / "model.onnx").is_file()


def _provider_diagnosis() -> str:
    """Why a session got no CUDA provider: which onnxruntime wheel, what it lists, what the loader says."""
    import onnxruntime as ort

    wheels = []
    for dist in ("onnxruntime-gpu", "onnxruntime"):  # the CPU wheel has no CUDA provider at all
        try:
            wheels.append(f"{dist} {importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            pass
    capi = Path(ort.__file__).parent / "capi"
    try:
        ctypes.CDLL(str(capi / "libonnxruntime_providers_shared.so"), mode=ctypes.RTLD_GLOBAL)
        ctypes.CDLL(str(capi / "libonnxruntime_providers_cuda.so"))
        loads = "loads"
    except OSError as err:
        loads = f"does not load: {err}"
    return (f"installed: {', '.join(wheels) or 'no onnxruntime distribution'} ({ort.__file__}); "
            f"get_available_providers() = {ort.get_available_providers()}; CUDA devices seen by the driver: "
            f"{runtime._cuda_device_count()}; the CUDA provider library {loads}")


def test_onnxruntime_really_runs_on_cuda(cuda_run):
    onnx_path = cuda_run / "export" / "model.onnx"
    if not onnx_path.is_file():
        _export(cuda_run)
    session = runtime.make_session(onnx_path)  # what the service does: the providers that really work here
    assert session.get_providers()[0] == runtime.CUDA, (
        f"session providers {session.get_providers()}; {_provider_diagnosis()}")
    cpu = runtime.make_session(onnx_path, providers=(runtime.CPU,))
    feed_name = session.get_inputs()[0].name
    pixels = np.random.default_rng(0).integers(0, 256, (64, 8, 8, 1), dtype=np.uint8)  # the card's (N, H, W, C) uint8
    on_gpu = session.run(None, {feed_name: pixels})[0]
    on_cpu = cpu.run(None, {feed_name: pixels})[0]
    np.testing.assert_allclose(on_gpu, on_cpu, rtol=1e-2, atol=1e-2)  # TF32 convolutions on the GPU
    assert (on_gpu.argmax(-1) == on_cpu.argmax(-1)).mean() >= 0.95
