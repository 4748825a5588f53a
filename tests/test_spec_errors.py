"""Bad specs: each gives one SpecError whose first problem names the exact file:line:column, path and message."""
from __future__ import annotations

import pytest

from models.build import infer
from models.errors import SpecError
from models.spec.load import load_spec, load_spec_text

HEAD = "name: t\ntask: classification\ninput: {channels: 1, size: [28, 28]}\n"  # lines 1-3

CASES = [
    # (id, text, location, path, message fragment)
    ("empty file", "", "1:1", "", "empty file"),
    ("only a comment", "# nothing here\n", "1:1", "", "empty file"),
    ("list at top level", "- conv2d\n- relu\n", "1:1", "", "not a list"),
    ("scalar at top level", "lenet\n", "1:1", "", "not a str"),
    ("not yaml", "name: [unclosed\ntask: x\n", "2:5", "", "not valid YAML"),
    ("tab indentation", "name: t\n\ttask: x\n", "2:1", "", "not valid YAML"),
    ("binary", b"\x89PNG\r\n\x1a\n\x00\x00", "1:1", "", "not UTF-8"),
    ("not utf-8", b"name: caf\xe9\n", "1:1", "", "not UTF-8"),
    ("duplicate key", "name: a\nname: b\n", "2:1", "name", "duplicate key 'name'"),
    ("missing network", HEAD, "1:1", "", "network is empty"),
    ("class weights on a language model", "name: t\ntask: sequence\ninput: {vocab: 28}\nnetwork: [one_hot, linear: {out: 28}]\n"
     "train: {class_weights: median_frequency}\n", "1:1", "", "applies to classification and segmentation, not sequence"),
    ("unknown class weighting", HEAD + "network: [flatten, linear: {out: 10}]\ntrain: {class_weights: inverse}\n",
     "5:24", "train.class_weights", "'none' or 'median_frequency'"),
    ("missing task", "name: t\ninput: {features: 3}\nnetwork: [linear: {out: 1}]\n", "1:1", "task", "missing required field"),
    ("unknown task", HEAD.replace("classification", "clasification") + "network: [flatten]\n", "2:7", "task", "Input should be"),
    ("bad name", HEAD.replace("name: t", "name: Bad Name!") + "network: [flatten]\n", "1:7", "name", "should match pattern"),
    ("unknown top-level field", HEAD + "netwrk: [flatten]\n", "4:1", "netwrk", "did you mean network?"),
    ("unknown input field", "name: t\ntask: classification\ninput: {chanels: 1, size: [28, 28]}\nnetwork: [flatten]\n",
     "3:9", "input.chanels", "did you mean channels?"),
    ("negative size", "name: t\ntask: classification\ninput: {channels: 1, size: [-28, 28]}\nnetwork: [flatten]\n",
     "3:28", "input.size", "size must be two values between 1 and 8192"),
    ("mean per channel", "name: t\ntask: classification\ninput: {channels: 3, size: [8, 8], mean: [0.5]}\nnetwork: [flatten]\n",
     "3:8", "input", "mean has 1 values but there are 3 channels"),
    ("two input kinds", "name: t\ntask: classification\ninput: {channels: 1, size: [8, 8], vocab: 3}\nnetwork: [flatten]\n",
     "3:8", "input", "input describes one kind of sample"),
    ("task and input disagree", "name: t\ntask: segmentation\ninput: {vocab: 28}\nnetwork: [one_hot]\n",
     "3:8", "input", "task segmentation takes image input, not tokens"),  # located at the input, not the file
    ("classification of features is not a pair", "name: t\ntask: classification\ninput: {features: 4}\nnetwork: [linear: {out: 2}]\n",
     "3:8", "input", "task classification takes image input, not features"),
    ("regression of a series window is not a pair", "name: t\ntask: regression\ninput: {window: 4}\nnetwork: [linear: {out: 1}]\n",
     "3:8", "input", "task regression takes features input, not series"),
    ("dataset of another input kind", "name: t\ntask: sequence\ninput: {vocab: 28}\nnetwork: [one_hot, gru: {hidden: 8}, linear: {out: 28}]\ndata: {dataset: sine}\n",
     "5:17", "data.dataset", "dataset sine gives series input, but the spec's input is tokens"),
    ("unknown layer", HEAD + "network:\n  - flatten\n  - linaer: {out: 10}\n", "6:5", "network[1].linaer", "did you mean linear"),
    ("layer is a list", HEAD + "network:\n  - [conv2d, relu]\n", "5:5", "network[0]", "a layer is a name"),
    ("two keys in a layer", HEAD + "network:\n  - conv2d: {out: 3, kernel: 3}\n    relu: {}\n", "5:5", "network[0]", "a layer is a name"),
    ("negative channels", HEAD + "network:\n  - conv2d: {out: -6, kernel: 5}\n", "5:19", "network[0].conv2d.out", "greater than or equal to 1"),
    ("string where int", HEAD + "network:\n  - conv2d: {out: six, kernel: 5}\n", "5:19", "network[0].conv2d.out", "valid integer"),
    ("missing required argument", HEAD + "network:\n  - conv2d: {kernel: 5}\n", "5:13", "network[0].conv2d.out", "missing required field"),
    ("unknown layer argument", HEAD + "network:\n  - conv2d: {out: 6, kernal: 5}\n", "5:22", "network[0].conv2d.kernal", "did you mean kernel?"),
    ("arguments not a mapping", HEAD + "network:\n  - conv2d: 6\n", "5:5", "network[0].conv2d", "arguments must be a mapping"),
    ("dropout p out of range", HEAD + "network:\n  - dropout: {p: 1.5}\n", "5:18", "network[0].dropout.p", "less than 1"),
    ("linear on an image", HEAD + "network:\n  - conv2d: {out: 16, kernel: 5}\n  - linear: {out: 10}\n",
     "6:5", "network[1].linear", "got (16, 24, 24); add flatten before it"),
    ("kernel larger than input", HEAD + "network:\n  - conv2d: {out: 6, kernel: 29}\n",
     "5:5", "network[0].conv2d", "cannot take input of shape (1, 28, 28)"),
    ("pooling collapses to zero", HEAD + "network:\n  - maxpool2d: {kernel: 2}\n  - maxpool2d: {kernel: 2}\n  - maxpool2d: {kernel: 2}\n"
     "  - maxpool2d: {kernel: 2}\n  - maxpool2d: {kernel: 2}\n", "9:5", "network[4].maxpool2d", "cannot take input of shape (1, 1, 1)"),
    ("groups do not divide", HEAD + "network:\n  - conv2d: {out: 6, kernel: 3, groups: 4}\n", "5:5", "network[0].conv2d", "groups=4 must divide"),
    ("wrong number of classes", HEAD + "labels: [a, b, c]\nnetwork:\n  - flatten\n  - linear: {out: 10}\n",
     "6:3", "network", "10 outputs but there are 3 labels"),
    ("classifier ends in an image", HEAD + "network:\n  - conv2d: {out: 4, kernel: 3}\n", "5:3", "network", "must end in (classes,)"),
    ("residual shapes differ", HEAD + "network:\n  - residual:\n      body: [conv2d: {out: 8, kernel: 3, padding: 1}]\n  - flatten\n",
     "5:5", "network[0].residual", "body gives (8, 28, 28) but shortcut gives (1, 28, 28)"),
    ("concat sizes differ", HEAD + "network:\n  - concat:\n      - [conv2d: {out: 4, kernel: 3}]\n      - [conv2d: {out: 4, kernel: 1}]\n",
     "5:5", "network[0].concat", "branches give (4, 26, 26), (4, 28, 28)"),
    ("repeat times zero", HEAD + "network:\n  - repeat: {times: 0, layers: [relu]}\n", "5:21", "network[0].repeat.times", "greater than or equal to 1"),
    ("unknown block parameter", HEAD + "blocks:\n  b:\n    params: [width]\n    layers: [conv2d: {out: $width, kernel: 1}]\n"
     "network:\n  - b: {widht: 3}\n  - flatten\n", "9:9", "network[0].b.widht", "did you mean width?"),
    ("missing block parameter", HEAD + "blocks:\n  b:\n    params: [width]\n    layers: [conv2d: {out: $width, kernel: 1}]\n"
     "network:\n  - b: {}\n", "9:5", "network[0].b", "needs parameter(s) width"),
    ("undefined parameter in a block", HEAD + "blocks:\n  b:\n    params: [width]\n    layers: [conv2d: {out: $depth, kernel: 1}]\n"
     "network:\n  - b: {width: 2}\n", "7:28", "network[0].b", "'$depth' names no parameter"),
    ("block uses itself", HEAD + "blocks:\n  b:\n    layers: [relu, b]\n" "network:\n  - b\n", "6:20", "network[0].b.layers[1].b", "uses itself"),
    ("block named like a layer", HEAD + "blocks:\n  relu:\n    layers: [identity]\n" "network:\n  - flatten\n", "5:3", "blocks.relu", "taken by a built-in layer"),
    ("token ids into a linear layer", "name: t\ntask: sequence\ninput: {vocab: 28}\nnetwork:\n  - linear: {out: 28}\n",
     "5:5", "network[0].linear", "start the network with one_hot or embedding"),
    ("rnn on a flat vector", "name: t\ntask: sequence\ninput: {window: 4}\nnetwork:\n  - gru: {hidden: 8}\n  - linear: {out: 1}\n",
     "5:5", "network[0].gru", "expects input (channels, length) or (steps, features) per sample, got (4,)"),
    ("absurd activation size", HEAD + "network:\n  - conv2d: {out: 64, kernel: 3, padding: 1}\n  - upsample: {scale: 1000}\n"
     "  - flatten\n  - linear: {out: 10}\n", "6:5", "network[1].upsample", "values per sample (limit 2,147,483,648)"),
    ("absurd layer size", "name: t\ntask: regression\ninput: {features: 1000000}\nnetwork:\n  - linear: {out: 1000000}\n  - linear: {out: 1}\n",
     "5:5", "network[0].linear", "past the limit of 2,000,000,000"),
    ("unknown initializer", HEAD + "network: [flatten, linear: {out: 10}]\ninit: xavier\n", "5:7", "init", "xavier_uniform?"),
    ("optimizer with two kinds", HEAD + "network: [flatten, linear: {out: 10}]\ntrain: {optimizer: {sgd: {}, adam: {}}}\n",
     "5:20", "train.optimizer", "one of its kinds as a one-key mapping"),
    ("unknown optimizer field", HEAD + "network: [flatten, linear: {out: 10}]\ntrain:\n  optimizer: {sgd: {lr: 0.1, momentun: 0.9}}\n",
     "6:30", "train.optimizer.sgd.momentun", "did you mean momentum?"),
    ("negative learning rate", HEAD + "network: [flatten, linear: {out: 10}]\ntrain:\n  optimizer: {sgd: {lr: -1}}\n",
     "6:25", "train.optimizer.sgd.lr", "greater than 0"),
    ("unknown backbone layer", HEAD.replace("name: t", "name: t") + "backbone: {spec: resnet18.yaml, until: b9}\nnetwork: [flatten]\n",
     "4:40", "backbone.until", "named layers: b1, b2, b3, b4, b5"),
    ("missing backbone file", HEAD + "backbone: {spec: nowhere.yaml, until: b5}\nnetwork: [flatten]\n",
     "4:18", "backbone.spec", "backbone nowhere.yaml does not load"),
]


