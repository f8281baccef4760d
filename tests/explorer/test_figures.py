import numpy as np
import pandas as pd
import pytest

from explorer import figures


@pytest.fixture
def matrix():
    rng = np.random.default_rng(0)
    return rng.normal(size=(5, 7))


def test_heatmap_is_diverging_centred_at_zero_with_escaped_hover(matrix):
    rows = [figures.hover_text(f"<b>test {i}</b>", "pos", "neg") for i in range(5)]
    cols = [figures.hover_text("<script>x</script>", 1, 0) for _ in range(7)]
    fig = figures.influence_heatmap(matrix, row_hover=rows, col_hover=cols, title="t")
    trace = fig.data[0]
    assert trace.type == "heatmap"
    np.testing.assert_array_equal(trace.z, matrix)
    assert list(trace.x) == [f"train {j}" for j in range(7)] and list(trace.y) == [f"test {i}" for i in range(5)]
    assert trace.zmid == 0 and trace.zmin == -trace.zmax
    assert trace.zmax == pytest.approx(np.quantile(np.abs(matrix), 0.95))  # robust: a few extremes saturate
    assert np.asarray(trace.customdata).shape == (5, 7, 2)
    assert "<script>" not in str(trace.customdata.tolist()) and "&lt;script&gt;" in trace.customdata[0][0][1]
    assert "label pos" in trace.customdata[0][0][0] and "predicted neg" in trace.customdata[0][0][0]
    assert list(fig.layout.yaxis.autorange) == list("reversed") or fig.layout.yaxis.autorange == "reversed"


def test_heatmap_shared_range_and_large_matrix_drops_text():
    big = np.zeros((600, 500))
    fig = figures.influence_heatmap(big, row_hover=["r"] * 600, col_hover=["c"] * 500, zmax=2.0)
    assert fig.data[0].customdata is None
    assert fig.data[0].zmax == 2.0
    assert fig.layout.xaxis.showticklabels is False


def test_order_indices(matrix):
    assert list(figures.order_indices(matrix, "none")) == [0, 1, 2, 3, 4]
    by_mean = figures.order_indices(matrix, "sort")
    means = matrix.mean(axis=1)[by_mean]
    assert np.all(np.diff(means) <= 0)
    cols = figures.order_indices(matrix, "cluster", axis=1)
    assert sorted(cols) == list(range(7))
    constant = np.ones((4, 3))
    assert sorted(figures.order_indices(constant, "cluster")) == [0, 1, 2, 3]
    with pytest.raises(ValueError):
        figures.order_indices(matrix, "random")


def test_small_figures_build():
    cm = figures.confusion_matrix_figure(np.array([[5, 1], [2, 7]]), ["neg", "<pos>"])
    assert "&lt;pos&gt;" in cm.data[0].x[1]
    hist = figures.confidence_histogram(np.array([0.9, 0.6, 0.55]), np.array([True, False, True]))
    assert len(hist.data) == 2
    bars = figures.influence_bars([0.5, -0.2], ["a", "b"], ["ha", "hb"])
    assert bars.data[0].marker.color == (figures.HELPFUL, figures.HARMFUL)
    share = figures.layer_share_figure({"bert.encoder.layer.0.output.dense": 0.7, "classifier": 0.3})
    assert share.data[0].y == ("layer.0.output.dense", "classifier")


def test_layerwise_bars_one_compact_heatmap_with_short_layer_names():
    by_layer = {"bert.encoder.layer.0.output.dense": np.array([1.0, -1.0, 0.5]), "classifier": np.array([0.1, 0.2, -0.3])}
    fig = figures.layerwise_bars(by_layer, names=["x", "y", "<z>"], hover=["1", "2", "3"])
    (heat,) = fig.data  # one chart, one x axis
    assert heat.type == "heatmap" and heat.y == ("layer.0.output.dense", "classifier")
    assert heat.x == ("x", "y", "&lt;z&gt;")
    np.testing.assert_array_equal(np.asarray(heat.z), [[1.0, -1.0, 0.5], [0.1, 0.2, -0.3]])
    assert heat.zmid == 0 and heat.zmin == -heat.zmax
    assert fig.layout.height < 400  # 14 layers used to stack 14 charts (4,000 px)
    assert figures.layerwise_bars({f"layer.{i}": np.ones(30) for i in range(14)}).layout.height <= 500
    assert figures.layerwise_bars({}).layout.annotations[0].text == "No layers selected."


def test_before_after_scatter_marks_flipped_columns(matrix):
    flipped = np.zeros(7, dtype=bool)
    flipped[2] = True
    fig = figures.before_after_scatter(matrix, -matrix, flipped)
    kept, flip, line = fig.data
    assert len(flip.x) == 5 and len(kept.x) == 30
    sub = figures.before_after_scatter(np.zeros((100, 100)), np.zeros((100, 100)), np.zeros(100, bool), max_points=50)
    assert len(sub.data[0].x) == 50


