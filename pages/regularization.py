"""Regularization: how the influences move with the damping, and which value to trust."""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from explorer import figures, search, sweep, trust, views
from explorer import ui as common

common.ensure_frame()
st.title("Regularization")
st.caption(
    "Damping is added to the curvature before it is inverted: too little and a few tiny eigenvalues dominate, too "
    "much and influence degrades to a plain gradient similarity. The analysis scored five values in one pass "
    "(switching between them in the sidebar is instant); the training-gradient index answers any value between "
    "them. " + common.SIGN_HELP
)

out, analysis = common.require_analysis()
scores = analysis.scores
if len(analysis.dampings) < 2:
    st.info("This analysis scored a single damping value; nothing to compare.")
    st.stop()


@st.cache_data(show_spinner="Comparing damping values…", max_entries=8)
def stability(analysis_key: str, _scores) -> pd.DataFrame:
    return _scores.stability()


table = stability(analysis.key, scores)
suggestion = views.suggest_damping(table)
value = suggestion.value
with st.container(border=True):
    lds_best = trust.lds_best_damping(out.spec)
    if lds_best is not None:
        st.markdown(f"**LDS-best damping: {lds_best:g}** ({scores.damping_mode}; the value whose influence best "
                    "predicted retraining on the Trust page)")
    if value is not None:
        heading = "Suggested damping" if suggestion.settled else "Most stable computed damping"
        st.markdown(f"**{heading}: {value:g}** ({scores.damping_mode})")
    st.caption(suggestion.reason)
    if value is not None and not np.isclose(value, out.damping):
        st.caption(f"The view currently uses {out.damping:g}; pick {value:g} under *View → Damping* in the sidebar.")

st.subheader("Stability between neighbouring damping values")
st.caption("Correlation of the test × training scores at one damping value with those at the next, per layer and "
           "for the total. 1 means the ranking does not change.")
left, right = st.columns(2)
with left:
    common.figure(figures.stability_heatmap(table, "pearson", title="Pearson"), "stability_pearson", key="st_p")
with right:
    common.figure(figures.stability_heatmap(table, "spearman", title="Spearman (rank)"), "stability_spearman",
                  key="st_s")
common.table(table, "damping_stability", key="st_table")

st.subheader("One pair across damping values")
c1, c2 = st.columns(2)
with c1:
    q = common.url_choice(st.selectbox, "Test review", range(scores.n_test), key="test",
                          format_func=lambda i: common.review_label(analysis, "test", i))
total_now = analysis.influence(out.k, out.layers)[int(q or 0)]
default_m = int(np.argmax(np.abs(total_now)))
with c2:
    m = common.url_choice(st.selectbox, "Training review", range(scores.n_train), key="rg_m", default=default_m,
                          format_func=lambda j: common.review_label(analysis, "train", j))
q, m = int(q or 0), int(m or 0)
grid = sweep.sweep_grid(analysis.dampings)


@st.cache_data(show_spinner="Scoring the pair at every damping…", max_entries=32)
def pair_curve(analysis_key: str, q: int, m: int, grid: tuple[float, ...], _spec, _analysis) -> dict[str, np.ndarray]:
    return sweep.pair_curve(common.model_store(), _spec, _analysis, q, m, grid)


curves = pair_curve(analysis.key, q, m, tuple(grid), out.spec, analysis)
shown = ["total", *out.layers] if len(out.layers) <= 16 else ["total"]
if len(out.layers) < len(scores.layers):  # the View's layer filter: the total over the chosen layers only
    curves = {**curves, "total": np.sum([curves[name] for name in out.layers], axis=0)}
series = {name: curves[name] * out.scale for name in shown}
computed = [scores.total(k, out.layers)[q, m] * out.scale for k in range(len(analysis.dampings))]
common.figure(figures.damping_curve(grid, series, chosen=out.damping, axis_title=out.unit_label,
                                    marks=(analysis.dampings, computed)), "damping_curve", key="rg_curve")
st.caption(f"Exact at {len(grid)} damping values: the engine scored this pair at all of them in one short pass of "
           "the two reviews. The circles are the values the analysis scored; they lie on the curve.")


@st.cache_data(show_spinner="Asking the index at every damping…", max_entries=32)
def index_sweep(analysis_key: str, q: int, grid: tuple[float, ...], _spec, _analysis) -> sweep.Sweep | None:
    return sweep.index_sweep(common.model_store(), _spec, _analysis, q, grid)


st.subheader("Any damping value, from the index")
sweep_result = index_sweep(analysis.key, q, tuple(grid), out.spec, analysis) if analysis.meta.get("index") else None
if sweep_result is None:
    st.info("This analysis has no training-gradient index (computed by an older version): recompute it from the "
            "sidebar to ask it at any damping.")
    st.stop()
index_info = analysis.meta["index"]
faithful = sweep.fidelity(sweep_result, analysis, q)
st.caption(f"How far can the damping move before test review #{q}'s explanation changes? The lines compare its "
           f"influence on all {scores.n_train} training reviews at each damping with those at the chosen "
           f"{out.damping:g}, as the index estimates them ({len(grid)} values in {sweep_result.seconds:.1f} s); the "
           "circles are the same measures from the exact scores at the five computed values, and the diamonds how "
           "well the index agreed with the exact scores there. The index keeps each gradient's entries of largest "
           "curvature, so it sees least of what small dampings change: where the diamonds drop, trust the circles. "
           "Over all analysed layers.")
common.figure(figures.sweep_figure(sweep_result.agreement(out.damping), sweep.exact_agreement(analysis, q, out.damping),
                                   fidelity=faithful, chosen=out.damping), "damping_sweep", key="rg_sweep")
value = st.select_slider("Damping", grid, value=out.damping, format_func=lambda v: f"{v:g}", key="rg_damping",
                         help="Any value of the grid, scored or not: the index finds the candidates among all "
                              "training reviews and the engine re-scores them exactly.")


@st.cache_data(show_spinner="Finding and re-scoring the training reviews at this damping…", max_entries=64)
def answer_at(analysis_key: str, q: int, damping: float, _spec, _analysis) -> search.SearchResult | None:
    return search.search_training(common.model_store(), _spec, _analysis, _analysis.test["text"].iloc[q],
                                  label=int(_analysis.test["label"].iloc[q]), damping=damping, top=5)


result = answer_at(analysis.key, q, float(value), out.spec, analysis)
exact = result.rows[result.rows["exact"] == 1]
frame = common.reviews_table(analysis, "train", exact["train"].to_numpy(), exact["influence"].to_numpy() * out.scale,
                             score_name=out.unit_label)
frame.insert(0, "effect", exact["direction"].to_numpy())
common.table(frame, f"damping_{value:g}_test_{q}", key="rg_answer",
             column_config={"confidence": st.column_config.ProgressColumn(min_value=0, max_value=1, format="%.2f"),
                            "text": st.column_config.TextColumn("text", width="large")})
st.caption(f"Test review #{q} at damping {value:g} ({scores.damping_mode}): answered in {result.seconds:.1f} s. "
           f"{search.index_description(index_info).capitalize()} proposed {result.candidates} training reviews per "
           f"direction and the engine re-scored them exactly, over all analysed layers. On this analysis's test "
           f"reviews the index agreed with the exact scores with median Pearson {index_info['median_pearson']:.3f}.")
