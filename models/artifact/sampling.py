"""Next-token sampling shared by `specserve generate` and the service: greedy at temperature 0, else softmax of
scores / temperature over the top-k allowed tokens, drawn from a seeded numpy generator (same seed, same text)."""
from __future__ import annotations

import numpy as np


def sample_next(logits: np.ndarray, allowed: np.ndarray, temperature: float, top_k: int, rng: np.random.Generator) -> int:
    """One token id from next-token scores (V,); `allowed` (V,) bool masks tokens that may be produced."""
    scores = np.where(allowed, logits.astype(np.float64), -np.inf)  # (V,)
    if temperature == 0:
        return int(scores.argmax())
    # Shift before dividing: scores / temperature overflows to inf for a tiny temperature (1e-308), and inf - inf
    # is NaN; shifted scores are <= 0, so a tiny temperature only sends the non-best ones to -inf (near-greedy).
    with np.errstate(over="ignore"):
        scores = (scores - scores.max()) / temperature
    if 0 < top_k < int(allowed.sum()):
        kth = np.partition(scores, -top_k)[-top_k]
        scores = np.where(scores >= kth, scores, -np.inf)
    weights = np.exp(scores)
    return int(rng.choice(len(weights), p=weights / weights.sum()))
