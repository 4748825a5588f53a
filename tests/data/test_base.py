"""The registry contract: every dataset has a task and a strict options model; load_dataset validates and seeds."""
from __future__ import annotations

import numpy as np
import pydantic
import pytest

from models.data import DATASETS, load_dataset
from models.data.base import stratified_split
from models.task_table import task_kind
from models.registry import UnknownName

EXPECTED = {
    "digits", "fashion_mnist", "mnist", "image_folder", "shapes", "camvid", "voc",
    "text", "embedded_text", "series_csv", "sine", "linear_synthetic",
}  # fmt: skip


def test_all_datasets_registered():
    assert EXPECTED <= set(DATASETS.names())


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_entry_meta(name):
    dataset = DATASETS.get(name)
    assert task_kind(dataset.task, dataset.input) is not None  # a row of the one table
    args = dataset.args
    assert issubclass(args, pydantic.BaseModel)
    assert args.model_config.get("extra") == "forbid"


def test_unknown_dataset_suggests():
    with pytest.raises(UnknownName, match="did you mean fashion_mnist"):
        load_dataset("fashion_mnst", {})


def test_unknown_option_is_a_validation_error():
    with pytest.raises(pydantic.ValidationError, match="bogus"):
        load_dataset("sine", {"bogus": 1})


def test_seed_option_wins_over_run_seed():
    a = load_dataset("sine", {"seed": 3}, seed=0)
    b = load_dataset("sine", {}, seed=3)
    c = load_dataset("sine", {}, seed=4)
    assert np.array_equal(a.series.numpy(), b.series.numpy())
    assert not np.array_equal(b.series.numpy(), c.series.numpy())


def test_stratified_split_is_per_class_and_deterministic():
    labels = np.array([0] * 10 + [1] * 20 + [2] * 5)
    train, test = stratified_split(labels, 0.2, seed=1)
    assert sorted(np.concatenate([train, test]).tolist()) == list(range(len(labels)))
    assert np.bincount(labels[test]).tolist() == [2, 4, 1]
    again = stratified_split(labels, 0.2, seed=1)
    assert np.array_equal(again[1], test)
    assert not np.array_equal(stratified_split(labels, 0.2, seed=2)[1], test)
