"""Plotly figure builders for the explorer and the HTML report: pure functions, data in, figure out.

No Streamlit here and no theme: figures leave colours of paper, fonts and grid to the caller
(``st.plotly_chart(theme="streamlit")`` in the app, ``template="plotly_white"`` in the report), so they
look right in light and dark themes. Influence always uses one diverging scale centred at zero:
blue = positive = helpful (up-weighting the training review lowers the test review's loss),
red = negative = harmful. Review texts that reach hover labels are HTML-escaped (plotly renders a
subset of HTML in hover text).
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from explorer.highlight import snippet

INFLUENCE_SCALE = "RdBu"  # red (negative, harmful) -> white (0) -> blue (positive, helpful)
HELPFUL = "rgb(33,102,172)"
HARMFUL = "rgb(178,24,43)"
NEUTRAL = "rgb(127,127,127)"
SIGN_NOTE = "positive = helpful, negative = harmful"
TOP_RIGHT_LEGEND = {"orientation": "h", "x": 1, "xanchor": "right", "y": 1.02, "yanchor": "bottom"}  # clear of titles
MAX_HOVER_CELLS = 250_000  # above this, hover shows indices only (per-cell text would bloat the page)


def hover_text(text: object, label: object = None, prediction: object = None, *, max_chars: int = 90) -> str:
    """One review as an escaped hover line: ``"snippet…" · label pos · predicted neg``."""
    parts = [html.escape(snippet(text, max_chars))]
    if label is not None and label == label:
        parts.append(f"label {html.escape(str(label))}")
    if prediction is not None and prediction == prediction:
        parts.append(f"predicted {html.escape(str(prediction))}")
    return " · ".join(parts)


def order_indices(matrix: np.ndarray, how: str = "none", axis: int = 0) -> np.ndarray:
    """An ordering of the rows (``axis=0``) or columns (``axis=1``) of ``matrix`` for display.

    Args:
        matrix: ``[n_rows, n_cols]`` influence scores.
        how: ``"none"`` (original order), ``"sort"`` (by mean influence, most helpful first) or
            ``"cluster"`` (hierarchical clustering, average linkage on correlation distance, so rows with
            similar influence patterns sit together).
        axis: 0 to order rows, 1 to order columns.

    Returns:
        ``[n]`` integer positions.
    """
    values = np.asarray(matrix, dtype=float)
    if axis == 1:
        values = values.T
    n = values.shape[0]
    if how == "none":
        return np.arange(n)
    if how == "sort":
        return np.argsort(-np.nan_to_num(values.mean(axis=1)), kind="stable")
    if how == "cluster":
        if n < 3:
            return np.arange(n)
        from scipy.cluster.hierarchy import leaves_list, linkage
        from scipy.spatial.distance import pdist

        data = np.nan_to_num(values)
        # correlation distance is undefined for a constant row; euclidean is the fallback then
        distances = pdist(data, metric="correlation") if np.all(data.std(axis=1) > 0) else pdist(data)
        distances = np.nan_to_num(distances, nan=1.0, posinf=1.0)
        return leaves_list(linkage(distances, method="average"))
    raise ValueError(f"unknown ordering {how!r}: use none, sort or cluster")


def influence_heatmap(
    matrix: np.ndarray,
    *,
    row_hover: Sequence[str] | None = None,
    col_hover: Sequence[str] | None = None,
    row_names: Sequence[str] | None = None,
    col_names: Sequence[str] | None = None,
    title: str = "",
    zmax: float | None = None,
    colorbar_title: str = "influence",
    height: int | None = None,
) -> go.Figure:
    """Test x train influence as a heatmap on a diverging scale centred at 0.

    Args:
        matrix: ``[n_test, n_train]``; positive = helpful, negative = harmful.
        row_hover, col_hover: escaped hover lines per test / train review (see :func:`hover_text`).
        row_names, col_names: axis tick labels (defaults ``test 0``, ``train 0``, ...); must be unique.
        zmax: symmetric colour range ``[-zmax, zmax]``; pass a shared value to compare figures. By default the
            95th percentile of ``|matrix|``, so a few extreme pairs do not wash out the rest (beyond it colours
            saturate; hover still shows the exact value).
        colorbar_title: the colour bar's title.
    """
    z = np.asarray(matrix, dtype=float)
    n_rows, n_cols = z.shape
    rows = list(row_names) if row_names is not None else [f"test {i}" for i in range(n_rows)]
    cols = list(col_names) if col_names is not None else [f"train {j}" for j in range(n_cols)]
    if zmax is None:
        finite = np.abs(z[np.isfinite(z)])
        zmax = float(np.quantile(finite, 0.95)) or float(finite.max()) if finite.size else 1.0
    zmax = zmax or 1.0
    trace = go.Heatmap(
        z=z,
        x=cols,
        y=rows,
        zmid=0.0,
        zmin=-zmax,
        zmax=zmax,
        colorscale=INFLUENCE_SCALE,
        colorbar={"title": {"text": f"{colorbar_title}<br><sub>+ helpful / − harmful</sub>"}},
        xgap=0,
        ygap=0,
    )
    if row_hover is not None and col_hover is not None and z.size <= MAX_HOVER_CELLS:
        custom = np.empty((n_rows, n_cols, 2), dtype=object)
        custom[:, :, 0] = np.asarray(list(row_hover), dtype=object)[:, None]
        custom[:, :, 1] = np.asarray(list(col_hover), dtype=object)[None, :]
        trace.customdata = custom
        trace.hovertemplate = (
            "<b>%{y}</b> %{customdata[0]}<br><b>%{x}</b> %{customdata[1]}<br>influence %{z:.4g}<extra></extra>"
        )
    else:
        trace.hovertemplate = "%{y} × %{x}<br>influence %{z:.4g}<extra></extra>"
    fig = go.Figure(trace)
    fig.update_layout(
        title={"text": html.escape(title)} if title else None,
        xaxis={"title": "training reviews", "showticklabels": n_cols <= 40, "type": "category"},
        yaxis={"title": "test reviews", "showticklabels": n_rows <= 40, "type": "category", "autorange": "reversed"},
        margin={"l": 10, "r": 10, "t": 50 if title else 20, "b": 10},
        height=height or int(min(max(260, 18 * n_rows + 140), 900)),
    )
    return fig


def confusion_matrix_figure(matrix: np.ndarray, label_names: Sequence[str], *, title: str = "") -> go.Figure:
    """Counts ``[C, C]`` with true labels as rows and predictions as columns, annotated."""
    counts = np.asarray(matrix)
    names = [html.escape(str(n)) for n in label_names]
    fig = go.Figure(
        go.Heatmap(
            z=counts,
            x=[f"pred {n}" for n in names],
            y=[f"true {n}" for n in names],
            colorscale="Blues",
            text=counts,
            texttemplate="%{text}",
            showscale=False,
            hovertemplate="true %{y}<br>%{x}<br>%{z} reviews<extra></extra>",
        )
    )
    fig.update_layout(
        title={"text": html.escape(title)} if title else None,
        yaxis={"autorange": "reversed", "type": "category"},
        xaxis={"type": "category", "side": "bottom"},
        margin={"l": 10, "r": 10, "t": 40 if title else 10, "b": 10},
        height=120 + 60 * len(names),
    )
    return fig


def confidence_histogram(confidence: np.ndarray, correct: np.ndarray, *, title: str = "") -> go.Figure:
    """The model's probability for its predicted class ``[n]``, split into right and wrong predictions."""
    confidence = np.asarray(confidence, dtype=float)
    correct = np.asarray(correct, dtype=bool)
    fig = go.Figure()
    bins = {"start": 0.0, "end": 1.0001, "size": 0.05}
    fig.add_histogram(x=confidence[correct], name="correct", marker_color=HELPFUL, xbins=bins, opacity=0.8)
    fig.add_histogram(x=confidence[~correct], name="wrong", marker_color=HARMFUL, xbins=bins, opacity=0.8)
    fig.update_layout(
        barmode="stack",
        title={"text": html.escape(title)} if title else None,
        xaxis={"title": "confidence (probability of the predicted class)", "range": [0, 1.0001]},
        yaxis={"title": "test reviews"},
        legend=TOP_RIGHT_LEGEND,
        margin={"l": 10, "r": 10, "t": 40, "b": 10},
        height=300,
    )
    return fig


