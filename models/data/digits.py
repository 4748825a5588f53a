"""scikit-learn's bundled digits: 1,797 real 8x8 handwritten digits, so a smoke run needs no files at all."""
from __future__ import annotations

import numpy as np
import torch

from models.data.base import Fraction, ImageSplits, SeededArgs, register, stratified_split


class DigitsArgs(SeededArgs):
    test_fraction: Fraction = 0.2


@register("digits", task="classification", input="image", args=DigitsArgs)
def digits(args: DigitsArgs, seed: int) -> ImageSplits:
    """UCI optical digits as uint8 (N, 1, 8, 8) images; a stratified, seeded train/test split."""
    from sklearn.datasets import load_digits  # imported here: sklearn is slow to import and only this needs it

    bunch = load_digits()
    images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)  # (1797, 8, 8), 0..16 -> 0..255
    labels = bunch.target.astype(np.int64)  # (1797,)
    train, test = (torch.from_numpy(i) for i in stratified_split(labels, args.test_fraction, seed))
    x = torch.from_numpy(images).unsqueeze(1)  # (N, 1, 8, 8)
    y = torch.from_numpy(labels)
    return ImageSplits(x[train], y[train], x[test], y[test], [str(d) for d in range(10)])
