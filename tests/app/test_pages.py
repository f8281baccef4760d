"""Every page renders on a tiny model without exceptions; the sidebar, URL state, uploads and marks work."""

from __future__ import annotations

import numpy as np
import pytest

from explorer import figures, views
from tests.app.conftest import new_app, no_exceptions

PAGES = [
    "pages/overview.py",
    "pages/heatmap.py",
    "pages/explain.py",
    "pages/layers.py",
    "pages/label_flip.py",
    "pages/regularization.py",
    "pages/mislabel.py",
    "pages/tour.py",
]


def test_empty_state_shows_cost_and_button(app_env):
    at = new_app({"train_n": "23"})  # a slice no other test computes
    at.run()
    no_exceptions(at)
    assert any("Nothing computed yet" in i.value for i in at.info)
    assert any(b.label == "Fit and score" for b in at.button)
    assert any(m.label == "Estimated time" for m in at.metric)


def _metric(at, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


def _markdown(at) -> str:
    return "\n".join(m.value for m in at.markdown)


def _overview(at, out, analysis):
    accuracy = float(np.mean(analysis.test_pred == analysis.test["label"].to_numpy()))
    assert _metric(at, "Accuracy (test)") == f"{accuracy:.1%}"
    assert _metric(at, "Training reviews") == str(analysis.scores.n_train)


def _heatmap(at, out, analysis):
    pairs = views.top_pairs(analysis.influence(out.k, out.layers), 10)
    shown = at.dataframe(key="pairs").value
    # shown as the predicted change in the test loss if the training review were removed: influence / n_train
    n_train = analysis.scores.n_train
    assert shown["Δ test loss if removed"].iloc[0] == pytest.approx(pairs["influence"].iloc[0] / n_train)
    assert (int(shown["test"].iloc[0]), int(shown["train"].iloc[0])) == (pairs["test"].iloc[0], pairs["train"].iloc[0])


def _explain(at, out, analysis):
    row = analysis.influence(out.k, out.layers)[0] / analysis.scores.n_train  # the first test review by default
    best = int(np.argmax(row))
    label = int(analysis.test["label"].iloc[0])
    p = analysis.scores.test_probs[0, label]
    after = min(1.0, p * np.exp(-row[best]))  # the label's probability if the loss changed by row[best]
    assert (f"training review #{best}** · removing it: loss **{row[best]:+.3g}**, "
            f"P({analysis.name(label)}) {p:.0%} → **{after:.0%}**") in _markdown(at)


def _layers(at, out, analysis):
    shares = views.layer_shares(analysis.scores, out.k, out.layers, 0)
    (table,) = [d.value for d in at.dataframe]  # the page's one table
    assert table["layer"].tolist() == [figures.short_layer_name(name) for name in shares]
    np.testing.assert_allclose(table["share"], list(shares.values()))


def _label_flip(at, out, analysis):
    flip = views.flip_mask(analysis.scores.n_train, "random", fraction=0.1, seed=0)
    assert _metric(at, "Flipped training reviews") == str(int(flip.sum()))
    before = analysis.influence(out.k, out.layers)
    overlap = views.top_k_overlap(before, analysis.scores.flipped(flip).total(out.k, out.layers), 10)
    assert _metric(at, "Explanations that change") == f"{int((overlap < 1).sum())} of {len(overlap)}"
    assert _metric(at, "Top-10 helpers kept") == f"{overlap.mean():.0%}"


def _regularization(at, out, analysis):
    suggestion = views.suggest_damping(analysis.scores.stability())
    assert f"{suggestion.value:g}**" in _markdown(at)


def _mislabel(at, out, analysis):
    scores = views.rankings(analysis, out.k, out.layers)
    assert at.selectbox(key="mf_rank").value == "combined"
    first = int(np.argmax(scores["combined"]))
    assert f"**Rank 1 by combined** · training review #{first} " in _markdown(at)


def _tour(at, out, analysis):
    story = views.tour_story(analysis, out.k, out.layers)
    assert any(f"Test review #{story.victim}**" in m.value for m in at.markdown)


CHECKS = {
    "pages/overview.py": _overview, "pages/heatmap.py": _heatmap, "pages/explain.py": _explain,
    "pages/layers.py": _layers, "pages/label_flip.py": _label_flip, "pages/regularization.py": _regularization,
    "pages/mislabel.py": _mislabel, "pages/tour.py": _tour,
}


@pytest.mark.parametrize("page", PAGES)
def test_every_page_renders_numbers_of_the_core(computed, page):
    at = computed
    at.switch_page(page)
    at.run()
    no_exceptions(at)
    assert not at.error, [e.value for e in at.error]
    assert at.title, page
    out = at.session_state["_frame"]
    CHECKS[page](at, out, out.analysis)


def test_the_chosen_test_review_survives_a_page_switch(computed):
    at = computed
    at.switch_page("pages/explain.py").run()
    at.selectbox(key="test").select(3).run()
    # a page without the "test" widget: Streamlit drops its widget state, and a page switch in the browser clears
    # the URL (AppTest keeps it, so drop it here)
    at.switch_page("pages/heatmap.py")
    at.query_params.pop("test", None)
    at.run()
    at.switch_page("pages/layers.py").run()
    no_exceptions(at)
    assert at.selectbox(key="test").value == 3


def test_tour_step_widget_has_no_default_and_session_state_conflict(computed, monkeypatch):
    from streamlit.elements.lib import policies

    warned = []
    monkeypatch.setattr(policies, "_shown_default_value_warning", False)  # Streamlit warns once per process
    monkeypatch.setattr(policies._LOGGER, "warning", lambda message, *args, **kwargs: warned.append(message % args))
    at = computed
    at.switch_page("pages/tour.py").run()
    at.button(key="tour_next").click().run()
    at.button(key="tour_next").click().run()
    no_exceptions(at)
    assert at.segmented_control(key="step").value.startswith("3")
    assert not [w for w in warned if "Session State API" in w], warned
