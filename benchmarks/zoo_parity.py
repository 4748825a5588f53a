"""Export every zoo spec with random weights and prove parity (the test suite proves only the cheap ones).

    .venv/bin/python benchmarks/zoo_parity.py [--only alexnet vgg11 ...] [--data-root ../shared/data]

Image specs are fed real Fashion-MNIST test images (1 channel, resized to the spec's input size) when the data
root has them, else random pixels; three-channel specs (FCN) get random pixels. Writes section zoo_parity.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.common import command_line, load_note, md_table, now, set_threads, write_section  # noqa: E402
from models.build import build, infer  # noqa: E402
from models.data import load_dataset, resize_batch  # noqa: E402
from models.export.onnx_graph import export_net  # noqa: E402
from models.export.parity import check_parity  # noqa: E402
from models.pipeline import make_card  # noqa: E402
from models.spec.load import load_spec  # noqa: E402

SPECS = Path(__file__).resolve().parents[1] / "specs"
COURSE_VOCAB = ["<unk>", " ", *"abcdefghijklmnopqrstuvwxyz"]


def inputs_for(spec, data_root: Path | None, n: int = 256) -> tuple[np.ndarray, str]:
    rng = np.random.default_rng(0)
    i = spec.input
    if i.kind == "image":
        fmnist = data_root / "fashion-mnist" if data_root else None
        if i.channels == 1 and fmnist is not None and fmnist.is_dir():
            x = load_dataset("fashion_mnist", {"root": fmnist}).test_x[:n]  # (n, 1, 28, 28) uint8
            x = resize_batch(x, i.size) if tuple(i.size) != (28, 28) else x
            x = x if x.dtype == torch.uint8 else (x * 255).round().clamp(0, 255).to(torch.uint8)
            return x.permute(0, 2, 3, 1).contiguous().numpy(), "Fashion-MNIST test images"
        return rng.integers(0, 256, (n, *i.size, i.channels), dtype=np.uint8), "random pixels"
    if i.kind == "tokens":
        return rng.integers(0, i.vocab, (n, i.sample_shape()[0]), dtype=np.int64), "random tokens"
    return rng.normal(size=(n, i.sample_shape()[0])).astype(np.float32), "random values"


def info_for(spec, classes: int) -> dict:
    if spec.input.kind == "tokens":
        return {"vocab": {"tokens": COURSE_VOCAB[: spec.input.vocab]}}
    if spec.task in ("classification", "segmentation"):
        return {"labels": spec.labels or [str(k) for k in range(classes)]}
    return {}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="spec stems (default: all)")
    parser.add_argument("--data-root", type=Path, default=Path("../shared/data"))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    set_threads(args.threads)
    rows = []
    for path in sorted(SPECS.glob("*.yaml")):
        if args.only and path.stem not in args.only:
            continue
        spec = load_spec(path)
        inferred = infer(spec)
        net = build(spec, seed=0).eval()
        inputs, source = inputs_for(spec, args.data_root if args.data_root.is_dir() else None)
        card = make_card(spec, info_for(spec, inferred.output[0]), {})
        began = time.perf_counter()
        out = Path("runs/zoo_parity") / spec.name
        exported = export_net(net, card, out, example_inputs=inputs[:4], opset=spec.export.opset)
        report = check_parity(exported.path, net, inputs, threads=args.threads)
        seconds = time.perf_counter() - began
        worst = max(c.max_abs_diff for c in report.checks)
        rows.append([path.stem, f"{inferred.params:,}", exported.exporter, source, report.samples,
                     ", ".join(map(str, report.batch_sizes)), f"{worst:.1e}", "passed" if report.passed else "FAILED",
                     f"{seconds:.0f}"])
        print(report.summary(), flush=True)
    body = "\n".join([
        "## Zoo parity: every spec exported with random weights and proven against PyTorch", "",
        f"`{command_line('zoo_parity.py', argv)}` — {now()}, {load_note()}.", "",
        md_table(["spec", "parameters", "exporter", "inputs", "samples", "batch sizes", "max abs diff", "parity",
                  "export + proof s"], rows)])
    write_section("zoo_parity", body)  # the command line in the section says which specs it covered
    return 0 if all(r[7] == "passed" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
