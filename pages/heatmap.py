"""Influence heatmap: every test review against every training review, and the most extreme pairs."""

from __future__ import annotations

import numpy as np
import streamlit as st

from explorer import figures, views
from explorer import ui as common
from explorer.highlight import text_html

common.ensure_frame()
st.title("Influence heatmap")
st.caption("Rows are test reviews, columns training reviews. " + common.SIGN_HELP)

early = common.early_estimate()
if early is not None:  # the exact pass is still running: draw the training-gradient index's estimate meanwhile
    estimate, predictions = early
    st.info("**Index estimate.** While the engine computes the exact scores (progress below), this is the "
            "training-gradient index's estimate of the same influences (raw, damping "
            f"{estimate.damping:g}, every analysed layer). The exact heatmap, its orderings and the pairs replace it "
            "when they are done, and the Overview then says how closely the two agreed on these reviews.")
    fig, shown = views.estimate_heatmap(estimate, predictions)
    common.figure(fig, "influence_heatmap_estimate", key="heatmap_estimate")
    if shown < estimate.matrix.shape[1]:
        st.caption(f"Showing the {shown} of {estimate.matrix.shape[1]} training reviews with the largest total "
                   "|estimated influence|.")
    common.job_panel(common.frame().spec.key())
    st.stop()

out, analysis = common.require_analysis(rerun_when=common.estimate_ready)

c1, c2, c3, c4 = st.columns(4)
score_kind = c1.radio("Scores", ["raw", "relative"], horizontal=True, key="hm_kind", bind="query-params",
                      help="Relative = influence / sqrt(self-influence of both reviews): a cosine in [-1, 1]. Raw is "
                           "the default: on the demo it predicted retraining far better (LDS 0.71 against 0.23).")
row_order = c2.selectbox("Order test reviews", ["none", "sort", "cluster"], key="hm_rows", bind="query-params",
                         help="sort: by mean influence; cluster: similar influence patterns together.")
col_order = c3.selectbox("Order training reviews", ["none", "sort", "cluster"], key="hm_cols", bind="query-params")
max_cols = c4.number_input("Training reviews shown", 10, 2000, 200, step=50, key="hm_max", bind="query-params",
                           help="The columns with the largest total |influence| are kept, for a readable figure.")

relative = score_kind == "relative"
matrix = analysis.influence(out.k, out.layers, relative=relative) * (1.0 if relative else out.scale)
unit = "relative" if relative else out.unit_label
keep = np.sort(np.argsort(-np.abs(matrix).sum(axis=0))[: int(max_cols)])
view = matrix[:, keep]
rows = figures.order_indices(view, row_order, axis=0)
cols = figures.order_indices(view, col_order, axis=1)
test_hover, train_hover = analysis.test_hover(), analysis.train_hover()
fig = figures.influence_heatmap(
    view[np.ix_(rows, cols)],
    row_hover=[test_hover[i] for i in rows],
    col_hover=[train_hover[keep[j]] for j in cols],
    row_names=[f"test {i}" for i in rows],
    col_names=[f"train {keep[j]}" for j in cols],
    colorbar_title=unit,
)
notes = ["Colours saturate at the 95th percentile of |influence|; hover a cell for its exact value."]
if len(keep) < matrix.shape[1]:
    notes.insert(0, f"Showing the {len(keep)} of {matrix.shape[1]} training reviews with the largest total |influence|.")
st.caption(" ".join(notes))
common.figure(fig, "influence_heatmap", key="heatmap")

st.subheader("Most extreme pairs")
st.caption("Select a row to read both reviews side by side (clicks on the heatmap itself do not reach the app).")
pairs = views.top_pairs(matrix, 10)
display = pairs.rename(columns={"influence": unit}).assign(
    test_review=[analysis.test["text"].iloc[q][:120] for q in pairs["test"]],
    train_review=[analysis.train["text"].iloc[m][:120] for m in pairs["train"]],
    train_label=[analysis.name(analysis.train["label"].iloc[m]) for m in pairs["train"]],
)
selection = common.table(
    display, "extreme_pairs", key="pairs", on_select="rerun", selection_mode="single-row",
    column_config={unit: st.column_config.NumberColumn(format="%.4g")},
)
picked = selection.selection.rows if selection is not None and hasattr(selection, "selection") else []
pick = (int(pairs["test"].iloc[picked[0]]), int(pairs["train"].iloc[picked[0]])) if picked else None
if pick is not None and st.session_state.get("_hm_pick") != pick:  # only a new table pick moves the selectors
    st.session_state["hm_q"], st.session_state["hm_m"] = pick
st.session_state["_hm_pick"] = pick

st.subheader("Read a pair")
n_test, n_train = matrix.shape
top_q, top_m = (int(pairs["test"].iloc[0]), int(pairs["train"].iloc[0])) if len(pairs) else (0, 0)
s1, s2 = st.columns(2)
with s1:
    q = common.url_choice(st.selectbox, "Test review", range(n_test), key="hm_q", default=top_q,
                          format_func=lambda i: common.review_label(analysis, "test", i))
with s2:
    m = common.url_choice(st.selectbox, "Training review", range(n_train), key="hm_m", default=top_m,
                          format_func=lambda j: common.review_label(analysis, "train", j))
if q is not None and m is not None:
    value = matrix[q, m]
    verdict = "helpful" if value > 0 else "harmful" if value < 0 else "neutral"
    if relative or out.unit == "raw":
        st.markdown(f"{unit.capitalize()} of training review #{m} on test review #{q}: **{value:.4g}** ({verdict}).")
    else:
        st.markdown(f"Removing training review #{m} would change the loss of test review #{q} by **{value:+.3g}** "
                    f"(predicted; {verdict}).")
        st.caption("A first-order prediction: the Trust page measures how well such predictions rank what retraining "
                   "does; their size can overshoot by orders of magnitude on a fine-tuned network.")
    left, right = st.columns(2)
    with left, st.container(border=True):
        st.markdown(f"**Test review #{q}** · label {analysis.name(analysis.test['label'].iloc[q])} · "
                    f"predicted {analysis.name(analysis.test_pred[q])}")
        st.html(text_html(analysis.test["text"].iloc[q]))
    with right, st.container(border=True):
        st.markdown(f"**Training review #{m}** · label {analysis.name(analysis.train['label'].iloc[m])} · "
                    f"predicted {analysis.name(analysis.train_pred[m])}")
        st.html(text_html(analysis.train["text"].iloc[m]))