def influence_bars(
    scores: Sequence[float], names: Sequence[str], hover: Sequence[str] | None = None, *, title: str = "",
    axis_title: str = "influence",
) -> go.Figure:
    """Horizontal bars for a few training reviews' influence on one prediction (blue helpful, red harmful).

    ``axis_title``: what the values are (raw influence, or the predicted change in loss if removed)."""
    values = np.asarray(scores, dtype=float)
    fig = go.Figure(
        go.Bar(
            x=values,
            y=[html.escape(str(name)) for name in names],
            orientation="h",
            marker_color=[HELPFUL if v >= 0 else HARMFUL for v in values],
            customdata=list(hover) if hover is not None else None,
            hovertemplate=("%{y}: %{x:.4g}<br>%{customdata}<extra></extra>" if hover is not None else None),
        )
    )
    fig.update_layout(
        title={"text": html.escape(title)} if title else None,
        xaxis={"title": f"{html.escape(axis_title)} ({SIGN_NOTE})", "zeroline": True},
        yaxis={"autorange": "reversed", "type": "category"},
        margin={"l": 10, "r": 10, "t": 40 if title else 10, "b": 10},
        height=120 + 28 * len(values),
    )
    return fig


def layerwise_bars(
    by_layer: Mapping[str, np.ndarray],
    *,
    names: Sequence[str] | None = None,
    hover: Sequence[str] | None = None,
    title: str = "",
    zmax: float | None = None,
    colorbar_title: str = "influence",
) -> go.Figure:
    """One test review's influence per layer and training review, as one compact heatmap (layers x reviews).

    One chart with one x axis instead of a bar chart per layer (pyDVL's notebook): rows are the layers (short
    names, in the caller's order), columns the training reviews, colours the diverging influence scale.

    Args:
        by_layer: ``{layer: [n_train]}`` influence of each training review through that layer; the x order
            is the caller's (sort it by total influence first).
        names: x labels ``[n_train]``; hover: escaped hover lines ``[n_train]``.
        zmax: symmetric colour range; default the 95th percentile of ``|influence|`` (beyond it colours saturate).
    """
    layers = list(by_layer)
    if not layers:
        return empty_figure("No layers selected.")
    z = np.vstack([np.asarray(by_layer[layer], dtype=float).reshape(-1) for layer in layers])  # [L, n_train]
    n = z.shape[1]
    x = [html.escape(str(name)) for name in names] if names is not None else [f"train {j}" for j in range(n)]
    y = [html.escape(short_layer_name(name)) for name in layers]
    if zmax is None:
        finite = np.abs(z[np.isfinite(z)])
        zmax = (float(np.quantile(finite, 0.95)) or float(finite.max())) if finite.size else 1.0
    zmax = zmax or 1.0
    custom = None
    if hover is not None:
        custom = [list(hover) for _ in layers]
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=x,
            y=y,
            colorscale=INFLUENCE_SCALE,
            zmid=0,
            zmin=-zmax,
            zmax=zmax,
            customdata=custom,
            colorbar={"title": {"text": html.escape(colorbar_title)}},
            hovertemplate="%{y} · %{x}: %{z:.4g}" + ("<br>%{customdata}" if custom is not None else "")
            + "<extra></extra>",
        )
    )
    fig.update_layout(
        title={"text": html.escape(title)} if title else None,
        xaxis={"type": "category", "showticklabels": n <= 60, "title": f"training review ({SIGN_NOTE})"},
        yaxis={"type": "category", "autorange": "reversed"},
        height=max(220, 24 * len(layers) + 140),
        margin={"l": 10, "r": 10, "t": 40 if title else 10, "b": 10},
    )
    return fig


