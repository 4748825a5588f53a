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
     "3:8", "input", "task classification takes image or tokens input, not features"),
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


# ------------------------------------------------------------------ the spec language 2
# references (DAG wiring), operators, expressions, block defaults, per-copy repeat, next-token rules, plugins,
# new layers. Messages name both ends of a wiring problem; `bad.yaml` stands for the file's path in messages.
NET = HEAD + "network:\n"  # entries from line 5
TAIL = "  - flatten\n  - linear: {out: 10}\n"
TOKENS = "name: t\ntask: sequence\ninput: {vocab: 28}\nnetwork:\n"
NEW_CASES = [
    # ---- named references
    ("unknown reference", NET + "  - conv2d: {out: 4, kernel: 3, as: skip}\n  - add: {from: [skp, input]}\n" + TAIL,
     "6:18", "network[1].add.from", "no entry before this one is named 'skp' (did you mean skip?); names here: input, skip"),
    ("forward reference", NET + "  - conv2d: {out: 1, kernel: 1, from: later}\n  - relu: {from: input, as: later}\n" + TAIL,
     "5:39", "network[0].conv2d.from", "'later' is a later entry, network[1].relu (bad.yaml:6:5)"),
    ("cycle", NET + "  - conv2d: {out: 1, kernel: 3, padding: 1, as: a, from: c}\n  - relu: {as: b}\n  - relu: {as: c}\n" + TAIL,
     "5:58", "network[0].conv2d.from", "a cycle network[0].conv2d → network[1].relu → network[2].relu → network[0].conv2d"),
    ("own output", NET + "  - relu: {as: a, from: a}\n" + TAIL, "5:25", "network[0].relu.from", "cannot take its own output"),
    ("duplicate name", NET + "  - relu: {as: a}\n  - relu: {name: a}\n" + TAIL,
     "6:5", "network[1].relu", "name 'a' is already taken by network[0].relu (bad.yaml:5:5)"),
    ("name inside a group", NET + "  - group: {layers: [relu: {as: deep}]}\n  - add: {from: [deep, input]}\n" + TAIL,
     "6:18", "network[1].add.from", "'deep' names network[0].group.layers[0].relu (bad.yaml:5:22), inside network[0].group"),
    ("outer name in a residual body", NET + "  - relu: {as: a}\n  - residual: {body: [relu: {from: a}]}\n" + TAIL,
     "6:36", "network[1].residual.body[0].relu.from", "'a' names network[0].relu (bad.yaml:5:5), outside this list"),
    ("caller's name in a block", HEAD + "blocks:\n  b:\n    layers: [relu: {from: x}]\nnetwork:\n  - relu: {as: x}\n  - b\n" + TAIL,
     "6:27", "network[1].b.layers[0].relu.from", "no entry before this one is named 'x'; names here: input"),
    ("input is reserved", NET + "  - relu: {as: input}\n" + TAIL, "5:5", "network[0].relu", "'input' names the input of every list"),
    ("from is a number", NET + "  - relu: {from: 3}\n" + TAIL, "5:18", "network[0].relu.from", "a name or a list of names"),
    ("from is empty", NET + "  - relu: {from: []}\n" + TAIL, "5:18", "network[0].relu.from", "a name or a list of names"),
    ("as is not a name", NET + "  - relu: {as: [a]}\n" + TAIL, "5:16", "network[0].relu.as", "as names this entry's output"),
    ("name and as", NET + "  - relu: {name: a, as: b}\n" + TAIL, "5:21", "network[0].relu.as", "give either name or as"),
    ("two inputs to a layer", NET + "  - relu: {as: a}\n  - conv2d: {out: 4, kernel: 3, from: [a, input]}\n" + TAIL,
     "6:43", "network[1].conv2d.from", "conv2d takes one input, but from lists 2 (a, input)"),
    ("add without inputs", NET + "  - add\n" + TAIL, "5:5", "network[0].add", "add combines named outputs"),
    ("add of different shapes", NET + "  - conv2d: {out: 4, kernel: 3, as: a}\n  - conv2d: {out: 4, kernel: 3}\n  - add: {from: a}\n" + TAIL,
     "7:5", "network[2].add", "network[1].conv2d (bad.yaml:6:5) gives (4, 24, 24); 'a' (network[0].conv2d, bad.yaml:5:5) gives (4, 26, 26)"),
    ("multiply of different ranks", NET + "  - conv2d: {out: 4, kernel: 3, as: x}\n  - global_avgpool\n  - multiply: {from: x}\n" + TAIL,
     "7:5", "network[2].multiply", "the inputs need the same number of axes"),
    ("multiply that cannot broadcast", NET + "  - conv2d: {out: 4, kernel: 3, as: x}\n  - conv2d: {out: 2, kernel: 3, padding: 1}\n"
     "  - multiply: {from: x}\n" + TAIL, "7:5", "network[2].multiply", "axis 0 differs (2 vs 4)"),
    ("concat axis out of range", NET + "  - relu: {as: a}\n  - concat: {from: [a, input], axis: 5}\n" + TAIL,
     "6:5", "network[1].concat", "axis 5 is out of range for inputs of 3 axes"),
    ("concat of mismatched sizes", NET + "  - conv2d: {out: 4, kernel: 3, as: a}\n  - concat: {from: [a, input]}\n" + TAIL,
     "6:5", "network[1].concat", "cannot concatenate along axis 0: 'a' (network[0].conv2d, bad.yaml:5:5) gives (4, 26, 26)"),
    ("unknown operator field", NET + "  - relu: {as: a}\n  - add: {from: [a, input], axis: 1}\n" + TAIL,
     "6:29", "network[1].add.axis", "unknown field 'axis' (did you mean as?); add takes from, as, name"),
    ("unknown name in add shorthand", NET + "  - relu: {as: a}\n  - add: [a, b]\n" + TAIL,
     "6:14", "network[1].add", "no entry before this one is named 'b'"),
    ("output never used", NET + "  - conv2d: {out: 4, kernel: 3, as: a}\n  - relu\n  - relu: {from: a}\n" + TAIL,
     "6:5", "network[1].relu", "this entry's output is never used: network[2].relu takes from: a instead"),
    ("token ids into add", TOKENS + "  - add: {from: [input, input]}\n  - one_hot\n  - linear: {out: 28}\n",
     "5:5", "network[0].add", "receives token ids from the input of this list"),
    ("unknown backbone stage", "name: t\ntask: classification\ninput: {channels: 1, size: [96, 96]}\n"
     "backbone: {spec: resnet18.yaml, until: b5}\nnetwork:\n  - conv2d: {out: 8, kernel: 1, from: b44}\n  - global_avgpool\n"
     "  - linear: {out: 10}\n", "6:39", "network[0].conv2d.from", "(did you mean b4?); names here: input, b1, b2, b3, b4, b5"),
    ("backbone end unused", "name: t\ntask: classification\ninput: {channels: 1, size: [96, 96]}\n"
     "backbone: {spec: resnet18.yaml, until: b5}\nnetwork:\n  - global_avgpool: {from: b4}\n  - linear: {out: 10}\n",
     "4:40", "backbone.until", "backbone layer 'b5' is kept but never used"),
    # ---- expressions
    ("expression syntax", NET + "  - conv2d: {out: \"$in_channels *\", kernel: 3}\n" + TAIL,
     "5:19", "network[0].conv2d", "'$in_channels *': not an expression"),
    ("expression attribute access", NET + "  - conv2d: {out: \"$in_channels.__class__\", kernel: 3}\n" + TAIL,
     "5:19", "network[0].conv2d", "attribute access is not allowed"),
    ("expression calls a function", NET + "  - conv2d: {out: \"__import__('os') + $in_channels\", kernel: 3}\n" + TAIL,
     "5:19", "network[0].conv2d", "the only functions are min(a, b, ...) and max(a, b, ...)"),
    ("expression name without $", NET + "  - conv2d: {out: \"$in_channels * c\", kernel: 3}\n" + TAIL,
     "5:19", "network[0].conv2d", "names in expressions start with $: write $c"),
    ("expression shape-name typo", NET + "  - conv2d: {out: \"$in_chanels * 2\", kernel: 3}\n" + TAIL,
     "5:19", "network[0].conv2d", "'$in_chanels' is not a name here (did you mean $in_channels"),
    ("expression parameter typo", HEAD + "blocks:\n  b:\n    params: [width]\n    layers: [conv2d: {out: \"$widht * 2\", kernel: 1}]\n"
     "network:\n  - b: {width: 2}\n" + TAIL, "7:28", "network[0].b", "'$widht' names no parameter of this block (did you mean $width"),
    ("expression divides by zero", NET + "  - conv2d: {out: \"$in_channels // 0\", kernel: 3}\n" + TAIL,
     "5:19", "network[0].conv2d", "'$in_channels // 0': division by zero (input (1, 28, 28))"),
    ("expression gives zero channels", NET + "  - conv2d: {out: \"$in_channels // 2\", kernel: 3}\n" + TAIL,
     "5:19", "network[0].conv2d.out", "greater than or equal to 1 (got 0): out = 0 from '$in_channels // 2' with input (1, 28, 28)"),
    ("expression gives a fraction", NET + "  - conv2d: {out: \"$in_channels / 3\", kernel: 3}\n" + TAIL,
     "5:19", "network[0].conv2d.out", "fractional part"),
    ("expression needs an image", "name: t\ntask: regression\ninput: {features: 4}\nnetwork:\n  - linear: {out: \"$in_height\"}\n",
     "5:19", "network[0].linear", "$in_height needs a (channels, height, width) input, but the input here is (4,)"),
    ("expression index out of range", NET + "  - conv2d: {out: \"$in_shape[3]\", kernel: 3}\n" + TAIL,
     "5:19", "network[0].conv2d", "$in_shape = [1, 28, 28] has no item 3"),
    ("expression too large", NET + "  - conv2d: {out: \"9 ** 9 ** 9 + $in_channels\", kernel: 3}\n" + TAIL, "5:19", "network[0].conv2d", "the exponent 387420489 is too large (at most 64)"),
    ("expression too long", NET + "  - conv2d: {out: \"$in_channels" + " + 1" * 60 + "\", kernel: 3}\n" + TAIL,
     "5:19", "network[0].conv2d", "expressions are at most 200 characters"),
    ("arithmetic on a layer name", HEAD + "blocks:\n  b:\n    params: [act]\n    layers: [conv2d: {out: \"$act * 2\", kernel: 1}]\n"
     "network:\n  - b: {act: relu}\n" + TAIL, "7:28", "network[0].b", "$act is 'relu', not a number"),
    ("repeat times from the input's shape", NET + "  - repeat: {times: $in_channels, layers: [relu]}\n" + TAIL,
     "5:21", "network[0].repeat.times", "repeat's times cannot depend on the input's shape"),
    ("a layer from the input's shape", HEAD + "blocks:\n  b:\n    params: [act]\n    layers: [$act]\nnetwork:\n  - b: {act: $in_channels}\n" + TAIL,
     "7:14", "network[0].b", "a layer cannot depend on the input's shape"),
    ("a default that divides by zero", HEAD + "blocks:\n  se:\n    defaults: {ch: \"$in_channels // 0\"}\n"
     "    layers: [conv2d: {out: $ch, kernel: 1}]\nnetwork:\n  - se\n" + TAIL,
     "6:20", "network[0].se", "'$in_channels // 0': division by zero (input (1, 28, 28))"),
    # ---- blocks
    ("typo in params", HEAD + "blocks:\n  b:\n    params: [widht]\n    layers: [conv2d: {out: $width, kernel: 1}]\n"
     "network:\n  - b: {width: 3}\n  - b: {width: 4}\n" + TAIL, "6:14", "blocks.b.params[0]",
     "parameter 'widht' is never used, but the layers use $width (blocks.b.layers[0].conv2d.out, bad.yaml:7:28)"),
    ("a mistake in a block used four times", HEAD + "blocks:\n  b:\n    params: [w]\n    layers: [conv2d: {out: $w, kernal: 1}]\n"
     "network:\n  - b: {w: 3}\n  - b: {w: 4}\n  - b: {w: 5}\n  - relu\n  - b: {w: 5}\n" + TAIL,
     "7:32", "network[0].b.layers[0].conv2d.kernal", "(in 4 uses: network[0..2], network[4])"),
    ("parameter in params and defaults", HEAD + "blocks:\n  b:\n    params: [w]\n    defaults: {w: 2}\n    layers: [relu]\n"
     "network:\n  - b: {w: 3}\n" + TAIL, "7:15", "blocks.b.defaults", "'w' is both in params and in defaults"),
    ("reserved parameter name", HEAD + "blocks:\n  b:\n    params: [in_channels]\n    layers: [relu]\nnetwork:\n  - b: {}\n" + TAIL,
     "6:13", "blocks.b.params", "parameter name 'in_channels' is reserved"),
    ("unknown parameter of a block with defaults", HEAD + "blocks:\n  b:\n    params: [w]\n    defaults: {squeeze: 4}\n"
     "    layers: [conv2d: {out: $squeeze, kernel: 1}]\nnetwork:\n  - b: {w: 3, sqeeze: 2}\n" + TAIL,
     "10:15", "network[0].b.sqeeze", "block 'b' has no parameter 'sqeeze' (did you mean squeeze?); parameters: w, squeeze"),
    # ---- repeat per copy
    ("each with the wrong count", NET + "  - repeat: {times: 3, each: {stride: [2, 1]}, layers: [conv2d: {out: 4, kernel: 3}]}\n" + TAIL,
     "5:39", "network[0].repeat.each.stride", "each.stride has 2 values for 3 copies"),
    ("each that no layer takes", NET + "  - repeat: {times: 2, each: {strid: [2, 1]}, layers: [conv2d: {out: 4, kernel: 3}]}\n" + TAIL,
     "5:31", "network[0].repeat.each.strid", "no entry of the repeated layers takes 'strid' (did you mean stride?)"),
    ("each and first set one argument", NET + "  - repeat: {times: 2, each: {stride: [2, 1]}, first: {stride: 2},"
     " layers: [conv2d: {out: 4, kernel: 3}]}\n" + TAIL, "5:56", "network[0].repeat.first.stride", "set by both each and first"),
    ("a bad value in each", NET + "  - repeat:\n      times: 2\n      each: {stride: [2, -1]}\n      layers: [conv2d: {out: 4, kernel: 3}]\n" + TAIL,
     "7:26", "network[0].repeat[1][0].conv2d.stride", "stride must be ≥ 1, got -1"),
    ("first sets a name", NET + "  - repeat: {times: 2, first: {as: a}, layers: [relu]}\n" + TAIL,
     "5:32", "network[0].repeat.first.as", "first cannot set 'as'"),
    # ---- what a next-token model may not do
    ("bidirectional rnn in a next-token model", TOKENS + "  - one_hot\n  - gru: {hidden: 8, bidirectional: true}\n  - linear: {out: 28}\n",
     "6:37", "network[1].gru", "a bidirectional gru also reads the sequence backwards"),
    ("non-causal attention in a next-token model", TOKENS + "  - embedding: {dim: 8}\n  - transformer_encoder: {heads: 2}\n"
     "  - linear: {out: 28}\n", "6:5", "network[1].transformer_encoder", "set causal: true"),
    # ---- plugins and new layers
    ("a plugin's layer without the plugin", NET + "  - frobnicate: {out: 3}\n" + TAIL,
     "5:5", "network[0].frobnicate", "A layer from a plugin needs --plugin MODULE"),
    ("groupnorm groups do not divide", NET + "  - conv2d: {out: 6, kernel: 3}\n  - groupnorm: {groups: 4}\n" + TAIL,
     "6:5", "network[1].groupnorm", "groups=4 must divide the input channels (6)"),
    ("image is not whole patches", NET + "  - patch_embed: {dim: 8, patch: 5}\n  - select\n  - linear: {out: 10}\n",
     "5:5", "network[0].patch_embed", "the image (28, 28) is not a whole number of 5×5 patches"),
    ("crop larger than the input", NET + "  - center_crop: {size: 30}\n" + TAIL, "5:5", "network[0].center_crop", "the crop is larger than the input"),
    ("attention heads do not divide", NET + "  - patch_embed: {dim: 6, patch: 7}\n  - attention: {heads: 4}\n  - select\n  - linear: {out: 10}\n",
     "6:5", "network[1].attention", "heads=4 must divide the feature size (6)"),
]

