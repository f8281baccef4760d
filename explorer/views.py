"""Views of a computed analysis: extreme pairs, layer shares, damping suggestion, label flips, rankings."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from explorer.analysis import Analysis, Estimate, Predictions
from explorer.spec import AnalysisSpec, Progress
from explorer.store import ModelStore
from influence_core.engine.scores import ScoreTable
from influence_core.errors import DataError, InfluenceError

log = logging.getLogger(__name__)


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


def estimate_heatmap(estimate: Estimate, predictions: Predictions, max_columns: int = 200):
    """The heatmap figure of an index estimate (raw influence), its ``max_columns`` columns of largest total
    |estimate|, and the number of columns kept: what the heatmap page draws while the exact scores are computed."""
    from explorer.figures import hover_text, influence_heatmap

    matrix = estimate.matrix
    keep = np.sort(np.argsort(-np.abs(matrix).sum(axis=0))[:max_columns])
    train_hover = [hover_text(estimate.train["text"].iloc[j], predictions.name(estimate.train["label"].iloc[j]))
                   for j in keep]
    test_hover = [hover_text(t, predictions.name(y), predictions.name(p)) for t, y, p in
                  zip(predictions.test["text"], predictions.test["label"], predictions.test_pred, strict=True)]
    fig = influence_heatmap(matrix[:, keep], row_hover=test_hover, col_hover=train_hover,
                            row_names=[f"test {i}" for i in range(matrix.shape[0])],
                            col_names=[f"train {j}" for j in keep], colorbar_title="influence (index estimate)")
    return fig, len(keep)


def layer_shares(scores: ScoreTable, k: int, layers: Sequence[str], test_index: int | None = None) -> dict[str, float]:
    """Each layer's share of the total absolute influence (over all pairs, or one test review's row)."""
    blocks = {name: scores.pairwise[k, scores.layers.index(name)] for name in layers}
    return _shares(blocks if test_index is None else {name: block[test_index] for name, block in blocks.items()})


def _shares(blocks: Mapping[str, np.ndarray]) -> dict[str, float]:
    parts = {name: float(np.abs(block).sum()) for name, block in blocks.items()}
    total = sum(parts.values()) or 1.0
    return {name: value / total for name, value in parts.items()}


@dataclass
class LayerEstimate:
    """What the Layers page draws from an index estimate while the exact scores are computed.

    Attributes:
        columns: The training reviews shown, most helpful (estimated) first, [n_bars].
        by_layer: ``{layer: [n_bars]}`` estimated raw influence of those reviews on the test review.
        hover: Hover text of each shown training review.
        shares: ``{layer: share}`` of the test review's estimated total |influence| (all training reviews).
    """

    columns: np.ndarray
    by_layer: dict[str, np.ndarray]
    hover: list[str]
    shares: dict[str, float]


def estimate_layers(estimate: Estimate, test_index: int, n_bars: int) -> LayerEstimate:
    """The Layers page's bars and shares for test review ``test_index`` from ``estimate.by_layer`` (which must be
    saved): the ``n_bars`` training reviews of largest |estimated total|, most helpful on the left."""
    from explorer.figures import hover_text

    by_layer = estimate.by_layer
    total = by_layer[:, test_index].sum(axis=0)
    top = np.argsort(-np.abs(total))[:n_bars]
    top = top[np.argsort(-total[top])]
    blocks = dict(zip(estimate.layers, by_layer, strict=True))
    return LayerEstimate(
        columns=top, by_layer={name: block[test_index, top] for name, block in blocks.items()},
        hover=[hover_text(estimate.train["text"].iloc[j], estimate.train["label_name"].iloc[j]) for j in top],
        shares=_shares({name: block[test_index] for name, block in blocks.items()}))


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


def top_helpers(matrix: np.ndarray, k: int) -> np.ndarray:
    """Positions of each test review's ``k`` most helpful training reviews, ``[n_test, min(k, n_train)]``.

    Most helpful first; ties keep training order. Only the ranking counts, so a column may appear even when its
    influence is not positive (a test review that nothing helps still has a "top k").
    """
    values = np.asarray(matrix, dtype=float)
    k = max(0, min(int(k), values.shape[1]))
    return np.argsort(-values, axis=1, kind="stable")[:, :k]


def top_k_overlap(before: np.ndarray, after: np.ndarray, k: int = 10) -> np.ndarray:
    """Share of each test review's ``k`` most helpful training reviews that stay among its top ``k``, ``[n_test]``.

    ``before``, ``after``: influence ``[n_test, n_train]`` (positive = helpful) with the original and the changed
    labels. 1 = the test review is explained by the same training reviews as before; 0 = by entirely different
    ones. Unlike the share of pairs that change sign (for a binary model exactly the flipped columns), this
    depends on where the flipped reviews ranked and on the influence of the others.
    """
    first, second = top_helpers(before, k), top_helpers(after, k)
    if first.shape[1] == 0:
        return np.ones(first.shape[0])
    kept = [len(np.intersect1d(a, b)) for a, b in zip(first, second, strict=True)]
    return np.asarray(kept, dtype=float) / first.shape[1]


def helper_counts(matrix: np.ndarray, columns: Sequence[int], k: int = 10) -> np.ndarray:
    """For each training position in ``columns``, of how many test reviews it is a top-``k`` helper, ``[len(columns)]``."""
    top = top_helpers(matrix, k)
    return np.array([int((top == int(j)).any(axis=1).sum()) for j in columns], dtype=int)


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


def rankings(analysis: Analysis, k: int, layers: Sequence[str] | None = None, *,
             out_of_fold: np.ndarray | None = None, dynamics: pd.DataFrame | None = None) -> dict[str, np.ndarray]:
    """Every available suspicion score per training review ``{name: [n_train]}``, higher = more suspicious.

    The rankings of ``influence_core.mislabel`` (self-influence, trusted influence, loss, margin, combined) come
    first when that module is present; the app's own (:data:`RANKINGS`) fill in what it lacks. Each becomes a
    column of the finder's table, so adding a ranking there adds it to the page.

    ``out_of_fold`` (probabilities [n_train, C] from :func:`cross_fit_analysis`) adds ``oof_loss``, ``oof_margin``
    and ``cleanlab`` (its estimate of the number of wrong labels goes to ``estimated_wrong_labels``); ``dynamics``
    (from :func:`training_dynamics`) adds ``low_aum``, ``low_confidence``, ``variability`` and ``forgetting``;
    ``combined`` then averages the parts :func:`influence_core.mislabel.combined_parts` names.

    Each ranking is computed on its own: one that fails is left out and named, with the reason, in the result's
    ``failed`` (``{name: reason}``, for the page to show) and the log, while the others still show. Raises
    DataError when none can be computed.
    """
    chosen = list(layers) if layers else None
    n_train = analysis.scores.n_train
    out = Rankings()
    own = [(name, lambda fn=fn: fn(analysis, k, chosen)) for name, (_, fn) in RANKINGS.items()]
    handled: set[str] = set()
    library = _library_rankings(analysis, k, chosen, out_of_fold, dynamics, out)
    for name, fn in [*library.items(), *own]:
        if name in handled:
            continue
        handled.add(name)
        if fn is None:  # the library knows it, but these scores lack its signal
            continue
        try:
            values = np.asarray(fn(), dtype=float).reshape(-1)
            if values.shape != (n_train,):
                raise DataError(f"it gave {values.size} values for {n_train} training reviews")
        except Exception as err:  # noqa: BLE001 - reported by name; the other rankings still show
            if not isinstance(err, InfluenceError):
                log.exception("ranking %s failed", name)
            out.failed[name] = str(err) if isinstance(err, InfluenceError) else f"{type(err).__name__}: {err}"
            continue
        out[name] = values
    if not out:
        reasons = "; ".join(f"{name}: {reason}" for name, reason in out.failed.items())
        raise DataError(f"no mislabel ranking could be computed ({reasons})")
    return out


class Rankings(dict):
    """``{name: [n_train]}`` suspicion scores, and ``failed``: ``{name: reason}`` for those that could not be computed."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.failed: dict[str, str] = {}
        #: cleanlab's estimate of how many labels are wrong (with out-of-fold probabilities), else None
        self.estimated_wrong_labels: int | None = None