def test_before_after_bars_colour_the_after_bars_by_sign():
    fig = figures.before_after_bars(np.array([-1.0, 2.0]), np.array([1.0, -2.0]), ["a", "<b>"], ["h1", "h2"])
    before, helpful, harmful = fig.data
    assert before.marker.color == figures.NEUTRAL
    # every legend entry has the one colour of its bars
    assert (helpful.name, helpful.marker.color) == ("after: helpful", figures.HELPFUL)
    assert (harmful.name, harmful.marker.color) == ("after: harmful", figures.HARMFUL)
    np.testing.assert_array_equal(np.asarray(helpful.y, dtype=float), [1.0, np.nan])
    np.testing.assert_array_equal(np.asarray(harmful.y, dtype=float), [np.nan, -2.0])
    assert helpful.offsetgroup == harmful.offsetgroup != before.offsetgroup  # one "after" slot per test review
    assert before.x[1] == "&lt;b&gt;"


def test_counterfactual_changes_show_every_retrain_and_colour_the_harmful_mean():
    from influence_core.training.retrain import CounterfactualResult

    check = CounterfactualResult("x", 1, 5, [1, 2], [[3], [4]], seeds=[0, 1], losses_full=[0.5, 0.7],
                                 losses_minus_harmful=[0.3, 0.6], losses_minus_random=[[0.5, 0.6], [0.7, 0.8]],
                                 predicted_change=-0.1, harmful_influence=[-1.0, -2.0])
    fig = figures.counterfactual_changes(check, title="Review #3")
    dots = [t for t in fig.data if t.type == "scatter"]
    assert list(dots[0].y) == pytest.approx([-0.2, -0.1])  # paired with the full model of the same seed
    assert list(dots[1].y) == pytest.approx([0.0, 0.1, 0.0, 0.1])
    bars = [t for t in fig.data if t.type == "bar"]
    assert bars[0].y[0] == pytest.approx(-0.15) and bars[1].y[0] == pytest.approx(0.05)
    assert dots[0].marker.color == figures.HELPFUL and dots[1].marker.color == figures.NEUTRAL
    worse = CounterfactualResult("x", 1, 5, [1], [[3]], seeds=[0], losses_full=[0.2], losses_minus_harmful=[0.5],
                                 losses_minus_random=[[0.2]], predicted_change=-0.1, harmful_influence=[-1.0])
    assert [t for t in figures.counterfactual_changes(worse).data if t.type == "scatter"][0].marker.color == \
        figures.HARMFUL

def test_stability_heatmap_and_damping_curve():
    frame = pd.DataFrame(
        {
            "layer": ["total", "total", "l1", "l1"],
            "damping_from": [1e-4, 1e-3, 1e-4, 1e-3],
            "damping_to": [1e-3, 1e-2, 1e-3, 1e-2],
            "pearson": [0.99, 0.95, 0.9, 0.8],
            "spearman": [0.98, 0.97, 0.85, 0.7],
        }
    )
    fig = figures.stability_heatmap(frame, "spearman")
    assert np.asarray(fig.data[0].z).shape == (2, 2)
    assert fig.data[0].z[0][0] == 0.98
    assert figures.stability_heatmap(frame.iloc[:0]).layout.annotations
    curve = figures.damping_curve([1e-4, 1e-3], {"total": [1, 2], "l1": [0.5, 1]}, chosen=1e-3)
    assert len(curve.data) == 2 and curve.layout.xaxis.type == "log"


def test_ranking_curves_precision_and_recall():
    truth = np.array([True, False, True, False])
    curves = figures.ranking_curves({"perfect": np.array([4, 1, 3, 2]), "worst": np.array([1, 4, 2, 3])}, truth)
    perfect = curves[curves.ranking == "perfect"]
    assert list(perfect.precision) == [1.0, 1.0, pytest.approx(2 / 3), 0.5]
    assert list(perfect.recall) == [0.5, 1.0, 1.0, 1.0]
    worst = curves[curves.ranking == "worst"]
    assert list(worst.recall) == [0.0, 0.0, 0.5, 1.0]
    fig = figures.ranking_curve_figure(curves, "precision", n_true=2)
    assert len(fig.data) == 2


def test_figure_html_is_standalone_and_escaped():
    fig = figures.influence_bars([1.0], ["</script><script>alert(1)</script>"])
    page = figures.figure_html(fig, title="<t>")
    assert page.startswith("<!doctype html>") and "<title>&lt;t&gt;</title>" in page
    assert "</script><script>alert(1)" not in page
    assert "plotly" in page.lower() and len(page) > 1_000_000  # plotly.js inlined: opens offline
