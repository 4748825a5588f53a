"""Bad `outputs` sections (main and auxiliary outputs): each is a SpecError at the exact file:line:column and path,
with a did-you-mean where a name is involved; both outputs are named when their shapes disagree."""
from __future__ import annotations

import pytest

from models.build import infer
from models.errors import SpecError
from models.spec.load import load_spec

HEAD = "name: t\ntask: classification\ninput: {channels: 1, size: [28, 28]}\n"  # lines 1-3
# a classifier with an auxiliary head on its first features: entries on lines 5-9, outputs on line 10
NET = (HEAD + "network:\n  - conv2d: {out: 4, kernel: 3, as: features}\n  - flatten\n  - linear: {out: 10, as: logits}\n"
       "  - global_avgpool: {from: features}\n  - linear: {out: 10, as: aux_logits}\n")
OUT = "outputs: {main: logits, aux: [{from: aux_logits, weight: 0.3}]}\n"
SEG = ("name: t\ntask: segmentation\ninput: {channels: 3, size: [16, 16]}\nnetwork:\n"
       "  - conv2d: {out: 8, kernel: 3, padding: 1, as: features}\n  - conv2d: {out: 4, kernel: 1, as: logits}\n"
       "  - maxpool2d: {kernel: 2, from: features}\n  - conv2d: {out: 4, kernel: 1, as: aux_map}\n")
TOKENS = ("name: t\ntask: sequence\ninput: {vocab: 28}\nnetwork:\n  - one_hot\n  - gru: {hidden: 8, as: h}\n"
          "  - linear: {out: 28, as: logits}\n  - linear: {out: 28, from: h, as: aux_logits}\n")

CASES = [
    # (id, text, location, path, message: exact, or a fragment when it ends in "…")
    ("unknown main", NET + OUT.replace("main: logits", "main: logit"), "10:17", "outputs.main",
     "no top-level entry is named 'logit' (did you mean logits or aux_logits?); names: features, logits, aux_logits"),
    ("unknown auxiliary output", NET + OUT.replace("from: aux_logits", "from: aux_logit"), "10:38", "outputs.aux[0].from",
     "no top-level entry is named 'aux_logit' (did you mean aux_logits or logits?); names: features, logits, aux_logits"),
    ("auxiliary output is the main one", NET + OUT.replace("from: aux_logits", "from: logits"), "10:38",
     "outputs.aux[0].from", "'logits' is the main output (network[2].linear); an auxiliary output is another entry, a "
                            "head trained beside the main one"),
    ("auxiliary output is the default main one", HEAD + "network:\n  - flatten\n  - linear: {out: 10, as: logits}\n"
     "outputs: {aux: [{from: logits, weight: 0.3}]}\n", "7:24", "outputs.aux[0].from", "'logits' is the main output…"),
    ("weight zero", NET + OUT.replace("0.3", "0"), "10:58", "outputs.aux[0].weight",
     "weight must be a finite number > 0 (the factor of this output's loss), got 0"),
    ("weight negative", NET + OUT.replace("0.3", "-0.3"), "10:58", "outputs.aux[0].weight",
     "weight must be a finite number > 0 (the factor of this output's loss), got -0.3"),
    ("weight infinite", NET + OUT.replace("0.3", ".inf"), "10:58", "outputs.aux[0].weight",
     "weight must be a finite number > 0…"),
    ("weight not a number", NET + OUT.replace("0.3", "heavy"), "10:58", "outputs.aux[0].weight",
     "weight is a number > 0, the factor of this output's loss in the training loss (e.g. 0.3); got 'heavy'"),
    ("weight a boolean", NET + OUT.replace("0.3", "true"), "10:58", "outputs.aux[0].weight",
     "weight is a number > 0, the factor of this output's loss in the training loss (e.g. 0.3); got True"),
    ("weight missing", NET + OUT.replace(", weight: 0.3", ""), "10:31", "outputs.aux[0].weight", "missing required field"),
    ("weight misspelled", NET + OUT.replace("weight:", "wieght:"), "10:50", "outputs.aux[0].wieght",
     "unknown field 'wieght' (did you mean weight?: it is required); allowed: from, weight"),
    ("unknown outputs field", NET + OUT.replace("aux:", "auxiliary:"), "10:25", "outputs.auxiliary",
     "unknown field 'auxiliary' (did you mean aux?); allowed: main, aux"),
    ("aux not a list", NET + "outputs: {main: logits, aux: {from: aux_logits, weight: 0.3}}\n", "10:30", "outputs.aux",
     "aux is a list of auxiliary outputs, like aux: [{from: aux_logits, weight: 0.3}]…"),
    ("auxiliary output as a bare name", NET + OUT.replace("aux: [{", "aux: [aux_logits, {"), "10:31", "outputs.aux[0]",
     "an auxiliary output is {from: NAME, weight: W}, like {from: aux_logits, weight: 0.3}; got 'aux_logits'"),
    ("auxiliary output listed twice", NET + "outputs:\n  main: logits\n  aux:\n    - {from: aux_logits, weight: 0.3}\n"
     "    - {from: aux_logits, weight: 0.1}\n", "14:14", "outputs.aux[1].from",
     "'aux_logits' is already auxiliary output outputs.aux[0]; list each once"),
    ("main is not a name", NET + OUT.replace("main: logits", "main: 3"), "10:17", "outputs.main", "Input should be a valid string (got 3)"),
    ("main inside a nested list", HEAD + "network:\n  - group: {layers: [conv2d: {out: 4, kernel: 3, as: deep}]}\n"
     "  - flatten\n  - linear: {out: 10}\noutputs: {main: deep}\n", "8:17", "outputs.main",
     "'deep' names network[0].group.layers[0].conv2d (bad.yaml:5:22), inside network[0].group: names inside a nested "
     "list are not visible outside it…"),
    ("auxiliary head that is no output", NET + "outputs: {main: logits}\n", "9:5", "network[4].linear",
     "this entry's output is never used: it is the last entry, but the main output is 'logits' (outputs.main) and "
     "nothing takes 'aux_logits'; make it an output or remove it"),
    ("next-token model with an auxiliary output", TOKENS + OUT, "9:30", "outputs.aux",
     "a next-token model (task sequence on tokens) carries its recurrent state from batch to batch through its one "
     "output, so it takes no auxiliary outputs"),
    ("auxiliary classes differ", NET.replace("out: 10, as: aux", "out: 5, as: aux") + OUT, "10:38", "outputs.aux[0].from",
     "auxiliary output 'aux_logits' (network[4].linear, bad.yaml:9:5) gives (5,) per sample but the main output "
     "'logits' (network[2].linear, bad.yaml:7:5) gives (10,): an auxiliary output is trained with the task's loss on "
     "the same targets, so it must have the main output's shape; give its last layer out: 10"),
    ("auxiliary map at another size", SEG + "outputs: {main: logits, aux: [{from: aux_map, weight: 0.4}]}\n", "9:38",
     "outputs.aux[0].from", "auxiliary output 'aux_map' (network[3].conv2d, bad.yaml:8:5) gives (4, 8, 8) per sample "
                            "but the main output 'logits' (network[1].conv2d, bad.yaml:6:5) gives (4, 16, 16)…resize it "
                            "to the input's size, e.g. resize: {size: [16, 16]}"),
    ("auxiliary map with other classes", SEG.replace("out: 4, kernel: 1, as: aux", "out: 3, kernel: 1, as: aux").replace(
        "maxpool2d: {kernel: 2, from: features}", "relu: {from: features}")
     + "outputs: {main: logits, aux: [{from: aux_map, weight: 0.4}]}\n", "9:38", "outputs.aux[0].from",
     "…gives (3, 16, 16) per sample but the main output 'logits' (network[1].conv2d, bad.yaml:6:5) gives (4, 16, 16)"
     "…give its last layer out: 4"),
]


