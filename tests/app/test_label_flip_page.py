"""The Label-flip page on a three-class model: no closed form, so the flipped scores are recomputed in a job."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest

from tests.app.conftest import build_tiny_classifier, new_app, no_exceptions

LABELS = ("negative", "neutral", "positive")


@pytest.fixture
def three_class_app(tmp_path_factory, monkeypatch):
    folder = build_tiny_classifier(tmp_path_factory.mktemp("three_classes"), LABELS)
    monkeypatch.setenv("INFLUENCE_EXPLORER_MODEL", str(folder))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    at = new_app({"data": "upload", "train_n": "18", "test_n": "6"})
    at.run()
    rows = [{"text": f"{word} film number {i}", "label": LABELS[i % 3]}
            for i, word in enumerate(["awful", "fine", "great"] * 8)]
    at.sidebar.file_uploader[0].set_value(("three.csv", pd.DataFrame(rows).to_csv(index=False).encode(),
                                           "text/csv")).run()
    no_exceptions(at)
    frame = at.session_state["_frame"]
    assert frame.spec is not None, [e.value for e in at.sidebar.error]
    from explorer import analysis, store

    analysis.compute_analysis(frame.spec, store.ModelStore())
    at.run()
    return at


def test_flipping_labels_of_a_three_class_model_recomputes_them_in_the_background(three_class_app):
    from explorer import ui as common
    from explorer import views

    at = three_class_app
    at.switch_page("pages/label_flip.py").run()
    no_exceptions(at)
    assert not at.error, [e.value for e in at.error]
    out = at.session_state["_frame"]
    analysis = out.analysis
    assert len(analysis.label_names) == 3
    # before the job: what it will cost, and the button
    assert any(c.value.startswith("3 classes: each flipped review gets the next class") for c in at.caption)
    at.button(key="fl_recompute").click().run()
    no_exceptions(at)
    deadline = time.monotonic() + 240
    while not any(m.label == "Method" and m.value == "recomputed" for m in at.metric):
        assert time.monotonic() < deadline, "the recompute job did not finish in 240 s"
        assert not at.error, [e.value for e in at.error]
        time.sleep(0.5)
        at.run()
        no_exceptions(at)
    flip = views.flip_mask(analysis.scores.n_train, "random", fraction=0.1, seed=0)
    expected = views.recompute_flipped(out.spec, common.model_store(), analysis, flip, out.k, out.layers)
    before = analysis.influence(out.k, out.layers)
    overlap = views.top_k_overlap(before, expected, min(10, analysis.scores.n_train))
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Flipped training reviews"] == str(int(flip.sum()))
    assert metrics["Explanations that change"] == f"{int((overlap < 1).sum())} of {len(overlap)}"
    # the flipped reviews' table shows the recomputed influence
    table = next(d.value for d in at.dataframe if any(str(c).endswith(" after") for c in d.value.columns))
    after_col = next(c for c in table.columns if str(c).startswith("mean ") and str(c).endswith(" after"))
    np.testing.assert_allclose(table[after_col].to_numpy(dtype=float),
                               (expected * out.scale)[:, np.flatnonzero(flip)].mean(axis=0), rtol=1e-5)
