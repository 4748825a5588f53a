"""One entry point for the benchmarks: run the chosen subsets and refresh BENCHMARKS.md.

    .venv/bin/python benchmarks/run.py train inference     # the CPU figures
    .venv/bin/python benchmarks/run.py all                 # + serve, + cuda when a GPU is visible
    .venv/bin/python benchmarks/run.py inference --quick   # fewer rounds: a smoke run, figures still written

Subsets (each a script in this folder, run in its own process so thread settings and memory never leak from
one into the next; each script writes its own section of BENCHMARKS.md, `<!-- NAME:begin -->` …
`<!-- NAME:end -->`, with the command that produced it, so re-running one subset replaces only that section):

    train      train_throughput.py  trainer vs hand-written loop, samples/s          section train_throughput
    cuda       train_cuda.py        GPU: fp32/bf16/fp16, channels-last, compile     section train_cuda
    inference  inference.py         onnxruntime vs torch, export vs plain, int8     section inference
    data       data_pipeline.py     file datasets vs ImageFolder + DataLoader       section data_pipeline
    serve      serve_load.py        BentoML service vs plain Starlette under load   section serve_load
    soak       soak.py              classify + segment for 2 × 60 s: errors, RSS   section soak
    course     course_table.py      the course's results table (trains rows without a finished run; long)
                                                                                     section course_results + README

After the subsets, the machine header at the top (nproc, CPU, versions, date) is refreshed.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from benchmarks.common import BENCHMARKS_MD, ROOT, update_header  # noqa: E402

HERE = Path(__file__).resolve().parent
SUBSETS: dict[str, str] = {"train": "train_throughput.py", "cuda": "train_cuda.py", "inference": "inference.py",
                           "data": "data_pipeline.py",
                           "serve": "serve_load.py", "soak": "soak.py", "course": "course_table.py"}
# --quick: enough to see every table filled, not enough to trust a ratio
QUICK_ARGS: dict[str, list[str]] = {"train": ["--rounds", "2", "--epochs", "2"],
                                    "cuda": ["--rounds", "1", "--epochs", "2", "--steps", "20"],
                                    "inference": ["--rounds", "2", "--eval-samples", "2000"],
                                    "data": ["--sizes", "500", "--rounds", "1", "--batch", "32", "--train-steps", "12"],
                                    "serve": ["--seconds", "3", "--warmup", "1", "--levels", "1,8"],
                                    "soak": ["--seconds", "5", "--concurrency", "8", "--warmup", "1"],
                                    "course": ["--table-only"]}


def cuda_visible() -> bool:
    import torch

    return torch.cuda.is_available()


def resolve(names: list[str]) -> list[str]:
    """`all` = train, inference, serve, and cuda where a GPU is visible; order kept, duplicates dropped."""
    chosen: list[str] = []
    for name in names or ["all"]:
        expanded = ["train", *(["cuda"] if cuda_visible() else []), "inference", "serve"] if name == "all" else [name]
        chosen += [n for n in expanded if n not in chosen]
    return chosen


def run_subset(name: str, quick: bool) -> int:
    script = HERE / SUBSETS[name]
    if not script.is_file():
        print(f"[{name}] {script.relative_to(ROOT)} is not here; skipped", flush=True)
        return 0
    command = [sys.executable, str(script), *(QUICK_ARGS[name] if quick else [])]
    print(f"[{name}] {' '.join(command[1:])}", flush=True)
    began = time.perf_counter()
    code = subprocess.run(command, cwd=ROOT).returncode
    print(f"[{name}] exit {code} after {time.perf_counter() - began:.0f} s", flush=True)
    return code


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("subsets", nargs="*", metavar="SUBSET", help=f"{', '.join(SUBSETS)} or all (default: all)")
    p.add_argument("--quick", action="store_true", help="fewer rounds and shorter runs (a smoke run)")
    args = p.parse_args(argv)
    if unknown := set(args.subsets) - {*SUBSETS, "all"}:
        p.error(f"unknown subset(s) {sorted(unknown)}; choose from {', '.join(SUBSETS)}, all")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    failed = [name for name in resolve(args.subsets) if run_subset(name, args.quick) != 0]
    # serve_load writes its section with its own writer: refresh the machine header for every run
    text = BENCHMARKS_MD.read_text() if BENCHMARKS_MD.exists() else "# Benchmarks\n"
    BENCHMARKS_MD.write_text(update_header(text))
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    print(f"BENCHMARKS.md updated ({BENCHMARKS_MD})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
