"""The course's synthetic linear-regression data: y = Xw + b + noise, X ~ N(0, 1)."""
from __future__ import annotations

import numpy as np
import torch
from pydantic import Field, NonNegativeFloat, NonNegativeInt, PositiveInt

from models.data.base import RegressionSplits, SeededArgs, register


class LinearArgs(SeededArgs):
    w: list[float] = Field(default=[2.0, -3.4], min_length=1)  # true weights; their count = features
    b: float = 4.2
    noise: NonNegativeFloat = 0.01  # std of the additive Gaussian noise
    train_count: PositiveInt = 1000  # the course trains on 1000 samples
    test_count: NonNegativeInt = 100  # extra samples from the same distribution, for evaluation


@register("linear_synthetic", task="regression", input="features", args=LinearArgs)
def linear_synthetic(args: LinearArgs, seed: int) -> RegressionSplits:
    """D2L's `synthetic_data(w, b, n)`; a trained linear layer should recover w and b."""
    rng = np.random.default_rng(seed)
    n, f = args.train_count + args.test_count, len(args.w)
    x = rng.normal(0.0, 1.0, size=(n, f))  # (N, F)
    y = x @ np.asarray(args.w) + args.b + rng.normal(0.0, args.noise, size=n)  # (N,)
    x_t = torch.from_numpy(x.astype(np.float32))
    y_t = torch.from_numpy(y.astype(np.float32)).unsqueeze(1)  # (N, 1)
    k = args.train_count
    return RegressionSplits(x_t[:k], y_t[:k], x_t[k:], y_t[k:])
