"""Texts → token ids for text classifiers: the one tokenizer training and serving share (numpy only, no torch).

A text is split into tokens — `words` (runs of letters and digits, each punctuation mark on its own) or `chars`
(every character) — after Unicode NFC normalization, whitespace runs folded into one space and, optionally,
lower-casing. Ids come from the card's vocabulary (a token it lacks is <unk>), and every text becomes exactly
`length` ids: longer ones are cut after `length` tokens, shorter ones padded at the end with <pad>. Training encodes
its splits with this module and writes the settings into the model card, so the service tokenizes a request
exactly as the training texts were.
"""
from __future__ import annotations

import re
import unicodedata
from typing import Iterable, Literal, Mapping, Sequence

import numpy as np

Split = Literal["words", "chars"]
PAD, UNK = "<pad>", "<unk>"
_WORDS = re.compile(r"\w+|[^\w\s]")  # a word (letters, digits, _) or a single punctuation mark
_SPACES = re.compile(r"\s+")


def tokens(text: str, split: Split, lowercase: bool) -> list[str]:
    """The tokens of one text, in order."""
    text = _SPACES.sub(" ", unicodedata.normalize("NFC", text)).strip()
    if lowercase:
        text = text.lower()
    return _WORDS.findall(text) if split == "words" else list(text)


def vocab_index(vocab: Sequence[str]) -> dict[str, int]:
    """token → id of a vocabulary (built once per vocabulary: the service keeps one per served model)."""
    return {token: i for i, token in enumerate(vocab)}


def encode(texts: Iterable[str], vocab: Sequence[str], split: Split, lowercase: bool, length: int) -> np.ndarray:
    """int64 (N, length): each text's token ids, cut or padded at the end to `length`."""
    return encode_tokens([tokens(text, split, lowercase) for text in texts], vocab_index(vocab), length)


def encode_tokens(token_lists: Sequence[Sequence[str]], ids: Mapping[str, int], length: int) -> np.ndarray:
    """int64 (N, length): the ids of already split texts (<unk> for a token not in `ids`, a `vocab_index`), cut
    or padded."""
    pad, unk = ids[PAD], ids[UNK]
    rows = []
    for found in token_lists:
        row = [ids.get(t, unk) for t in found[:length]]
        rows.append(row + [pad] * (length - len(row)))
    return np.asarray(rows, dtype=np.int64).reshape(len(rows), length)
