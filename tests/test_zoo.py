"""Every spec in specs/ loads, builds, has the course's parameter count, trains end to end and round-trips."""
from __future__ import annotations

import pytest
import torch

from models.build import build, infer
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
    x = _random_batch(spec)
    out = net(x)
    y = out[0] if isinstance(out, tuple) else out
    assert tuple(y.shape) == (2, *inferred.output)
    assert torch.isfinite(y).all()
    (y.float() ** 2).mean().backward()
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
