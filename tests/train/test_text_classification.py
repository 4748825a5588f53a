"""Text classification in the trainer: a few steps learn, the run records what serving needs to tokenize, and data
that does not fit the spec is refused before the first step."""
from __future__ import annotations

import json

import pytest

from models.data import DataError
from models.spec.load import load_spec
from models.train.loop import TrainOptions, train
from tests.train.test_train import TASK_SPECS, write_spec


def test_a_few_steps_learn_and_the_run_records_the_tokenizer(tmp_path):
    spec = load_spec(write_spec(tmp_path, TASK_SPECS["text_classification"]))
    result = train(spec, TrainOptions(out=tmp_path / "run", quiet=True, max_steps=30))
    losses = [h["train"]["loss"] for h in result.history]
    assert losses[-1] < losses[0], losses
    assert result.final["accuracy"] > result.final["baseline_accuracy"]
    assert len(json.loads((tmp_path / "run" / "class_metrics.json").read_text())["best"]["confusion_matrix"]) == 3
    info = json.loads((tmp_path / "run" / "task.json").read_text())
    assert info["labels"] == ["negative", "neutral", "positive"]
    assert info["text"] == {"split": "words", "lowercase": True, "length": 12}  # the length is input.steps
    assert info["vocab"]["tokens"][:2] == ["<pad>", "<unk>"] and len(info["vocab"]["tokens"]) <= 96


@pytest.mark.parametrize("change, message", [
    (("vocab: 96", "vocab: 40"), r"synthetic_reviews: the training texts give a vocabulary of \d+ tokens \(<pad> and "
                                 r"<unk> included\) but input.vocab is 40; set input.vocab to \d+, or data.max_vocab "
                                 r"to 40"),
    (("task: classification", "task: classification\nlabels: [bad, good, meh]"),
     r"the spec lists labels \['bad', 'good', 'meh'\] but the training split's \(sorted\) are \['negative', "
     r"'neutral', 'positive'\]"),
])
def test_data_that_does_not_fit_the_spec_is_refused(tmp_path, change, message):
    spec = load_spec(write_spec(tmp_path, TASK_SPECS["text_classification"].replace(*change)))
    with pytest.raises(DataError, match=message):
        train(spec, TrainOptions(out=tmp_path / "run", quiet=True, max_steps=1))


def test_max_vocab_makes_a_large_vocabulary_fit(tmp_path):
    text = TASK_SPECS["text_classification"].replace("vocab: 96", "vocab: 40").replace(
        "batch_size: 16}", "batch_size: 16, max_vocab: 40}")
    result = train(load_spec(write_spec(tmp_path, text)), TrainOptions(out=tmp_path / "run", quiet=True, max_steps=2))
    assert len(json.loads((tmp_path / "run" / "task.json").read_text())["vocab"]["tokens"]) == 40
    assert result.history
