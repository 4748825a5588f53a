"""Text classification: texts → token ids with the model card's vocabulary and tokenizer (models/artifact/text.py,
the code that encoded the training texts) → the graph's class scores → top-k labels with probabilities (softmax
and ranking as for images, service/vision.py). No torch: the card says everything the tokenizer needs."""
from __future__ import annotations

from typing import Sequence

from models.artifact.card import TextTokenizer, TokenInput
from models.artifact.text import UNK, encode_tokens, tokens, vocab_index
from service.schemas import TextLabels
from service.served import ServedModel
from service.vision import labels_of, top_labels


_indexes: dict[str, dict[str, int]] = {}  # model tag → its vocabulary's index, built on the model's first request


def tokenizer_of(model: ServedModel) -> tuple[dict[str, int], TextTokenizer]:
    """The model's vocabulary index and tokenizer settings (classify_text loads only text classifiers, whose card
    has both: models/artifact/card.py refuses one without)."""
    spec = model.card.input
    assert isinstance(spec, TokenInput) and spec.text is not None
    if model.tag not in _indexes:
        _indexes[model.tag] = vocab_index(spec.vocab)
    return _indexes[model.tag], spec.text


def classify(model: ServedModel, texts: Sequence[str], k: int) -> list[TextLabels]:
    """Per text, in order: its token count, whether it was cut to the model's length, how many of its tokens the
    vocabulary lacks, and the min(k, classes) most probable labels. All texts go through the graph in one call."""
    index, text = tokenizer_of(model)
    split = [tokens(t, text.split, text.lowercase) for t in texts]
    ids = encode_tokens(split, index, text.length)  # (B, L) int64
    logits = model.run(ids)[0]  # (B, K)
    labels = labels_of(model, logits.shape[1])
    unk = index[UNK]
    return [TextLabels(tokens=len(found), truncated=len(found) > text.length,
                       unknown=sum(index.get(t, unk) == unk for t in found), top=top)
            for found, top in zip(split, top_labels(logits, labels, k))]
