"""Regularization: a pair's exact curve on a fine damping grid, and any damping answered from the index."""

from __future__ import annotations

import numpy as np

from explorer import sweep
from tests.app.conftest import no_exceptions


def test_the_pair_curve_is_the_engines_and_passes_through_the_computed_values(computed):
    from explorer.ui import model_store

    frame = computed.session_state["_frame"]
    analysis, spec = frame.analysis, frame.spec
    grid = sweep.sweep_grid(analysis.dampings)
    assert len(grid) > len(analysis.dampings)
    curves = sweep.pair_curve(model_store(), spec, analysis, 1, 2, grid)
    at_computed = [grid.index(d) for d in analysis.dampings]
    expected = [analysis.scores.total(k)[1, 2] for k in range(len(analysis.dampings))]
    np.testing.assert_allclose(curves["total"][at_computed], expected, rtol=1e-5, atol=1e-12)
    np.testing.assert_allclose(np.sum([curves[name] for name in analysis.scores.layers], axis=0), curves["total"])


def test_the_index_sweep_matches_the_exact_scores_at_the_computed_values(computed):
    from explorer.ui import model_store

    frame = computed.session_state["_frame"]
    analysis, spec = frame.analysis, frame.spec
    grid = sweep.sweep_grid(analysis.dampings)
    result = sweep.index_sweep(model_store(), spec, analysis, 3, grid)
    assert result.estimates.shape == (len(grid), analysis.scores.n_train)
    for k, damping in enumerate(analysis.dampings):
        exact = analysis.scores.total(k)[3]
        estimate = result.estimates[grid.index(damping)]
        assert np.corrcoef(estimate, exact)[0, 1] > 0.99, damping  # the tiny model's index is exact
    table = result.agreement(frame.damping)
    reference = table[np.isclose(table["damping"], frame.damping)]
    np.testing.assert_allclose(reference[["pearson", "top_kept"]].to_numpy(), [[1.0, 1.0]])


def test_any_damping_on_the_page_is_answered_with_the_engines_numbers(computed):
    from explorer.ui import model_store

    at = computed
    at.switch_page("pages/regularization.py").run()
    no_exceptions(at)
    assert not at.error, [e.value for e in at.error]
    frame = at.session_state["_frame"]
    analysis, spec = frame.analysis, frame.spec
    grid = sweep.sweep_grid(analysis.dampings)
    between = next(d for d in grid if d not in analysis.dampings)  # a value the analysis never scored
    at.select_slider(key="rg_damping").set_value(between).run()
    no_exceptions(at)
    q = at.selectbox(key="test").value
    test = analysis.test.iloc[[q]]
    exact = model_store().engine(spec).score(test["text"].tolist(), test["label"].to_numpy(),
                                             analysis.train["text"].tolist(), analysis.train["label"].to_numpy(),
                                             dampings=[between], self_influence=False).total(0)[0] * frame.scale
    table = next(d.value for d in at.dataframe if "effect" in d.value.columns)
    np.testing.assert_allclose(table[frame.unit_label].to_numpy(), exact[table["train"].to_numpy()], rtol=1e-4,
                               atol=1e-12)
    helpful = table[table["effect"] == "helpful"]
    assert int(helpful["train"].iloc[0]) == int(np.argmax(exact))
    assert any(f"at damping {between:g}" in c.value and "re-scored them exactly" in c.value for c in at.caption)
