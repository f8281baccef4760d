"""Build ``assets/demo_reviews.csv`` from the hand-written review chunks in ``assets/demo_reviews_src/``.

Every review in the chunks was written for this project; none comes from a public dataset.
Each chunk line reads ``<+|-><e|h> <review text>``: ``+`` positive, ``-`` negative; ``e`` clear-cut,
``h`` hard (sarcasm, negation, contrast, mixed opinion with a verdict, understatement, rhetorical question).
Lines starting with ``#`` are comments.

Steps, all deterministic (each step draws from its own ``numpy.random.default_rng(SEED)``):

1. parse and validate the chunks (640 reviews, 320 per class, 1-5 sentences, no duplicates,
   no pair of reviews sharing more than ``MAX_SHARED_6GRAMS`` six-word sequences);
2. split 480 train / 160 test, stratified by label and difficulty (240/240 train, 80/80 test);
3. plant 20 label errors in train: 10 originally positive and 10 originally negative rows, each
   half clear-cut and half hard, get their label flipped and ``planted_error = 1``;
4. shuffle the rows, number them ``id = 0..639`` and write the CSV with ``csv`` quoting, UTF-8.

Run from the repository root: ``.venv/bin/python assets/build_demo_reviews.py`` (``--check`` only validates
and prints statistics without writing).
"""

from __future__ import annotations

import argparse
import csv
import re
import sys
from collections import Counter
from itertools import combinations
from pathlib import Path

import numpy as np

SEED = 2026
ASSETS = Path(__file__).resolve().parent
SOURCE_DIR = ASSETS / "demo_reviews_src"
OUTPUT = ASSETS / "demo_reviews.csv"

N_PER_CLASS = 320
N_TEST_PER_CLASS = 80
N_PLANTED_PER_CLASS = 10  # flipped train labels per original class: 20 of 480 train rows, about 4%
MAX_SHARED_6GRAMS = 1  # two reviews may share at most one six-word sequence
MAX_SENTENCES = 5
COLUMNS = ["id", "split", "text", "label", "planted_error"]

_LINE = re.compile(r"^([+-])([eh]) (\S.*)$")
_SENTENCE_END = re.compile(r"[.!?]+[\"')]*(?=\s|$)")


def words(text: str) -> list[str]:
    """Lower-cased word tokens, punctuation stripped (used for counts and overlap checks)."""
    return re.findall(r"[a-z0-9']+", text.lower())


def six_grams(tokens: list[str]) -> set[tuple[str, ...]]:
    """Every run of six consecutive tokens."""
    return {tuple(tokens[i : i + 6]) for i in range(len(tokens) - 5)}


def sentence_count(text: str) -> int:
    """Number of sentences: runs of . ! ? (optionally closed by a quote) followed by space or end."""
    return max(1, len(_SENTENCE_END.findall(text)))


def read_chunks(source_dir: Path = SOURCE_DIR) -> list[dict]:
    """Parse every ``chunk_*.txt``; returns rows with ``text``, ``label`` (0/1), ``hard`` (bool), ``source``."""
    rows = []
    for path in sorted(source_dir.glob("chunk_*.txt")):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip() or line.startswith("#"):
                continue
            match = _LINE.match(line)
            if match is None:
                raise ValueError(f"{path.name}:{number}: expected '<+|-><e|h> text', got {line[:40]!r}")
            sign, difficulty, text = match.groups()
            rows.append(
                {
                    "text": text.strip(),
                    "label": 1 if sign == "+" else 0,
                    "hard": difficulty == "h",
                    "source": f"{path.name}:{number}",
                }
            )
    return rows


def validate(rows: list[dict]) -> list[str]:
    """Return a list of problems (empty when the corpus is fine)."""
    problems = []
    counts = Counter(row["label"] for row in rows)
    if counts[0] != N_PER_CLASS or counts[1] != N_PER_CLASS:
        problems.append(f"class counts {dict(counts)}, expected {N_PER_CLASS} each")

    normalised = Counter(" ".join(words(row["text"])) for row in rows)
    for text, count in normalised.items():
        if count > 1:
            problems.append(f"duplicate review ({count}x): {text[:60]!r}")

    for row in rows:
        n_sentences = sentence_count(row["text"])
        if n_sentences > MAX_SENTENCES:
            problems.append(f"{row['source']}: {n_sentences} sentences (max {MAX_SENTENCES})")

    grams = [six_grams(words(row["text"])) for row in rows]
    for a, b in combinations(range(len(rows)), 2):
        shared = grams[a] & grams[b]
        if len(shared) > MAX_SHARED_6GRAMS:
            problems.append(
                f"{rows[a]['source']} and {rows[b]['source']} share {len(shared)} six-word sequences, "
                f"e.g. {' '.join(next(iter(shared)))!r}"
            )

    openings = Counter(" ".join(words(row["text"])[:3]) for row in rows)
    for opening, count in openings.items():
        if count > 2:
            problems.append(f"{count} reviews open with {opening!r}")
    return problems


