"""Several outputs: a main output that is exported and served, auxiliary outputs trained beside it (GoogLeNet's and
PSPNet's auxiliary heads). The training loss is main + Σ weight × the task's loss on each auxiliary output; forward,
evaluation and export compute the main output only; the run reports the auxiliary losses and resumes exactly."""
from __future__ import annotations

import json
from collections import Counter
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from models.build import build, infer, summary_table
from models.export.onnx_graph import export_net
from models.export.parity import check_parity
from models.pipeline import export_run, make_card
from models.spec.load import load_spec, load_spec_text
from models.train.checkpoint import load_checkpoint
from models.train.data_source import open_dataset
from models.train.loop import TrainOptions, _AuxTap, _running, _step, train
from models.train.tasks import make_task
from tests.conftest import ROOT

# the auxiliary head (network[2..3]) branches off the trunk; the main path takes from: trunk again
AUX = """name: aux-digits
task: classification
input: {channels: 1, size: [8, 8], mean: [0.3], std: [0.38]}
network:
  - conv2d: {out: 8, kernel: 3, padding: 1}
  - relu: {as: trunk}
  - global_avgpool
  - linear: {out: 10, as: aux_logits}
  - conv2d: {out: 8, kernel: 3, padding: 1, from: trunk}
  - relu
  - flatten
  - linear: {out: 10, as: logits}
outputs: {main: logits, aux: [{from: aux_logits, weight: 0.3}]}
data: {dataset: digits, batch_size: 16}
train: {epochs: 2, optimizer: {sgd: {lr: 0.05, momentum: 0.9}}, seed: 3}
"""
HEAD_PARAMS = ("body.3.",)  # the auxiliary head's linear layer
# the same network without the auxiliary head
PLAIN = (AUX.replace("  - global_avgpool\n  - linear: {out: 10, as: aux_logits}\n", "")
         .replace(", from: trunk", "").replace("outputs: {main: logits, aux: [{from: aux_logits, weight: 0.3}]}\n", ""))


def _spec(text: str = AUX):
    return load_spec_text(text, "aux.yaml")


def _session(spec):
    """What the loop's step reads of its session: the task, the net, what the step calls, the tap, the device."""
    torch.manual_seed(0)
    net = build(spec, seed=0)
    tap = _AuxTap(net) if net.aux_weights else None
    task = make_task(spec, open_dataset(spec, None, spec.train.seed, quiet=True), torch.device("cpu"))
    return SimpleNamespace(task=task, net=net, tap=tap, model=tap or net, device=torch.device("cpu"))


def _batch(s):
    return next(iter(s.task.train_batches(torch.Generator().manual_seed(0))))


def test_the_loss_is_main_plus_weight_times_aux_on_a_fixed_batch():
    s = _session(_spec())
    batch = _batch(s)
    result = _step(s, batch, None)
    seen = []

    class Recorder(nn.Module):  # the preprocessed input the task feeds the net
        def forward(self, x):
            seen.append(x)
            return s.net(x)

    s.task.step(Recorder(), batch)
    main, aux = s.net.forward_with_aux(seen[0])
    y = batch[1]
    main_loss, aux_loss = F.cross_entropy(main, y), F.cross_entropy(aux["aux_logits"], y)
    assert aux_loss.item() != pytest.approx(main_loss.item())
    torch.testing.assert_close(result.loss, main_loss + 0.3 * aux_loss)
    torch.testing.assert_close(result.stats["loss"], main_loss.detach() * len(y))
    torch.testing.assert_close(result.stats["aux_logits.loss"], aux_loss.detach() * len(y))
    metrics = _running(s, {k: float(v) for k, v in result.stats.items()})
    assert metrics["loss"] == pytest.approx(main_loss.item())
    assert metrics["aux_logits.loss"] == pytest.approx(aux_loss.item())
    assert metrics["total_loss"] == pytest.approx((main_loss + 0.3 * aux_loss).item())


