"""The frame: sidebar and URL state, the background job, uploads, marks, instant views, the tour and its report."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest

from tests.app.conftest import new_app, no_exceptions


def _frame(at):
    return at.session_state["_frame"]


def test_url_query_params_set_the_analysis(app_env):
    at = new_app({"method": "kfac", "fisher": "empirical", "dmode": "relative", "damping_relative": "0.1"})
    at.run()
    no_exceptions(at)
    spec = _frame(at).spec
    assert spec.config.method == "kfac" and spec.config.fisher == "empirical"
    assert spec.config.relative_damping == 0.1 and spec.damping_mode == "relative"
    assert 0.1 in spec.dampings and len(spec.dampings) == 5
    assert spec.train_slice.sample == 24 and spec.test_slice.sample == 8


def test_widget_changes_update_the_analysis(app_env):
    # The browser writes bound widget values into the URL (checked in tests/e2e); here the Python side.
    at = new_app()
    at.run()
    at.selectbox(key="method").set_value("identity").run()
    no_exceptions(at)
    assert _frame(at).spec.config.method == "identity"
    at.number_input(key="test_n").set_value(6).run()
    assert _frame(at).n_test == 6
    at.multiselect(key="layers").set_value(["head"]).run()
    assert _frame(at).spec.config.layers == "head"
    at.multiselect(key="layers").set_value([]).run()
    no_exceptions(at)
    assert any("Choose at least one layer group" in e.value for e in at.sidebar.error)


def test_bad_model_folder_says_what_to_do(app_env, tmp_path):
    at = new_app({"model": "local folder", "model_name": str(tmp_path / "missing")})
    at.run()
    no_exceptions(at)
    at.button(key="fit_sidebar").click().run()
    job = _wait_for_job(at)
    assert job.status == "error" and "no such model folder" in job.error
    at.run()
    assert any("no such model folder" in e.value for e in at.error)


def test_offline_hub_id_fails_fast_with_advice(app_env):
    at = new_app({"model": "Hub id", "model_name": "someone/not-cached-model"})
    at.run()
    at.button(key="fit_sidebar").click().run()
    job = _wait_for_job(at, timeout=60)
    assert job.status == "error"
    assert "demo" in job.error.lower() or "local" in job.error.lower()


def test_fit_and_score_runs_in_the_background_and_pages_reuse_it(app_env):
    at = new_app({"test_n": "4", "train_n": "12"})
    at.run()
    assert _frame(at).analysis is None
    at.button(key="fit_main").click().run()
    no_exceptions(at)
    job = _wait_for_job(at)
    assert job.status == "done", job.error
    at.run()
    no_exceptions(at)
    first = _frame(at).analysis
    assert first.key == job.key and first.influence().shape == (4, 12)
    assert any(m.label == "Accuracy (test)" for m in at.metric)
    # a second session (another tab) finds the same analysis on disk without a job
    other = new_app({"test_n": "4", "train_n": "12"})
    other.run()
    assert _frame(other).analysis.key == first.key
    np.testing.assert_array_equal(_frame(other).analysis.influence(), first.influence())


def _start_with_the_exact_pass_held(monkeypatch, query: dict, ready):
    """Click Fit and score with the engine's exact pass held back until the returned event is set; waits until
    ``ready(spec)`` (an early result is saved) and returns ``(at, spec, release)``."""
    import threading

    from influence_core.engine.influence import InfluenceEngine

    release = threading.Event()
    score = InfluenceEngine.score

    def held_score(self, *args, **kwargs):  # the influence pass waits until the test has looked at the page
        assert release.wait(60)
        return score(self, *args, **kwargs)

    monkeypatch.setattr(InfluenceEngine, "score", held_score)
    at = new_app(query)
    at.run()
    at.button(key="fit_main").click().run()
    spec = _frame(at).spec
    deadline = time.time() + 60
    while not ready(spec) and time.time() < deadline:
        time.sleep(0.2)
    return at, spec, release


def _finished_on(at, page: str):
    """Wait until the held job is done, open ``page`` and return the finished analysis."""
    job = _wait_for_job(at)
    assert job.status == "done", job.error
    at.switch_page(page).run()
    no_exceptions(at)
    finished = _frame(at).analysis
    assert finished is not None
    return finished


def test_the_overview_shows_the_predictions_before_the_influence(app_env, monkeypatch):
    from explorer import ui as common

    at, spec, release = _start_with_the_exact_pass_held(monkeypatch, {"test_n": "6", "train_n": "12", "seed": "3"},
                                                        common.predictions_ready)
    try:
        at.run()
        no_exceptions(at)
        assert common.job_runner().get(spec.key()).running and _frame(at).analysis is None
        early = {m.label: m.value for m in at.metric}
        assert early["Test reviews"] == "6" and early["Training reviews"] == "12"
        assert any("being computed" in i.value for i in at.info)
        assert "sentence" not in [w.key for w in at.text_area]  # no sentence box before there is influence
        at.switch_page("pages/explain.py").run()  # the other pages wait for the influence, and say where to look
        assert any("predictions are on the Overview" in i.value for i in at.info)
    finally:
        release.set()
    finished = _finished_on(at, "pages/overview.py")
    later = {m.label: m.value for m in at.metric}
    accuracy = float(np.mean(finished.test_pred == finished.test["label"].to_numpy()))
    assert early["Accuracy (test)"] == later["Accuracy (test)"] == f"{accuracy:.1%}"  # the same numbers as the analysis


def test_the_heatmap_draws_the_index_estimate_until_the_exact_scores_exist(app_env, monkeypatch):
    from explorer import analysis as analyses
    from explorer import ui as common

    at, spec, release = _start_with_the_exact_pass_held(monkeypatch, {"test_n": "5", "train_n": "14", "seed": "4"},
                                                        common.estimate_ready)
    try:
        at.switch_page("pages/heatmap.py").run()
        no_exceptions(at)
        assert common.job_runner().get(spec.key()).running
        assert any("Index estimate" in i.value for i in at.info)
        estimate = analyses.load_estimate(spec)
        assert estimate.matrix.shape == (5, 14) and len(estimate.train) == 14
        assert not any(s.value == "Most extreme pairs" for s in at.subheader)  # drawn from exact scores only
        at.switch_page("pages/layers.py").run()  # Layers draws the per-layer estimate meanwhile
        no_exceptions(at)
        assert any("Index estimate" in i.value for i in at.info)
        assert any("(index estimate)" in s.value for s in at.subheader)
        assert estimate.by_layer.shape == (len(estimate.layers), 5, 14)
        np.testing.assert_allclose(estimate.by_layer.sum(axis=0), estimate.matrix, rtol=1e-4,
                                   atol=1e-5 * np.abs(estimate.matrix).max())
    finally:
        release.set()
    finished = _finished_on(at, "pages/heatmap.py")
    assert any(s.value == "Most extreme pairs" for s in at.subheader)
    exact = finished.influence(finished.damping_index(None))
    agreement = finished.meta["index"]
    if agreement["kind"] == "exact":  # the tiny model's index holds whole gradients: the estimate is the score
        np.testing.assert_allclose(estimate.matrix, exact, rtol=1e-3, atol=1e-3 * np.abs(exact).max())
        k = finished.damping_index(None)
        for i, name in enumerate(estimate.layers):  # and each layer's estimate is that layer's score
            layer = finished.scores.pairwise[k, finished.scores.layers.index(name)]
            np.testing.assert_allclose(estimate.by_layer[i], layer, rtol=1e-3, atol=1e-3 * np.abs(exact).max())
    else:
        assert agreement["median_pearson"] > 0.9
    assert set(agreement["layers"]) == set(estimate.layers)  # the per-layer agreement the Layers page quotes
    if agreement["kind"] == "exact":
        assert min(agreement["layers"].values()) > 0.999
    assert agreement["median_pearson"] == pytest.approx(
        np.median([np.corrcoef(a, b)[0, 1] for a, b in zip(estimate.matrix, exact, strict=True)]))


def test_view_damping_and_layers_rerender_without_gradients(computed, monkeypatch):
    from influence_core.engine.influence import InfluenceEngine

    def forbidden(*args, **kwargs):
        raise AssertionError("a view change recomputed gradients")

    monkeypatch.setattr(InfluenceEngine, "score", forbidden)
    monkeypatch.setattr(InfluenceEngine, "fit", forbidden)
    at = computed
    at.switch_page("pages/heatmap.py").run()
    frame = _frame(at)
    dampings = frame.analysis.dampings
    before = frame.analysis.influence(frame.k, frame.layers)
    started = time.perf_counter()
    at.select_slider(key="view_damping").set_value(dampings[-1]).run()
    elapsed = time.perf_counter() - started
    no_exceptions(at)
    assert _frame(at).k == len(dampings) - 1
    assert not np.allclose(before, _frame(at).analysis.influence(_frame(at).k, _frame(at).layers))
    layers = frame.analysis.scores.layers
    at.multiselect(key="view_layers").set_value([layers[-1]]).run()
    no_exceptions(at)
    assert _frame(at).layers == [layers[-1]]
    assert elapsed < 5  # AppTest overhead included; the work itself is array slicing


def test_review_links_reproduce_the_selection(computed):
    at = new_app({"test": "3"})
    at.run()
    at.switch_page("pages/explain.py").run()
    no_exceptions(at)
    assert at.selectbox(key="test").value == 3
    assert any("Test review #3" in m.value for m in at.markdown)


def test_pair_selection_opens_both_texts(computed):
    at = computed
    at.switch_page("pages/heatmap.py").run()
    at.selectbox(key="hm_q").set_value(1).run()
    at.selectbox(key="hm_m").set_value(2).run()
    no_exceptions(at)
    assert at.query_params.get("hm_q") == "1" and at.query_params.get("hm_m") == "2"
    frame = _frame(at)
    raw = frame.analysis.influence(frame.k, frame.layers)[1, 2]
    # by default scores read as the predicted change in the test loss if the training review were removed
    change = raw / len(frame.analysis.train)
    assert frame.unit == "loss" and frame.scale == pytest.approx(1 / len(frame.analysis.train))
    assert any(f"Removing training review #2 would change the loss of test review #1 by **{change:+.3g}**" in m.value
               for m in at.markdown)
    at.sidebar.radio(key="view_unit").set_value("raw").run()
    no_exceptions(at)
    assert any(f"Influence of training review #2 on test review #1: **{raw:.4g}**" in m.value for m in at.markdown)


def test_marks_persist_across_reruns_and_sessions(computed):
    at = computed
    at.switch_page("pages/mislabel.py").run()
    no_exceptions(at)
    first = _frame(at).analysis
    at.button(key="mf_bad").click().run()
    no_exceptions(at)
    at.button(key="mf_ok").click().run()
    from explorer.marks import MarkStore

    marks = MarkStore.for_data(first.spec.train_data).load()
    assert sorted(m["state"] for m in marks.values()) == ["fine", "mislabeled"]
    # a fresh session (a restart, another tab) sees them
    other = new_app()
    other.run()
    other.switch_page("pages/mislabel.py").run()
    assert any("2 of 24 training reviews reviewed" in (p.proto.text or "") for p in other.get("progress"))
    # the download holds the cleaned table: the review marked mislabeled is dropped, the fine one kept
    assert other.download_button(key="mf_dl_clean").label == "Download cleaned dataset (CSV)"
    assert any("drops 1 reviews marked mislabeled and relabels 0; 23 of 24 training reviews remain" in c.value
               for c in other.caption)
    MarkStore.for_data(first.spec.train_data).clear()


def _finish_jobs(prefix: str, timeout: float = 240) -> None:
    from explorer import ui as common

    for job in [j for j in common.job_runner().running() if j.key.startswith(prefix)]:
        job.wait(timeout)


def test_retrain_on_cleaned_data_and_counterfactual_check(computed):
    at = computed
    at.switch_page("pages/mislabel.py").run()
    no_exceptions(at)
    assert any("Mark or relabel reviews" in i.value for i in at.info)
    first = _frame(at).analysis
    at.button(key="mf_bad").click().run()  # the most suspicious review is dropped
    at.button(key="mf_retrain").click().run()
    _finish_jobs("retrain-")
    at.run()
    no_exceptions(at)
    metrics = {m.label: m for m in at.metric}
    assert "Test accuracy after" in metrics and metrics["Training reviews"].value == "23"
    assert any("Harmful pairs:" in c.value for c in at.caption)

    at.number_input(key="cf_k").set_value(2).run()
    at.number_input(key="cf_draws").set_value(2).run()
    at.number_input(key="cf_seeds").set_value(2).run()
    at.button(key="cf_run").click().run()
    from explorer import ui as common
    from explorer import views

    job = common.job_runner().latest("cf-")
    assert job is not None and job.wait(300)
    at.run()
    no_exceptions(at)
    check = job.result
    assert check.seeds == [0, 1] and np.asarray(check.losses_minus_random).shape == (2, 2)
    assert check.verdict in ("lower", "higher", "within noise")  # two seeds and two draws: the spread is measured
    assert views.counterfactual_sentence(check) in [m.value for m in at.markdown]
    from explorer.marks import MarkStore

    MarkStore.for_data(first.spec.train_data).clear()


def test_upload_is_validated_and_texts_are_escaped(app_env):
    at = new_app({"data": "upload"})
    at.run()
    no_exceptions(at)
    assert any("Upload a training table" in e.value for e in at.sidebar.error)
    at.sidebar.file_uploader[0].set_value(("reviews.csv", b"\xff\xfe\x00garbage", "text/csv")).run()
    no_exceptions(at)
    assert any("cannot be used" in e.value for e in at.sidebar.error)
    rows = [{"review": f"<script>alert({i})</script> good<br />film {i}", "sentiment": ["negative", "positive"][i % 2]}
            for i in range(12)]
    data = pd.DataFrame(rows).to_csv(index=False).encode()
    at.sidebar.file_uploader[0].set_value(("reviews.csv", data, "text/csv")).run()
    no_exceptions(at)
    assert at.query_params.get("train_file", "").endswith(".csv")
    frame = _frame(at)
    assert frame.spec is not None, [e.value for e in at.sidebar.error]
    assert frame.spec.train_data.text_col == "review" and frame.spec.train_data.label_col == "sentiment"

    from explorer import analysis, store

    analysis.compute_analysis(frame.spec, store.ModelStore())
    at.switch_page("pages/explain.py").run()
    no_exceptions(at)
    bodies = [h.proto.body for h in at.get("html")]
    assert any("&lt;script&gt;alert(" in b for b in bodies)
    assert not any("<script>" in b or "<br />" in b for b in bodies)


def test_tour_steps_and_report(computed):
    at = computed
    at.switch_page("pages/tour.py").run()
    for _ in range(4):
        at.button(key="tour_next").click().run()
        no_exceptions(at)
    assert at.segmented_control(key="step").value.startswith("5")
    assert any("Fixing the label" in s.value for s in at.subheader)
    # the report is built only when clicked (a deferred callable), so AppTest sees the button, not its bytes
    assert at.download_button(key="tour_report").label == "Download the HTML report"


def test_errors_never_show_tracebacks(computed, monkeypatch):
    from explorer import views

    def broken(*args, **kwargs):
        raise RuntimeError("internal detail")

    monkeypatch.setattr(views, "top_pairs", broken)
    at = computed
    at.switch_page("pages/heatmap.py").run()
    assert not at.exception
    assert any("Something went wrong" in e.value for e in at.error)
    assert not any("internal detail" in e.value for e in at.error)


def _wait_for_job(at, timeout: float = 120):
    from explorer import ui as common

    key = _frame(at).spec.key()
    deadline = time.time() + timeout
    job = common.job_runner().get(key)
    while job is not None and job.running and time.time() < deadline:
        time.sleep(0.2)
    assert job is not None, "no job was started"
    return job


def test_empty_slice_explains_itself(app_env):
    at = new_app({"test_kw": "no review contains this zqx"})
    at.run()
    no_exceptions(at)
    assert any("no text contains" in e.value for e in at.sidebar.error)
    assert any("Choose a model and data" in i.value or "no text contains" in i.value for i in at.info)


def test_try_a_sentence_names_the_responsible_reviews(computed):
    """From the index: no button, no job; the answer is on the page at once."""
    at = computed
    at.text_area(key="sentence").set_value("A <b>bold</b> and lovely film.").run()
    no_exceptions(at)
    assert not any(b.key == "try_go" for b in at.button)
    assert any(m.value.startswith("**Prediction:") for m in at.markdown)
    assert any("effect" in d.value.columns for d in at.dataframe)


def test_try_a_sentence_without_an_index_scores_in_the_background(computed):
    """An analysis cached before the index existed: the sentence is scored by a job over every training review,
    with the same numbers as the engine."""
    import shutil

    import numpy as np

    from explorer import ui as common
    from explorer.spec import index_dir

    at = computed
    frame = at.session_state["_frame"]
    saved = index_dir(frame.spec).with_name("index-kept-aside")
    shutil.move(str(index_dir(frame.spec)), saved)
    try:
        common.model_store()._indexes.clear()
        at.text_area(key="sentence").set_value("An oddly moving film.").run()
        at.button(key="try_go").click().run()
        for job in [j for j in common.job_runner().running() if j.key.startswith("try-")]:
            job.wait(60)
        at.run()
        at.run()
        no_exceptions(at)
        table = next(d.value for d in at.dataframe if "effect" in d.value.columns)
        engine = common.model_store().engine(frame.spec)
        label = int(np.argmax(engine.predict_proba(["An oddly moving film."])[0]))
        exact = engine.score(["An oddly moving film."], [label], frame.analysis.train["text"].tolist(),
                             frame.analysis.train["label"].to_numpy(), dampings=[frame.damping],
                             self_influence=False).total(0)[0]
        np.testing.assert_allclose(table["influence"].to_numpy(), exact[table["train"].to_numpy()], rtol=1e-6)
    finally:
        shutil.move(str(saved), index_dir(frame.spec))


def test_a_running_job_can_be_cancelled(app_env, monkeypatch):
    import threading

    from explorer import analysis

    started = threading.Event()

    def slow(spec, store, progress):
        started.set()
        for i in range(600):
            time.sleep(0.05)
            progress(i, 600, "pretending to fit")
        return None

    monkeypatch.setattr(analysis, "compute_analysis", slow)
    at = new_app({"train_n": "21"})
    at.run()
    at.button(key="fit_main").click().run()
    assert started.wait(10)
    at.run()
    at.button(key=f"cancel_{_frame(at).spec.key()}").click().run()
    job = _wait_for_job(at, timeout=20)
    assert job.status == "cancelled"
    at.run()
    assert any("cancelled" in w.value for w in at.warning)


def test_a_bare_encoder_is_refused_with_advice(app_env):
    from influence_core.sources.models import base_encoder_path

    at = new_app({"model": "local folder", "model_name": base_encoder_path()})
    at.run()
    at.button(key="fit_sidebar").click().run()
    job = _wait_for_job(at)
    assert job.status == "error" and "not a sequence classifier" in job.error and "finetune" in job.error
    at.run()
    no_exceptions(at)
    assert any("not a sequence classifier" in e.value for e in at.error)
