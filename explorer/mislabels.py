"""The Mislabel finder's tables and exports: ranks by every signal, grading against known mislabels, the signal
table, and the review queue as Hugging Face ``datasets`` folders and as Label Studio tasks.

Every ranking here is a ``{name: [n_train] scores}`` mapping in which a higher score is more suspicious; NaN (a
signal that could not be computed for a row) ranks last.
"""

from __future__ import annotations

import hashlib
import io
import tempfile
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from explorer.figures import ranking_curves

#: Mark states that say the given label is wrong (dropped or relabelled in the cleaned dataset).
WRONG_LABEL_STATES = ("mislabeled", "relabel")


def suspicion_order(scores: np.ndarray) -> np.ndarray:
    """Row indices from most to least suspicious: ``[n]`` int, ties in row order, NaN last."""
    return np.argsort(-np.nan_to_num(np.asarray(scores, dtype=float), nan=-np.inf), kind="stable")


def signal_ranks(rankings: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Each row's rank by each signal: ``{name: [n] int}``, 1 = most suspicious (as :func:`suspicion_order`)."""
    ranks = {}
    for name, scores in rankings.items():
        rank = np.empty(len(scores), dtype=int)
        rank[suspicion_order(scores)] = np.arange(1, len(scores) + 1)
        ranks[name] = rank
    return ranks


def known_mislabels(train: pd.DataFrame, column: str, marks: Mapping[int, dict] | None = None) -> np.ndarray:
    """``[n_train]`` bool: True where the label is known to be wrong.

    ``column`` is a 0/1 or boolean column of ``train`` (e.g. the demo's ``planted_error``), or ``"(my marks)"``:
    the reviewer's marks, where ``mislabeled`` and ``relabel`` count as wrong.
    """
    if column == "(my marks)":
        marks = marks or {}
        return np.array([marks.get(int(r), {}).get("state") in WRONG_LABEL_STATES for r in train["row_id"]], dtype=bool)
    return train[column].astype(str).str.lower().isin(["1", "true"]).to_numpy()


def ranking_quality(rankings: Mapping[str, np.ndarray], truth: np.ndarray) -> tuple[pd.DataFrame, pd.DataFrame]:
    """How well each ranking finds the known mislabels ``truth`` (``[n]`` bool, at least one True).

    Returns:
        ``(curves, summary)``: the long frame of :func:`explorer.figures.ranking_curves` (precision and recall at
        every k), and one row per ranking with precision at k = the number of known mislabels, recall in the top
        10% (k = ceil(n / 10)), and the number of reviews to inspect to find half of them.
    """
    truth = np.asarray(truth, dtype=bool)
    if not truth.any():
        raise ValueError("no row is marked as a known mislabel")
    curves = ranking_curves(rankings, truth)
    n_true = int(truth.sum())
    tenth = max(1, int(np.ceil(0.1 * len(truth))))
    summary = pd.DataFrame(
        [
            {
                "ranking": name.replace("_", " "),
                f"precision at {n_true}": float(group.loc[group.k == n_true, "precision"].iloc[0]),
                f"recall at {tenth} (top 10%)": float(group.loc[group.k == tenth, "recall"].iloc[0]),
                "reviews to inspect for half of them": int(group.loc[group.recall >= 0.5, "k"].min()),
            }
            for name, group in curves.groupby("ranking", sort=False)
        ]
    )
    return curves, summary


def mark_counts(train: pd.DataFrame, marks: Mapping[int, dict]) -> tuple[int, int]:
    """``(dropped, relabelled)``: how many reviews of ``train`` are marked ``mislabeled`` and ``relabel``."""
    states = [marks.get(int(r), {}).get("state") for r in train["row_id"]]
    return states.count("mislabeled"), states.count("relabel")


def signal_table(train: pd.DataFrame, rankings: Mapping[str, np.ndarray], reasons: Sequence[str]) -> pd.DataFrame:
    """One row per training review: ``row_id``, ``text``, ``label``, one column per signal, and ``why``."""
    table = train[["row_id", "text", "label"]].copy()
    for name, scores in rankings.items():
        table[name] = np.asarray(scores)
    table["why"] = list(reasons)
    return table.reset_index(drop=True)


def tables_fingerprint(tables: Mapping[str, pd.DataFrame]) -> str:
    """A hex digest of the tables' names, columns and values: equal exactly when an export of them would be."""
    digest = hashlib.sha256()
    for name, table in tables.items():
        digest.update(f"{name}\0{list(map(str, table.columns))}\0{len(table)}\0".encode())
        digest.update(pd.util.hash_pandas_object(table, index=False).to_numpy().tobytes())
    return digest.hexdigest()


def datasets_zip(tables: Mapping[str, pd.DataFrame]) -> bytes:
    """The tables as Hugging Face ``datasets`` folders (``Dataset.save_to_disk``), one per name, in one zip.

    Unzipped, ``datasets.load_from_disk("<folder>/<name>")`` gives each table back (its index dropped).
    """
    from datasets import Dataset

    buffer = io.BytesIO()
    with tempfile.TemporaryDirectory() as folder, zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, table in tables.items():
            Dataset.from_pandas(table.reset_index(drop=True), preserve_index=False).save_to_disk(f"{folder}/{name}")
            for path in sorted(Path(folder, name).rglob("*")):
                if path.is_file():
                    archive.write(path, path.relative_to(folder))
    return buffer.getvalue()


def label_studio_tasks(train: pd.DataFrame, scores: Mapping[str, np.ndarray], label_names: Sequence[str],
                       order: Sequence[int], reasons: Sequence[str] | None = None) -> list[dict]:
    """The review queue as Label Studio tasks (its JSON import format: a list of ``{"data": ..., "predictions": [...],
    "meta": ...}``), for a labelling config with ``<Text name="text" value="$text"/>`` and
    ``<Choices name="label" toName="text">`` over ``label_names``. Each task pre-selects the *given* label as a
    prediction whose ``score`` is the combined suspicion (so Label Studio can sort by it); ``meta`` carries the
    row id, rank and every signal."""
    tasks = []
    for rank, j in enumerate(order, start=1):
        j = int(j)
        label = label_names[int(train["label"].iloc[j])]
        signals = {name: float(values[j]) for name, values in scores.items() if np.isfinite(values[j])}
        tasks.append({
            "data": {"text": str(train["text"].iloc[j]), "row_id": int(train["row_id"].iloc[j]), "given_label": label},
            "predictions": [{"model_version": "influence-explorer-mislabel", "score": signals.get("combined", 0.0),
                             "result": [{"from_name": "label", "to_name": "text", "type": "choices",
                                         "value": {"choices": [label]}}]}],
            "meta": {"rank": rank, "signals": signals, **({"why": reasons[j]} if reasons is not None else {})},
        })
    return tasks
