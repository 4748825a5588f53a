"""Every spec in specs/ loads, builds, has the course's parameter count, trains end to end and round-trips."""
from __future__ import annotations

import pytest
import torch

from models.build import Graph, build, infer
from models.layers.modern import DropPath
from models.spec.load import load_spec, load_spec_text
from tests.conftest import SPECS

# Parameter counts of the course's architectures at the course's input sizes (issue #2).
EXPECTED_PARAMETERS = {
    "lenet": 61_706,
    "lenet-bn": 44_878,
    "alexnet": 46_764_746,
    "vgg11": 128_806_154,
    "nin": 1_992_166,
    "googlenet": 5_977_530,
    "resnet18": 11_178_378,
    "fcn": 12_996_650,
    "char-rnn": 80_412,
    "char-gru": 226_844,
    "char-lstm": 300_060,
    "softmax-regression": 7_850,
    "mlp-dropout": 203_530,
    "linear-regression": 3,
    "sine-forecaster": 61,
}
# Later architectures in the spec language 2 (named references, expressions, per-copy repeat): torchvision's
# published counts at 224×224 for 1000 classes; the FPN and U-Net have no published count (their own, checked
# by hand: ResNet-18's trunk with 3 input channels, 11,179,520, plus a 273,941-parameter head).
EXPECTED_PARAMETERS.update({
    "mobilenet-v2": 3_504_872,
    "mobilenet-v3-large": 5_483_032,
    "efficientnet-b0": 5_288_548,
    "vit-b16": 86_567_656,
    "fpn": 11_453_461,
    "shapes-unet": 29_652,
})


def _ids(paths):
    return [p.stem for p in paths]


def _random_batch(spec, batch: int = 2) -> torch.Tensor:
    shape = spec.input.sample_shape()
    if spec.input.kind == "tokens":
        return torch.randint(0, spec.input.vocab, (batch, *shape))
    return torch.randn(batch, *shape)


def test_zoo_covers_the_course():
    names = {load_spec(p).name for p in SPECS}
    assert set(EXPECTED_PARAMETERS) <= names


@pytest.mark.parametrize("path", SPECS, ids=_ids(SPECS))
def test_parameter_count(path):
    spec = load_spec(path)
    inferred = infer(spec)
    if spec.name in EXPECTED_PARAMETERS:
        assert inferred.params == EXPECTED_PARAMETERS[spec.name]


