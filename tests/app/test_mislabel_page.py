"""The Mislabel finder on the tiny model: why a review is suspected, the signal columns, cross-fitting from the page
and the Label Studio export."""

from __future__ import annotations

import time

import numpy as np
import pytest

from explorer import mislabels, views
from explorer.marks import MarkStore
from influence_core.mislabel import signal_percentiles, suspicion_reasons
from tests.app.conftest import no_exceptions


def _markdown(at) -> str:
    return "\n".join(m.value for m in at.markdown)


def _dataframe(at, *columns: str):
    """The first table shown with all of ``columns`` (AppTest's dataframes carry no key)."""
    for frame in at.dataframe:
        if set(columns) <= set(frame.value.columns):
            return frame.value
    raise AssertionError(f"no table with columns {columns}: {[list(f.value.columns) for f in at.dataframe]}")


def _page(computed):
    at = computed
    at.switch_page("pages/mislabel.py").run()
    no_exceptions(at)
    assert not at.error, [e.value for e in at.error]
    return at


def _expected(at, out_of_fold=None, cross_fit=None):
    """The page's numbers recomputed from explorer.views and influence_core.mislabel: rankings, percentiles, queue."""
    out = at.session_state["_frame"]
    analysis = out.analysis
    dynamics = views.training_dynamics(out.spec, analysis, cross_fit)
    scores = views.rankings(analysis, out.k, out.layers, out_of_fold=out_of_fold, dynamics=dynamics)
    percentiles = signal_percentiles({n: v for n, v in scores.items() if n != "combined"})
    marks = MarkStore.for_data(out.spec.train_data).load()
    order = mislabels.suspicion_order(scores["combined"])
    row_ids = analysis.train["row_id"].to_numpy()
    queue = [int(j) for j in order if int(row_ids[j]) not in marks]  # "Hide reviewed" is on by default
    return analysis, scores, percentiles, queue


def test_first_review_shows_why_it_is_suspected_with_the_percentiles_of_the_core(computed):
    at = _page(computed)
    analysis, scores, percentiles, queue = _expected(at)
    first = queue[0]
    assert f"· training review #{first} (row " in _markdown(at)
    reason = suspicion_reasons(percentiles.iloc[first].to_dict())
    assert f"**Why suspected:** {reason}." in _markdown(at)
    why = _dataframe(at, "signal", "percentile", "value", "rank")
    assert why["signal"].tolist() == [n.replace("_", " ") for n in percentiles.columns]
    np.testing.assert_allclose(why["percentile"].to_numpy(dtype=float), percentiles.iloc[first].to_numpy(dtype=float))
    np.testing.assert_allclose(why["value"].to_numpy(dtype=float),
                               [scores[n][first] for n in percentiles.columns])
    # every signal is a column of the side-by-side table: its score, rank and percentile
    table = _dataframe(at, "why", "train", "row_id")
    for name in scores:
        assert {name, f"{name} rank"} <= set(table.columns), name
    for name in percentiles.columns:
        assert f"{name} %" in table.columns
    assert "why" in table.columns
    # without cross-fitting there are no out-of-fold signals yet, and the page says what they would cost
    assert "oof_loss" not in scores
    assert any(c.value.startswith("Cost: ") for c in at.caption)


def test_cross_fit_from_the_page_adds_the_out_of_fold_signals(computed):
    at = _page(computed)
    at.number_input(key="mf_folds").set_value(2).run()  # two fine-tunes: the quickest cross-fit
    no_exceptions(at)
    at.button(key="mf_crossfit").click().run()
    no_exceptions(at)
    deadline = time.monotonic() + 300
    while not any("Out-of-fold probabilities from 2 fine-tunes" in s.value for s in at.success):
        assert not at.error, [e.value for e in at.error]
        assert time.monotonic() < deadline, "the cross-fit job did not finish in 300 s"
        time.sleep(1)
        at.run()
        no_exceptions(at)
    from explorer.ui import job_runner

    out = at.session_state["_frame"]
    job = job_runner().get(f"crossfit-{out.analysis.key}-2")
    assert job is not None and job.status == "done"
    fit = job.result
    assert fit.k == 2 and fit.probs.shape == (out.analysis.scores.n_train, len(out.analysis.label_names))
    table = _dataframe(at, "why", "train", "row_id")
    for name in ("oof_loss", "oof_margin", "cleanlab"):
        assert {name, f"{name} rank", f"{name} %"} <= set(table.columns), name
    _, scores, _, _ = _expected(at, out_of_fold=fit.probs, cross_fit=fit)
    listed = table["train"].to_numpy(dtype=int)
    np.testing.assert_allclose(table["oof_loss"].to_numpy(dtype=float), scores["oof_loss"][listed])
    estimated = scores.estimated_wrong_labels
    assert estimated is not None
    assert any(m.label == "Estimated wrong labels (cleanlab)" and m.value == f"{estimated} of {len(out.analysis.train)}"
               for m in at.metric)


