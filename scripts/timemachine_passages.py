"""Write a labelled text set made from The Time Machine: non-overlapping passages of ~40 words, labelled by chapter.

There is no labelled text set in ../shared/data, so this one is built, honestly, from the novel there: its 12
chapters are marked by lines holding only their Roman numeral ("I" at line 6, "II" at line 381, ... "XII"). Each
chapter's words (whitespace-separated, line breaks folded into spaces) are cut into consecutive passages of
`--words` words; a chapter's last, shorter passage is kept only if it has at least half as many. The label is
the chapter ("ch01".."ch12", so sorted labels are in book order), or with `--parts` the part of the story:
"dinner" (I–III, the Time Traveller's guests), "future" (IV–X, the year 802,701), "return" (XI–XII, the further
future and the epilogue). The TSV (columns text, label; tabs never occur in the text) is what
`data: {dataset: labelled_text, path: ...}` reads; the train/test split is the dataset's (test_fraction, by seed).

    .venv/bin/python scripts/timemachine_passages.py --out data/timemachine_chapters.tsv
"""
from __future__ import annotations

import argparse
import csv
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT.parent / "shared" / "data" / "timemachine" / "timemachine.txt"
NUMERALS = ["I", "II", "III", "IV", "V", "VI", "VII", "VIII", "IX", "X", "XI", "XII"]
PARTS = {**dict.fromkeys(NUMERALS[:3], "dinner"), **dict.fromkeys(NUMERALS[3:10], "future"),
         **dict.fromkeys(NUMERALS[10:], "return")}


def chapters(text: str) -> list[tuple[str, str]]:
    """(numeral, text) of each chapter, in order; the title before chapter I is left out."""
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if line.strip() in NUMERALS]
    found = [lines[i].strip() for i in starts]
    if found != NUMERALS:
        raise SystemExit(f"{SOURCE}: expected chapter lines {NUMERALS}, found {found}")
    ends = starts[1:] + [len(lines)]
    return [(lines[s].strip(), "\n".join(lines[s + 1: e])) for s, e in zip(starts, ends)]


def passages(text: str, words: int) -> list[str]:
    """Consecutive passages of `words` words; a last one shorter than half of that is dropped."""
    tokens = re.split(r"\s+", text.strip())
    cut = [" ".join(tokens[i: i + words]) for i in range(0, len(tokens), words)]
    return cut if len(tokens) % words == 0 or len(tokens) % words >= words // 2 else cut[:-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="the TSV to write")
    parser.add_argument("--source", type=Path, default=SOURCE)
    parser.add_argument("--words", type=int, default=40, help="words per passage")
    parser.add_argument("--parts", action="store_true", help="label by story part (3 classes), not by chapter")
    args = parser.parse_args()
    rows = []
    for number, (numeral, text) in enumerate(chapters(args.source.read_text(encoding="utf-8")), start=1):
        label = PARTS[numeral] if args.parts else f"ch{number:02d}"
        rows += [(passage, label) for passage in passages(text, args.words)]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter="\t", quoting=csv.QUOTE_NONE, quotechar=None, lineterminator="\n")
        writer.writerow(["text", "label"])
        writer.writerows(rows)
    counts = {label: sum(1 for _, lab in rows if lab == label) for label in sorted({lab for _, lab in rows})}
    print(f"{args.out}: {len(rows)} passages of {args.words} words; per label {counts}")


if __name__ == "__main__":
    main()
