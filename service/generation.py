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


class Generation:
    """The characters continuing `prefix`, computed one per `next_token()` call (the first call also feeds the
    prefix): what `generate` joins, and what the streaming answer sends one event at a time. Checks the request
    (unknown characters, top_k) when made, so a bad request fails before anything is sent."""

    def __init__(self, model: ServedModel, prefix: str, length: int, temperature: float, top_k: int, seed: int):
        self.vocab = vocabulary(model)
        if top_k > len(self.vocab):
            raise RequestError(UNPROCESSABLE, f"top_k {top_k} is more than the model's {len(self.vocab)} tokens")
        self.model, self.length, self.temperature, self.top_k = model, length, temperature, top_k
        self.allowed = np.array([len(token) == 1 for token in self.vocab])  # (V,)
        self.rng = np.random.default_rng(seed)
        self.context = np.asarray([encode(prefix, self.vocab)], dtype=np.int64)  # (1, T)
        self.stateful = bool(model.card.io and model.card.io.state_in)
        self.produced: list[int] = []
        self._logits: np.ndarray | None = None
        self._state: list[np.ndarray] = []

    @property
    def done(self) -> bool:
        return len(self.produced) == self.length

    def next_token(self) -> str:
        """The next character (one small graph call)."""
        assert not self.done
        if self._logits is None:
            self._logits, *self._state = self.model.run(self.context, *self.model.zero_state(1))  # (1, T, V)
        else:
            step = np.asarray([[self.produced[-1]]], dtype=np.int64)  # (1, 1)
            if not self.stateful:  # a stateless graph sees only what it is given: feed the whole text again
                self.context = step = np.concatenate([self.context, step], axis=1)  # (1, T + n)
            self._logits, *self._state = self.model.run(step, *self._state)
        self.produced.append(sample_next(self._logits[0, -1], self.allowed, self.temperature, self.top_k, self.rng))
        return self.vocab[self.produced[-1]]


def generate(model: ServedModel, prefix: str, length: int, temperature: float, top_k: int, seed: int) -> str:
    """`length` characters continuing `prefix`."""
    generation = Generation(model, prefix, length, temperature, top_k, seed)
    return "".join(generation.next_token() for _ in range(length))
