"""Label-flip corruption: flip training labels and see how the influences on the same test reviews change."""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from explorer import cost, figures, views
from explorer import ui as common
from influence_core.cache import stable_hash

common.ensure_frame()
st.title("Label-flip corruption")
st.caption(
    "What happens to the influences if some training labels were wrong? Flip them here: for a two-class model "
    "the corrupted scores follow in closed form from the computed ones (instant); otherwise they are recomputed "
    "in the background. " + common.SIGN_HELP
)

out, analysis = common.require_analysis()
n_train = analysis.scores.n_train
binary = len(analysis.label_names) == 2

c1, c2, c3, c4 = st.columns([3, 2, 1, 2])
MODES = {"random fraction": "random", "hand-picked": "chosen", "all": "all"}
mode = MODES[c1.radio("Flip", list(MODES), horizontal=True, key="fl_mode", bind="query-params")]
fraction, seed, chosen = 0.1, 0, []
if mode == "random":
    fraction = c2.slider("Fraction", 0.01, 1.0, 0.1, step=0.01, key="fl_frac", bind="query-params")
    seed = int(c3.number_input("Seed", 0, 10_000, 0, key="fl_seed", bind="query-params"))
elif mode == "chosen":
    chosen = common.url_choice(
        st.multiselect, "Training reviews to flip", range(n_train), key="fl_chosen",
        format_func=lambda j: common.review_label(analysis, "train", j, width=60),
        placeholder="Pick training reviews (type to search)",
    )
flip = views.flip_mask(n_train, mode, fraction=fraction, seed=seed, chosen=chosen)
if not flip.any():
    st.info("Choose at least one training review to flip (or switch to a random fraction).")
    st.stop()

before = analysis.influence(out.k, out.layers)
if binary:
    after = analysis.scores.flipped(flip).total(out.k, out.layers)
    method = "closed form"
else:
    key = (f"flip-{analysis.key}-{out.k}-{stable_hash(list(out.layers or []))}-"
           f"{stable_hash(np.flatnonzero(flip).tolist())}")
    job = common.job_runner().get(key)
    if job is None or job.status not in ("done",):
        estimate = cost.estimate_cost(out.spec, n_train, analysis.scores.n_test)
        st.caption(f"{len(analysis.label_names)} classes: each flipped review gets the next class, and the scores are "
                   f"recomputed (one pass over the training reviews): {estimate.describe()}.")
        if (job is None or not job.running) and st.button("Recompute with flipped labels", type="primary",
                                                           key="fl_recompute"):
            spec, store, k, layers = out.spec, common.model_store(), out.k, out.layers
            common.job_runner().start(
                lambda progress: views.recompute_flipped(spec, store, analysis, flip, k, layers, progress), key=key,
                name="Recompute flipped influences",
            )
            st.rerun()
        common.job_panel(key)
        st.stop()
    after = job.result
    method = "recomputed"
before, after = before * out.scale, after * out.scale  # the sidebar's unit (overlaps and signs do not change)

TOP_K = min(10, n_train)
overlap = views.top_k_overlap(before, after, TOP_K)
cols = st.columns(4)
cols[0].metric("Flipped training reviews", int(flip.sum()))
cols[1].metric("Explanations that change", f"{int((overlap < 1).sum())} of {len(overlap)}",
               help=f"Test reviews whose {TOP_K} most helpful training reviews are no longer the same set after the "
                    "flip: their explanation on the Explain page would change.")
cols[2].metric(f"Top-{TOP_K} helpers kept", f"{overlap.mean():.0%}" if len(overlap) else "–",
               help=f"On average, the share of a test review's {TOP_K} most helpful training reviews that stay among "
                    f"its top {TOP_K} after the flip (100% = every explanation unchanged).")
cols[3].metric("Method", method, help="Layers: the view's selection, before and after.")

q_count = c4.number_input("Test reviews shown", 1, max(1, analysis.scores.n_test), min(20, analysis.scores.n_test),
                          key="fl_rows", bind="query-params")
rows = np.arange(min(int(q_count), analysis.scores.n_test))
cols_shown = np.flatnonzero(flip)
others = np.argsort(-np.abs(before).sum(axis=0))
cols_shown = np.concatenate([cols_shown[:60], [j for j in others if not flip[j]][: max(0, 80 - min(60, len(cols_shown)))]])
cols_shown = np.sort(cols_shown.astype(int))
both = np.abs(np.concatenate([before[np.ix_(rows, cols_shown)].ravel(), after[np.ix_(rows, cols_shown)].ravel()]))
zmax = float(np.quantile(both, 0.95)) or float(both.max()) or 1.0  # shared and robust: a few extremes saturate
test_hover, train_hover = analysis.test_hover(), analysis.train_hover()
col_names = [f"{'⇄ ' if flip[j] else ''}train {j}" for j in cols_shown]
common_args = {
    "row_hover": [test_hover[i] for i in rows],
    "col_hover": [train_hover[j] + (" · label flipped" if flip[j] else "") for j in cols_shown],
    "col_names": col_names,
    "colorbar_title": out.unit_label,
}
st.caption("Columns marked ⇄ are flipped; both heatmaps share one colour scale. Up to 60 flipped and the most "
           "influential other training reviews are shown.")
left, right = st.columns(2)
with left:
    common.figure(figures.influence_heatmap(before[np.ix_(rows, cols_shown)], zmax=zmax, title="Original labels",
                                            **common_args), "flip_original", key="fl_before")
with right:
    common.figure(figures.influence_heatmap(after[np.ix_(rows, cols_shown)], zmax=zmax, title="Corrupted labels",
                                            **common_args), "flip_corrupted", key="fl_after")
difference = after - before
common.figure(
    figures.influence_heatmap(difference[np.ix_(rows, cols_shown)], title="Difference (corrupted − original)",
                              **{**common_args, "colorbar_title": f"change in {out.unit_label}"}),
    "flip_difference", key="fl_diff",
)
common.figure(figures.before_after_scatter(before, after, flip, title="Before vs after, every pair"),
              "flip_scatter", key="fl_scatter")

st.subheader("Flipped reviews")
flipped_idx = np.flatnonzero(flip)
frame = common.reviews_table(analysis, "train", flipped_idx)
frame[f"mean {out.unit_label} before"] = before[:, flipped_idx].mean(axis=0)
frame[f"mean {out.unit_label} after"] = after[:, flipped_idx].mean(axis=0)
frame[f"top-{TOP_K} helper for, before"] = views.helper_counts(before, flipped_idx, TOP_K)
frame[f"top-{TOP_K} helper for, after"] = views.helper_counts(after, flipped_idx, TOP_K)
common.table(pd.DataFrame(frame), "flipped_reviews", key="fl_table")
