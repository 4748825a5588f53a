"""Export for real models: scale-aware parity, export without a run, torchvision weights in, fine-tuning from them."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from models.build import build
from models.export.onnx_graph import export_net
from models.export.parity import ParityError, check_parity
from models.pipeline import export_spec, generated_inputs, make_card
from models.spec.load import load_spec, load_spec_text
from models.train.pretrained import apply_pretrained
from models.train.weights_import import WeightsError, import_weights
from tests.conftest import ROOT

sys.path.insert(0, str(Path(__file__).parent))
from torchvision_layout import resnet18  # noqa: E402

SMALL_RESNET = (ROOT / "specs" / "resnet18_torchvision.yaml").read_text().replace("size: [224, 224]", "size: [64, 64]")


def _randomized(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every parameter and batch-norm statistic random, so a wrong mapping cannot hide behind defaults."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in net.state_dict().items():
            if t.is_floating_point():
                values = torch.rand(t.shape, generator=g) + 0.5 if "running_var" in name else torch.randn(t.shape, generator=g) * 0.1
                t.copy_(values)
    return net.eval()


def test_large_logits_pass_and_an_altered_weight_fails(tmp_path):
    """A ResNet whose logits are in the thousands exports and proves (float32 noise is relative), while the same
    graph with one weight changed is refused."""
    spec = load_spec_text(SMALL_RESNET.replace("out: 1000", "out: 10"), "resnet.yaml")
    net = _randomized(build(spec))
    with torch.no_grad():
        net.body[-1].weight.mul_(20_000)  # (10, 512): logits ~ thousands
    card = make_card(spec, {"labels": [str(i) for i in range(10)]}, {})
    inputs = generated_inputs(spec, 256)
    result = export_net(net, card, tmp_path, example_inputs=inputs[:4])
    report = check_parity(result.path, net, inputs)
    logits = np.abs(json.loads(report.to_json())["checks"][0]["max_abs_diff"])
    assert report.passed and logits > 1e-4  # an absolute 1e-4 gate alone would have refused it
    model = onnx.load(str(result.path))
    conv = next(i for i in model.graph.initializer if numpy_helper.to_array(i).ndim == 4)
    altered = numpy_helper.to_array(conv).copy()
    altered.flat[0] += 0.5  # one weight of the first convolution
    conv.CopyFrom(numpy_helper.from_array(altered, conv.name))
    broken = tmp_path / "broken.onnx"
    onnx.save(model, str(broken))
    with pytest.raises(ParityError, match="the tolerance"):
        check_parity(broken, net, inputs)


def test_torchvision_state_dict_imports_with_identical_outputs(tmp_path):
    reference, origin = resnet18()
    reference = _randomized(reference)
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    spec = load_spec_text(SMALL_RESNET, "resnet18_torchvision.yaml")
    net = build(spec).eval()
    report = import_weights(net, path, strict=True)
    assert report.complete and len(report.matched) == len(reference.state_dict()), (origin, report.summary())
    assert report.matched["conv1.weight"] == "body.0.0.weight" and report.matched["fc.bias"] == "body.6.bias"
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(net(x), reference(x), rtol=1e-5, atol=1e-5)


def test_a_file_of_another_architecture_is_refused_with_its_report(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"weight": torch.zeros(3, 3)}, path)
    net = build(load_spec_text(SMALL_RESNET, "r.yaml"))
    with pytest.raises(WeightsError, match="no tensor fits"):
        import_weights(net, path, strict=True)
    torch.save({"state": "not tensors"}, path)
    with pytest.raises(WeightsError, match="mapping of names to tensors"):
        import_weights(net, path)


def test_export_of_a_spec_without_a_run(tmp_path):
    """`specserve export SPEC --weights init`: exported from the seeded initialisation, proven on generated
    inputs, card labels from the output count; `--weights FILE` takes a torchvision state_dict."""
    spec_path = tmp_path / "resnet.yaml"
    spec_path.write_text(SMALL_RESNET)
    result = subprocess.run([sys.executable, "-m", "models.cli", "export", str(spec_path), "--weights", "init",
                             "--out", str(tmp_path / "init")], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr
    parity = json.loads((tmp_path / "init" / "parity.json").read_text())
    assert parity["passed"] and parity["samples"] == 256
    reference = _randomized(resnet18()[0])
    torch.save(reference.state_dict(), tmp_path / "resnet18.pth")
    exported = export_spec(load_spec(spec_path), tmp_path / "resnet18.pth", out=tmp_path / "file", quiet=True)
    assert exported.parity.passed and len(exported.card.labels) == 1000
    source = json.loads((tmp_path / "file" / "source.json").read_text())
    assert source["weights_import"]["complete"] is True
    refused = subprocess.run([sys.executable, "-m", "models.cli", "export", str(spec_path)], cwd=ROOT,
                             capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and "needs --weights init or --weights FILE" in refused.stderr


def test_fine_tuning_starts_from_an_imported_torchvision_file(tmp_path):
    """train.init_from takes a torchvision state_dict: every tensor but the new head is loaded, at lr_scale."""
    reference = _randomized(resnet18()[0])
    torch.save(reference.state_dict(), tmp_path / "resnet18.pth")
    text = SMALL_RESNET.replace("out: 1000", "out: 2") + (
        f"train: {{epochs: 1, optimizer: {{sgd: {{lr: 0.1}}}}, init_from: {{weights: {tmp_path / 'resnet18.pth'}, "
        f"lr_scale: 0.1}}}}\n")
    spec = load_spec_text(text, "finetune.yaml")
    net = build(spec)
    scales = apply_pretrained(net, spec)
    own = net.state_dict()
    assert torch.equal(own["body.0.0.weight"], reference.state_dict()["conv1.weight"])
    head = [n for n in own if n.startswith(f"body.{len(net.body) - 1}.")]
    assert head and not any(n in scales for n in head)  # the new 2-class head keeps its own init and rate
    assert sum(1 for s in scales.values() if s == 0.1) == sum(1 for _ in net.parameters()) - len(head)


# ------------------------------------------------------------------ int8 that is only ever faster
def test_lenet_int8_is_refused_as_slower(tmp_path):
    """LeNet's 6- and 16-channel convolutions gain nothing from int8 (quantize/requantize costs more than the
    integer kernels save): its int8 graph is refused with the measured figures and nothing is written."""
    from models.export.quantize import QuantRefused, quantize

    spec = load_spec(ROOT / "specs" / "lenet.yaml")
    net = build(spec, seed=0).eval()
    inputs = generated_inputs(spec, 256)
    exported = export_net(net, make_card(spec, {"labels": spec.labels}, {}), tmp_path, example_inputs=inputs[:4])
    with torch.no_grad():  # labels: what fp32 predicts, so accuracy measures agreement with it
        labels = net(torch.from_numpy(inputs).permute(0, 3, 1, 2).float().div(255)).argmax(1).numpy()
    with pytest.raises(QuantRefused, match=r"int8 REFUSED \(slower than fp32 on this \w+ CPU\)") as refused:
        quantize(exported.path, tmp_path / "model.int8.onnx", eval_inputs=inputs, eval_labels=labels,
                 calibration=inputs, max_drop=1.0, threads=1, latency_runs=10)
    report = refused.value.report
    assert not report.faster and report.require_speedup and report.drop <= 1.0
    assert not (tmp_path / "model.int8.onnx").exists()


def _report(fp32_ms: dict, int8_ms: dict, drop: float = 0.0, require: bool = True):
    from models.export.quantize import QuantReport

    return QuantReport(method="static", reduce_range=False, fp32_bytes=4, int8_bytes=1,
                       latency_ms={"fp32": fp32_ms, "int8": int8_ms}, metric="accuracy", fp32_score=0.9,
                       int8_score=0.9 - drop, drop=drop, max_drop=0.01, eval_samples=256, calibration_samples=256,
                       threads=1, providers=["CPUExecutionProvider"], isa="avx2", require_speedup=require)


@pytest.mark.parametrize("fp32,int8,drop,require,accepted", [
    ({"1": 2.0, "64": 40.0}, {"1": 1.0, "64": 20.0}, 0.0, True, True),     # faster at both batch sizes
    ({"1": 2.0, "64": 40.0}, {"1": 1.0, "64": 41.0}, 0.0, True, False),    # slower at the largest batch
    ({"1": 2.0, "64": 40.0}, {"1": 3.0, "64": 20.0}, 0.0, True, False),    # slower at batch 1
    ({"1": 2.0, "64": 40.0}, {"1": 3.0, "64": 50.0}, 0.0, False, True),    # the spec allows a slower one
    ({"1": 2.0, "64": 40.0}, {"1": 1.0, "64": 20.0}, 0.05, True, False),   # faster but loses too much
])
def test_the_int8_verdict(fp32, int8, drop, require, accepted):
    report = _report(fp32, int8, drop, require)
    assert report.accepted is accepted
    assert report.summary().startswith("int8 accepted" if accepted else "int8 REFUSED")


@pytest.mark.parametrize("flags,machine,isa", [
    ("fpu avx avx2 fma", "x86_64", "avx2"),
    ("avx2 avx512f avx512bw", "x86_64", "avx512"),
    ("avx2 avx_vnni", "x86_64", "avx_vnni"),
    ("avx2 avx512f avx512_vnni", "x86_64", "avx512_vnni"),
    ("avx512_vnni amx_tile amx_int8", "x86_64", "amx"),
    ("fp asimd asimddp", "aarch64", "arm_dotprod"),
    ("fp asimd", "aarch64", "arm"),
    ("fpu sse2", "x86_64", "generic"),
])
def test_the_cpu_level_comes_from_its_flags(flags, machine, isa):
    from models.artifact.isa import full_range_weights, isa_from_flags

    assert isa_from_flags(set(flags.split()), machine) == isa
    assert full_range_weights(isa) == (isa in ("avx512_vnni", "avx_vnni", "amx", "arm_dotprod"))


def test_token_parity_runs_at_three_lengths(standins, text_tokens, tmp_path):
    """A token graph is proven at length 1 (generation), the samples' length and 4× it: a time axis frozen to
    the example's length cannot pass."""
    vocab, windows, targets = text_tokens
    torch.manual_seed(0)
    net = standins.CharNet("GRU", len(vocab))
    result = export_net(net, standins.token_card(vocab), tmp_path, example_inputs=windows[:3])
    report = check_parity(result.path, net, windows, labels=targets)
    steps = windows.shape[1]
    assert report.passed and report.lengths == [1, steps, 4 * steps]
    assert {c.steps for c in report.checks} == {1, steps, 4 * steps}
    assert f"lengths [1, {steps}, {4 * steps}]" in report.summary()


