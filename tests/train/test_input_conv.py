"""Pretrained weights on another number of input channels: the first convolution is adapted 1 → N (repeat, / N)
and N → 1 (sum), exactly on gray images replicated over the channels; other counts are refused at the spec's
weights field. Relative weights paths start at the spec file's folder, not the current directory."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from models.build import build
from models.errors import SpecError
from models.spec.load import load_spec, load_spec_text
from models.train.input_conv import ChannelsRefused, adapt_input_conv, input_convs
from models.train.pretrained import PretrainedError, apply_pretrained
from models.train.weights_import import InputChannelsError, WeightsError, import_weights

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "export"))
from torchvision_layout import resnet18  # noqa: E402  (torchvision's module tree, or its replica)

BASE = """
name: base
task: classification
input: {{channels: {channels}, size: [16, 16]}}
network:
  - group: {{name: features, layers: [conv2d: {{out: 8, kernel: 3, padding: 1}}, batchnorm2d, relu,
                                      conv2d: {{out: 8, kernel: 3, padding: 1}}, relu]}}
  - global_avgpool
  - linear: {{out: 4}}
"""
TUNED = """
name: tuned
task: classification
input: {{channels: {channels}, size: [16, 16]}}
backbone: {{spec: base{source}.yaml, until: features, weights: {weights}}}
network: [global_avgpool, linear: {{out: 3}}]
"""


def _source_run(folder: Path, channels: int) -> Path:
    """A base spec on `channels` and a 'run' of it: its weights (randomised batch-norm statistics included) in a
    safetensors file, named as a specserve checkpoint names them (body.N...)."""
    spec_file = folder / f"base{channels}.yaml"
    spec_file.write_text(BASE.format(channels=channels))
    net = build(load_spec(spec_file), seed=1)
    with torch.no_grad():
        for buffer in (net.body[0][1].running_mean, net.body[0][1].running_var):
            buffer.uniform_(0.5, 1.5)
    save_file(net.state_dict(), folder / f"base{channels}.safetensors")
    return spec_file


def _tuned(folder: Path, source: int, channels: int, weights: str | None = None) -> tuple:
    _source_run(folder, source)
    spec_file = folder / f"tuned{source}to{channels}.yaml"
    spec_file.write_text(TUNED.format(channels=channels, source=source, weights=weights or f"base{source}.safetensors"))
    spec = load_spec(spec_file)
    return spec, build(spec, seed=0)


def _features(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return net.backbone.eval()(x)  # (B, 8, 16, 16)


@pytest.mark.parametrize(("source", "channels"), [(1, 3), (3, 1)])
def test_adapted_backbone_computes_the_source_on_gray_images(tmp_path, source, channels, capfd):
    spec, net = _tuned(tmp_path, source, channels)
    apply_pretrained(net, spec)
    reference = build(load_spec(tmp_path / f"base{source}.yaml"), seed=0)
    reference.load_state_dict(load_file(tmp_path / f"base{source}.safetensors"))
    gray = torch.rand(4, 1, 16, 16)  # (B, 1, H, W)
    ours = _features(net, gray.expand(-1, channels, -1, -1))
    theirs = reference.body[0].eval()(gray.expand(-1, source, -1, -1))
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    assert tuple(net.backbone[0][0].weight.shape) == (8, channels, 3, 3)
    err = capfd.readouterr().err
    assert err.count("weights: backbone.weights") == 1 and "backbone.0.0.weight" in err
    assert ("divided by 3" if channels == 3 else "summed over its channels") in err


def test_kernels_are_repeated_and_divided_or_summed():
    kernel = torch.randn(5, 1, 3, 3)
    wide, how = adapt_input_conv(kernel, 3)
    assert wide.shape == (5, 3, 3, 3) and torch.allclose(wide, kernel.expand(-1, 3, -1, -1) / 3) and "repeated" in how
    narrow, how = adapt_input_conv(wide * 3, 1)
    torch.testing.assert_close(narrow, kernel * 3)
    assert adapt_input_conv(kernel, 1)[0] is kernel  # nothing to do
    with pytest.raises(ChannelsRefused, match="3 input channels and the spec's images have 4"):
        adapt_input_conv(torch.randn(5, 3, 3, 3), 4)


def test_refused_channel_counts_are_a_located_spec_error(tmp_path):
    spec, net = _tuned(tmp_path, 3, 4)
    with pytest.raises(SpecError) as caught:
        apply_pretrained(net, spec)
    message = str(caught.value)
    assert message.startswith(f"{tmp_path / 'tuned3to4.yaml'}:5:") and " backbone.weights: " in message
    assert "reads 3 input channels and the spec's images have 4" in message and "base3.safetensors" in message


def test_only_the_convolutions_that_read_the_input_are_adapted(tmp_path):
    spec, net = _tuned(tmp_path, 1, 3)
    assert input_convs(net, 3, (16, 16)) == {"backbone.0.0.weight"}
    was = net.training
    input_convs(net, 3, (16, 16))
    assert net.training == was  # the probe leaves the mode as it was


def test_torchvision_file_on_gray_digits_sums_conv1(tmp_path, capfd):
    """A 3-channel torchvision state_dict (the layout of resnet18_torchvision.yaml) into a 1-channel spec through
    the import path (names mapped by order and shape): conv1 summed, every other tensor as in the file."""
    reference, _ = resnet18(num_classes=10)
    torch.save(reference.state_dict(), tmp_path / "resnet18.pth")
    spec_file = tmp_path / "gray.yaml"
    spec_file.write_text(f"""
