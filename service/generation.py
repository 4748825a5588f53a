"""Character generation with a token model's step graph: the prefix is fed once, then one token per call with the
recurrent state carried over, so n characters cost n small calls (not n calls over a growing text).

Sampling is models.artifact.sampling's (shared with `specserve generate`): numpy with a seeded generator, so a (prefix, seed,
parameters) request always gives the same text; temperature 0 is greedy. Only single-character tokens are ever
produced: a multi-character token such as "<unk>" cannot be typed in a prefix either, and is not text.
"""
from __future__ import annotations

import secrets

import numpy as np

from models.artifact.card import TokenInput
from models.artifact.sampling import sample_next
from service.errors import UNPROCESSABLE, RequestError
from service.served import ServedModel


def vocabulary(model: ServedModel) -> list[str]:
    spec = model.card.input
    assert isinstance(spec, TokenInput)  # generate only loads token models
    return spec.vocab


def encode(prefix: str, vocab: list[str]) -> list[int]:
    """Ids of the prefix's characters; 422 naming every character the model does not know."""
    ids = {token: i for i, token in enumerate(vocab) if len(token) == 1}
    unknown = sorted({ch for ch in prefix if ch not in ids})
    if unknown:
        known = "".join(sorted(ids))
        raise RequestError(UNPROCESSABLE, f"prefix has characters the model does not know: {unknown!r}; it knows "
                                          f"{len(ids)}: {known!r}")
    return [ids[ch] for ch in prefix]


def new_seed() -> int:
    """A fresh seed for requests that give none (returned to the client, who can replay the same text)."""
    return secrets.randbits(63)


def generate(model: ServedModel, prefix: str, length: int, temperature: float, top_k: int, seed: int) -> str:
    """`length` characters continuing `prefix`."""
    vocab = vocabulary(model)
    if top_k > len(vocab):
        raise RequestError(UNPROCESSABLE, f"top_k {top_k} is more than the model's {len(vocab)} tokens")
    allowed = np.array([len(token) == 1 for token in vocab])  # (V,)
    rng = np.random.default_rng(seed)
    context = np.asarray([encode(prefix, vocab)], dtype=np.int64)  # (1, T)
    stateful = bool(model.card.io and model.card.io.state_in)
    logits, *state = model.run(context, *model.zero_state(1))  # (1, T, V), each (1, L, H)
    produced: list[int] = []
    while True:
        produced.append(sample_next(logits[0, -1], allowed, temperature, top_k, rng))
        if len(produced) == length:
            return "".join(vocab[i] for i in produced)
        step = np.asarray([[produced[-1]]], dtype=np.int64)  # (1, 1)
        if not stateful:  # a stateless graph sees only what it is given: feed the whole text again
            context = step = np.concatenate([context, step], axis=1)  # (1, T + n)
        logits, *state = model.run(step, *state)
