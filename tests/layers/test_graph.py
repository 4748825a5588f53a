"""Networks wired by name (the spec language 2): operators, block defaults, per-copy repeat, and their export.

Each test goes through the loader and the builder as a spec does; the exports reuse the registry test's helpers
(both exporters, batch axis dynamic, parity at two batch sizes).
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from models.build import Graph, build, infer, summary_table
from models.export.onnx_graph import exporter_order
from models.spec.load import load_spec_text
from tests.layers.test_layer_registry import _export, _parity

IMAGE = "name: g\ntask: classification\ninput: {channels: 3, size: [8, 8]}\n"

SE_NET = IMAGE + """blocks:
  se:
    params: [squeeze]
    defaults: {channels: $in_channels}
    layers: [adaptive_avgpool2d: {size: 1}, conv2d: {out: $squeeze, kernel: 1}, relu,
             conv2d: {out: $channels, kernel: 1}, hardsigmoid, multiply: {from: input}]
network:
  - conv2d: {out: 8, kernel: 3, padding: 1, as: stem}
  - se: {squeeze: 4}
  - add: {from: stem, as: a}
  - concat: {from: [a, stem], axis: 1}
  - conv2d: {out: 4, kernel: 1}
  - global_avgpool
  - linear: {out: 3}
"""


def _infer(text: str):
    return infer(load_spec_text(text, "g.yaml"))


def _shapes(text: str) -> dict[str, tuple[int, ...]]:
    return {r.path: r.shape for r in _infer(text).rows}


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_a_wired_network_exports_with_parity(exporter: str, tmp_path: Path):
    """SE gate (multiply broadcasting (C,1,1)), add, concat along height: both exporters match PyTorch."""
    spec = load_spec_text(SE_NET, "se.yaml")
    assert infer(spec).output == (3,)
    assert _shapes(SE_NET)["network[3].concat"] == (8, 16, 8)
    net = build(spec, seed=0).eval()
    assert net.wires is not None and any(isinstance(m, Graph) for m in net.modules())
    assert exporter in exporter_order(net)
    x = torch.randn(2, 3, 8, 8)
    _export(exporter, net, x, 1, tmp_path / "net.onnx")
    _parity(tmp_path / "net.onnx", net, [x, torch.randn(3, 3, 8, 8)])


def test_wiring_keeps_sequential_parameter_names():
    """A wired list names its children 0, 1, 2, ... like nn.Sequential: checkpoints do not depend on the wiring."""
    net = build(load_spec_text(SE_NET, "se.yaml"), seed=0)
    names = [n for n, _ in net.named_parameters()]
    assert names[:2] == ["body.0.weight", "body.0.bias"]
    assert "body.1.1.weight" in names  # se (block) → its conv2d, second entry of its own list


def test_a_token_model_with_references_carries_its_state():
    text = """name: t
task: sequence
input: {vocab: 12, steps: 6}
network:
  - embedding: {dim: 8, as: e}
  - gru: {hidden: 8}
  - add: {from: e}
  - linear: {out: 12}
"""
    net = build(load_spec_text(text, "t.yaml"), seed=0).eval()
    assert net.wires is not None and net.state_size == 1
    x = torch.randint(0, 12, (3, 10))
    whole, state_whole = net(x)
    first, state = net(x[:, :4])
    second, state = net(x[:, 4:], state)
    torch.testing.assert_close(torch.cat([first, second], dim=1), whole)
    torch.testing.assert_close(state[0], state_whole[0])


def test_causal_attention_does_not_see_the_future():
    text = """name: t
task: sequence
input: {vocab: 12, steps: 6}
network:
  - embedding: {dim: 8}
  - transformer_encoder: {heads: 2, causal: true}
  - attention: {heads: 4, causal: true}
  - linear: {out: 12}
"""
    net = build(load_spec_text(text, "t.yaml"), seed=0).eval()
    x = torch.randint(0, 12, (2, 6))
    changed = x.clone()
    changed[:, 4:] = (changed[:, 4:] + 1) % 12  # change the last two tokens
    with torch.no_grad():
        a, b = net(x), net(changed)
    torch.testing.assert_close(a[:, :4], b[:, :4])  # steps 0..3 do not depend on steps 4, 5
    assert not torch.allclose(a[:, 4:], b[:, 4:])


def test_repeat_sets_arguments_per_copy():
    text = IMAGE.replace("[8, 8]", "[16, 16]") + """network:
  - repeat:
      times: 3
      each: {stride: [2, 1, 2]}
      first: {out: 5}
      layers: [conv2d: {out: 4, kernel: 3, padding: 1}, relu]
  - flatten
  - linear: {out: 2}
