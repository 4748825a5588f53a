"""The course's high-dimensional linear regression for weight decay (D2L 3.7 / 4.5): few samples, many features.

    y = 0.05 + Σᵢ 0.01·xᵢ + ε,   x ~ N(0, I₂₀₀),   ε ~ N(0, 0.01²),   20 training samples, 100 test samples

With 200 weights and 20 equations the training data cannot pin the weights down: plain least squares fits the
training set and keeps whatever the initialisation put in the directions the data does not see, so the test loss
stays high; weight decay shrinks those directions to zero. Generated from a seed (no files), like linear_synthetic.
"""
from __future__ import annotations

import numpy as np
import torch
from pydantic import NonNegativeFloat, NonNegativeInt, PositiveInt

from models.data.base import RegressionSplits, SeededArgs, register


class HighDimArgs(SeededArgs):
    features: PositiveInt = 200  # d in the course: num_inputs
    w: float = 0.01  # every true weight
    b: float = 0.05  # true bias
    noise: NonNegativeFloat = 0.01  # std of the additive Gaussian noise ε
    train_count: PositiveInt = 20  # n_train
    test_count: NonNegativeInt = 100  # n_test


def generate(args: HighDimArgs, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(x float64 (N, F), y float64 (N,)) for N = train_count + test_count: training rows first, like the
    course's one `synthetic_data` call split into its first n_train and last n_test samples."""
    rng = np.random.default_rng(seed)
    n = args.train_count + args.test_count
    x = rng.normal(0.0, 1.0, size=(n, args.features))  # (N, F)
    y = x @ np.full(args.features, args.w) + args.b + rng.normal(0.0, args.noise, size=n)  # (N,)
    return x, y


@register("high_dim_linear", task="regression", input="features", args=HighDimArgs)
def high_dim_linear(args: HighDimArgs, seed: int) -> RegressionSplits:
    """D2L's weight-decay data: 200 features, 20 training samples; the test split is the 100 further samples."""
    x, y = generate(args, seed)
    x_t = torch.from_numpy(x.astype(np.float32))  # (N, F)
    y_t = torch.from_numpy(y.astype(np.float32)).unsqueeze(1)  # (N, 1)
    k = args.train_count
    return RegressionSplits(x_t[:k], y_t[:k], x_t[k:], y_t[k:])