@pytest.mark.parametrize("path", SPECS, ids=_ids(SPECS))
def test_builds_runs_and_every_parameter_learns(path):
    torch.manual_seed(0)
    spec = load_spec(path)
    inferred = infer(spec)
    net = build(spec, seed=0)
    assert sum(p.numel() for p in net.parameters()) == inferred.params
    for module in net.modules():  # stochastic depth may drop a block for both samples of this small batch
        if isinstance(module, DropPath):
            module.p = 0.0
    x = _random_batch(spec)
    out = net(x)
    y = out[0] if isinstance(out, tuple) else out
    assert tuple(y.shape) == (2, *inferred.output)
    assert torch.isfinite(y).all()
    aux = net.forward_with_aux(x)[1].values()  # auxiliary heads (outputs.aux) learn from their own outputs
    ((y.float() ** 2).mean() + sum((a.float() ** 2).mean() for a in aux)).backward()
    missing = [name for name, p in net.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert not missing, f"parameters without gradient: {missing[:5]}"


@pytest.mark.parametrize("path", SPECS, ids=_ids(SPECS))
def test_round_trip(path):
    spec = load_spec(path)
    again = load_spec_text(spec.to_yaml(), f"{path}.dumped", base_dir=path.parent)
    assert again.to_dict() == spec.to_dict()
    assert again.spec_hash() == spec.spec_hash()


def test_token_model_state_is_carried():
    """Running two halves with the state carried equals running the whole sequence at once."""
    spec = load_spec(next(p for p in SPECS if p.stem == "char_lstm"))
    net = build(spec, seed=0).eval()
    x = torch.randint(0, 28, (3, 10))
    whole, state_whole = net(x)
    first, state = net(x[:, :4])
    second, state = net(x[:, 4:], state)
    assert net.state_size == 2
    torch.testing.assert_close(torch.cat([first, second], dim=1), whole)
    for a, b in zip(state, state_whole):
        assert a.shape == (3, 1, 256)
        torch.testing.assert_close(a, b)


def test_fcn_transposed_convolution_starts_bilinear():
    spec = load_spec(next(p for p in SPECS if p.stem == "fcn"))
    net = build(spec, seed=0)
    up = net.body[1]
    x = torch.rand(1, 21, 4, 4)
    y = up(x)  # bilinear upsampling of a constant map stays constant in the interior
    const = up(torch.ones(1, 21, 4, 4))
    assert y.shape == (1, 21, 128, 128)
    assert torch.allclose(const[0, :, 40:80, 40:80], torch.ones(21, 40, 40), atol=1e-5)


# ------------------------------------------------------------------ the spec language 2 in the zoo
UNET_HEAD = "name: unet\ntask: segmentation\ninput: {channels: 3, size: [16, 16]}\n"
UNET_NESTED = UNET_HEAD + """network:
  - conv2d: {out: 8, kernel: 3, padding: 1}
  - relu
  - concat:
      - [identity]
      - - maxpool2d: {kernel: 2}
        - conv2d: {out: 16, kernel: 3, padding: 1}
        - relu
        - concat:
            - [identity]
            - [maxpool2d: {kernel: 2}, conv2d: {out: 32, kernel: 3, padding: 1}, relu,
               conv_transpose2d: {out: 16, kernel: 2, stride: 2}]
        - conv2d: {out: 16, kernel: 3, padding: 1}
        - relu
        - conv_transpose2d: {out: 8, kernel: 2, stride: 2}
  - conv2d: {out: 8, kernel: 3, padding: 1}
  - relu
  - conv2d: {out: 3, kernel: 1}
"""
UNET_FLAT = UNET_HEAD + """network:
  - conv2d: {out: 8, kernel: 3, padding: 1}
  - relu: {as: e1}
  - maxpool2d: {kernel: 2}
  - conv2d: {out: 16, kernel: 3, padding: 1}
  - relu: {as: e2}
  - maxpool2d: {kernel: 2}
  - conv2d: {out: 32, kernel: 3, padding: 1}
  - relu
  - conv_transpose2d: {out: 16, kernel: 2, stride: 2, as: u2}
  - concat: {from: [e2, u2]}
  - conv2d: {out: 16, kernel: 3, padding: 1}
  - relu
  - conv_transpose2d: {out: 8, kernel: 2, stride: 2, as: u1}
  - concat: {from: [e1, u1]}
  - conv2d: {out: 8, kernel: 3, padding: 1}
  - relu
  - conv2d: {out: 3, kernel: 1}
"""


def test_unet_with_named_skips_equals_the_nested_one():
    """The same U-Net written flat with named skips and nested with concat branches: same parameters (count and
    order), same outputs for the same weights, in training and in eval mode."""
    nested, flat = load_spec_text(UNET_NESTED, "nested.yaml"), load_spec_text(UNET_FLAT, "flat.yaml")
    assert infer(nested).params == infer(flat).params == 14_427
    assert infer(flat).output == infer(nested).output == (3, 16, 16)
    a, b = build(nested, seed=0), build(flat, seed=1)
    assert b.wires is not None and a.wires is None  # the flat one is wired by name, the nested one is a chain
    shapes_a = [p.shape for p in a.state_dict().values()]
    assert shapes_a == [p.shape for p in b.state_dict().values()]
    b.load_state_dict(dict(zip(b.state_dict(), a.state_dict().values())))
    x = torch.randn(4, 3, 16, 16)
    for mode in ("train", "eval"):
        getattr(a, mode)(), getattr(b, mode)()
        torch.testing.assert_close(b(x), a(x))


def test_fpn_takes_the_backbone_stages_by_name():
    spec = load_spec(next(p for p in SPECS if p.stem == "fpn"))
    net = infer(spec).net
    k = len(spec.backbone_nodes)  # b1..b5: slots 1..5 hold their outputs
    taken = {s for w in net.wires[k:] for s in w}
    assert {2, 3, 4, 5} <= taken  # b2, b3, b4 (laterals) and b5 (the backbone's output)
    assert len(net.backbone) == k and isinstance(net.body, torch.nn.Sequential)


def test_zoo_blocks_use_references_and_expressions():
    """The SE gate multiplies a block's input (`multiply: {from: input}`), widths come from $in_channels."""
    spec = load_spec(next(p for p in SPECS if p.stem == "mobilenet_v3_large"))
    net = infer(spec).net
    graphs = [m for m in net.modules() if isinstance(m, Graph)]
    assert len(graphs) >= 8  # every SE block and every residual block is wired by name
    depthwise = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d) and m.groups > 1]
    assert depthwise and all(m.groups == m.in_channels == m.out_channels for m in depthwise)


@pytest.mark.parametrize("name", ["mobilenet_v2", "mobilenet_v3_large", "efficientnet_b0", "vit_b16", "fpn"])
def test_large_zoo_specs_validate_on_the_meta_device(name):
    """Validation allocates nothing: 86M parameters of ViT-B/16 stay on the meta device."""
    inferred = infer(load_spec(next(p for p in SPECS if p.stem == name)))
    assert {p.device.type for p in inferred.net.parameters()} == {"meta"}
