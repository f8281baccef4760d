"""Only JobCancelled means cancelled; a ranking that fails is named with its reason while the others still show."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from explorer import views
from explorer.analysis import Analysis, compute_analysis
from explorer.jobs import JobCancelled, cancel_check
from explorer.spec import AnalysisSpec, damping_grid
from influence_core import mislabel
from influence_core.engine.config import EngineConfig
from influence_core.engine.scores import ScoreTable
from influence_core.errors import DataError
from influence_core.sources.data import DataSource
from influence_core.sources.models import ModelSource
from influence_core.sources.slices import SliceSpec


def _analysis(self_influence: bool = True) -> Analysis:
    rng = np.random.default_rng(0)
    k, layers, n_test, n_train = 2, ["a", "b"], 4, 9
    probs = rng.dirichlet([1, 1], size=n_train)
    table = ScoreTable(
        dampings=np.array([1e-3, 1e-2]), layers=layers, pairwise=rng.normal(size=(k, 2, n_test, n_train)),
        self_influence=rng.random((k, 2, n_train)) if self_influence else None,
        test_self_influence=rng.random((k, 2, n_test)), test_probs=rng.dirichlet([1, 1], size=n_test),
        train_probs=probs, test_labels=rng.integers(0, 2, n_test), train_labels=rng.integers(0, 2, n_train),
    )
    train = pd.DataFrame({"row_id": range(n_train), "text": ["t"] * n_train, "label": table.train_labels})
    test = pd.DataFrame({"row_id": range(n_test), "text": ["q"] * n_test, "label": table.test_labels})
    return Analysis(spec=None, scores=table, train=train, test=test, label_names=["negative", "positive"])


@pytest.mark.parametrize("self_influence", [True, False])
def test_rankings_are_the_library_rankings(self_influence):
    analysis = _analysis(self_influence)
    for layers in (None, ["b"]):
        got = views.rankings(analysis, 1, layers)
        expected = mislabel.rankings(analysis.scores, k=1, layers=layers)
        assert got.failed == {}
        assert list(got)[: len(expected)] == list(expected)
        for name, values in expected.items():
            np.testing.assert_array_equal(got[name], values)
        assert ("self_influence" in got) == self_influence  # absent signal: left out, not a failure


def test_a_failing_ranking_is_reported_by_name_and_the_others_still_show(monkeypatch, caplog):
    def broken(probs, labels):
        raise RuntimeError("loss exploded")

    monkeypatch.setattr(mislabel, "label_losses", broken)
    got = views.rankings(_analysis(), 0)
    assert set(got.failed) == {"loss", "combined"}  # combined averages the loss
    assert "RuntimeError: loss exploded" in got.failed["loss"]
    assert {"self_influence", "trusted_influence", "relative_harm", "margin"} <= set(got)
    assert "loss" not in got
    assert "ranking loss failed" in caplog.text


def test_a_ranking_with_the_wrong_shape_is_reported(monkeypatch):
    monkeypatch.setattr(mislabel, "negative_margins", lambda probs, labels: np.zeros(3))
    got = views.rankings(_analysis(), 0)
    assert "margin" in got.failed and "3 values for 9 training reviews" in got.failed["margin"]
    assert "loss" in got and "combined" in got


def test_no_ranking_at_all_is_an_error(monkeypatch):
    def broken(*args, **kwargs):
        raise ValueError("no signals")

    monkeypatch.setattr(mislabel.TrainingSignals, "from_table", broken)
    monkeypatch.setitem(views.RANKINGS, "self_influence", ("", broken))
    monkeypatch.setitem(views.RANKINGS, "loss", ("", broken))
    with pytest.raises(DataError, match="no mislabel ranking could be computed.*no signals"):
        views.rankings(_analysis(), 0)


# ----------------------------------------------------------------------------------------- cancel checks
class _Check:
    def __init__(self, error: BaseException | None):
        self.error = error

    def check(self):
        if self.error is not None:
            raise self.error


class _Stop(Exception):
    pass


class _Store:
    """Calls the cancel check compute_analysis hands to the model loader, then stops the analysis."""

    def __init__(self):
        self.seen = []

    def model(self, source, *, progress=None, cancel=None):
        self.seen.append(cancel())
        raise _Stop


def _spec():
    return AnalysisSpec(
        model=ModelSource("local", "/nonexistent/model"), train_data=DataSource("demo", split="train"),
        test_data=DataSource("demo", split="test"), train_slice=SliceSpec(stop=4), test_slice=SliceSpec(stop=2),
        config=EngineConfig(), dampings=damping_grid(1e-5),
    )


@pytest.mark.parametrize(("error", "cancelled"), [(None, False), (JobCancelled("stop"), True)])
def test_analysis_cancel_check_is_true_only_for_a_cancelled_job(error, cancelled):
    store = _Store()
    with pytest.raises(_Stop):
        compute_analysis(_spec(), store, _Check(error))
    assert store.seen == [cancelled]


def test_analysis_cancel_check_lets_other_failures_through():
    store = _Store()
    with pytest.raises(RuntimeError, match="progress bar broke"):
        compute_analysis(_spec(), store, _Check(RuntimeError("progress bar broke")))
    assert store.seen == []


def test_retrain_cancel_check_is_true_only_for_a_cancelled_job():
    assert cancel_check(_Check(None))() is False
    assert cancel_check(_Check(JobCancelled("stop")))() is True
    with pytest.raises(RuntimeError):
        cancel_check(_Check(RuntimeError("broken")))()