@pytest.mark.parametrize("text,location,path,fragment", [c[1:] for c in NEW_CASES], ids=[c[0] for c in NEW_CASES])
def test_bad_spec_language_2(text, location, path, fragment, tmp_path):
    (tmp_path / "resnet18.yaml").write_text((__import__("tests.conftest").conftest.ROOT / "specs" / "resnet18.yaml").read_text())
    file = tmp_path / "bad.yaml"
    file.write_text(text)
    with pytest.raises(SpecError) as caught:
        infer(load_spec(file))
    shown = [(p, p.message.replace(f"{tmp_path}/", "")) for p in caught.value.problems]
    matching = [p for p, message in shown if p.path == path and fragment in message]
    assert matching, str(caught.value)
    assert str(matching[0].location).endswith(f"bad.yaml:{location}"), str(caught.value)


def test_at_least_30_new_cases():
    assert len(NEW_CASES) >= 30


def test_a_mistake_in_a_block_is_one_line():
    """Four uses of a block with a typo in its text: one line (not four, not two per use), naming the uses."""
    text = HEAD + ("blocks:\n  b:\n    params: [w]\n    layers: [conv2d: {out: $w, kernal: 1}]\n"
                   "network:\n  - b: {w: 3}\n  - b: {w: 4}\n  - b: {w: 5}\n  - relu\n  - b: {w: 5}\n")
    with pytest.raises(SpecError) as caught:
        load_spec_text(text, "block.yaml")
    assert len(caught.value.problems) == 1
    assert str(caught.value).splitlines() == [
        "block.yaml:7:32 network[0].b.layers[0].conv2d.kernal: unknown field 'kernal' (did you mean kernel?: it is "
        "required); allowed: name, out, kernel, stride, padding, dilation, groups, bias (in 4 uses: network[0..2], "
        "network[4])"]


