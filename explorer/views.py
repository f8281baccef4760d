"""Views of a computed analysis: extreme pairs, layer shares, damping suggestion, label flips, rankings."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from explorer.analysis import Analysis
from explorer.spec import AnalysisSpec, Progress
from explorer.store import ModelStore
from influence_core.engine.scores import ScoreTable
from influence_core.errors import DataError, InfluenceError


# ------------------------------------------------------------------------------------------- views
def top_pairs(matrix: np.ndarray, n: int = 10) -> pd.DataFrame:
    """The ``n`` most positive and ``n`` most negative cells of ``matrix [n_test, n_train]``.

    Returns columns ``test``, ``train`` (positions), ``influence``, ``kind`` (helpful/harmful), most extreme first.
    """
    values = np.asarray(matrix, dtype=float)
    flat = values.ravel()
    n = min(n, flat.size)
    order = np.argsort(flat)
    rows = []
    for kind, picks in (("helpful", order[::-1][:n]), ("harmful", order[:n])):
        for index in picks:
            value = flat[index]
            if (kind == "helpful" and value <= 0) or (kind == "harmful" and value >= 0):
                continue
            q, m = np.unravel_index(index, values.shape)
            rows.append({"test": int(q), "train": int(m), "influence": float(value), "kind": kind})
    frame = pd.DataFrame(rows, columns=["test", "train", "influence", "kind"])
    return frame.reindex(frame["influence"].abs().sort_values(ascending=False).index).reset_index(drop=True)


def layer_shares(scores: ScoreTable, k: int, layers: Sequence[str], test_index: int | None = None) -> dict[str, float]:
    """Each layer's share of the total absolute influence (over all pairs, or one test review's row)."""
    parts = {}
    for name in layers:
        block = scores.pairwise[k, scores.layers.index(name)]
        if test_index is not None:
            block = block[test_index]
        parts[name] = float(np.abs(block).sum())
    total = sum(parts.values()) or 1.0
    return {name: value / total for name, value in parts.items()}


@dataclass
class DampingSuggestion:
    """A damping value to use and why; ``settled`` is False when no computed value met the threshold."""

    value: float | None
    reason: str
    settled: bool


def suggest_damping(stability: pd.DataFrame, threshold: float = 0.99) -> DampingSuggestion:
    """The smallest damping whose ranking barely changes at the next larger value, and why.

    Uses the ``total`` rows of ``ScoreTable.stability()``: the first ``damping_from`` (ascending) whose Spearman
    correlation with its neighbour is at least ``threshold``. Smaller damping follows the curvature more
    closely; once the ranking stops moving, more damping only blurs it.
    """
    if stability.empty:
        return DampingSuggestion(None, "Score at least two damping values to compare them.", False)
    total = stability[stability["layer"] == "total"].sort_values("damping_from")
    for row in total.itertuples():
        if np.isfinite(row.spearman) and row.spearman >= threshold:
            return DampingSuggestion(float(row.damping_from), (
                f"{row.damping_from:g} is the smallest damping whose training-review ranking barely changes at the next "
                f"value {row.damping_to:g} (Spearman {row.spearman:.3f} ≥ {threshold}). Smaller values follow the "
                "curvature more closely but the ranking is not settled there yet."
            ), True)
    best = total.loc[total["spearman"].idxmax()] if total["spearman"].notna().any() else None
    if best is None:
        return DampingSuggestion(None, "The scores are constant or undefined at every damping value; check the layers.", False)
    return DampingSuggestion(float(best["damping_to"]), (
        f"No neighbouring pair reaches Spearman {threshold}; the most stable step is {best['damping_from']:g} → "
        f"{best['damping_to']:g} ({best['spearman']:.3f}). Consider scoring larger damping values."
    ), False)


def flip_mask(n: int, mode: str, *, fraction: float = 0.1, seed: int = 0, chosen: Sequence[int] = ()) -> np.ndarray:
    """Which training reviews to corrupt, ``[n]`` bool: ``all``, a random ``fraction``, or ``chosen`` positions."""
    mask = np.zeros(n, dtype=bool)
    if mode == "all":
        mask[:] = True
    elif mode == "random":
        count = int(round(np.clip(fraction, 0.0, 1.0) * n))
        mask[np.random.default_rng(seed).choice(n, size=count, replace=False)] = True
    elif mode == "chosen":
        picks = [int(i) for i in chosen if 0 <= int(i) < n]
        mask[picks] = True
    else:
        raise DataError(f"unknown corruption mode {mode!r}: use all, random or chosen")
    return mask


def flipped_labels(labels: np.ndarray, flip: np.ndarray, n_classes: int) -> np.ndarray:
    """Labels with ``flip`` rows changed: the other class for binary models, the next class otherwise."""
    labels = np.asarray(labels)
    return np.where(flip, (labels + 1) % max(n_classes, 2), labels)


def sign_changes(before: np.ndarray, after: np.ndarray) -> int:
    """How many pairs switch between helpful and harmful (zeros do not count)."""
    return int(np.sum(np.sign(before) * np.sign(after) < 0))


def recompute_flipped(spec: AnalysisSpec, store: ModelStore, analysis: Analysis, flip: np.ndarray, k: int,
                      layers: Sequence[str] | None = None, progress: Progress | None = None) -> np.ndarray:
    """Influence ``[n_test, n_train]`` at damping index ``k`` after flipping labels, by scoring again (any model).

    Summed over ``layers`` (all analysed layers when None): the same layers as the "before" it is compared with.
    """
    engine = store.engine(spec)
    labels = flipped_labels(analysis.train["label"].to_numpy(), flip, len(analysis.label_names))
    table = engine.score(
        analysis.test["text"].tolist(), analysis.test["label"].to_numpy(), analysis.train["text"].tolist(), labels,
        dampings=[analysis.dampings[k]], self_influence=False, progress=progress,
    )
    return table.total(0, list(layers) if layers else None)


# rankings for the mislabel finder: name -> (help text, function(analysis, k, layers) -> [n_train], higher = more suspicious)
Ranking = Callable[[Analysis, int, Sequence[str] | None], np.ndarray]
RANKINGS: dict[str, tuple[str, Ranking]] = {
    "self_influence": (
        "How much the review's own loss depends on its weight: mislabeled reviews must be memorised, so they score high.",
        lambda a, k, layers: a.scores.self_total(k, list(layers) if layers else None),
    ),
    "loss": (
        "The model's loss on the given label: a confident disagreement with the label is suspicious.",
        lambda a, k, layers: a.scores.train_losses(),
    ),
}


def ranking_help() -> dict[str, str]:
    """One line per ranking name, for the UI."""
    helps = {name: text for name, (text, _) in RANKINGS.items()}
    try:
        from influence_core import mislabel

        helps.update(getattr(mislabel, "DESCRIPTIONS", {}))
    except ImportError:
        pass
    return helps


def rankings(analysis: Analysis, k: int, layers: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """Every available suspicion score per training review ``{name: [n_train]}``, higher = more suspicious.

    The rankings of ``influence_core.mislabel`` (self-influence, trusted influence, loss, margin, combined) come
    first when that module is present; the app's own (:data:`RANKINGS`) fill in what it lacks. Each becomes a
    column of the finder's table, so adding a ranking there adds it to the page.
    """
    chosen = list(layers) if layers else None
    out: dict[str, np.ndarray] = {}
    try:
        from influence_core import mislabel

        for name, values in mislabel.rankings(analysis.scores, k=k, layers=chosen).items():
            values = np.asarray(values, dtype=float).reshape(-1)
            if values.shape == (analysis.scores.n_train,):
                out[str(name)] = values
    except (ImportError, AttributeError, InfluenceError, TypeError, ValueError, KeyError):
        pass
    for name, (_, fn) in RANKINGS.items():
        if name not in out:
            out[name] = np.asarray(fn(analysis, k, chosen), dtype=float)
    return out
