"""How much can I trust this? A small linear datamodeling score (LDS) of the current analysis, as the app runs it.

Streamlit-free: the Trust page starts :func:`run_trust` as a background job, shows :func:`estimate_seconds` first and
reads :func:`cached_result` afterwards; the Regularization page asks :func:`lds_best_damping`. Results are cached on
disk by analysis key (``cache_dir("trust", key)``); the retrains behind them by (recipe, subset, seed) in
``influence_core.lds``, so a second run, or a run with more subsets, reuses them.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from explorer.analysis import Analysis
from explorer.spec import AnalysisSpec, Progress
from explorer.store import INDEX_CONFIG, ModelStore
from influence_core.cache import cache_dir
from influence_core.lds import LDSConfig, LDSResult, run_lds

#: The app's default: few subsets, the cheap head recipe (seconds per retrain).
DEFAULT_SUBSETS = 12
#: Rough speeds used before this machine has run an LDS (then the last run's timings are used).
GUESS_FEATURE_SECONDS = 0.01  # per review, one encoder forward
GUESS_RETRAIN_SECONDS = 0.5  # per head retrain


def trust_config(spec: AnalysisSpec, subsets: int = DEFAULT_SUBSETS) -> LDSConfig:
    """The LDS the app runs: ekfac, kfac, identity and the app's gradient index (projected at the app's size) with
    the analysis's Fisher and damping grid, head recipe."""
    return LDSConfig(subsets=subsets, fishers=(spec.config.fisher,), dampings=tuple(spec.dampings),
                     relative_damping=spec.damping_mode == "relative", bootstrap=500,
                     index_projections=(INDEX_CONFIG.projection,))


def result_path(spec: AnalysisSpec) -> Path:
    return cache_dir("trust", spec.key()) / "lds.json"


def cached_result(spec: AnalysisSpec) -> LDSResult | None:
    """The last LDS run on this analysis, or None."""
    try:
        return LDSResult.from_dict(json.loads(result_path(spec).read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError):
        return None


def run_trust(spec: AnalysisSpec, analysis: Analysis, store: ModelStore, progress: Progress,
              subsets: int = DEFAULT_SUBSETS) -> LDSResult:
    """Run the LDS of ``trust_config(spec, subsets)`` on the analysis's reviews and save it (a background job body).

    The head of the model is retrained on frozen features (the ``head`` recipe), so the numbers describe
    influence on the head layers of a head-trained twin of the model, not the analysis's own layers."""
    loaded = store.model(spec.model)
    check = getattr(progress, "check", None)

    def cancelled() -> bool:
        if check is not None:
            check()  # raises JobCancelled: the job ends as cancelled, the finished retrains stay cached
        return False

    result = run_lds(loaded.model, loaded.tokenizer, analysis.train["text"].tolist(),
                     analysis.train["label"].to_numpy(), analysis.test["text"].tolist(),
                     analysis.test["label"].to_numpy(), config=trust_config(spec, subsets),
                     engine_config=spec.config, progress=progress, cancel=cancelled)
    path = result_path(spec)
    path.write_text(json.dumps(result.to_dict(), default=_jsonable), encoding="utf-8")
    _record_speed(result)
    return result


def _jsonable(value):
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        return value.item()
    raise TypeError(type(value).__name__)


def _speed_file() -> Path:
    return cache_dir("trust") / "speed.json"


def _record_speed(result: LDSResult) -> None:
    speeds = {}
    n = result.n_train + result.n_test
    if result.seconds.get("features", 0) > 0.05:
        speeds["feature"] = result.seconds["features"] / n
    if math.isfinite(result.seconds.get("per_retrain", float("nan"))):
        speeds["retrain_per_example"] = result.seconds["per_retrain"] / max(result.n_train, 1)
    if result.seconds.get("scoring"):
        speeds["scoring_per_example"] = result.seconds["scoring"] / n
    try:
        old = json.loads(_speed_file().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        old = {}
    _speed_file().write_text(json.dumps({**old, **speeds}), encoding="utf-8")


def estimate_seconds(n_train: int, n_test: int, subsets: int = DEFAULT_SUBSETS) -> float:
    """Rough wall time of :func:`run_trust`: encoder features once, ``subsets`` head retrains, then the scoring
    passes (about 8 encoder passes: 2 fits and 3 scorings, each over training and test reviews). Uses the last
    run's timings on this machine when there is one."""
    try:
        speeds = json.loads(_speed_file().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        speeds = {}
    n = n_train + n_test
    feature = float(speeds.get("feature", GUESS_FEATURE_SECONDS))
    retrain = float(speeds.get("retrain_per_example", GUESS_RETRAIN_SECONDS / 500)) * n_train
    scoring = float(speeds.get("scoring_per_example", 8 * feature * 3)) * n
    return feature * n + subsets * retrain + scoring


def lds_best_damping(spec: AnalysisSpec) -> float | None:
    """The damping with the highest LDS for the analysis's own method and Fisher (raw influence), or None without
    a result (or for ``identity``, which has no damping)."""
    result = cached_result(spec)
    if result is None or spec.config.method == "identity":
        return None
    rows = result.table
    rows = rows[(rows["method"] == spec.config.method) & (rows["fisher"] == spec.config.fisher) & (~rows["relative"])]
    rows = rows[np.isfinite(rows["lds"].astype(float))]
    if rows.empty:
        return None
    return float(rows.loc[rows["lds"].idxmax(), "damping"])


def summary_sentence(result: LDSResult) -> str:
    """One plain sentence on what the numbers mean."""
    best = result.best()
    random_lds = float(result.table.loc[result.table["method"] == "random", "lds"].iloc[0])
    ceiling = "" if result.ceiling is None else f" Retraining agrees with itself at {result.ceiling.lds:.2f}."
    return (f"Across {result.subsets} retrainings on random halves of the training reviews, the best scores "
            f"({best['variant']}) rank the test losses with a Spearman correlation of {best['lds']:.2f} on average "
            f"(1 = perfectly, random scores give {random_lds:.2f}).{ceiling}")


def predicted_loss_change(score, n_train: int):
    """The first-order change in a test review's loss if the training review is **removed** and the model retrained.

    The engine's curvature is that of the *mean* training loss (``G`` and the EK-FAC eigenvalues are per-example
    means, see ``influence_core.engine.factors``), so ``I(q, m) = g_q^T H^-1 g_m`` with ``H`` the Hessian of the
    mean. Removing ``m`` is up-weighting it by ``-1/n_train``, which moves the parameters by ``H^-1 g_m / n_train``
    and the test loss by ``+I(q, m) / n_train``: removing a helpful review (positive score) raises the loss.
    Up-weighting it by one more copy changes the loss by the opposite, ``-I(q, m) / n_train``. Checked against
    real leave-one-out retrains of the head recipe in ``tests/explorer/test_trust.py``.

    Args:
        score: Influence(s) ``I(q, m)`` (positive = helpful), any shape.
        n_train: Number of training reviews the model was trained on.

    Returns:
        The predicted change in loss (same shape as ``score``); positive = the loss would rise.
    """
    return np.asarray(score, dtype=float) / float(n_train) if np.ndim(score) else float(score) / float(n_train)


__all__ = ["DEFAULT_SUBSETS", "cached_result", "estimate_seconds", "lds_best_damping", "predicted_loss_change",
           "result_path", "run_trust", "summary_sentence", "trust_config"]