def test_label_studio_export_has_one_task_per_training_review_with_its_text_and_given_label(computed):
    at = _page(computed)
    analysis, scores, percentiles, _ = _expected(at)
    train = analysis.train
    order = mislabels.suspicion_order(scores["combined"])
    reasons = [suspicion_reasons(row) for row in percentiles.to_dict("records")]
    tasks = mislabels.label_studio_tasks(train, scores, analysis.label_names, order, reasons)
    assert len(tasks) == len(train)
    assert sorted(t["data"]["row_id"] for t in tasks) == sorted(train["row_id"].astype(int).tolist())
    for rank, (task, j) in enumerate(zip(tasks, order), start=1):
        given = analysis.label_names[int(train["label"].iloc[j])]
        assert task["data"]["text"] == train["text"].iloc[j]
        assert task["data"]["given_label"] == given
        (prediction,) = task["predictions"]
        assert prediction["result"][0]["value"]["choices"] == [given]
        assert prediction["score"] == pytest.approx(scores["combined"][j])
        assert task["meta"]["rank"] == rank and task["meta"]["why"] == reasons[j]
    # the page offers exactly this file
    assert any(b.label == "Download queue for Label Studio (JSON)" for b in at.get("download_button"))


def test_marks_from_the_queue_reach_the_datasets_zip(computed, tmp_path):
    """One review marked mislabeled and one relabelled through the queue's buttons, then the Hugging Face export:
    a mix of blank and set new labels, which Arrow could not convert before the flag list used nullable ints."""
    import io
    import zipfile

    from datasets import load_from_disk

    at = _page(computed)
    store = MarkStore.for_data(at.session_state["_frame"].spec.train_data)
    try:
        analysis, _, _, queue = _expected(at)
        row_ids = analysis.train["row_id"].to_numpy()
        at.button(key="mf_bad").click().run()
        no_exceptions(at)
        at.button(key="mf_relabel").click().run()
        no_exceptions(at)
        first, second = int(row_ids[queue[0]]), int(row_ids[queue[1]])
        at.button(key="mf_hf_prepare").click().run()
        no_exceptions(at)
        assert not at.error, [e.value for e in at.error]
        assert at.download_button(key="mf_dl_hf").label == "Download datasets folders (zip)"
        zipfile.ZipFile(io.BytesIO(at.session_state["mf_hf_zip"][1])).extractall(tmp_path)
        flags = load_from_disk(str(tmp_path / "flags")).to_pandas().set_index("row_id")
        assert flags.loc[first, "mark"] == "mislabeled" and flags.loc[second, "mark"] == "relabel"
        given = int(analysis.train["label"].iloc[queue[1]])
        assert int(flags.loc[second, "new_label"]) != given
        cleaned = load_from_disk(str(tmp_path / "cleaned")).to_pandas().set_index("row_id")
        assert first not in cleaned.index and int(cleaned.loc[second, "label"]) == int(flags.loc[second, "new_label"])
        assert len(cleaned) == len(analysis.train) - 1
        scores = load_from_disk(str(tmp_path / "scores")).to_pandas()
        assert len(scores) == len(analysis.train) and "combined" in scores.columns
        # one more mark: the prepared zip no longer holds what the page shows, so it is not offered
        at.button(key="mf_bad").click().run()
        no_exceptions(at)
        assert not any(b.key == "mf_dl_hf" for b in at.get("download_button"))
        assert any("changed since the zip was prepared" in c.value for c in at.caption)
        at.button(key="mf_hf_prepare").click().run()
        assert at.download_button(key="mf_dl_hf").label == "Download datasets folders (zip)"
    finally:
        store.clear()  # the other tests start unmarked
