"""Datasets (name -> builder registry, readers of real formats, generated defaults) and batch augmentation.

    from models.data import load_dataset
    splits = load_dataset("fashion_mnist", {"root": "../shared/data/fashion-mnist"}, seed=0)

Importing this package registers every dataset in DATASETS and every op in AUGMENTATIONS. Image datasets give
ImageData / SegData whose `train`/`test` are Samples: in memory (ImageSplits, SegSplits) or, for file datasets too
large for memory, streamed from the files or a decode cache (models.data.files).
"""
from models.data.augment import AUGMENTATIONS, Augment, build_augment, normalize, resize_batch, to_float
from models.data.base import (
    DATASETS,
    DataError,
    ImageData,
    ImageSplits,
    RegressionSplits,
    Samples,
    SegData,
    SegSplits,
    SeriesSplits,
    TextCorpus,
    load_dataset,
)
from models.data.batches import tensor_batches, text_batches
from models.data.labelled_text import LabelledTexts
from models.data.text import Vocab

# Dataset modules register themselves on import.
from models.data import digits, folders, idx, regression  # noqa: F401  isort: skip
from models.data import high_dim, labelled_text, segmentation, series, shapes, text  # noqa: F401  isort: skip

__all__ = [
    "AUGMENTATIONS",
    "Augment",
    "DATASETS",
    "DataError",
    "ImageData",
    "ImageSplits",
    "LabelledTexts",
    "RegressionSplits",
    "Samples",
    "SegData",
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