class _Absent(Exception):
    """A ranking whose signal the scores do not have (e.g. no self-influence was computed): left out, not a failure."""


def _library_rankings(analysis: Analysis, k: int, layers: list[str] | None, out_of_fold: np.ndarray | None = None,
                      dynamics: pd.DataFrame | None = None,
                      out: Rankings | None = None) -> dict[str, Callable[[], np.ndarray] | None]:
    """One function per ranking of ``influence_core.mislabel`` (the numbers of its ``rankings``), in its order; empty
    when that module is absent. None for a ranking whose signal the scores lack (left out, as there)."""
    try:
        from influence_core import mislabel
    except ImportError:
        return {}
    cache: dict[str, object] = {}

    def signals():
        if "signals" not in cache:
            cache["signals"] = mislabel.TrainingSignals.from_table(analysis.scores)
        return cache["signals"]

    def present(values):
        if values is None:
            raise _Absent
        return values

    parts = {
        "self_influence": lambda: present(signals().self_total(k, layers)),
        "trusted_influence": lambda: -present(signals().trusted_total(k, layers)),
        "relative_harm": lambda: -present(signals().relative_total(k, layers)),
        "loss": lambda: mislabel.label_losses(signals().train_probs, signals().train_labels),
        "margin": lambda: mislabel.negative_margins(signals().train_probs, signals().train_labels),
    }
    if out_of_fold is not None and hasattr(mislabel, "held_out_columns"):
        def held_out():
            if "held_out" not in cache:
                labels = signals().train_labels
                columns = mislabel.held_out_columns(np.asarray(out_of_fold, dtype=float), labels)
                quality, estimated = mislabel.confident_learning(labels, out_of_fold)
                columns["cleanlab"] = 1.0 - quality
                if out is not None:
                    out.estimated_wrong_labels = estimated
                cache["held_out"] = columns
            return cache["held_out"]

        parts.update({name: (lambda name=name: held_out()[name]) for name in ("oof_loss", "oof_margin", "cleanlab")})
    if dynamics is not None and hasattr(mislabel, "dynamics_columns"):
        def from_dynamics():
            if "dynamics" not in cache:
                cache["dynamics"] = mislabel.dynamics_columns(dynamics, analysis.scores.n_train)
            return cache["dynamics"]

        parts.update({name: (lambda name=name: from_dynamics()[name])
                      for name in ("low_aum", "low_confidence", "variability", "forgetting")})

    def part(name):
        def compute():
            if name not in cache:
                cache[name] = parts[name]()
            return cache[name]

        return compute

    def combined():
        used = {}
        names = (mislabel.combined_parts([n for n in parts if n in mislabel.RANKINGS])
                 if hasattr(mislabel, "combined_parts") else mislabel.COMBINED_PARTS)
        for name in names:
            try:
                used[name] = part(name)()
            except _Absent:  # skipped, as mislabel_scores does
                continue
        return mislabel.combine(used)

    chosen = {name: part(name) for name in mislabel.RANKINGS if name in parts}
    if "combined" in mislabel.RANKINGS:
        chosen["combined"] = combined
    available = {}
    for name, fn in chosen.items():
        try:
            fn()
        except _Absent:
            fn = None
        except Exception:  # noqa: BLE001 - computed again and reported by rankings()
            pass
        available[name] = fn
    return available