def layer_share_figure(shares: Mapping[str, float], *, title: str = "") -> go.Figure:
    """Each layer's share of the total absolute influence (values in [0, 1], summing to 1)."""
    layers = list(shares)
    values = np.asarray([shares[name] for name in layers], dtype=float)
    fig = go.Figure(
        go.Bar(
            x=values,
            y=[html.escape(short_layer_name(name)) for name in layers],
            orientation="h",
            marker_color=NEUTRAL,
            text=[f"{v:.0%}" for v in values],
            textposition="auto",
            hovertemplate="%{y}: %{x:.1%} of |influence|<extra></extra>",
        )
    )
    fig.update_layout(
        title={"text": html.escape(title)} if title else None,
        xaxis={"title": "share of total |influence|", "tickformat": ".0%", "range": [0, max(1e-9, values.max()) * 1.1]},
        yaxis={"autorange": "reversed", "type": "category"},
        margin={"l": 10, "r": 10, "t": 40 if title else 10, "b": 10},
        height=120 + 26 * len(layers),
    )
    return fig


def before_after_scatter(
    before: np.ndarray,
    after: np.ndarray,
    flipped: np.ndarray,
    *,
    max_points: int = 20_000,
    seed: int = 0,
    title: str = "",
) -> go.Figure:
    """Each (test, train) pair's influence before vs after corrupting labels, flipped columns highlighted.

    Args:
        before, after: ``[n_test, n_train]`` influence with the original and the corrupted labels.
        flipped: ``[n_train]`` bool, the training reviews whose label was flipped.
        max_points: pairs drawn at most (a random subset beyond that, same seed each time).
    """
    before = np.asarray(before, dtype=float)
    after = np.asarray(after, dtype=float)
    column_flipped = np.broadcast_to(np.asarray(flipped, dtype=bool)[None, :], before.shape)
    x, y, f = before.ravel(), after.ravel(), column_flipped.ravel()
    if x.size > max_points:
        keep = np.random.default_rng(seed).choice(x.size, max_points, replace=False)
        x, y, f = x[keep], y[keep], f[keep]
    fig = go.Figure()
    for mask, name, colour in ((~f, "label kept", NEUTRAL), (f, "label flipped", HARMFUL)):
        fig.add_scattergl(
            x=x[mask],
            y=y[mask],
            mode="markers",
            name=name,
            marker={"color": colour, "size": 5, "opacity": 0.6},
            hovertemplate="before %{x:.4g}<br>after %{y:.4g}<extra>" + name + "</extra>",
        )
    finite = np.concatenate([x[np.isfinite(x)], y[np.isfinite(y)]])
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (-1.0, 1.0)
    fig.add_scatter(x=[lo, hi], y=[lo, hi], mode="lines", name="no change", line={"color": NEUTRAL, "dash": "dot"})
    fig.update_layout(
        title={"text": html.escape(title)} if title else None,
        xaxis={"title": "influence with original labels", "zeroline": True},
        yaxis={"title": "influence with corrupted labels", "zeroline": True},
        legend=TOP_RIGHT_LEGEND,
        margin={"l": 10, "r": 10, "t": 40, "b": 10},
        height=420,
    )
    return fig


