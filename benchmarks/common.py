"""What every benchmark script shares: paths, spec variants, interleaved timing, markdown, BENCHMARKS.md sections.

BENCHMARKS.md is written in sections, each between `<!-- NAME:begin -->` and `<!-- NAME:end -->`, so re-running one
benchmark replaces only its own figures; a `machine` section at the top holds the facts of the machine that last
wrote to the file (each section also names its own date and load, since sections can come from different runs).

Timing rule for this project: the machine has 2 cores shared with other work, so an absolute number means little.
Every benchmark measures its candidate and its baseline in the same process, interleaved round by round (ABAB...),
and reports medians and the median of per-round ratios.
"""
from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import yaml

ROOT = Path(__file__).resolve().parents[1]
SPECS = ROOT / "specs"
BENCHMARKS_MD = ROOT / "BENCHMARKS.md"
SHARED_DATA = ROOT.parent / "shared" / "data"  # offline copies of Fashion-MNIST, MNIST, ... (may be absent)
PYTHON = ".venv/bin/python"  # how the commands recorded in BENCHMARKS.md are spelled


# ----------------------------------------------------------------------------------------------- specs and data
def fashion_mnist_root() -> Path | None:
    """The data root under which specs' `root: fashion-mnist` resolves, when the offline copy is here."""
    return SHARED_DATA if (SHARED_DATA / "fashion-mnist" / "train-images-idx3-ubyte.gz").is_file() else None


def _merge(base: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Recursive dict update; a value of None deletes the key (e.g. drop a spec's `labels`)."""
    out = dict(base)
    for key, value in overrides.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def load_spec_variant(name: str, overrides: Mapping[str, Any] | None = None):
    """specs/<name> with `overrides` merged into its YAML (e.g. a smaller input size), loaded and validated like
    any spec; backbone paths still resolve against specs/."""
    from models.spec.load import load_spec_text

    path = SPECS / name
    data = _merge(yaml.safe_load(path.read_text()), overrides or {})
    return load_spec_text(yaml.safe_dump(data, sort_keys=False), str(path), base_dir=SPECS)


# ----------------------------------------------------------------------------------------------- timing
def set_threads(threads: int) -> None:
    """One intra-op thread count for torch (onnxruntime sessions take theirs explicitly).

    Why a fixed, small default: on this 2-core box shared with other jobs, 2 spinning OpenMP threads ran
    LeNet training 4-5x slower than 1 thread (measured), and the run-to-run spread grew just as much."""
    import torch

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # only settable before the first parallel region; harmless when already fixed
        pass


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def seconds_per_call(fn: Callable[[], Any], *, min_seconds: float = 0.2, min_calls: int = 3) -> float:
    """Median seconds of one call, over enough calls to fill `min_seconds` (at least `min_calls`)."""
    times: list[float] = []
    began = time.perf_counter()
    while len(times) < min_calls or time.perf_counter() - began < min_seconds:
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return median(times)


def interleave(candidates: Mapping[str, Callable[[], float]], rounds: int, *, warmup: bool = True) -> dict[str, list[float]]:
    """Call each candidate once per round, alternating the order every round (ABBA...) so a change in
    background load hits every candidate alike. Each call returns one measurement; returns them per name."""
    names = list(candidates)
    if warmup:
        for name in names:
            candidates[name]()
    results: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names if r % 2 == 0 else reversed(names):
            results[name].append(candidates[name]())
    return results


def ratio_of_medians(values: Mapping[str, list[float]], num: str, den: str) -> float:
    """Median of the per-round ratios num/den (rounds are paired, so this cancels slow drifts in load)."""
    return median([a / b for a, b in zip(values[num], values[den])])


# ----------------------------------------------------------------------------------------------- markdown
def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]], align: str | None = None) -> str:
    """A GitHub markdown table; `align` is one letter per column (l/r), default: first left, rest right."""
    align = align or "l" + "r" * (len(header) - 1)
    rule = ["---" if a == "l" else "---:" for a in align]
    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "|".join(rule) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def fmt(value: float, digits: int = 2) -> str:
    """Fixed-point for small numbers, thousands separators for large ones; '–' for missing."""
    if value is None or value != value:  # None or NaN
        return "–"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


# ----------------------------------------------------------------------------------------------- BENCHMARKS.md
from models.train.hardware import cpu_model  # noqa: E402  (re-exported: the benchmark scripts import it from here)


def cpu_flags() -> str:
    """The SIMD extensions that decide int8 and fp32 kernel speed (AVX2, AVX-512, VNNI, AMX)."""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return "unknown"
    wanted = [f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "avx512_bf16") if f in flags]
    return ", ".join(wanted) or "none of AVX2/AVX-512"


def versions() -> str:
    parts = [f"Python {platform.python_version()}"]
    for module in ("torch", "onnxruntime", "onnx", "onnxscript"):
        try:
            parts.append(f"{module} {__import__(module).__version__}")
        except ImportError:
            continue
    return ", ".join(parts)


def now() -> str:
    return f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC"


def load_note() -> str:
    """The 1-minute load average: what else was running competes with every figure in the section."""
    return f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"


def command_line(script: str, argv: Sequence[str] | None = None) -> str:
    """The command that reproduces a section, as written in BENCHMARKS.md."""
    args = list(sys.argv[1:] if argv is None else argv)
    return " ".join([PYTHON, f"benchmarks/{script}", *args])


def machine_section() -> str:
    nproc = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return "\n".join([
        f"Last written {now()} on: nproc {nproc}, {cpu_model()} ({cpu_flags()}), {versions()}.", "",
        "Each section below names the command that produced it, when, and the load on the machine then. Figures "
        "are medians of interleaved rounds measured in one process; compare ratios, not absolute numbers "
        "(the machine is shared)."])


def replace_section(text: str, name: str, body: str) -> str:
    """`text` with the section NAME set to `body` (appended when absent)."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    block = f"{begin}\n{body.strip()}\n{end}"
    if begin in text and end in text:
        return text[: text.index(begin)] + block + text[text.index(end) + len(end):]
    return text.rstrip("\n") + "\n\n" + block + "\n"


def write_section(name: str, body: str, path: Path = BENCHMARKS_MD) -> None:
    """Replace (or add) section NAME in BENCHMARKS.md and refresh the machine header at the top."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    text = update_header(text)
    path.write_text(replace_section(text, name, body))


def publish(name: str, text: str, write: bool = True) -> None:
    """Print a benchmark's report and, unless told not to, make it section NAME of BENCHMARKS.md."""
    print("\n" + text)
    if write:
        write_section(name, text)
        print(f"\nwritten to BENCHMARKS.md ({name})")


def update_header(text: str) -> str:
    """The machine section, kept right under the title."""
    begin, end = "<!-- machine:begin -->", "<!-- machine:end -->"
    if begin in text and end in text:
        return replace_section(text, "machine", machine_section())
    lines = text.splitlines()
    title = lines[0] if lines and lines[0].startswith("# ") else "# Benchmarks"
    rest = "\n".join(lines[1:] if lines and lines[0].startswith("# ") else lines).strip("\n")
    block = f"{begin}\n{machine_section()}\n{end}"
    return f"{title}\n\n{block}\n" + (f"\n{rest}\n" if rest else "")
