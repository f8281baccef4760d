"""Instant questions: the training reviews most responsible for any text, from the training-gradient index.

A new text costs one forward and backward pass of the text itself, its exact preconditioning, one product
against the index and an exact re-score of the index's best candidates by the engine, so the numbers shown are
the engine's (``exact``) while the search over every training review is the index's.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pandas as pd

from explorer.analysis import Analysis
from explorer.spec import AnalysisSpec
from explorer.store import CARDS, RERANK, ModelStore


@dataclass
class SearchResult:
    """The answer to one text.

    Attributes:
        label: The label the influences are for (the given one, or the model's prediction), a class id.
        proba: The model's class probabilities for the text, [C].
        rows: One row per (direction, rank): ``direction`` (helpful/harmful), ``rank``, ``train`` (position in the
            analysed training slice), ``influence`` (positive = helpful, over every analysed layer), ``exact``.
        seconds: Wall time of the whole answer.
        candidates: How many training reviews per direction the engine re-scored exactly.
    """

    label: int
    proba: np.ndarray
    rows: pd.DataFrame
    seconds: float
    candidates: int


def search_training(store: ModelStore, spec: AnalysisSpec, analysis: Analysis, text: str, *, label: int | None = None,
                    damping: float | None = None, top: int = CARDS, rerank: int = RERANK) -> SearchResult | None:
    """The ``top`` most helpful and harmful training reviews for ``text`` with ``label`` (default: predicted).

    Returns None when the analysis has no index (computed before the index existed): the caller falls back to a
    scoring pass over the training reviews.
    """
    started = time.perf_counter()
    index = store.index(spec, analysis.train["text"].tolist(), analysis.train["label"].to_numpy())
    if index is None:
        return None
    engine = store.engine(spec)
    proba = engine.predict_proba([text])[0]
    chosen = int(np.argmax(proba)) if label is None else int(label)
    rows = index.query([text], [chosen], top=top, rerank=rerank, damping=damping)
    rows = rows.drop(columns="query").rename(columns={"train_row": "train"})
    return SearchResult(label=chosen, proba=proba, rows=rows, seconds=time.perf_counter() - started,
                        candidates=min(max(rerank, top), analysis.scores.n_train))


def index_description(info: dict) -> str:
    """How an analysis's index (``Analysis.meta["index"]``) compresses the training gradients, in words."""
    if info.get("kind") == "exact":
        return "the exact index (every training review's whole gradient)"
    if info.get("basis") == "eigen":
        return (f"the eigen index (each training review's gradient at its {info.get('entries', 0):,} entries of "
                "largest curvature)")
    return "the projected index (a random projection of each training review's gradient)"
