"""Datasets (name -> builder registry, readers of real formats, generated defaults) and batch augmentation.

    from models.data import load_dataset
    splits = load_dataset("fashion_mnist", {"root": "../shared/data/fashion-mnist"}, seed=0)

Importing this package registers every dataset in DATASETS and every op in AUGMENTATIONS.
"""
from models.data.augment import AUGMENTATIONS, Augment, build_augment, normalize, resize_batch, to_float
from models.data.base import (
    DATASETS,
    DataError,
    ImageSplits,
    RegressionSplits,
    SegSplits,
    SeriesSplits,
    TextCorpus,
    load_dataset,
)
from models.data.batches import tensor_batches, text_batches
from models.data.text import Vocab

# Dataset modules register themselves on import.
from models.data import digits, folders, idx, regression  # noqa: F401  isort: skip
from models.data import segmentation, series, shapes, text  # noqa: F401  isort: skip

__all__ = [
    "AUGMENTATIONS",
    "Augment",
    "DATASETS",
    "DataError",
    "ImageSplits",
    "RegressionSplits",
    "SegSplits",
    "SeriesSplits",
    "TextCorpus",
    "Vocab",
    "build_augment",
    "load_dataset",
    "normalize",
    "resize_batch",
    "tensor_batches",
    "text_batches",
    "to_float",
]