def before_after_bars(
    before: np.ndarray, after: np.ndarray, names: Sequence[str], hover: Sequence[str] | None = None, *, title: str = ""
) -> go.Figure:
    """One training review's influence on several test reviews ``[n]`` before and after a change, as paired bars.

    ``before`` is grey; ``after`` is blue where helpful and red where harmful, drawn as two traces ("after:
    helpful", "after: harmful") in one slot so that every legend entry has the colour of its bars. Bars keep the
    caller's order.
    """
    before = np.asarray(before, dtype=float)
    after = np.asarray(after, dtype=float)
    labels = [html.escape(str(name)) for name in names]
    custom = list(hover) if hover is not None else None
    template = "%{x}: %{y:.4g}" + ("<br>%{customdata}" if custom is not None else "")
    fig = go.Figure()
    fig.add_bar(x=labels, y=before, name="before", marker_color=NEUTRAL, customdata=custom, offsetgroup="before",
                hovertemplate=template + "<extra>before</extra>")
    for name, colour, keep in (("after: helpful", HELPFUL, after >= 0), ("after: harmful", HARMFUL, after < 0)):
        fig.add_bar(x=labels, y=np.where(keep, after, np.nan), name=name, marker_color=colour, customdata=custom,
                    offsetgroup="after", hovertemplate=template + f"<extra>{name}</extra>", showlegend=bool(keep.any()))
    fig.update_layout(
        barmode="group",
        title={"text": html.escape(title)} if title else None,
        xaxis={"type": "category", "showticklabels": len(labels) <= 40},
        yaxis={"title": f"influence ({SIGN_NOTE})", "zeroline": True},
        legend=TOP_RIGHT_LEGEND,
        margin={"l": 10, "r": 10, "t": 50, "b": 10},
        height=380,
    )
    return fig