def _matches(message: str, expected: str) -> bool:
    """Exact, or with "…": the parts in order, the first one at the start unless the expectation starts with "…"."""
    parts = expected.split("…")
    if not message.startswith(parts[0]):
        return False
    at = len(parts[0])
    for part in parts[1:]:
        found = message.find(part, at)
        if found < 0:
            return False
        at = found + len(part)
    return len(parts) > 1 or message == expected


@pytest.mark.parametrize("text,location,path,message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_outputs(text, location, path, message, tmp_path):
    file = tmp_path / "bad.yaml"
    file.write_text(text)
    with pytest.raises(SpecError) as caught:
        infer(load_spec(file))
    problems = [p for p in caught.value.problems if p.path == path]
    assert problems, str(caught.value)
    shown = problems[0].message.replace(str(tmp_path) + "/", "")
    assert _matches(shown, message), shown
    assert str(problems[0].location) == f"{file}:{location}", str(caught.value)


def test_at_least_8_cases():
    assert len(CASES) >= 8


def test_a_wrong_output_blames_no_entry_for_being_unused(tmp_path):
    """With an auxiliary output that does not resolve, its head is not also reported as unused: one problem."""
    file = tmp_path / "bad.yaml"
    file.write_text(NET + OUT.replace("from: aux_logits", "from: aux_logit"))
    with pytest.raises(SpecError) as caught:
        infer(load_spec(file))
    assert [p.path for p in caught.value.problems] == ["outputs.aux[0].from"]


def test_an_auxiliary_head_anywhere_is_valid(tmp_path):
    """The auxiliary head before the main path (which then takes from: its stage) or after it: both load."""
    before = (HEAD + "network:\n  - conv2d: {out: 4, kernel: 3, as: features}\n  - global_avgpool\n"
              "  - linear: {out: 10, as: aux_logits}\n  - flatten: {from: features}\n  - linear: {out: 10}\n"
              "outputs: {aux: [{from: aux_logits, weight: 0.3}]}\n")
    for i, text in enumerate((before, NET + OUT)):
        file = tmp_path / f"ok{i}.yaml"
        file.write_text(text)
        inferred = infer(load_spec(file))
        assert inferred.output == (10,) and inferred.aux == {"aux_logits": (10,)}
