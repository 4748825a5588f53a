"""A text classifier's export: int64 token ids (batch, steps) → class scores (batch, K), proven against PyTorch,
with the vocabulary, the tokenizer and the labels in the card; texts encoded by the artifact's tokenizer (what the
service runs) score in onnxruntime as in PyTorch."""
from __future__ import annotations

import numpy as np
import onnx
import torch

from models.artifact.card import TokenInput, read_card
from models.artifact.runtime import make_session
from models.artifact.text import encode
from models.build import build
from models.pipeline import export_run
from models.spec.load import load_spec
from models.train.checkpoint import load_checkpoint
from models.train.loop import TrainOptions, train
from tests.train.test_train import TASK_SPECS, write_spec


def test_text_classifier_exports_with_parity_and_its_tokenizer(tmp_path):
    spec = load_spec(write_spec(tmp_path, TASK_SPECS["text_classification"]))
    train(spec, TrainOptions(out=tmp_path / "run", quiet=True, max_steps=10))
    exported = export_run(tmp_path / "run", quiet=True)
    assert exported.parity.passed and exported.parity.samples >= 256
    assert exported.parity.lengths == [1, 12, 48]  # the graph reads any length: the steps axis is dynamic
    card = read_card(onnx.load(str(exported.export.path)))
    assert isinstance(card.input, TokenInput) and card.input.text is not None
    assert card.input.text.length == 12 and card.labels == ["negative", "neutral", "positive"]
    assert card.io.graph_inputs == ["tokens"] and card.io.graph_outputs == ["logits"] and not card.io.state_in
    session = make_session(exported.export.path, 1)
    assert [i.type for i in session.get_inputs()] == ["tensor(int64)"]
    texts = ["the phone is great, would buy again", "the kettle is not great", "ordinary lamp, nothing special",
             "zzz unknown words only"]
    ids = encode(texts, card.input.vocab, card.input.text.split, card.input.text.lowercase, card.input.text.length)
    scores = session.run(["logits"], {"tokens": ids})[0]
    assert scores.shape == (4, 3)
    net = build(spec)
    net.load_state_dict(load_checkpoint(tmp_path / "run" / "checkpoints", "best", with_state=False).weights)
    with torch.no_grad():
        expected = net.eval()(torch.from_numpy(ids)).numpy()
    np.testing.assert_allclose(scores, expected, rtol=1e-3, atol=1e-4)