def test_the_aux_loss_trains_the_aux_head_and_the_shared_trunk_only():
    """With the auxiliary loss the head and the trunk get its gradient; the main path's layers the same as without."""
    s = _session(_spec())
    batch = _batch(s)
    s.task.step(s.net, batch).loss.backward()  # the main loss alone
    alone = {n: (p.grad.clone() if p.grad is not None else None) for n, p in s.net.named_parameters()}
    s.net.zero_grad(set_to_none=True)
    _step(s, batch, None).loss.backward()
    both = {n: p.grad for n, p in s.net.named_parameters()}
    for name in both:
        if name.startswith(HEAD_PARAMS):
            assert alone[name] is None and torch.any(both[name] != 0), name
        elif name.startswith("body.0."):  # the trunk feeds both outputs
            assert not torch.allclose(alone[name], both[name]), name
        else:  # the main path after the branch
            torch.testing.assert_close(both[name], alone[name])


SEG = """name: aux-seg
task: segmentation
input: {channels: 3, size: [16, 16], mean: [0.5, 0.5, 0.5], std: [0.3, 0.3, 0.3]}
network:
  - conv2d: {out: 8, kernel: 3, padding: 1, as: trunk}
  - maxpool2d: {kernel: 2}
  - conv2d: {out: 4, kernel: 1}
  - upsample: {scale: 2, as: aux_map}
  - conv2d: {out: 8, kernel: 3, padding: 1, from: trunk}
  - relu
  - dropout: {p: 0.5}
  - conv2d: {out: 4, kernel: 1}
outputs: {aux: [{from: aux_map, weight: 0.4}]}
data: {dataset: shapes, size: [16, 16], train_count: 32, test_count: 8, batch_size: 8,
       augment: [hflip, vflip, {random_resized_crop: {scale: [0.5, 1.0]}}]}
"""


def test_an_auxiliary_map_is_scored_on_the_same_augmented_masks(monkeypatch):
    """Segmentation with random flips and crops: the auxiliary loss sees the very images (so the very masks: they
    are augmented together) the main output was computed from, and the run's random stream is left as one main
    step leaves it."""
    import models.train.loop as loop

    s = _session(_spec(SEG))
    batch = _batch(s)
    given, fed = [], []
    original = loop._Given.forward
    monkeypatch.setattr(loop._Given, "forward", lambda self, x, *rest: given.append(x) or original(self, x, *rest))
    s.net.body[0].register_forward_pre_hook(lambda _, args: fed.append(args[0]))
    torch.manual_seed(5)
    result = _step(s, batch, None)
    after_aux = torch.rand(3)
    assert len(fed) == 1 and len(given) == 1  # one forward of the net; the auxiliary map is scored, not recomputed
    torch.testing.assert_close(given[0], fed[0])
    torch.manual_seed(5)
    main_only = s.task.step(s.net, batch)  # the same draws: the same crops, flips and dropout
    torch.testing.assert_close(torch.rand(3), after_aux)
    torch.testing.assert_close(result.stats["loss"], main_only.stats["loss"])
    aux_loss = result.stats["aux_map.loss"] / result.stats["count"]
    assert aux_loss > 0
    torch.testing.assert_close(result.loss, main_only.loss + 0.4 * aux_loss)


def test_forward_and_eval_compute_only_the_main_output():
    net = build(_spec(), seed=0)
    calls = []
    net.body[3].register_forward_hook(lambda *_: calls.append("aux head"))
    x = torch.randn(4, 1, 8, 8)
    for mode in ("train", "eval"):
        getattr(net, mode)()
        out = net(x)
        assert out.shape == (4, 10) and not calls, mode
    net.eval()
    main, aux = net.forward_with_aux(x)
    assert calls == ["aux head"] and set(aux) == {"aux_logits"} and aux["aux_logits"].shape == (4, 10)
    torch.testing.assert_close(main, net(x))
    assert net.aux_weights == {"aux_logits": 0.3}


