"""Damping between and beyond the values an analysis scored.

The index's rows do not depend on the damping (only the query is preconditioned), so one test review's influence on
every training review at a fine grid of dampings costs one query gradient and one product against the index. What
a person reads as a number stays the engine's: a pair's curve is scored exactly (one short pass of the two reviews,
every damping at once), and the reviews listed at a damping are the index's candidates re-scored exactly.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from explorer.analysis import Analysis
from explorer.spec import AnalysisSpec
from explorer.store import ModelStore

#: Grid values per decade of damping (log-spaced), between the smallest and the largest computed value.
PER_DECADE = 4
#: The top this many training reviews (per direction) are compared between dampings.
TOP = 10


def sweep_grid(computed: Sequence[float], per_decade: int = PER_DECADE) -> list[float]:
    """Log-spaced damping values from the smallest to the largest of ``computed``, ``per_decade`` per decade
    (3 significant digits), with every computed value among them; ascending."""
    values = {float(v) for v in computed}
    low, high = min(values), max(values)
    if high > low:
        n = int(round(np.log10(high / low) * per_decade)) + 1
        values |= {float(f"{v:.3g}") for v in np.geomspace(low, high, n)}
    return sorted(values)


def agreement(matrix: np.ndarray, reference: np.ndarray, dampings: Sequence[float], top: int = TOP) -> pd.DataFrame:
    """How one test review's influences at each damping agree with those at a reference damping.

    Args:
        matrix: Influence of every training review at each damping, [K, n_train] (positive = helpful).
        reference: The same at the reference damping, [n_train].
        dampings: The K damping values.
        top: Size of the top lists compared.

    Returns:
        One row per damping: ``damping``, ``pearson`` (over all training reviews: influence is heavy-tailed, so this
        weighs the reviews that explain the prediction, where a rank correlation would weigh the many near zero) and
        ``top_kept`` (the share of the reference's ``top`` most helpful and ``top`` most harmful that are still
        among the ``top`` of their side).
    """
    top = min(top, len(reference))
    best, worst = set(np.argsort(-reference)[:top]), set(np.argsort(reference)[:top])
    rows = []
    for damping, values in zip(dampings, matrix):
        kept = len(best & set(np.argsort(-values)[:top])) + len(worst & set(np.argsort(values)[:top]))
        rows.append({"damping": float(damping), "pearson": float(stats.pearsonr(values, reference).statistic),
                     "top_kept": kept / (2 * top)})
    return pd.DataFrame(rows)


@dataclass
class Sweep:
    """One test review's influence on every training review across a grid of dampings, from the index.

    Attributes:
        dampings: The grid, ascending, [K] (absolute or relative, as the analysis).
        estimates: Index estimates over every analysed layer, [K, n_train]; positive = helpful.
        seconds: Wall time of the query gradient and the lookup.
    """

    dampings: np.ndarray
    estimates: np.ndarray
    seconds: float

    def at(self, damping: float) -> np.ndarray:
        """The estimates at the grid value nearest ``damping`` (on a log scale), [n_train]."""
        return self.estimates[int(np.argmin(np.abs(np.log(self.dampings) - np.log(damping))))]

    def agreement(self, reference: float, top: int = TOP) -> pd.DataFrame:
        """:func:`agreement` of every grid damping with the grid value ``reference`` (which must be on it)."""
        return agreement(self.estimates, self.at(reference), self.dampings, top)


def index_sweep(store: ModelStore, spec: AnalysisSpec, analysis: Analysis, test_row: int,
                dampings: Sequence[float]) -> Sweep | None:
    """The index's estimate of test review ``test_row``'s influence on every training review at each of
    ``dampings``; None when the analysis has no index."""
    started = time.perf_counter()
    index = store.index(spec, analysis.train["text"].tolist(), analysis.train["label"].to_numpy())
    if index is None:
        return None
    test = analysis.test.iloc[[int(test_row)]]
    estimates = index.estimates(test["text"].tolist(), test["label"].to_numpy(), dampings=list(dampings))[:, 0]
    return Sweep(dampings=np.asarray(dampings, dtype=float), estimates=estimates,
                 seconds=time.perf_counter() - started)


def fidelity(result: Sweep, analysis: Analysis, test_row: int) -> pd.DataFrame:
    """How well the index's estimates agree with the exact scores at the analysis's computed dampings, for one test
    review: ``damping``, ``pearson`` over all training reviews. The eigen index keeps the entries of largest
    curvature, so it is least faithful at small dampings, where the entries it drops weigh most."""
    return pd.DataFrame([{"damping": float(damping), "pearson": float(stats.pearsonr(
        result.at(damping), analysis.scores.total(k)[int(test_row)]).statistic)}
        for k, damping in enumerate(analysis.dampings)])


def exact_agreement(analysis: Analysis, test_row: int, reference: float, top: int = TOP) -> pd.DataFrame:
    """:func:`agreement` from the analysis's own exact scores, at its computed dampings (all analysed layers)."""
    scores = analysis.scores
    matrix = np.stack([scores.total(k)[int(test_row)] for k in range(len(analysis.dampings))])
    return agreement(matrix, matrix[analysis.damping_index(reference)], analysis.dampings, top)


def pair_curve(store: ModelStore, spec: AnalysisSpec, analysis: Analysis, test_row: int, train_row: int,
               dampings: Sequence[float]) -> dict[str, np.ndarray]:
    """The engine's exact influence of training review ``train_row`` on test review ``test_row`` at each damping.

    One pass of the two reviews scores every damping. Returns ``{"total": [K], <layer>: [K], ...}`` (raw influence,
    positive = helpful), the layers in the analysis's order.
    """
    test, train = analysis.test.iloc[[int(test_row)]], analysis.train.iloc[[int(train_row)]]
    table = store.engine(spec).score(test["text"].tolist(), test["label"].to_numpy(), train["text"].tolist(),
                                     train["label"].to_numpy(), dampings=list(dampings), self_influence=False)
    curves = {"total": np.array([table.total(k)[0, 0] for k in range(len(dampings))])}
    for i, name in enumerate(table.layers):
        curves[name] = table.pairwise[:, i, 0, 0].copy()
    return curves