def training_dynamics(spec: AnalysisSpec, analysis: Analysis, cross_fit=None) -> pd.DataFrame | None:
    """Training-dynamics statistics of each analysed training review (``influence_core.mislabel.dynamics_signals``),
    pooled over the model under study (when the project fine-tuned it: its ``dynamics.npz``) and the folds of
    ``cross_fit`` (a :class:`~influence_core.training.crossfit.CrossFit` of ``analysis.train``); None when neither
    recorded any for these reviews. Reviews are matched to the model's training examples by text and label."""
    from influence_core.mislabel import dynamics_signals
    from influence_core.training.finetune import load_dynamics

    runs = []
    try:
        from explorer.spec import study_model

        recorded = load_dynamics(study_model(spec))
    except (InfluenceError, OSError):
        recorded = None
    train = analysis.train
    if recorded is not None:
        rows = recorded.rows_for(train["text"].tolist(), train["label"].to_numpy())
        position = np.full(recorded.n, -1, dtype=np.int64)  # dynamics example -> analysed review
        position[rows[rows >= 0]] = np.flatnonzero(rows >= 0)
        if (position >= 0).any():
            runs.append((position, recorded))
    if cross_fit is not None:
        runs += cross_fit.fold_dynamics()
    return dynamics_signals(runs, len(train)) if runs else None


def cross_fit_analysis(spec: AnalysisSpec, analysis: Analysis, k: int, progress: Progress):
    """Cross-fit the model's recipe on the analysed training reviews (``k`` folds; see
    :func:`influence_core.training.crossfit.cross_fit`), as a background job's function. Returns the CrossFit."""
    from explorer.jobs import cancel_check
    from explorer.spec import study_model
    from influence_core.training.crossfit import cross_fit

    train = analysis.train
    return cross_fit(study_model(spec), train["text"].tolist(), train["label"].to_numpy(), k=int(k),
                     label_names=analysis.label_names, progress=progress, cancel=cancel_check(progress))