def _export(text: str, tmp_path):
    spec = _spec(text)
    net = build(spec, seed=0).eval()
    card = make_card(spec, {"labels": [str(i) for i in range(10)]}, {})
    inputs = np.random.default_rng(0).integers(0, 256, (256, 8, 8, 1), dtype=np.uint8)
    exported = export_net(net, card, tmp_path, example_inputs=inputs[:4], opset=spec.export.opset)
    report = check_parity(exported.path, net, inputs)
    return net, onnx.load(str(exported.path)), report


def test_the_export_has_no_auxiliary_nodes_and_proves_parity(tmp_path):
    net, model, report = _export(AUX, tmp_path / "aux")
    assert report.passed
    initializers = {i.name for i in model.graph.initializer}
    assert not [n for n in initializers if any(h in n for h in HEAD_PARAMS)], initializers
    # the same operators and the same weights as the network without the head
    _, plain, _ = _export(PLAIN, tmp_path / "plain")
    assert Counter(n.op_type for n in model.graph.node) == Counter(n.op_type for n in plain.graph.node)
    size = lambda m: sum(onnx.numpy_helper.to_array(i).size for i in m.graph.initializer)  # noqa: E731
    assert size(model) == size(plain)
    assert [o.name for o in model.graph.output] == ["logits"]


def test_summary_marks_the_auxiliary_head_as_training_only():
    spec = _spec()
    table = summary_table(spec)
    rows = {line.split()[0]: line for line in table.splitlines() if line.startswith("network[")}
    assert "(training only)" in rows["network[2].global_avgpool"] and "(training only)" in rows["network[3].linear"]
    assert not any("(training only)" in rows[k] for k in rows if k not in ("network[2].global_avgpool", "network[3].linear"))
    assert "main output logits (10,): exported and served" in table
    assert "auxiliary output aux_logits (10,): loss weight 0.3, training only" in table
    assert "training only: 2 entries, 90 parameters" in table
    assert "network[4].conv2d ← trunk" in table
    assert [r.path for r in infer(spec).rows if r.training_only] == ["network[2].global_avgpool", "network[3].linear"]


def test_a_run_reports_the_aux_loss_and_resumes_exactly(tmp_path):
    spec = _spec()
    whole = train(spec, TrainOptions(out=tmp_path / "whole", quiet=True, max_steps=8))
    for record in whole.history:
        train_metrics = record["train"]
        assert set(train_metrics) >= {"loss", "accuracy", "aux_logits.loss", "total_loss"}
        assert train_metrics["total_loss"] == pytest.approx(train_metrics["loss"] + 0.3 * train_metrics["aux_logits.loss"])
        assert "aux_logits.loss" not in record["test"]  # evaluation scores the main output
    train(spec.with_train(epochs=1), TrainOptions(out=tmp_path / "halves", quiet=True, max_steps=8))
    resumed = train(spec, TrainOptions(out=tmp_path / "halves", quiet=True, max_steps=8, resume=True))
    assert resumed.history[-1]["train"] == pytest.approx(whole.history[-1]["train"], rel=1e-6)
    a = load_checkpoint(tmp_path / "whole" / "checkpoints", "last", with_state=False).weights
    b = load_checkpoint(tmp_path / "halves" / "checkpoints", "last", with_state=False).weights
    assert any(k.startswith(HEAD_PARAMS) for k in a)  # the checkpoint keeps the auxiliary head
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=1e-6)


def test_the_zoo_spec_trains_a_few_steps_and_exports_with_parity(tmp_path):
    spec = load_spec(ROOT / "specs" / "googlenet_aux.yaml")
    assert infer(spec).aux == {"aux_logits": (10,)}
    result = train(spec.with_train(epochs=1), TrainOptions(out=tmp_path / "run", quiet=True, max_steps=3))
    assert {"aux_logits.loss", "total_loss"} <= set(result.history[0]["train"])
    exported = export_run(tmp_path / "run", samples=256, quiet=True)
    assert exported.parity.passed
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["history"][0]["train"]["aux_logits.loss"] > 0
