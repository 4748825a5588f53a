"""Regression on feature vectors: rows of numbers in, the model's real-valued outputs out."""
from __future__ import annotations

import numpy as np

from models.artifact.card import FeatureInput
from service.errors import UNPROCESSABLE, RequestError
from service.served import ServedModel


def predict(model: ServedModel, rows: list[list[float]]) -> list[list[float]]:
    """The outputs for each row; 422 when a row's length is not the model's feature count or a value leaves
    float32 range (the graph computes in float32)."""
    features = model.card.input
    assert isinstance(features, FeatureInput)  # predict only loads feature models
    for i, row in enumerate(rows):
        if len(row) != features.count:
            raise RequestError(UNPROCESSABLE, f"features[{i}] has {len(row)} values; {model.name} takes "
                                              f"{features.count}")
    x = np.asarray(rows, dtype=np.float64)  # (B, F)
    if not np.all(np.isfinite(x.astype(np.float32))):
        raise RequestError(UNPROCESSABLE, "a feature value is too large for the model (float32 overflow)")
    y = model.run(x.astype(np.float32))[0]  # (B, O) or (B,)
    return y.reshape(len(rows), -1).astype(np.float64).tolist()