def test_a_typo_in_params_is_blamed_once_on_the_declaration():
    text = HEAD + ("blocks:\n  b:\n    params: [widht]\n    layers: [conv2d: {out: $width, kernel: 1}, relu,"
                   " conv2d: {out: $width, kernel: 1}]\nnetwork:\n  - b: {width: 3}\n  - b: {width: 4}\n")
    with pytest.raises(SpecError) as caught:
        load_spec_text(text, "typo.yaml")
    assert [p.path for p in caught.value.problems] == ["blocks.b.params[0]"]


def test_wiring_problems_are_all_reported():
    text = NET + "  - relu: {as: a}\n  - add: {from: [a, nope]}\n  - add: {from: [a, later]}\n  - relu: {from: input, as: later}\n"
    with pytest.raises(SpecError) as caught:
        load_spec_text(text, "wires.yaml")
    assert [p.path for p in caught.value.problems] == ["network[1].add.from", "network[2].add.from"]


@pytest.fixture
def plugin_layer():
    """A layer registered from outside models.layers (as a plugin would), removed again after the test."""
    from torch import nn

    from models.layers.builtin import LAYERS, NoArgs, register

    def build(a, x):
        """A plugin layer whose builder has a bug."""
        return {}["weights"]

    def build_bad_forward(a, x):
        class Bad(nn.Module):
            def forward(self, t):
                raise KeyError("no such buffer")

        return Bad()

    register("buggy_plugin_layer")(build)
    register("buggy_plugin_forward", NoArgs)(build_bad_forward)
    yield
    for name in ("buggy_plugin_layer", "buggy_plugin_forward"):
        LAYERS._entries.pop(name)


def test_a_plugin_layer_that_raises_is_a_located_error(plugin_layer):
    for kind, message in (("buggy_plugin_layer", "KeyError: 'weights' (input (1, 28, 28)) (layer from "),
                          ("buggy_plugin_forward", "cannot take input of shape (1, 28, 28): 'no such buffer' (layer from")):
        with pytest.raises(SpecError) as caught:
            infer(load_spec_text(NET + f"  - {kind}\n" + TAIL, "plugin.yaml"))
        assert str(caught.value).startswith(f"plugin.yaml:5:5 network[0].{kind}: ")
        assert message in str(caught.value)
