"""The line after training on real runs: export → parity → int8 → store → load, for every task; zoo exports."""
from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from models.build import build, infer
from models.artifact.card import ModelCard
from models.export.onnx_graph import export_net
from models.export.parity import check_parity
from models.pipeline import make_card, run_line
from models.spec.load import load_spec
from models.artifact.store import load_from_store
from models.train.loop import TrainOptions
from tests.conftest import ROOT, SPECS
from tests.train.test_train import TASK_SPECS, write_spec


@pytest.fixture()
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("BENTOML_HOME", str(tmp_path / "bentoml"))
    return tmp_path / "bentoml"


@pytest.mark.parametrize("kind", ["classification", "segmentation", "text", "series", "regression",
                                  "text_classification"])
def test_run_line_stores_a_proven_model(kind, tmp_path, store):
    text = re.sub(r"epochs: \d+", "epochs: 1", TASK_SPECS[kind])  # one short epoch per run
    if kind in ("classification", "segmentation"):
        text += "export: {quantize: static}\n"
    spec_path = write_spec(tmp_path, text)
    result = run_line(spec_path, TrainOptions(out=tmp_path / "run", quiet=True, max_steps=20), quiet=True)
    assert result.exported.parity.passed
    assert result.exported.parity.samples >= 256
    stored = load_from_store(result.tag.split(":")[0])  # "latest" resolves
    assert stored.tag == result.tag
    assert stored.card.spec_hash == load_spec(spec_path).spec_hash()
    if kind in ("classification", "segmentation"):
        assert (stored.int8_path is not None) == result.exported.quant.accepted
    again = run_line(spec_path, TrainOptions(out=tmp_path / "run2", quiet=True, max_steps=5), quiet=True)
    assert again.tag != result.tag and load_from_store(again.tag.split(":")[0]).tag == again.tag  # a new version


def test_generate_prints_a_continuation(tmp_path):
    spec_path = write_spec(tmp_path, TASK_SPECS["text"])
    from models.train.loop import train

    train(load_spec(spec_path), TrainOptions(out=tmp_path / "run", quiet=True, max_steps=30))
    result = subprocess.run([sys.executable, "-m", "models.cli", "generate", str(tmp_path / "run"), "Time traveller",
                             "--length", "40"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    line = result.stdout.strip()
    assert line.startswith("time traveller") and len(line) == len("time traveller") + 40


# Zoo specs small enough to prove in the test suite with random weights; the large ones (AlexNet, VGG, NiN,
# GoogLeNet, ResNet-18, FCN) are proven by scripts/zoo_parity.py, whose figures are in BENCHMARKS.md.
CHEAP = [p for p in SPECS if infer(load_spec(p)).macs < 50_000_000]


def _random_inputs(spec, n: int = 256) -> np.ndarray:
    rng = np.random.default_rng(0)
    i = spec.input
    if i.kind == "image":
        return rng.integers(0, 256, (n, *i.size, i.channels), dtype=np.uint8)
    if i.kind == "tokens":
        return rng.integers(0, i.vocab, (n, i.sample_shape()[0]), dtype=np.int64)
    return rng.normal(size=(n, i.sample_shape()[0])).astype(np.float32)


@pytest.mark.parametrize("path", CHEAP, ids=[p.stem for p in CHEAP])
def test_zoo_spec_exports_with_parity(path, tmp_path):
    spec = load_spec(path)
    net = build(spec, seed=0).eval()
    info = {"labels": spec.labels or [str(i) for i in range(infer(spec).output[0])]} if spec.task == "classification" else {}
    if spec.input.kind == "tokens":
        info = {"vocab": {"tokens": ["<unk>", " ", *"abcdefghijklmnopqrstuvwxyz"][: spec.input.vocab]}}
    if spec.input.kind == "tokens" and spec.task == "classification":  # a text classifier: labels and a tokenizer
        info = {"labels": [str(i) for i in range(infer(spec).output[0])],
                "vocab": {"tokens": ["<pad>", "<unk>", *(f"w{i}" for i in range(spec.input.vocab - 2))]},
                "text": {"split": "words", "lowercase": True, "length": spec.input.sample_shape()[0]}}
    if spec.task == "segmentation":
        info = {"labels": spec.labels}
    card = make_card(spec, info, {})
    inputs = _random_inputs(spec)
    exported = export_net(net, card, tmp_path, example_inputs=inputs[:4], opset=spec.export.opset)
    report = check_parity(exported.path, net, inputs)
    assert report.passed and isinstance(exported.card, ModelCard)
