"""Series scaling and multi-step forecasting, numpy only, so the ONNX service uses the exact code training used.

A scaling is a plain JSON-able dict stored with the model: {"kind": "standard", "mean": m, "std": s},
{"kind": "minmax", "min": a, "max": b} (maps [a, b] to [0, 1]) or {"kind": "none"}.
"""
from __future__ import annotations

from typing import Any, Callable, Literal

import numpy as np

ScalingKind = Literal["standard", "minmax", "none"]
PredictFn = Callable[[np.ndarray], Any]  # float32 (B, window) -> (B, 1) or (B,) next values


def fit_scaling(values: np.ndarray, kind: ScalingKind) -> dict[str, Any]:
    """Scaling parameters from (training) values; a constant series scales by 1 rather than dividing by 0."""
    values = np.asarray(values, dtype=np.float64)
    if kind == "standard":
        std = float(values.std())
        return {"kind": "standard", "mean": float(values.mean()), "std": std if std > 0 else 1.0}
    if kind == "minmax":
        lo, hi = float(values.min()), float(values.max())
        return {"kind": "minmax", "min": lo, "max": hi if hi > lo else lo + 1.0}
    if kind == "none":
        return {"kind": "none"}
    raise ValueError(f"unknown scaling kind {kind!r}; known: standard, minmax, none")


def _as_array(values: Any) -> Any:
    return np.asarray(values, dtype=np.float64) if isinstance(values, (list, tuple, int, float)) else values


def scale(values: Any, scaling: dict[str, Any]) -> Any:
    """Raw values -> model units. Works on numbers, lists, numpy arrays (and torch tensors, by plain arithmetic)."""
    values = _as_array(values)
    kind = scaling["kind"]
    if kind == "standard":
        return (values - scaling["mean"]) / scaling["std"]
    if kind == "minmax":
        return (values - scaling["min"]) / (scaling["max"] - scaling["min"])
    if kind == "none":
        return values
    raise ValueError(f"unknown scaling kind {kind!r}; known: standard, minmax, none")


def unscale(values: Any, scaling: dict[str, Any]) -> Any:
    """Model units -> raw values (the inverse of `scale`)."""
    values = _as_array(values)
    kind = scaling["kind"]
    if kind == "standard":
        return values * scaling["std"] + scaling["mean"]
    if kind == "minmax":
        return values * (scaling["max"] - scaling["min"]) + scaling["min"]
    if kind == "none":
        return values
    raise ValueError(f"unknown scaling kind {kind!r}; known: standard, minmax, none")


def k_step_forecast(predict_fn: PredictFn, history: Any, k: int, window: int) -> np.ndarray:
    """Predict `k` values ahead, feeding each prediction back as input for the next (D2L's k-step prediction).

    history: (T,) or (B, T) values in model units with T >= window; only the last `window` are used.
    Returns float32 (k,) or (B, k) in model units.
    """
    hist = np.asarray(history, dtype=np.float32)
    single = hist.ndim == 1
    hist = hist[None] if single else hist  # (B, T)
    if hist.ndim != 2 or hist.shape[1] < window:
        raise ValueError(f"history must be (T,) or (B, T) with T >= window {window}, got shape {np.shape(history)}")
    buf = np.empty((hist.shape[0], window + k), dtype=np.float32)  # (B, window + k)
    buf[:, :window] = hist[:, -window:]
    for step in range(k):
        window_x = np.ascontiguousarray(buf[:, step : step + window])  # (B, window); runtimes want contiguous input
        pred = np.asarray(predict_fn(window_x), dtype=np.float32)  # (B, 1) or (B,)
        buf[:, window + step] = pred.reshape(hist.shape[0])
    out = buf[:, window:]  # (B, k)
    return out[0] if single else out