@pytest.mark.parametrize("text,location,path,fragment", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_spec(text, location, path, fragment, tmp_path):
    specs_dir = tmp_path
    (specs_dir / "resnet18.yaml").write_text((__import__("tests.conftest").conftest.ROOT / "specs" / "resnet18.yaml").read_text())
    file = specs_dir / "bad.yaml"
    file.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(SpecError) as caught:
        infer(load_spec(file))
    matching = [p for p in caught.value.problems if p.path == path and fragment in p.message]
    assert matching, str(caught.value)
    assert str(matching[0].location).endswith(f"bad.yaml:{location}"), str(caught.value)


def test_at_least_25_cases():
    assert len(CASES) >= 25


def test_missing_file(tmp_path):
    with pytest.raises(SpecError, match="file not found"):
        load_spec(tmp_path / "absent.yaml")


def test_directory_is_not_a_spec(tmp_path):
    with pytest.raises(SpecError, match="is a directory"):
        load_spec(tmp_path)


def test_alias_bomb_is_refused_quickly():
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8))
    with pytest.raises(SpecError, match="alias bomb"):
        load_spec_text(bomb, "bomb.yaml")


@pytest.mark.parametrize("opener,closer", [("[", "]"), ("{a: ", "}")])
def test_deep_nesting(opener, closer):
    with pytest.raises(SpecError, match="nesting"):
        load_spec_text("a: " + opener * 10_000 + closer * 10_000, "deep.yaml")


def test_python_tags_are_refused():
    with pytest.raises(SpecError, match="tag tag:yaml.org,2002:python/object/apply:os.system is not allowed"):
        load_spec_text("name: !!python/object/apply:os.system ['true']\n", "tag.yaml")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec_text("name: !!python/name:os.system\n", "tag.yaml")


def test_every_problem_is_reported():
    text = HEAD + "network:\n  - conv2: {out: 3}\n  - linaer: {out: 10}\n"
    with pytest.raises(SpecError) as caught:
        load_spec_text(text, "two.yaml")
    assert [p.path for p in caught.value.problems] == ["network[0].conv2", "network[1].linaer"]
