"""Forecasting with a window model: raw values → model units → k steps, each prediction fed back → raw values.

The graph takes a window of values *scaled as in training*; the card records that scaling with its kind
(models.artifact.card.Scaling, validated when the card is read), and its `model_dump()` is the very dict
models.artifact.scaling understands, so serving scales, steps and unscales with the code training used.
"""
from __future__ import annotations

import numpy as np

from models.artifact.card import SeriesInput
from models.artifact.scaling import k_step_forecast, scale, unscale
from service.errors import UNPROCESSABLE, RequestError
from service.served import ServedModel


def window_of(model: ServedModel) -> SeriesInput:
    spec = model.card.input
    assert isinstance(spec, SeriesInput)  # forecast only loads series models
    return spec


def forecast(model: ServedModel, values: list[float], steps: int) -> list[float]:
    """The next `steps` values after `values` (raw units); 422 when the series is too short or its values
    leave float32 range once scaled (the graph computes in float32)."""
    spec = window_of(model)
    if len(values) < spec.window:
        raise RequestError(UNPROCESSABLE, f"the series has {len(values)} values; {model.name} needs at least its "
                                          f"window of {spec.window}")
    scaling = spec.scaling.model_dump()  # {"kind": ..., its numbers}
    history = np.asarray(scale(np.asarray(values[-spec.window:], dtype=np.float64), scaling))  # (τ,)
    if not np.all(np.isfinite(history.astype(np.float32))):
        raise RequestError(UNPROCESSABLE, "the series' last values are too large for the model (float32 overflow)")
    predict = lambda window: model.run(window)[0]  # (B, τ) float32 → (B, 1)
    ahead = np.asarray(unscale(k_step_forecast(predict, history, steps, spec.window).astype(np.float64), scaling))
    if not np.all(np.isfinite(ahead)):
        raise RequestError(UNPROCESSABLE, "the forecast overflowed (non-finite values); the series is far outside "
                                          "what the model was trained on")
    return [float(v) for v in ahead]
