"""Regularization: how the influences move with the damping, and which value to trust."""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from explorer import figures, trust, views
from explorer import ui as common

common.ensure_frame()
st.title("Regularization")
st.caption(
    "Damping is added to the curvature before it is inverted: too little and a few tiny eigenvalues dominate, too "
    "much and influence degrades to a plain gradient similarity. Every value below was scored in the same pass, so "
    "switching between them in the sidebar is instant. " + common.SIGN_HELP
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
series = {"total": [scores.total(k, out.layers)[q, m] * out.scale for k in range(len(analysis.dampings))]}
if len(out.layers) <= 16:
    for name in out.layers:
        series[name] = [scores.pairwise[k, scores.layers.index(name), q, m] * out.scale
                        for k in range(len(analysis.dampings))]
common.figure(figures.damping_curve(analysis.dampings, series, chosen=out.damping, axis_title=out.unit_label),
              "damping_curve", key="rg_curve")