def assign_splits(rows: list[dict], seed: int = SEED) -> None:
    """Set ``row["split"]``: stratified by (label, hard) so both splits keep the same mix of hard cases."""
    rng = np.random.default_rng(seed)
    for label in (0, 1):
        members = [i for i, row in enumerate(rows) if row["label"] == label]
        hard = [i for i in members if rows[i]["hard"]]
        easy = [i for i in members if not rows[i]["hard"]]
        n_test_hard = round(N_TEST_PER_CLASS * len(hard) / len(members))
        test = set(rng.choice(hard, size=n_test_hard, replace=False).tolist())
        test |= set(rng.choice(easy, size=N_TEST_PER_CLASS - n_test_hard, replace=False).tolist())
        for i in members:
            rows[i]["split"] = "test" if i in test else "train"


def plant_errors(rows: list[dict], seed: int = SEED) -> None:
    """Flip the label of 10 train rows per original class (5 clear-cut, 5 hard) and mark ``planted_error``."""
    rng = np.random.default_rng(seed)
    for row in rows:
        row["given_label"] = row["label"]
        row["planted_error"] = 0
    for label in (0, 1):
        for hard in (False, True):
            pool = [
                i
                for i, row in enumerate(rows)
                if row["split"] == "train" and row["label"] == label and row["hard"] == hard
            ]
            for i in rng.choice(pool, size=N_PLANTED_PER_CLASS // 2, replace=False).tolist():
                rows[i]["given_label"] = 1 - label
                rows[i]["planted_error"] = 1


def order_rows(rows: list[dict], seed: int = SEED) -> list[dict]:
    """Shuffle deterministically and number the rows ``id = 0..n-1``."""
    rng = np.random.default_rng(seed)
    ordered = [rows[i] for i in rng.permutation(len(rows)).tolist()]
    for new_id, row in enumerate(ordered):
        row["id"] = new_id
    return ordered


def write_csv(rows: list[dict], path: Path = OUTPUT) -> None:
    """Write the five public columns; ``label`` is the given (possibly flipped) label."""
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(COLUMNS)
        for row in rows:
            writer.writerow([row["id"], row["split"], row["text"], row["given_label"], row["planted_error"]])


def summary(rows: list[dict]) -> str:
    """Human-readable statistics of the built corpus."""
    lines = []
    for split in ("train", "test"):
        part = [row for row in rows if row["split"] == split]
        given = Counter(row["given_label"] for row in part)
        true = Counter(row["label"] for row in part)
        planted = sum(row["planted_error"] for row in part)
        hard = sum(row["hard"] for row in part)
        lines.append(
            f"{split}: {len(part)} rows, given labels neg/pos {given[0]}/{given[1]}, "
            f"true labels neg/pos {true[0]}/{true[1]}, hard {hard}, planted errors {planted}"
        )
    n_words = np.array([len(words(row["text"])) for row in rows])
    n_sentences = np.array([sentence_count(row["text"]) for row in rows])
    lines.append(
        f"words per review: min {n_words.min()}, median {np.median(n_words):.0f}, max {n_words.max()}, "
        f"share in 15-70: {np.mean((n_words >= 15) & (n_words <= 70)):.0%}"
    )
    lines.append(
        f"sentences per review: min {n_sentences.min()}, median {np.median(n_sentences):.0f}, "
        f"max {n_sentences.max()}, counts {dict(sorted(Counter(n_sentences.tolist()).items()))}"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="validate and print statistics, write nothing")
    args = parser.parse_args(argv)

    rows = read_chunks()
    problems = validate(rows)
    if problems:
        print("\n".join(problems), file=sys.stderr)
        return 1
    assign_splits(rows)
    plant_errors(rows)
    rows = order_rows(rows)
    print(summary(rows))
    if not args.check:
        write_csv(rows)
        print(f"wrote {OUTPUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
