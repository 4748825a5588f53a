"""Char-level corpora: the course vocabulary, the 'all' vocabulary, the embedded text, and bad files."""
from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from models.data import DataError, Vocab, load_dataset
from models.data.text import EMBEDDED_TEXT

from .formats import shared


def test_course_vocab_cleans_like_d2l(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("The Time-Machine, 1895!\nBy H. G. Wells\n")
    corpus = load_dataset("text", {"path": str(path), "test_fraction": 0.0})
    vocab = corpus.vocab
    assert len(vocab) == 28 and vocab.tokens[vocab.unk] == "<unk>"
    assert set(vocab.tokens) == {"<unk>", " ", *"abcdefghijklmnopqrstuvwxyz"}
    assert vocab.decode(corpus.train.tolist()) == "the time machine by h g wells"
    assert corpus.test.numel() == 0
    assert vocab.encode("Hi, THERE") == vocab.encode("hi there")


def test_all_vocab_and_holdout(tmp_path):
    path = tmp_path / "t.txt"
    text = "abcabcabc\nABC xyz!"
    path.write_text(text)
    corpus = load_dataset("text", {"path": str(path), "vocab": "all", "test_fraction": 0.25})
    train, test = corpus.train, corpus.test
    assert train.dtype == torch.int64 and len(train) + len(test) == len(text)
    assert len(test) == round(len(text) * 0.25)
    vocab = corpus.vocab
    assert vocab.decode(train.tolist()) == text[: len(train)]
    assert "!" not in vocab.tokens  # only in the held-out part
    assert vocab.decode(test.tolist()).endswith("<unk>")
    assert Vocab.from_dict(vocab.to_dict()).tokens == vocab.tokens


def test_max_train_chars_keeps_the_head_and_the_same_holdout(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("abcdefghij" * 10)  # 100 characters: train 80, held-out 20
    full = load_dataset("text", {"path": str(path), "test_fraction": 0.2})
    head = load_dataset("text", {"path": str(path), "test_fraction": 0.2, "max_train_chars": 30})
    assert head.vocab.decode(head.train.tolist()) == "abcdefghij" * 3
    assert torch.equal(head.test, full.test) and len(full.train) == 80
    with pytest.raises(ValidationError, match="max_train_chars"):  # the spec layer locates it in the YAML
        load_dataset("text", {"path": str(path), "max_train_chars": 0})


def test_encode_unknown_and_round_trip():
    vocab = Vocab.build("", "course")
    ids = vocab.encode("zebra")
    assert vocab.decode(ids) == "zebra"
    all_vocab = Vocab.build("ab", "all")
    assert all_vocab.encode("abc") == [all_vocab.tokens.index("a"), all_vocab.tokens.index("b"), all_vocab.unk]


def test_empty_file(tmp_path):
    path = tmp_path / "empty.txt"
    path.write_text("  \n\n")
    with pytest.raises(DataError, match=r"empty\.txt: empty text file"):
        load_dataset("text", {"path": str(path)})


def test_not_utf8(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("caf\xe9 au lait".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1\.txt: not UTF-8 text \(byte 0xe9 at offset 3\)"):
        load_dataset("text", {"path": str(path)})


def test_no_tokens_after_cleaning(tmp_path):
    path = tmp_path / "digits.txt"
    path.write_text("1234 5678 -- 90\n")
    with pytest.raises(DataError, match=r"digits\.txt: no tokens left after cleaning"):
        load_dataset("text", {"path": str(path)})
    assert len(load_dataset("text", {"path": str(path), "vocab": "all"}).vocab) > 1


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"nope\.txt: file not found"):
        load_dataset("text", {"path": str(tmp_path / "nope.txt")})


def test_embedded_text():
    assert EMBEDDED_TEXT.stat().st_size <= 60 * 1024
    corpus = load_dataset("embedded_text", {})
    assert len(corpus.vocab) == 28
    assert corpus.vocab.decode(corpus.train[:20].tolist()) == "the time machine by "
    assert len(corpus.train) > 50_000 and abs(len(corpus.test) / (len(corpus.train) + len(corpus.test)) - 0.1) < 0.01


def test_real_timemachine():
    corpus = load_dataset("text", {"path": str(shared("timemachine") / "timemachine.txt")})
    total = len(corpus.train) + len(corpus.test)
    assert 170_000 < total < 180_000  # d2l's 170,580 chars plus one space per line break
    assert corpus.vocab.decode(corpus.test[-20:].tolist()).endswith("in the heart of man")