#: The Mislabel finder's default "Rank by": the combined ranking when ``influence_core.mislabel`` provides it.
DEFAULT_RANKING = "combined"


def default_ranking(names: Sequence[str]) -> str:
    """The ranking the Mislabel finder starts with (and the Tour shows): ``combined`` if present, else the first."""
    names = list(names)
    if not names:
        raise DataError("no mislabel ranking is available")
    return DEFAULT_RANKING if DEFAULT_RANKING in names else names[0]


def planted_errors(train: pd.DataFrame) -> np.ndarray | None:
    """``[n_train]`` bool from a ``planted_error`` column (the demo's answer key), or None without one."""
    if "planted_error" not in train:
        return None
    return train["planted_error"].astype(str).str.lower().isin(["1", "true"]).to_numpy()


@dataclass(frozen=True)
class TourStory:
    """The reviews the Tour talks about, chosen without looking at any answer key.

    Attributes:
        ranking: The Mislabel finder's default ranking (see :func:`default_ranking`).
        suspect: Training position that ranking puts first.
        suspect_planted: Whether the suspect is a planted error; None when the data has no ``planted_error``.
        victim: Test position the suspect harms most (its most negative influence).
        helpful: The two training positions most helpful for the victim, most helpful first.
        harmful: The two most harmful for the victim, most harmful first.
    """

    ranking: str
    suspect: int
    suspect_planted: bool | None
    victim: int
    helpful: tuple[int, ...]
    harmful: tuple[int, ...]

    @property
    def most_helpful(self) -> int:
        return self.helpful[0]

    @property
    def most_harmful(self) -> int:
        return self.harmful[0]

    @property
    def bars(self) -> list[int]:
        """Training positions for the "why" chart: most helpful, second, ..., second most harmful, most harmful."""
        return [*self.helpful, *reversed(self.harmful)]


def tour_story(analysis: Analysis, k: int, layers: Sequence[str] | None = None) -> TourStory:
    """The Tour's suspect, victim and cards for damping index ``k`` over ``layers`` (all when None).

    The suspect is what the Mislabel finder ranks first by its default ranking; whether it is a planted error is
    reported afterwards, never used to choose it.
    """
    scores_by_name = rankings(analysis, k, layers)
    name = default_ranking(list(scores_by_name))
    suspicion = np.nan_to_num(np.asarray(scores_by_name[name], dtype=float), nan=-np.inf)
    suspect = int(np.argsort(-suspicion, kind="stable")[0])
    matrix = analysis.influence(k, layers)
    victim = int(np.argmin(matrix[:, suspect]))
    order = np.argsort(-matrix[victim], kind="stable")
    planted = planted_errors(analysis.train)
    return TourStory(
        ranking=name, suspect=suspect, suspect_planted=None if planted is None else bool(planted[suspect]),
        victim=victim, helpful=tuple(int(j) for j in order[:2]), harmful=tuple(int(j) for j in order[::-1][:2]),
    )


# ------------------------------------------------------------------------------------------- counterfactual check
def counterfactual_sentence(check) -> str:
    """The counterfactual check's verdict in one Markdown sentence, with the spread it was judged against.

    ``check``: :class:`influence_core.training.retrain.CounterfactualResult`.
    """
    k, h, r = check.k, check.harmful_changes.mean(), check.random_changes.mean()
    measured = (f"without the {k} most harmful the loss changed by **{h:+.3f}** on average, without {k} random ones "
                f"by **{r:+.3f}**")
    runs = f"{len(check.seeds)} seed{'s' if len(check.seeds) > 1 else ''} x {len(check.random)} random draw" \
           f"{'s' if len(check.random) > 1 else ''}"
    noise = "" if check.seed_noise is None else f"; the full model's loss varies by {check.seed_noise:.3f} between seeds"
    if check.verdict == "too few retrains":
        return (f"Over {runs}, {measured}. **No verdict:** with a single seed or a single random draw the noise of "
                f"retraining cannot be measured; use at least 2 of each{noise}.")
    spread = f"difference {check.difference:+.3f} ± {check.spread:.3f} (standard error), p = {check.p_value:.2g}"
    verdicts = {
        "lower": "Removing the most harmful reviews **lowered the loss more than chance explains**",
        "higher": "Removing the most harmful reviews **raised the loss more than removing random ones** (influence "
                  "pointed the wrong way here)",
        "within noise": "Removing the most harmful reviews **did no better than removing random ones, within the "
                        "noise of retraining**",
    }
    return f"{verdicts[check.verdict]}: over {runs}, {measured} ({spread}{noise})."
