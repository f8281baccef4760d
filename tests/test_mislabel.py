"""Mislabel rankings: the grading math on hand-made arrays, the rankings on a small ScoreTable, the one-pass
trusted influence against the engine's pairwise scores, and the ``mislabels`` CLI on a tiny model folder."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from influence_core import EngineConfig, InfluenceEngine, ScoreTable, cli
from influence_core.errors import DataError
from influence_core.mislabel import (
    FALLBACK_PARTS,
    TrainingSignals,
    average_precision,
    combine,
    evaluate_rankings,
    mislabel_scores,
    negative_margins,
    percentile_ranks,
    precision_at_k,
    rank_order,
    rankings,
    recall_at_fraction,
    recall_curve,
    roc_auc,
    training_signals,
)
from tests.conftest import LABELS, TEXTS, minilm_path, tiny_bert


# ------------------------------------------------------------------------------------------ grading math
def test_roc_auc_and_average_precision_match_known_values():
    # the scikit-learn documentation's example: roc_auc_score = 0.75, average_precision_score = 0.8333
    scores, truth = np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])
    assert roc_auc(scores, truth) == pytest.approx(0.75)
    assert average_precision(scores, truth) == pytest.approx(5 / 6)
    # hits at ranks 1 and 3: AP = (1 + 2/3) / 2
    assert average_precision(np.array([0.9, 0.8, 0.7, 0.6, 0.5]), np.array([1, 0, 1, 0, 0])) == pytest.approx(5 / 6)


def test_ties_count_half_and_enter_together():
    scores, truth = np.array([1.0, 1.0, 0.0, 0.0]), np.array([1, 0, 1, 0])
    assert roc_auc(scores, truth) == pytest.approx(0.5)
    assert average_precision(scores, truth) == pytest.approx(0.5)
    assert roc_auc(np.ones(4), truth) == pytest.approx(0.5)


def test_perfect_reversed_and_degenerate_rankings():
    truth = np.array([True, True, False, False, False])
    perfect = np.array([5.0, 4, 3, 2, 1])
    assert roc_auc(perfect, truth) == 1.0 and average_precision(perfect, truth) == 1.0
    assert roc_auc(-perfect, truth) == 0.0
    assert np.isnan(roc_auc(perfect, np.zeros(5))) and np.isnan(average_precision(perfect, np.zeros(5)))
    # NaN scores rank last
    assert roc_auc(np.array([np.nan, np.nan, 1, 2, 3]), truth) == 0.0


def test_auc_matches_pairwise_definition_on_random_data():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 6, 200).astype(float)  # many ties
    truth = rng.random(200) < 0.2
    pos, neg = scores[truth], scores[~truth]
    expected = ((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (pos.size * neg.size)
    assert roc_auc(scores, truth) == pytest.approx(expected)


def test_precision_recall_at_k_and_curve():
    scores = np.array([0.9, 0.1, 0.8, 0.7, 0.2, 0.3, 0.4, 0.5, 0.6, 0.0])
    truth = np.zeros(10, dtype=bool)
    truth[[0, 3, 1]] = True
    assert precision_at_k(scores, truth, 1) == 1.0
    assert precision_at_k(scores, truth, 3) == pytest.approx(2 / 3)
    assert recall_at_fraction(scores, truth, 0.10) == pytest.approx(1 / 3)
    assert recall_at_fraction(scores, truth, 0.20) == pytest.approx(1 / 3)
    assert recall_at_fraction(scores, truth, 0.30) == pytest.approx(2 / 3)
    curve = recall_curve(scores, truth)
    assert list(curve.columns) == ["inspected", "fraction", "found", "recall", "precision"]
    assert curve["found"].tolist() == [1, 1, 2, 2, 2, 2, 2, 2, 3, 3]
    assert curve["recall"].iloc[-1] == 1.0 and curve["precision"].iloc[2] == pytest.approx(2 / 3)
    with pytest.raises(DataError):
        precision_at_k(scores, truth, 0)
    with pytest.raises(DataError):
        roc_auc(scores, truth[:5])


def test_evaluate_rankings_table():
    truth = np.array([1, 0, 0, 1, 0, 0, 0, 0, 0, 0], dtype=bool)
    frame = pd.DataFrame({"loss": np.arange(10.0)[::-1], "self_influence": truth * 1.0, "rank": np.arange(10)})
    result = evaluate_rankings(frame, truth)
    assert list(result.columns) == ["ranking", "roc_auc", "average_precision", "precision_at_k", "recall_at_10pct",
                                    "recall_at_20pct"]
    assert result["ranking"].tolist() == ["loss", "self_influence"]  # rank is not a score
    best = result.set_index("ranking").loc["self_influence"]
    assert best["roc_auc"] == 1.0 and best["precision_at_k"] == 1.0 and best["recall_at_20pct"] == 1.0
    assert result.attrs["k"] == 2
    custom = evaluate_rankings({"random": np.zeros(10)}, truth, k=5)
    assert custom["ranking"].tolist() == ["random"] and custom["roc_auc"].item() == 0.5


def test_percentile_ranks_combine_and_rank_order():
    np.testing.assert_allclose(percentile_ranks(np.array([3.0, 1.0, 2.0, 2.0])), [1.0, 0.25, 0.625, 0.625])
    assert percentile_ranks(np.array([np.nan, 1.0]))[0] == 0.5
    combined = combine({"a": np.array([1.0, 2.0, 3.0]), "b": np.array([300.0, 200.0, 100.0])})
    np.testing.assert_allclose(combined, [2 / 3, 2 / 3, 2 / 3])
    assert rank_order(np.array([0.2, 0.9, 0.5, 0.9])).tolist() == [4, 1, 3, 2]
    np.testing.assert_allclose(negative_margins(np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]]), np.array([0, 1])),
                               [-0.5, 0.3])


# ------------------------------------------------------------------------------------------ rankings on a table
def _table(n_test=3, n_train=6, k=2, layers=("a", "b"), seed=0) -> ScoreTable:
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet([1, 1], n_train)
    return ScoreTable(
        dampings=np.geomspace(1e-3, 1e-1, k), layers=list(layers),
        pairwise=rng.normal(size=(k, len(layers), n_test, n_train)),
        self_influence=rng.random((k, len(layers), n_train)), test_self_influence=rng.random((k, len(layers), n_test)),
        test_probs=rng.dirichlet([1, 1], n_test), train_probs=probs, test_labels=rng.integers(0, 2, n_test),
        train_labels=rng.integers(0, 2, n_train),
    )


def test_mislabel_scores_on_a_table():
    table = _table()
    frame = mislabel_scores(table, k=1, layers=["b"])
    assert list(frame.columns) == ["self_influence", "trusted_influence", "relative_harm", "loss", "margin", "combined",
                                   "rank"]
    np.testing.assert_allclose(frame["self_influence"], table.self_total(1, ["b"]))
    np.testing.assert_allclose(frame["trusted_influence"], -table.total(1, ["b"]).sum(axis=0))
    # relative harm: -mean_q I(q, m) / sqrt(I(q, q) I(m, m)), every term over the chosen layers, written out
    q_norm = np.sqrt(table.test_self_total(1, ["b"]))
    m_norm = np.sqrt(table.self_total(1, ["b"]))
    expected_relative = -(table.total(1, ["b"]) / np.outer(q_norm, m_norm)).mean(axis=0)
    np.testing.assert_allclose(frame["relative_harm"], expected_relative)
    # one definition: the ranking is the mean of the table's relative influence over the same layers
    np.testing.assert_allclose(frame["relative_harm"], -table.relative(1, ["b"]).mean(axis=0))
    np.testing.assert_allclose(rankings(table, k=1, layers=["b"])["relative_harm"],
                               -table.relative(1, ["b"]).mean(axis=0))
    np.testing.assert_allclose(mislabel_scores(table, k=1)["relative_harm"], -table.relative(1).mean(axis=0))
    np.testing.assert_allclose(frame["loss"], table.train_losses())
    p_given = table.train_probs[np.arange(6), table.train_labels]
    np.testing.assert_allclose(frame["margin"], 1 - 2 * p_given)
    expected = np.mean([percentile_ranks(frame[name].to_numpy()) for name in FALLBACK_PARTS], axis=0)
    np.testing.assert_allclose(frame["combined"], expected)
    assert sorted(frame["rank"]) == list(range(1, 7))
    assert frame.loc[frame["rank"] == 1, "combined"].item() == frame["combined"].max()
    assert frame.attrs["probs"] == "in-sample" and frame.attrs["combined_parts"] == list(FALLBACK_PARTS)

    untrusted = mislabel_scores(table, trusted=False)
    assert "trusted_influence" not in untrusted.columns and "relative_harm" not in untrusted.columns
    assert untrusted.attrs["combined_parts"] == ["loss"]

    # out-of-sample predictions replace the in-sample ones for loss and margin only
    oos = np.tile([[0.5, 0.5]], (6, 1))
    frame_oos = mislabel_scores(table, probs=oos)
    np.testing.assert_allclose(frame_oos["loss"], np.log(2))
    np.testing.assert_allclose(frame_oos["self_influence"], table.self_total(0))
    assert frame_oos.attrs["probs"] == "out-of-sample"
    with pytest.raises(DataError):
        mislabel_scores(table, probs=oos[:4])
    with pytest.raises(DataError):
        mislabel_scores(table, layers=["nope"])
    with pytest.raises(DataError):
        mislabel_scores(table, k=5)

    app = rankings(table, k=0)
    assert set(app) == {"self_influence", "trusted_influence", "relative_harm", "loss", "margin", "combined"}
    assert all(values.shape == (6,) for values in app.values())


def test_signals_from_a_table_without_self_influence():
    table = _table()
    table.self_influence = None
    frame = mislabel_scores(TrainingSignals.from_table(table))
    assert "self_influence" not in frame.columns and frame.attrs["combined_parts"] == ["loss"]


# ------------------------------------------------------------------------------------------ one-pass signals
@pytest.fixture(scope="module")
def engine():
    from transformers import AutoTokenizer

    config = EngineConfig(layers="all", dtype="float64", damping=1e-3, batch_size=3)
    engine = InfluenceEngine(tiny_bert(), AutoTokenizer.from_pretrained(minilm_path()), config)
    engine.fit(TEXTS, LABELS)
    return engine


def test_training_signals_equal_summed_pairwise_scores(engine):
    trusted_texts, trusted_labels = TEXTS[:4], [0, 1, 1, 0]
    table = engine.score(trusted_texts, trusted_labels, TEXTS, LABELS, dampings=[1e-3, 1e-1])
    engine.query_memory_bytes = 1  # one trusted example per chunk: the sums must not change
    try:
        signals = training_signals(engine, TEXTS, LABELS, trusted_texts, trusted_labels, dampings=[1e-3, 1e-1])
    finally:
        engine.query_memory_bytes = 2 * 1024**3
    np.testing.assert_allclose(signals.trusted_influence, table.pairwise.sum(axis=2), rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(signals.trusted_relative, TrainingSignals.from_table(table).trusted_relative, rtol=1e-8,
                               atol=1e-12)
    for k in range(2):
        np.testing.assert_allclose(signals.relative_total(k), table.relative(k).mean(axis=0), rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(signals.self_influence, table.self_influence, rtol=1e-8)
    np.testing.assert_allclose(signals.train_probs, table.train_probs, rtol=1e-10)
    assert signals.n_trusted == 4 and signals.layers == table.layers
    pd.testing.assert_frame_equal(mislabel_scores(signals, k=1), mislabel_scores(table, k=1), check_like=True)

    alone = training_signals(engine, TEXTS, LABELS)
    assert alone.trusted_influence is None and alone.n_trusted == 0
    np.testing.assert_allclose(alone.self_influence[0].sum(0), engine.self_influence(TEXTS, LABELS), rtol=1e-8)


# ------------------------------------------------------------------------------------------ CLI


def _run(argv, capsys):
    code = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_mislabels_writes_every_ranking(model_dir, tmp_path, capsys):
    train = tmp_path / "train.csv"
    pd.DataFrame({"id": range(len(TEXTS)), "text": TEXTS, "label": LABELS}).to_csv(train, index=False)
    trusted = tmp_path / "trusted.tsv"
    pd.DataFrame({"sentence": TEXTS[:3], "label": ["positive", "negative", "positive"]}).to_csv(trusted, sep="\t",
                                                                                                 index=False)
    out = tmp_path / "ranked.csv"
    code, stdout, stderr = _run(["mislabels", "--model", model_dir, "--train", train, "--trusted", trusted,
                                 "--dtype", "float64", "--damping", "1e-3", "--out", out], capsys)
    assert code == 0, stderr
    assert "rank 1 = most suspicious" in stdout
    ranked = pd.read_csv(out)
    assert len(ranked) == len(TEXTS) and ranked["id"].tolist() == list(range(len(TEXTS)))
    for name in ("self_influence", "trusted_influence", "loss", "margin", "combined", "rank"):
        assert name in ranked.columns
    assert sorted(ranked["rank"]) == list(range(1, len(TEXTS) + 1))
    # the self-influence column is the self-influence command's
    self_out = tmp_path / "self.csv"
    code, _, _ = _run(["self-influence", "--model", model_dir, "--train", train, "--dtype", "float64", "--damping",
                       "1e-3", "--out", self_out], capsys)
    assert code == 0
    np.testing.assert_allclose(ranked["self_influence"], pd.read_csv(self_out)["self_influence"], rtol=1e-8)

    # out-of-sample probabilities, named by label
    probs = tmp_path / "probs.csv"
    pd.DataFrame({"negative": [0.5] * len(TEXTS), "positive": [0.5] * len(TEXTS)}).to_csv(probs, index=False)
    out2 = tmp_path / "ranked2.csv"
    code, stdout2, stderr = _run(["mislabels", "--model", model_dir, "--train", train, "--probs", probs, "--dtype",
                                  "float64", "--out", out2], capsys)
    assert code == 0, stderr
    again = pd.read_csv(out2)
    np.testing.assert_allclose(again["oof_loss"], np.log(2))
    np.testing.assert_allclose(again["loss"], ranked["loss"], rtol=1e-6)  # in-sample loss stays
    assert {"oof_margin", "cleanlab"} <= set(again.columns)
    # no --trusted: relative harm is against a proposed trusted slice of training rows, named in the output
    # (here no row is predicted confidently out of fold, so the proposal is empty and says so)
    assert again["proposed_trusted"].dtype == bool and not again["proposed_trusted"].any()
    assert "proposed trusted slice" in stdout2 and "cleanlab estimates" in stdout2

    # numbers only, as numpy.savetxt writes them: the first row is data, not a header
    p = np.linspace(0.1, 0.9, len(TEXTS))
    bare = tmp_path / "bare.csv"
    np.savetxt(bare, np.column_stack([1 - p, p]), delimiter=",")
    out3 = tmp_path / "ranked3.csv"
    code, _, stderr = _run(["mislabels", "--model", model_dir, "--train", train, "--probs", bare, "--dtype",
                            "float64", "--out", out3], capsys)
    assert code == 0, stderr
    given = np.asarray(LABELS)
    np.testing.assert_allclose(pd.read_csv(out3)["oof_loss"], -np.log(np.where(given == 1, p, 1 - p)), rtol=1e-6)


def test_read_probabilities_tells_a_headerless_file_from_class_id_names(tmp_path):
    from influence_core.cli.mislabels import read_probabilities

    values = np.array([[0.5, 0.5], [0.25, 0.75], [0.9, 0.1]])
    bare = tmp_path / "bare.csv"
    np.savetxt(bare, values, delimiter=",")  # its first row repeats a value: pandas would name them 0.5, 0.5.1
    np.testing.assert_allclose(read_probabilities(str(bare), 3).to_numpy(dtype=float), values)
    ids = tmp_path / "ids.csv"
    pd.DataFrame(values, columns=["0", "1"]).to_csv(ids, index=False)  # class ids as names, one row per example
    table = read_probabilities(str(ids), 3)
    assert list(table.columns) == ["0", "1"] and len(table) == 3
    named = tmp_path / "named.tsv"
    pd.DataFrame(values, columns=["negative", "positive"]).to_csv(named, sep="\t", index=False)
    assert list(read_probabilities(str(named), 3).columns) == ["negative", "positive"]
    array = tmp_path / "probs.npy"
    np.save(array, values)
    np.testing.assert_allclose(read_probabilities(str(array), 3).to_numpy(), values)
    np.save(array, values[:, 0])
    with pytest.raises(DataError, match="2-D array"):
        read_probabilities(str(array), 3)
    (tmp_path / "broken.npy").write_bytes(b"not numpy")
    with pytest.raises(DataError, match="cannot read"):
        read_probabilities(str(tmp_path / "broken.npy"), 3)


@pytest.mark.parametrize("case", ["bad_trusted_label", "bad_probs", "missing_train"])
def test_cli_mislabels_bad_input_is_one_line(model_dir, tmp_path, capsys, case):
    train = tmp_path / "train.csv"
    pd.DataFrame({"text": TEXTS, "label": LABELS}).to_csv(train, index=False)
    argv = ["mislabels", "--model", model_dir, "--train", train, "--out", tmp_path / "out.csv"]
    if case == "bad_trusted_label":
        trusted = tmp_path / "trusted.csv"
        pd.DataFrame({"text": TEXTS[:2], "label": ["positive", "neutral"]}).to_csv(trusted, index=False)
        argv += ["--trusted", trusted]
    elif case == "bad_probs":
        probs = tmp_path / "probs.csv"
        pd.DataFrame({"negative": [0.5, 0.5], "positive": [0.5, 0.5]}).to_csv(probs, index=False)
        argv += ["--probs", probs]
    else:
        argv[4] = tmp_path / "nope.csv"
    code, _, stderr = _run(argv, capsys)
    assert code == 2
    assert len(stderr.strip().splitlines()) == 1 and stderr.startswith("error:")
    assert not (tmp_path / "out.csv").exists()
