"""Layers: how each layer contributes to one test review's influence (as in pyDVL's layerwise notebook)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from explorer import figures, views
from explorer import ui as common

common.ensure_frame()
st.title("Layers")
st.caption("Influence is a sum over layers. Which layers carry it, and do they agree? " + common.SIGN_HELP)

early = common.early_estimate()
if early is not None and early[0].by_layer is not None:  # the exact pass still runs: the index's estimate meanwhile
    estimate, predictions = early
    st.info("**Index estimate.** While the engine computes the exact scores (progress below), these are the "
            f"training-gradient index's per-layer estimates (raw influence, damping {estimate.damping:g}): each "
            "layer's score on the entries of its gradients of largest curvature. The exact layers and the per-layer "
            "heatmap replace this when they are done, and say how closely the two agreed.")
    c1, c2 = st.columns([3, 1])
    with c1:
        q = common.url_choice(st.selectbox, "Test review", range(len(predictions.test)), key="test",
                              format_func=lambda i: common.review_label(predictions, "test", i))
    n_bars = c2.number_input("Training reviews", 5, 200, 30, step=5, key="ly_n", bind="query-params",
                             help="The training reviews with the largest total |estimated influence|.")
    view = views.estimate_layers(estimate, int(q or 0), int(n_bars))
    st.subheader("Layerwise influence on one test review (index estimate)")
    common.figure(figures.layerwise_bars(view.by_layer, names=[f"#{j}" for j in view.columns], hover=view.hover,
                                         colorbar_title="influence (index estimate)"),
                  "layerwise_estimate", key="ly_bars_estimate")
    st.subheader("Each layer's share of total |influence| (index estimate)")
    common.figure(figures.layer_share_figure(view.shares), "layer_shares_estimate", key="ly_share_estimate")
    common.job_panel(common.frame().spec.key())
    st.stop()

out, analysis = common.require_analysis(rerun_when=common.estimate_ready)
scores = analysis.scores
layers = out.layers

c1, c2 = st.columns([3, 1])
with c1:
    q = common.url_choice(st.selectbox, "Test review", range(scores.n_test), key="test",
                          format_func=lambda i: common.review_label(analysis, "test", i))
n_bars = c2.number_input("Training reviews", 5, 200, 30, step=5, key="ly_n", bind="query-params",
                         help="The training reviews with the largest total |influence| on this test review.")
q = int(q or 0)

total = analysis.influence(out.k, layers)[q] * out.scale
top = np.argsort(-np.abs(total))[: int(n_bars)]
top = top[np.argsort(-total[top])]  # most helpful on the left, most harmful on the right
by_layer = {name: scores.pairwise[out.k, scores.layers.index(name), q, top] * out.scale for name in layers}
hover = analysis.train_hover()

st.subheader("Layerwise influence on one test review")
st.caption("One row per layer, one column per training review (most helpful on the left); the columns add up to "
           "the review's total influence.")
common.figure(
    figures.layerwise_bars(by_layer, names=[f"#{j}" for j in top], hover=[hover[j] for j in top],
                           colorbar_title=out.unit_label),
    f"layerwise_test_{q}", key="ly_bars",
)

layer_agreement = (analysis.meta.get("index") or {}).get("layers")
if layer_agreement:
    worst = min(layer_agreement, key=layer_agreement.get)
    st.caption(f"While these were computed the index's per-layer estimate was drawn; it agreed with the exact "
               f"scores per layer with median Pearson {min(layer_agreement.values()):.2f} "
               f"({common.short_layer(worst)}) to {max(layer_agreement.values()):.2f} over the test reviews.")

st.subheader("Each layer's share of total |influence|")
scope = st.radio("Over", ["this test review", "all test reviews"], horizontal=True, key="ly_scope", bind="query-params")
shares = views.layer_shares(scores, out.k, layers, q if scope == "this test review" else None)
common.figure(figures.layer_share_figure(shares), "layer_shares", key="ly_share")
common.table(
    pd.DataFrame({"layer": [common.short_layer(name) for name in shares], "share": list(shares.values())}),
    "layer_shares", key="ly_share_table", column_config={"share": st.column_config.NumberColumn(format="percent")},
)

st.subheader("Per-layer heatmap")
layer = st.selectbox("Layer", ["(choose a layer)", *layers], format_func=lambda n: n if n.startswith("(") else common.short_layer(n),
                     key="ly_layer", bind="query-params")
if layer and not layer.startswith("("):
    matrix = scores.pairwise[out.k, scores.layers.index(layer)] * out.scale
    keep = np.sort(np.argsort(-np.abs(matrix).sum(axis=0))[:200])
    test_hover = analysis.test_hover()
    common.figure(
        figures.influence_heatmap(
            matrix[:, keep], row_hover=test_hover, col_hover=[hover[j] for j in keep],
            col_names=[f"train {j}" for j in keep], title=common.short_layer(layer), colorbar_title=out.unit_label,
        ),
        "layer_heatmap", key="ly_heat",
    )
else:
    st.caption("Choose a layer to draw its test × train heatmap.")