name: gray
task: classification
input: {{channels: 1, size: [32, 32]}}
backbone: {{spec: {Path(__file__).resolve().parents[2] / 'specs' / 'resnet18_torchvision.yaml'}, until: layer4,
            weights: resnet18.pth}}
network: [global_avgpool, linear: {{out: 10}}]
""")
    spec = load_spec(spec_file)
    net = build(spec, seed=0)
    apply_pretrained(net, spec)
    gray = torch.rand(2, 1, 32, 32)
    ours = net.eval()(gray)
    with torch.no_grad():
        net.body[-1].weight.copy_(reference.fc.weight)
        net.body[-1].bias.copy_(reference.fc.bias)
    torch.testing.assert_close(net(gray), reference.eval()(gray.expand(-1, 3, -1, -1)), rtol=1e-4, atol=1e-4)
    assert ours.shape == (2, 10)
    assert "backbone.0.0.weight: the 3-channel kernel summed" in capfd.readouterr().err


def _small_torchvision_spec(channels: int):
    """resnet18_torchvision.yaml on `channels` gray-or-not 32×32 images with 10 classes (names body.N...)."""
    text = ((Path(__file__).resolve().parents[2] / "specs" / "resnet18_torchvision.yaml").read_text()
            .replace("channels: 3", f"channels: {channels}").replace("out: 1000", "out: 10")
            .replace("size: [224, 224], mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225]", "size: [32, 32]"))
    return load_spec_text(text, "r.yaml")


def test_import_report_lists_the_adaptation(tmp_path):
    reference, _ = resnet18(num_classes=10)
    torch.save(reference.state_dict(), tmp_path / "resnet18.pth")
    spec = _small_torchvision_spec(1)
    report = import_weights(build(spec, seed=0), tmp_path / "resnet18.pth", adapt={"body.0.0.weight"}, strict=True)
    assert report.complete and list(report.adapted) == ["body.0.0.weight"]
    assert report.to_dict()["adapted"]["body.0.0.weight"].startswith("the 3-channel kernel summed")
    assert "body.0.0.weight: the 3-channel kernel summed" in report.summary()
    with pytest.raises(InputChannelsError, match="reads 3 input channels and the spec's images have 4"):
        import_weights(build(_small_torchvision_spec(4), seed=0), tmp_path / "resnet18.pth", adapt={"body.0.0.weight"})
    # without `adapt` (export --weights) a channel mismatch stays what it was: that tensor is not fed
    plain = import_weights(build(spec, seed=0), tmp_path / "resnet18.pth")
    assert "body.0.0.weight" in plain.missing and not plain.adapted


# ------------------------------------------------------------------ weights paths start at the spec's folder
def test_relative_weights_resolve_against_the_spec_folder_not_the_cwd(tmp_path, monkeypatch):
    specs = tmp_path / "specs"
    specs.mkdir()
    (tmp_path / "elsewhere").mkdir()
    spec, net = _tuned(specs, 1, 1)  # weights: base1.safetensors, beside the spec
    monkeypatch.chdir(tmp_path / "elsewhere")
    apply_pretrained(net, spec)
    trained = load_file(specs / "base1.safetensors")
    assert torch.equal(net.backbone[0][0].weight, trained["body.0.0.weight"])

    up = tmp_path / "runs"
    up.mkdir()
    (specs / "base1.safetensors").rename(up / "base1.safetensors")
    spec, net = _tuned(specs, 1, 1, weights="../runs/base1.safetensors")  # a run folder beside specs/
    apply_pretrained(net, spec)
    assert torch.equal(net.backbone[0][0].weight, trained["body.0.0.weight"])

    monkeypatch.chdir(tmp_path)  # runs/base1.safetensors exists from here, but the spec's folder is what counts
    spec, net = _tuned(specs, 1, 1, weights="runs/base1.safetensors")
    with pytest.raises(PretrainedError, match="relative to the spec's folder"):
        apply_pretrained(net, spec)
    assert os.path.isfile("runs/base1.safetensors")


def test_safetensors_with_foreign_names_is_refused_not_paired_by_a_lost_order(tmp_path):
    """safetensors returns its names sorted (bn1 before conv1, layer1.10 before layer1.2): pairing such a file by
    order would swap same-shaped tensors silently, so only a torch state_dict is paired by order."""
    reference, _ = resnet18(num_classes=10)
    reference.conv1 = nn.Conv2d(1, 64, 7, 2, 3, bias=False)
    save_file(reference.state_dict(), tmp_path / "resnet18.safetensors")
    with pytest.raises(WeightsError, match="safetensors file keeps no order"):
        import_weights(build(_small_torchvision_spec(1), seed=0), tmp_path / "resnet18.safetensors")
    torch.save(reference.state_dict(), tmp_path / "resnet18.pth")  # the same tensors as a state_dict: in order
    assert import_weights(build(_small_torchvision_spec(1), seed=0), tmp_path / "resnet18.pth", strict=True).complete
