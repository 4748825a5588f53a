"""Character-level text corpora and their vocabulary.

Vocabulary modes:
- "course": D2L's char vocabulary, fixed: <unk>, space, a..z (28 tokens). Text is lower-cased and every run of
  non-letters becomes one space (`re.sub('[^A-Za-z]+', ' ', text)`, D2L's `read_time_machine`). Unlike D2L, which
  cleans line by line and then concatenates the lines with nothing between them, line breaks become spaces here, so
  words at line ends don't fuse ("machine" + "by" -> "machine by", not "machineby").
- "all": every character of the training text (as is, line breaks included), plus <unk>.
Held-out text is the last `test_fraction` of the cleaned text; characters seen only there map to <unk>.

The embedded corpus (`embedded_text`) is resources/timemachine_head.txt: the first 59,458 bytes (chapters I-III and
the start of IV) of H. G. Wells, *The Time Machine* (1895, public domain), cut at a paragraph break from D2L's
timemachine.txt (Project Gutenberg text; /work/shared/data/timemachine/, sha256 8424dbd9...c516 for the full file).
No installed package ships a long public-domain English prose text, so this excerpt is stored in the repository.
"""
from __future__ import annotations

import re
import string
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field

from models.artifact.text import UNK  # one spelling for the char models and the text classifiers
from models.data.base import DataArgs, DataError, Fraction, TextCorpus, reading, register, require_file

VocabMode = Literal["course", "all"]
EMBEDDED_TEXT = Path(__file__).parent / "resources" / "timemachine_head.txt"
_NON_LETTERS = re.compile("[^A-Za-z]+")


def clean(text: str, mode: VocabMode) -> str:
    """The text as the vocabulary sees it: course mode keeps lower-case letters and single spaces only."""
    if mode == "course":
        return _NON_LETTERS.sub(" ", text).strip().lower()
    return text.replace("\r\n", "\n")


class Vocab:
    """Char <-> id table. Unknown characters map to `unk`; `decode` writes <unk> for it, visibly."""

    def __init__(self, tokens: list[str], mode: VocabMode):
        if UNK not in tokens:
            raise ValueError(f"vocabulary must contain {UNK}")
        self.tokens, self.mode = list(tokens), mode
        self.unk = self.tokens.index(UNK)
        self._ids = {t: i for i, t in enumerate(self.tokens)}

    @classmethod
    def build(cls, text: str, mode: VocabMode) -> "Vocab":
        """Course: the fixed 28 tokens. All: <unk> + the sorted distinct characters of `text`."""
        if mode == "course":
            return cls([UNK, " ", *string.ascii_lowercase], mode)
        return cls([UNK, *sorted(set(text))], mode)

    def encode(self, text: str) -> list[int]:
        """Ids of `text` after the mode's cleaning (so a prompt is treated like the training text)."""
        return self.lookup(clean(text, self.mode))

    def lookup(self, chars: str) -> list[int]:
        """Ids of already-cleaned characters."""
        return [self._ids.get(ch, self.unk) for ch in chars]

    def decode(self, ids: list[int]) -> str:
        return "".join(self.tokens[i] for i in ids)

    def __len__(self) -> int:
        return len(self.tokens)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form, stored with the model so serving rebuilds the same table."""
        return {"mode": self.mode, "tokens": self.tokens}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Vocab":
        return cls(data["tokens"], data["mode"])

    def __repr__(self) -> str:
        return f"Vocab(mode={self.mode!r}, size={len(self)})"


def corpus_from_text(
    text: str, mode: VocabMode, test_fraction: float, source: str, max_train_chars: int | None = None
) -> TextCorpus:
    """Clean, split off the last `test_fraction` as test, build the vocabulary on the training part, encode.

    `max_train_chars` keeps only the first N training characters (D2L's `max_tokens=10000`); the held-out tail is
    the same as without it, so the two settings' held-out perplexities compare.
    """
    cleaned = clean(text, mode)
    if not cleaned.strip():
        raise DataError(f"{source}: no tokens left after cleaning (vocab {mode!r} keeps letters and spaces only)")
    cut = len(cleaned) - int(round(len(cleaned) * test_fraction))
    if cut < 2:
        raise DataError(
            f"{source}: {len(cleaned)} characters is too short to train on with test_fraction {test_fraction}"
        )
    train_end = cut if max_train_chars is None else min(cut, max_train_chars)
    vocab = Vocab.build(cleaned[:train_end], mode)
    ids = torch.tensor(vocab.lookup(cleaned), dtype=torch.int64)  # (L + M,)
    return TextCorpus(train=ids[:train_end], test=ids[cut:], vocab=vocab)


def read_text(path: Path) -> str:
    """A UTF-8 text file (BOM tolerated); empty or undecodable files are DataErrors naming it."""
    require_file(path)
    with reading(path):
        text = path.read_bytes().decode("utf-8-sig")
    if not text.strip():
        raise DataError(f"{path}: empty text file")
    return text


class EmbeddedTextArgs(DataArgs):
    vocab: VocabMode = "course"
    test_fraction: Fraction = 0.1
    max_train_chars: int | None = Field(default=None, ge=2, description="train on the first N characters only")


class TextArgs(EmbeddedTextArgs):
    path: Path


@register("text", task="sequence", input="tokens", args=TextArgs)
def text(args: TextArgs, seed: int) -> TextCorpus:
    """A char-level corpus from one UTF-8 text file."""
    return corpus_from_text(read_text(args.path), args.vocab, args.test_fraction, str(args.path), args.max_train_chars)


@register("embedded_text", task="sequence", input="tokens", args=EmbeddedTextArgs)
def embedded_text(args: EmbeddedTextArgs, seed: int) -> TextCorpus:
    """The first chapters of The Time Machine, shipped with specserve: a text demo that needs no files."""
    return corpus_from_text(
        read_text(EMBEDDED_TEXT), args.vocab, args.test_fraction, str(EMBEDDED_TEXT), args.max_train_chars
    )