def counterfactual_changes(check, *, title: str = "") -> go.Figure:
    """The counterfactual check's changes in test loss, one dot per retrain, against the full model of the same seed.

    ``check``: :class:`influence_core.training.retrain.CounterfactualResult`. Two columns: without the ``k`` most
    harmful reviews (one dot per seed; blue when their mean is below that of the random removals, red above) and
    without ``k`` random ones (grey, one dot per seed and draw); each mean is a bar outline, zero (the full model)
    a dashed line.
    """
    harmful, random_ = np.asarray(check.harmful_changes), np.asarray(check.random_changes)
    h_name, r_name = f"minus {check.k} most harmful", f"minus {check.k} random"
    colour = HELPFUL if harmful.mean() < random_.mean() else HARMFUL
    draws = len(check.random)
    fig = go.Figure()
    for name, values, col, hover in (
        (h_name, harmful, colour, [f"seed {s}" for s in check.seeds]),
        (r_name, random_, NEUTRAL, [f"seed {s}, draw {d + 1}" for s in check.seeds for d in range(draws)]),
    ):
        fig.add_bar(x=[name], y=[float(values.mean())], marker={"color": "rgba(0,0,0,0)", "line": {"color": col,
                                                                                                    "width": 2}},
                    hovertemplate=f"{name} (mean): %{{y:.4f}}<extra></extra>", showlegend=False)
        fig.add_scatter(x=[name] * len(values), y=values.tolist(), mode="markers", marker={"color": col, "size": 10},
                        text=hover, hovertemplate="%{text}: %{y:.4f}<extra></extra>", showlegend=False)
    fig.add_hline(y=0.0, line_dash="dash", line_color=NEUTRAL, annotation_text="full model (same seed)",
                  annotation_position="top left")
    fig.update_layout(
        title={"text": html.escape(title)} if title else None,
        xaxis={"type": "category"},
        yaxis={"title": "change in test loss"},
        margin={"l": 10, "r": 10, "t": 50, "b": 10},
        height=360,
    )
    return fig


def stability_heatmap(stability: pd.DataFrame, metric: str = "spearman", *, title: str = "") -> go.Figure:
    """Correlation of influence between neighbouring damping values, per layer.

    Args:
        stability: ``ScoreTable.stability()``: columns ``layer, damping_from, damping_to, pearson, spearman``.
        metric: ``"pearson"`` or ``"spearman"``.
    """
    if stability.empty:
        return empty_figure("Compute at least two damping values to compare them.")
    frame = stability.copy()
    frame["step"] = [f"{a:.0e} → {b:.0e}" for a, b in zip(frame["damping_from"], frame["damping_to"], strict=True)]
    steps = list(dict.fromkeys(frame["step"]))
    layers = list(dict.fromkeys(frame["layer"]))
    table = frame.pivot_table(index="layer", columns="step", values=metric, aggfunc="first").reindex(
        index=layers, columns=steps
    )
    z = table.to_numpy(dtype=float)
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=steps,
            y=[html.escape(short_layer_name(name)) for name in layers],
            zmin=float(min(np.nanmin(z), 0.9)) if np.isfinite(z).any() else 0.0,
            zmax=1.0,
            colorscale="Viridis",
            text=np.round(z, 3),
            texttemplate="%{text}" if z.size <= 200 else None,
            colorbar={"title": {"text": metric}},
            hovertemplate="%{y}<br>damping %{x}<br>" + metric + " %{z:.4f}<extra></extra>",
        )
    )
    fig.update_layout(
        title={"text": html.escape(title)} if title else None,
        xaxis={"title": "neighbouring damping values", "type": "category"},
        yaxis={"autorange": "reversed", "type": "category"},
        margin={"l": 10, "r": 10, "t": 40 if title else 10, "b": 10},
        height=140 + 26 * len(layers),
    )
    return fig


def damping_curve(
    dampings: Sequence[float], values: Mapping[str, Sequence[float]], *, chosen: float | None = None, title: str = "",
    axis_title: str = "influence", marks: tuple[Sequence[float], Sequence[float]] | None = None,
) -> go.Figure:
    """Influence of one pair as a function of damping (log x axis), one line per layer or total.

    ``marks`` ``(x, y)``: points drawn over the curves (the values an analysis scored, to show they lie on them).
    """
    fig = go.Figure()
    fine = len(dampings) > 8  # a fine grid reads as a curve; a handful of values keep their markers
    for name, series in values.items():
        fig.add_scatter(
            x=list(dampings),
            y=list(series),
            mode="lines" if fine else "lines+markers",
            name=html.escape(short_layer_name(name)),
            line={"width": 3} if name == "total" else {"width": 1.5},
        )
    if marks is not None:
        fig.add_scatter(x=list(marks[0]), y=list(marks[1]), mode="markers", name="total, scored in the analysis",
                        marker={"size": 11, "symbol": "circle-open", "line": {"width": 2}, "color": "black"})
    if chosen is not None:
        fig.add_vline(x=chosen, line_dash="dot", line_color=NEUTRAL)
    fig.add_hline(y=0, line_color=NEUTRAL, line_width=1)
    fig.update_layout(
        title={"text": html.escape(title)} if title else None,
        xaxis={"title": "damping", "type": "log"},
        yaxis={"title": f"{html.escape(axis_title)} ({SIGN_NOTE})"},
        margin={"l": 10, "r": 10, "t": 40 if title else 10, "b": 10},
        height=380,
    )
    return fig


