"""onnxruntime sessions: the providers that really work here, and one way to open a session.

The onnxruntime-gpu wheel lists CUDAExecutionProvider in ``get_available_providers()`` on machines without a
GPU (and without the CUDA/cuDNN libraries its provider needs); asking for it then prints an error and silently
falls back to CPU. So CUDA is offered only after proving, silently, that a CUDA device exists (libcuda's
cuInit + cuDeviceGetCount) and that the CUDA provider library and its dependencies load (dlopen).
"""
from __future__ import annotations

import ctypes
import functools
import os
import tempfile
from pathlib import Path
from typing import Sequence

import onnx
import onnxruntime as ort

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"

# ORT severities: 0 verbose, 1 info, 2 warning, 3 error, 4 fatal. Provider set-up problems are logged at
# warning/error level by the default logger even when the session itself succeeds; they are prevented by
# available_providers() rather than hidden, and real failures still surface as Python exceptions.
_LOG_SEVERITY = 3
_ALL = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
_SPINNING = "session.intra_op.allow_spinning"


def _cuda_device_count() -> int:
    """Number of CUDA devices the driver reports; 0 when there is no driver or no device."""
    try:
        libcuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return 0
    count = ctypes.c_int(0)
    if libcuda.cuInit(0) != 0 or libcuda.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return 0
    return count.value


def _cuda_provider_loads() -> bool:
    """True when ORT's CUDA provider library and everything it links (cuBLAS, cuDNN, ...) can be loaded."""
    capi = Path(ort.__file__).parent / "capi"
    try:
        ctypes.CDLL(str(capi / "libonnxruntime_providers_shared.so"), mode=ctypes.RTLD_GLOBAL)
        ctypes.CDLL(str(capi / "libonnxruntime_providers_cuda.so"))
    except OSError:
        return False
    return True


@functools.lru_cache(maxsize=1)
def _usable_providers() -> tuple[str, ...]:
    if CUDA in ort.get_available_providers() and _cuda_device_count() > 0 and _cuda_provider_loads():
        return (CUDA, CPU)
    return (CPU,)


def available_providers() -> list[str]:
    """["CUDAExecutionProvider", "CPUExecutionProvider"] when CUDA really works here, else ["CPUExecutionProvider"].
    Probed once per process (loading the CUDA libraries is slow)."""
    return list(_usable_providers())


def session_options(threads: int | None = None, level: ort.GraphOptimizationLevel = _ALL) -> ort.SessionOptions:
    """Options every specserve session uses: bounded intra-op threads, every graph optimization, no spinning
    worker threads, quiet logs.

    ORT_ENABLE_ALL: its layout rewrites (NCHWc fp32 convolutions, NHWC QLinearConv) are what make onnxruntime
    fast here; measured on ResNet-18 (1×96×96, batch 1, 1 thread, CPU time, AVX2): fp32 3.4–3.6× faster than
    torch eager with ALL, 2.8–2.9× with EXTENDED; int8 1.9× faster than fp32 with ALL, 1.7× with EXTENDED.

    No spinning: idle intra-op workers normally busy-wait for the next parallel section. On a 2-core machine
    shared with training jobs a spinning worker steals the core its partner needs; ResNet-18 at batch 1 with
    2 threads took 45–48 ms per call with spinning and 24–29 ms without (CPU time 19–21 → 12–14 ms). With one
    thread there is no worker pool, so this changes nothing there.
    """
    so = ort.SessionOptions()
    so.graph_optimization_level = level
    so.log_severity_level = _LOG_SEVERITY
    so.add_session_config_entry(_SPINNING, "0")
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    return so


def make_session(model: str | os.PathLike | bytes, threads: int | None = None, *,
                 providers: Sequence[str] | None = None,
                 options: ort.SessionOptions | None = None) -> ort.InferenceSession:
    """An InferenceSession on `model` (path or serialized bytes) with the providers that really work here.

    threads: intra-op threads (None = onnxruntime's default, one per core); `options` overrides the defaults
    entirely (used for offline optimization, where the options carry the output path).
    """
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, options or session_options(threads),
                                providers=list(providers or available_providers()))


def runtime_ops(model: str | os.PathLike, threads: int | None = None) -> list[str]:
    """Operator types, in graph order, of the graph onnxruntime really runs on this CPU after every optimization
    (fusions, QDQ → QLinear* kernels, layout changes): what decides speed, where the file's own ops do not."""
    with tempfile.TemporaryDirectory(prefix="specserve-ops-") as tmp:
        options = session_options(threads)
        options.optimized_model_filepath = str(Path(tmp) / "runtime.onnx")
        make_session(model, options=options, providers=(CPU,))
        return [node.op_type for node in onnx.load(options.optimized_model_filepath).graph.node]
