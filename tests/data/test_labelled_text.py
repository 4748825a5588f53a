"""Labelled texts: CSV/TSV files and their errors, the vocabulary from the training split only, the generated
reviews, and the Time Machine passages made by scripts/timemachine_passages.py when ../shared/data is present."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from models.artifact.text import PAD, UNK, encode, tokens
from models.data import DataError, LabelledTexts, load_dataset
from models.data.labelled_text import build_vocab

from .formats import shared

ROOT = Path(__file__).resolve().parents[2]


def write(path: Path, text: str) -> Path:
    path.write_bytes(text.encode("utf-8"))
    return path


def test_csv_with_quotes_and_the_split_per_class(tmp_path):
    rows = "".join(f'"good, really {i}",pos\n' if i % 2 else f"bad {i},neg\n" for i in range(20))
    data = load_dataset("labelled_text", {"path": str(write(tmp_path / "r.csv", "text,label\n" + rows)),
                                          "test_fraction": 0.2}, seed=1)
    assert isinstance(data, LabelledTexts) and data.labels == ["neg", "pos"]
    assert len(data.train_texts) == 16 and len(data.test_texts) == 4
    assert data.test_y.tolist().count(0) == 2 and data.test_y.tolist().count(1) == 2  # stratified: 20 % of each
    assert any(t.startswith("good, really") for t in data.train_texts)  # the quoted comma stays in the text
    again = load_dataset("labelled_text", {"path": str(tmp_path / "r.csv"), "test_fraction": 0.2}, seed=1)
    other = load_dataset("labelled_text", {"path": str(tmp_path / "r.csv"), "test_fraction": 0.2}, seed=2)
    assert again.test_texts == data.test_texts and other.test_texts != data.test_texts  # chosen by seed


def test_tsv_columns_by_name_and_a_test_file_beside_it(tmp_path):
    write(tmp_path / "train.tsv", 'id\tlabel\tbody\n1\tb\tHe said "no" twice\n2\ta\tYes. Yes!\n')
    write(tmp_path / "test.tsv", "id\tlabel\tbody\n3\ta\tyes maybe\n")
    data = load_dataset("labelled_text", {"path": str(tmp_path / "train.tsv"), "test_file": "test.tsv",
                                          "text_column": "body"})
    assert data.train_texts == ['He said "no" twice', "Yes. Yes!"]  # TSV: quotes are just characters
    assert data.labels == ["a", "b"] and data.train_y.tolist() == [1, 0] and data.test_y.tolist() == [0]
    assert data.test_texts == ["yes maybe"]


def test_the_vocabulary_comes_from_the_training_split_only(tmp_path):
    write(tmp_path / "train.csv", "text,label\nthe cat sat,x\nthe dog sat,y\nthe cat ran,x\n")
    write(tmp_path / "test.csv", "text,label\nthe zebra sat,x\n")
    data = load_dataset("labelled_text", {"path": str(tmp_path / "train.csv"), "test_file": "test.csv"})
    assert data.vocab == [PAD, UNK, "the", "cat", "sat", "dog", "ran"]  # most frequent first, ties alphabetical
    assert "zebra" not in data.vocab
    assert data.encode(data.test_texts, 5).tolist() == [[2, 1, 4, 0, 0]]  # zebra → <unk>, padded to 5
    kept = load_dataset("labelled_text", {"path": str(tmp_path / "train.csv"), "test_file": "test.csv",
                                          "min_freq": 2})
    assert kept.vocab == [PAD, UNK, "the", "cat", "sat"]
    capped = load_dataset("labelled_text", {"path": str(tmp_path / "train.csv"), "test_file": "test.csv",
                                            "max_vocab": 4})
    assert capped.vocab == [PAD, UNK, "the", "cat"]
    chars = load_dataset("labelled_text", {"path": str(tmp_path / "train.csv"), "test_file": "test.csv",
                                           "tokens": "chars"})
    assert "z" not in chars.vocab and " " in chars.vocab and chars.split == "chars"


def test_tokenizer_words_chars_case_and_length():
    assert tokens("  The cat's  hat,\nhe said! ", "words", True) == ["the", "cat", "'", "s", "hat", ",", "he",
                                                                    "said", "!"]
    assert tokens("Ab  c", "chars", False) == ["A", "b", " ", "c"]
    vocab = [PAD, UNK, "a", "b"]
    ids = encode(["a b a b a", "b", "c"], vocab, "words", True, 3)
    assert ids.dtype == np.int64 and ids.tolist() == [[2, 3, 2], [3, 0, 0], [1, 0, 0]]  # cut, padded, unknown
    assert encode([], vocab, "words", True, 3).shape == (0, 3)


@pytest.mark.parametrize("name, text, options, message", [
    ("r.csv", "words,label\nhi,a\n", {}, r"r\.csv:1: no column 'text' in the header; columns: words, label "
                                         r"\(set data\.text_column\)"),
    ("r.csv", "text,label\nhi,a\n\n  ,b\n", {}, r"r\.csv:4: empty text in column 'text'"),
    ("r.csv", "text,label\nhi,a\nho,\n", {}, r"r\.csv:3: empty label in column 'label'"),
    ("r.tsv", "text\tlabel\nhi\ta\nhi\tthere\tb\n", {}, r"r\.tsv:3: 3 cells, the header has 2 \(a tab inside a text"),
    ("r.csv", "text,label\nhi\n", {}, r"r\.csv:2: 1 cells, the header has 2$"),
    ("r.csv", "", {}, r"r\.csv: empty file \(expected a header row naming the columns text, label\)"),
    ("r.csv", "text,label\n\n", {}, r"r\.csv: no data rows under the header"),
    ("r.txt", "text,label\nhi,a\n", {}, r"r\.txt: cannot tell the delimiter from the extension '\.txt'"),
    ("r.csv", "text,label\nhi,a\n", {"test_file": "t.csv"}, r"t\.csv: file not found"),
])
def test_bad_files_are_located(tmp_path, name, text, options, message):
    path = write(tmp_path / name, text)
    with pytest.raises(DataError, match=message):
        load_dataset("labelled_text", {"path": str(path), **options})


def test_delimiter_option_non_utf8_and_unknown_test_labels(tmp_path):
    data = load_dataset("labelled_text", {"path": str(write(tmp_path / "r.txt", "text;label\nhi;a\nho;b\n")),
                                          "delimiter": ";", "test_fraction": 0.0})
    assert data.train_texts == ["hi", "ho"] and data.test_texts == []
    (tmp_path / "bad.csv").write_bytes(b"text,label\ncaf\xe9,a\n")
    with pytest.raises(DataError, match=r"bad\.csv: not UTF-8 text"):
        load_dataset("labelled_text", {"path": str(tmp_path / "bad.csv")})
    write(tmp_path / "train.csv", "text,label\nhi,a\n")
    write(tmp_path / "test.csv", "text,label\nho,a\nhu,z\n")
    with pytest.raises(DataError, match=r"test\.csv:3: label 'z' does not occur in the training split \(its labels: a\)"):
        load_dataset("labelled_text", {"path": str(tmp_path / "train.csv"), "test_file": "test.csv"})


@pytest.mark.parametrize("test_file", ["../secret.csv", "sub/test.csv", "/etc/passwd", ".."])
def test_the_test_file_stays_beside_the_training_file(tmp_path, test_file):
    with pytest.raises(ValidationError, match="not a plain file name"):  # the spec layer locates it in the YAML
        load_dataset("labelled_text", {"path": str(tmp_path / "r.csv"), "test_file": test_file})


def test_generated_reviews_are_the_same_for_the_same_seed():
    first = load_dataset("synthetic_reviews", {"train_count": 200, "test_count": 50}, seed=3)
    again = load_dataset("synthetic_reviews", {"train_count": 200, "test_count": 50}, seed=3)
    other = load_dataset("synthetic_reviews", {"train_count": 200, "test_count": 50}, seed=4)
    assert first.train_texts == again.train_texts and first.test_texts == again.test_texts
    assert torch.equal(first.train_y, again.train_y) and first.vocab == again.vocab
    assert first.train_texts != other.train_texts
    assert first.labels == ["negative", "neutral", "positive"] and len(first.train_texts) == 200
    assert len(first.test_texts) == 50 and set(first.train_y.tolist()) == {0, 1, 2}
    negated = [(t, first.labels[y]) for t, y in zip(first.train_texts, first.train_y.tolist()) if " not " in t]
    assert negated and all(label != "positive" for _, label in negated)  # "not great" is negative, never positive
    assert load_dataset("synthetic_reviews", {}, seed=0).vocab == build_vocab(
        load_dataset("synthetic_reviews", {}, seed=0).train_texts, "words", True, 1, None)


def test_time_machine_passages_by_chapter(tmp_path):
    source = shared("timemachine") / "timemachine.txt"
    out = tmp_path / "chapters.tsv"
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "timemachine_passages.py"), "--out", str(out),
                           "--source", str(source)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    data = load_dataset("labelled_text", {"path": str(out), "test_fraction": 0.2}, seed=0)
    assert data.labels == [f"ch{i:02d}" for i in range(1, 13)]
    assert 700 < len(data.train_texts) + len(data.test_texts) < 900  # ~32,000 words in passages of 40
    assert all(len(t.split()) >= 20 for t in data.train_texts)
    assert data.train_texts[0].startswith("The Time Traveller (for so it will be convenient")