def sweep_figure(estimated: pd.DataFrame, exact: pd.DataFrame | None = None, *, fidelity: pd.DataFrame | None = None,
                 chosen: float | None = None, title: str = "") -> go.Figure:
    """How one test review's influences at each damping agree with those at the chosen one (log x axis).

    Args:
        estimated: ``explorer.sweep.agreement`` of the index estimates on a fine grid (lines).
        exact: The same from the exact scores at the computed dampings (markers), or None.
        fidelity: ``explorer.sweep.fidelity``: the index's Pearson with the exact scores at those dampings (grey
            diamonds: where they are low, the lines are not to be trusted), or None.
        chosen: The reference damping (a dotted line).
    """
    columns = ["pearson", "top_kept"]
    shown = [estimated[columns].to_numpy()] + ([exact[columns].to_numpy()] if exact is not None else []) \
        + ([fidelity[["pearson"]].to_numpy()] if fidelity is not None else [])
    lowest = float(np.nanmin(np.concatenate([values.ravel() for values in shown])))
    fig = go.Figure()
    series = (("pearson", "Pearson over all training reviews", HELPFUL),
              ("top_kept", "top-10 helpful and harmful kept", HARMFUL))
    for column, name, colour in series:
        fig.add_scatter(x=estimated["damping"], y=estimated[column], mode="lines", name=f"{name} (index)",
                        line={"color": colour, "width": 2}, legendgroup=column)
        if exact is not None:
            fig.add_scatter(x=exact["damping"], y=exact[column], mode="markers", name=f"{name} (exact)",
                            marker={"color": colour, "size": 10, "symbol": "circle-open", "line": {"width": 2}},
                            legendgroup=column)
    if fidelity is not None:
        fig.add_scatter(x=fidelity["damping"], y=fidelity["pearson"], mode="markers", name="index against exact",
                        marker={"color": NEUTRAL, "size": 10, "symbol": "diamond"})
    if chosen is not None:
        fig.add_vline(x=chosen, line_dash="dot", line_color=NEUTRAL)
    fig.update_layout(
        title={"text": html.escape(title)} if title else None,
        xaxis={"title": "damping", "type": "log"},
        yaxis={"title": "agreement (Pearson, share kept)", "range": [lowest - 0.05, 1.05]},
        legend=TOP_RIGHT_LEGEND,
        margin={"l": 10, "r": 10, "t": 60 if title else 40, "b": 10},
        height=380,
    )
    return fig


def ranking_curves(rankings: Mapping[str, np.ndarray], truth: np.ndarray) -> pd.DataFrame:
    """Precision at k and recall at k of several rankings against known mislabels.

    Args:
        rankings: ``{name: [n] scores}``; higher score = more suspicious (ranked first).
        truth: ``[n]`` bool, True where the label is known to be wrong.

    Returns:
        Long frame ``[ranking, k, precision, recall]`` for k = 1..n.
    """
    truth = np.asarray(truth, dtype=bool)
    n = truth.size
    total = max(int(truth.sum()), 1)
    rows = []
    k = np.arange(1, n + 1)
    for name, scores in rankings.items():
        order = np.argsort(-np.nan_to_num(np.asarray(scores, dtype=float), nan=-np.inf), kind="stable")
        hits = np.cumsum(truth[order])
        rows.append(pd.DataFrame({"ranking": name, "k": k, "precision": hits / k, "recall": hits / total}))
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=["ranking", "k", "precision", "recall"])


