"""Views of an analysis: label flips over a layer subset (a 3-class tiny model), the Tour's story, the ranking
the Mislabel finder starts with, and how much flipped labels change each test review's explanation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from explorer import views
from explorer.analysis import Analysis
from influence_core import EngineConfig, InfluenceEngine, ScoreTable
from tests.conftest import TEXTS, minilm_path, tiny_bert

CLASSES = ["neg", "neutral", "pos"]
LABELS3 = [2, 0, 2, 0, 1, 2, 1]


def _frame(texts, labels, **extra) -> pd.DataFrame:
    return pd.DataFrame({"row_id": np.arange(len(texts)), "text": list(texts), "label": list(labels), **extra})


# ------------------------------------------------------------------------------------------ label flips
class _Store:
    """What recompute_flipped needs of a ModelStore: the engine of a spec."""

    def __init__(self, engine):
        self._engine = engine

    def engine(self, spec):
        return self._engine


@pytest.fixture(scope="module")
def three_classes():
    from transformers import AutoTokenizer

    config = EngineConfig(layers="all", dtype="float64", damping=1e-3, batch_size=4)
    engine = InfluenceEngine(tiny_bert(num_labels=3), AutoTokenizer.from_pretrained(minilm_path()), config)
    engine.fit(TEXTS, LABELS3)
    test_texts, test_labels = TEXTS[:3], [2, 0, 1]
    table = engine.score(test_texts, test_labels, TEXTS, LABELS3, dampings=[1e-3, 1e-1])
    analysis = Analysis(spec=None, scores=table, train=_frame(TEXTS, LABELS3), test=_frame(test_texts, test_labels),
                        label_names=CLASSES)
    return analysis, _Store(engine)


def test_recompute_flipped_sums_the_same_layers_as_before(three_classes):
    analysis, store = three_classes
    layers = analysis.scores.layers[-3:]  # a subset: the last encoder layer's output, the pooler, the classifier
    before = analysis.influence(1, layers)
    nothing = np.zeros(analysis.scores.n_train, dtype=bool)
    after = views.recompute_flipped(None, store, analysis, nothing, 1, layers)
    np.testing.assert_allclose(after, before, rtol=1e-8, atol=1e-12)
    # over all layers the sum is different: "after" summed over all layers was compared with "before" over a subset
    assert not np.allclose(views.recompute_flipped(None, store, analysis, nothing, 1, None), before)

    flip = nothing.copy()
    flip[2] = True  # pos -> neg (the next class, cyclically)
    flipped = views.recompute_flipped(None, store, analysis, flip, 1, layers)
    np.testing.assert_allclose(np.delete(flipped, 2, axis=1), np.delete(before, 2, axis=1), rtol=1e-8, atol=1e-12)
    assert not np.allclose(flipped[:, 2], before[:, 2])
    assert views.flipped_labels(np.array([2, 0, 1]), np.array([True, True, False]), 3).tolist() == [0, 1, 1]


# ------------------------------------------------------------------------------------------ explanations change
def test_top_k_overlap_on_a_small_example():
    before = np.array([[3.0, 2.0, 1.0, 0.0],
                       [0.0, 1.0, 2.0, 3.0]])
    after = before.copy()
    after[:, 0] *= -1  # review 0 flipped: it was test 0's best helper and test 1's worst
    # test 0: top-2 {0, 1} -> {1, 2}; test 1: {3, 2} both times
    np.testing.assert_allclose(views.top_k_overlap(before, after, 2), [0.5, 1.0])
    np.testing.assert_allclose(views.top_k_overlap(before, after, 4), [1.0, 1.0])  # every review is in a top 4
    assert views.top_helpers(before, 2).tolist() == [[0, 1], [3, 2]]
    assert views.helper_counts(before, [0, 3], 2).tolist() == [1, 1]
    assert views.helper_counts(after, [0, 3], 2).tolist() == [0, 1]


def test_changed_explanations_are_not_the_flipped_share():
    # a binary closed form flips the sign of every pair of a flipped column: the old "pairs that change sign" was
    # always (flipped columns) x (test reviews). Which explanations change depends on where the flipped reviews rank.
    rng = np.random.default_rng(0)
    pairwise = rng.normal(size=(1, 1, 6, 20))
    pairwise[0, 0, :3, 5] = 50.0  # review 5 is the top helper of tests 0-2 only
    table = ScoreTable(dampings=np.array([1e-3]), layers=["a"], pairwise=pairwise, self_influence=None,
                       test_self_influence=np.ones((1, 1, 6)), test_probs=np.full((6, 2), 0.5),
                       train_probs=np.tile([0.3, 0.7], (20, 1)), test_labels=np.zeros(6, int),
                       train_labels=np.ones(20, int))
    flip = np.zeros(20, dtype=bool)
    flip[5] = True
    before, after = table.total(0), table.flipped(flip).total(0)
    assert int(np.sum(np.sign(before) * np.sign(after) < 0)) == 6  # every pair of column 5: says nothing
    overlap = views.top_k_overlap(before, after, 3)
    assert np.flatnonzero(overlap < 1).tolist()[:3] == [0, 1, 2]
    np.testing.assert_allclose(overlap[:3], 2 / 3)


# ------------------------------------------------------------------------------------------ the Tour
def _synthetic_analysis(seed: int = 3, n_test: int = 5, n_train: int = 12) -> Analysis:
    rng = np.random.default_rng(seed)
    table = ScoreTable(
        dampings=np.array([1e-3, 1e-1]), layers=["a", "b"], pairwise=rng.normal(size=(2, 2, n_test, n_train)),
        self_influence=rng.random((2, 2, n_train)), test_self_influence=rng.random((2, 2, n_test)) + 0.5,
        test_probs=rng.dirichlet([1, 1], n_test), train_probs=rng.dirichlet([1, 1], n_train),
        test_labels=rng.integers(0, 2, n_test), train_labels=rng.integers(0, 2, n_train),
    )
    train = _frame([f"train {j}" for j in range(n_train)], table.train_labels)
    test = _frame([f"test {i}" for i in range(n_test)], table.test_labels)
    return Analysis(spec=None, scores=table, train=train, test=test, label_names=["negative", "positive"])


def test_the_finder_starts_with_the_combined_ranking():
    analysis = _synthetic_analysis()
    names = list(views.rankings(analysis, 0, ["b"]))
    assert names[0] != "combined"  # so "the first entry" would have been self-influence
    assert views.default_ranking(names) == "combined"
    assert views.default_ranking(["loss", "self_influence"]) == "loss"


def test_tour_story_shows_the_finders_first_and_the_most_harmful():
    analysis = _synthetic_analysis()
    layers = ["b"]
    combined = views.rankings(analysis, 1, layers)["combined"]
    first = int(np.argmax(combined))
    most_self = int(np.argmax(analysis.scores.self_total(1, layers)))
    assert first != most_self
    # the answer key marks the most self-influential review: the old Tour picked it because it was planted
    analysis.train["planted_error"] = np.arange(len(analysis.train)) == most_self

    story = views.tour_story(analysis, 1, layers)
    matrix = analysis.influence(1, layers)
    assert story.ranking == "combined" and story.suspect == first
    assert story.suspect_planted is False
    assert story.victim == int(np.argmin(matrix[:, first]))
    row = matrix[story.victim]
    assert story.most_harmful == int(np.argmin(row)) and row[story.most_harmful] == row.min()
    assert story.most_helpful == int(np.argmax(row))
    assert story.bars[0] == story.most_helpful and story.bars[-1] == story.most_harmful
    assert row[story.bars[-2]] > row[story.bars[-1]]  # the second most harmful comes before the most harmful

    analysis.train["planted_error"] = np.arange(len(analysis.train)) == first
    assert views.tour_story(analysis, 1, layers).suspect_planted is True
    assert views.tour_story(analysis.__class__(**{**analysis.__dict__, "train": analysis.train.drop(
        columns="planted_error")}), 1, layers).suspect_planted is None


def test_token_scores_add_up_to_the_pairwise_score_over_the_chosen_layers(three_classes):
    from explorer.highlight import display_tokens

    analysis, store = three_classes
    engine = store.engine(None)
    layers = analysis.scores.layers[-3:]
    tokens = engine.token_influence(TEXTS[0], 2, TEXTS[2], LABELS3[2], damping=1e-1, layers=layers)
    expected = analysis.influence(1, layers)[0, 2]
    assert tokens.scores.sum() == pytest.approx(expected, rel=1e-8)
    assert tokens.pooled != 0  # the pooler and classifier are among the chosen layers
    pieces = display_tokens(tokens.tokens, tokens.scores, pooled=tokens.pooled)
    assert pieces[0].chip and sum(p.score for p in pieces) == pytest.approx(expected, rel=1e-8)


def test_counterfactual_sentence_gives_a_verdict_only_beyond_the_spread():
    from influence_core.training.retrain import CounterfactualResult

    def check(harmful, random_, full=(0.5, 0.5)):
        return CounterfactualResult("x", 1, 5, [1], [[3], [4]], seeds=list(range(len(full))), losses_full=list(full),
                                    losses_minus_harmful=list(harmful), losses_minus_random=[list(r) for r in random_],
                                    predicted_change=-0.1, harmful_influence=[-1.0])

    clear = check([0.10, 0.12], [[0.50, 0.52], [0.49, 0.51]])
    assert clear.verdict == "lower" and "lowered the loss more than chance" in views.counterfactual_sentence(clear)
    noisy = check([0.30, 0.70], [[0.20, 0.80], [0.60, 0.40]])
    assert noisy.verdict == "within noise" and "within the noise" in views.counterfactual_sentence(noisy)
    worse = check([0.90, 0.91], [[0.50, 0.52], [0.49, 0.51]])
    assert worse.verdict == "higher" and "raised the loss" in views.counterfactual_sentence(worse)
    single = check([0.1], [[0.5, 0.5]], full=(0.5,))
    text = views.counterfactual_sentence(single)
    assert single.verdict == "too few retrains" and "No verdict" in text and "-0.400" in text


def test_the_estimate_heatmap_keeps_the_strongest_columns_with_their_values():
    from explorer.analysis import Estimate, Predictions

    rng = np.random.default_rng(0)
    matrix = rng.normal(size=(3, 8))
    matrix[:, 5] *= 50  # the strongest training review
    train = pd.DataFrame({"row_id": range(8), "text": [f"train <{j}>" for j in range(8)], "label": [0, 1] * 4})
    test = pd.DataFrame({"row_id": range(3), "text": ["a", "b", "c"], "label": [0, 1, 1]})
    predictions = Predictions(test=test, test_probs=np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]]),
                              label_names=["neg", "pos"], n_train=8)
    fig, shown = views.estimate_heatmap(Estimate(matrix=matrix, train=train, damping=10.0), predictions,
                                        max_columns=4)
    keep = np.sort(np.argsort(-np.abs(matrix).sum(axis=0))[:4])
    assert shown == 4 and 5 in keep
    np.testing.assert_allclose(np.asarray(fig.data[0].z, dtype=float), matrix[:, keep])
    assert list(fig.data[0].x) == [f"train {j}" for j in keep]
    column = list(keep).index(5)
    assert fig.data[0].customdata[0][column][1] == "train &lt;5&gt; · label pos"  # escaped text and its label