# ------------------------------------------------------------------ fp16 graphs for GPUs
def test_fp16_graph_is_proven_and_stored_beside_fp32(tmp_path, bentoml_home):
    """export.fp16: model.fp16.onnx takes the same uint8 pixels, computes in fp16, is proven against PyTorch at
    the fp16 tolerance on this CPU (onnxruntime runs fp16 here) and is stored beside the fp32 graph."""
    from models.artifact.store import FP16_FILE, load_from_store
    from models.pipeline import store_export

    spec = load_spec_text(SMALL_RESNET.replace("out: 1000", "out: 10") + "export: {fp16: true}\n", "half.yaml")
    exported = export_spec(spec, "init", out=tmp_path / "export", quiet=True)
    assert exported.fp16_parity is not None and exported.fp16_parity.passed
    assert exported.fp16_parity.tolerance.range_rtol > 0 and exported.parity.tolerance.range_rtol == 0
    half = onnx.load(str(tmp_path / "export" / FP16_FILE))
    assert half.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8  # clients send the same pixels
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in half.graph.initializer)
    assert (tmp_path / "export" / FP16_FILE).stat().st_size < 0.6 * exported.export.path.stat().st_size
    stored = load_from_store(store_export(exported))
    assert stored.fp16_path is not None and stored.fp16_path.name == FP16_FILE