"""
    shapes = _shapes(text)
    assert shapes["network[0].repeat[0][0].conv2d"] == (5, 8, 8)
    assert shapes["network[0].repeat[1][0].conv2d"] == (4, 8, 8)
    assert shapes["network[0].repeat[2][0].conv2d"] == (4, 4, 4)


def test_repeat_overrides_reach_block_parameters():
    text = IMAGE + """blocks:
  unit:
    params: [out]
    defaults: {stride: 1}
    layers: [conv2d: {out: $out, kernel: 3, padding: 1, stride: $stride}]
network:
  - repeat: {times: 2, each: {out: [6, 7]}, first: {stride: 2}, layers: [unit: {out: 1}]}
  - flatten
  - linear: {out: 2}
"""
    shapes = _shapes(text)
    assert shapes["network[0].repeat[0][0].unit.layers[0].conv2d"] == (6, 4, 4)
    assert shapes["network[0].repeat[1][0].unit.layers[0].conv2d"] == (7, 4, 4)


def test_shape_names_in_a_blocks_parameters_mean_the_blocks_input():
    """`$in_channels` in a block's defaults or in a use's arguments is the block's input; in a layer's own
    arguments, that layer's input."""
    text = IMAGE + """blocks:
  b:
    params: [wide]
    defaults: {half: "$in_channels // 2"}
    layers:
      - conv2d: {out: $wide, kernel: 1}
      - conv2d: {out: $half, kernel: 1}
      - conv2d: {out: "$in_channels + 1", kernel: 1}
network:
  - conv2d: {out: 16, kernel: 1}
  - b: {wide: "$in_channels * 4"}
  - flatten
  - linear: {out: 2}
"""
    shapes = _shapes(text)
    assert shapes["network[1].b.layers[0].conv2d"] == (64, 8, 8)  # 16 × 4: the block's input
    assert shapes["network[1].b.layers[1].conv2d"] == (8, 8, 8)  # 16 // 2, not 64 // 2
    assert shapes["network[1].b.layers[2].conv2d"] == (9, 8, 8)  # this layer's own input + 1


def test_expressions_over_parameters_in_nested_blocks():
    text = IMAGE + """blocks:
  inner:
    params: [c]
    layers: [conv2d: {out: "$c * 2", kernel: 1, groups: "min($c, $in_channels)"}]
  outer:
    params: [c, pair]
    layers: [inner: {c: "$c + $pair[1]"}, $act]
    defaults: {act: relu6}
network:
  - conv2d: {out: 4, kernel: 1}
  - outer: {c: 2, pair: [0, 2]}
  - flatten
  - linear: {out: 2}
"""
    inferred = _infer(text)
    rows = {r.path: r for r in inferred.rows}
    assert rows["network[1].outer.layers[0].inner.layers[0].conv2d"].shape == (8, 8, 8)  # (2 + 2) * 2
    assert rows["network[1].outer.layers[1].relu6"].kind == "relu6"  # the entry `- $act` is the parameter's value
    conv = [m for m in inferred.net.modules() if isinstance(m, torch.nn.Conv2d)][1]
    assert conv.groups == 4  # min(4, 4)


def test_the_summary_shows_what_each_entry_takes():
    table = summary_table(load_spec_text(SE_NET, "se.yaml"))
    assert "network[2].add ← stem" in table
    assert "network[3].concat ← a, stem" in table


def test_operator_shorthands():
    """`add: [a, b]` is `add: {from: [a, b]}`; `add: {from: a}` adds a to the previous entry's output."""
    text = IMAGE + ("network:\n  - relu: {as: a}\n  - add: [a, input]\n  - relu: {as: s}\n  - multiply: [s, a]\n"
                    "  - add: {from: input}\n  - flatten\n  - linear: {out: 2}\n")
    net = build(load_spec_text(text, "g.yaml"), seed=0).eval()
    assert net.wires[1:5] == [(1, 0), (2,), (3, 1), (4, 0)]
    x = torch.randn(2, 3, 8, 8)
    a = torch.relu(x)
    expected = torch.relu(a + x) * a + x
    with torch.no_grad():
        values = [x]
        for module, slots in zip(net._top_level(), net.wires):
            values.append(module(*[values[s] for s in slots]))
    torch.testing.assert_close(values[5], expected)