def ranking_curve_figure(
    curves: pd.DataFrame, metric: str = "recall", *, n_true: int | None = None, title: str = ""
) -> go.Figure:
    """Precision or recall at k (from :func:`ranking_curves`) for each ranking, k on the x axis."""
    fig = go.Figure()
    for name, group in curves.groupby("ranking", sort=False):
        fig.add_scatter(
            x=group["k"],
            y=group[metric],
            mode="lines",
            name=html.escape(str(name)),
            hovertemplate="k=%{x}<br>" + metric + " %{y:.2f}<extra>%{fullData.name}</extra>",
        )
    n = int(curves["k"].max()) if len(curves) else 1
    if n_true:
        fig.add_vline(x=n_true, line_dash="dot", line_color=NEUTRAL)
        fig.add_annotation(x=n_true, y=1.04, text=f"k = {n_true} true mislabels", showarrow=False, xanchor="left")
    fig.update_layout(
        title={"text": html.escape(title)} if title else None,
        # the interesting part is the top of the ranking: show up to 4x the number of true mislabels
        xaxis={"title": "k (reviews inspected, most suspicious first)", "range": [1, min(n, max(50, 4 * (n_true or 0)))]},
        yaxis={"title": f"{metric} at k", "range": [0, 1.08], "tickformat": ".0%"},
        legend={"orientation": "h", "x": 0, "y": -0.25, "yanchor": "top"},  # below: many rankings would cover the lines
        margin={"l": 10, "r": 10, "t": 40, "b": 10},
        height=420,
    )
    return fig


def empty_figure(message: str) -> go.Figure:
    """A blank figure that says why it is blank (instead of an empty axis)."""
    fig = go.Figure()
    fig.add_annotation(text=html.escape(message), showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
    fig.update_layout(
        xaxis={"visible": False}, yaxis={"visible": False}, height=200, margin={"l": 0, "r": 0, "t": 0, "b": 0}
    )
    return fig


def figure_html(fig: go.Figure, *, title: str = "figure") -> str:
    """A standalone HTML page for one figure, plotly.js inlined so it opens offline."""
    import plotly.io as pio

    styled = go.Figure(fig)
    if styled.layout.template is None or not styled.layout.template.layout:
        styled.update_layout(template="plotly_white")
    body = pio.to_html(styled, include_plotlyjs=True, full_html=False, config={"displaylogo": False})
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head>"
        f"<body style='font-family:sans-serif'>{body}</body></html>"
    )


def short_layer_name(name: str) -> str:
    """``bert.encoder.layer.3.output.dense`` -> ``layer.3.output.dense``: the part people recognise."""
    for marker in ("layers.", "layer."):
        position = name.find(marker)
        if position >= 0:
            return name[position:]
    return name


__all__ = [
    "INFLUENCE_SCALE",
    "SIGN_NOTE",
    "hover_text",
    "order_indices",
    "influence_heatmap",
    "confusion_matrix_figure",
    "confidence_histogram",
    "influence_bars",
    "layerwise_bars",
    "layer_share_figure",
    "before_after_scatter",
    "before_after_bars",
    "stability_heatmap",
    "damping_curve",
    "ranking_curves",
    "ranking_curve_figure",
    "empty_figure",
    "figure_html",
    "lds_bars",
]


def lds_bars(table: pd.DataFrame, *, ceiling: float | None = None, title: str = "") -> go.Figure:
    """LDS per scoring variant with its 95% interval as error bars (``table`` from ``LDSResult.table``: ``variant``,
    ``lds``, ``ci_low``, ``ci_high``, ``method``). The random control is grey; a dashed line marks the
    retraining-noise ceiling when known."""
    rows = table.reset_index(drop=True)
    lds = rows["lds"].astype(float).to_numpy()
    colors = ["#9e9e9e" if m == "random" else "#2166ac" for m in rows["method"]]
    fig = go.Figure(go.Bar(
        x=rows["variant"].astype(str), y=lds, marker_color=colors,
        error_y={"type": "data", "symmetric": False, "array": rows["ci_high"].astype(float).to_numpy() - lds,
                 "arrayminus": lds - rows["ci_low"].astype(float).to_numpy()},
        hovertemplate="%{x}<br>LDS %{y:.3f}<extra></extra>",
    ))
    if ceiling is not None and np.isfinite(ceiling):
        fig.add_hline(y=ceiling, line_dash="dash", annotation_text=f"retraining noise ceiling {ceiling:.2f}")
    fig.update_layout(title=title or None, yaxis_title="LDS (mean Spearman)", yaxis_range=[-1, 1],
                      margin={"l": 40, "r": 10, "t": 40 if title else 10, "b": 10}, height=380)
    return fig
