"""Cross-fitting and training dynamics: held-out exactly once, dynamics recorded per example and epoch, out-of-fold
loss sees memorised flips, cleanlab sees out-of-fold probabilities only."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from influence_core import mislabel
from influence_core.errors import ConfigError, DataError
from influence_core.training.crossfit import cross_fit, stratified_folds
from influence_core.training.finetune import finetune, load_dynamics, predict_proba, text_keys
from tests.data_fixtures import (  # noqa: F401
    NEGATIVE_WORDS,
    POSITIVE_WORDS,
    SUBJECTS,
    isolated_cache,
    minilm_dir,
    tiny_corpus,
    tiny_encoder_dir,
)

NAMES = ["negative", "positive"]


def test_stratified_folds_hold_every_row_out_exactly_once():
    labels = np.array([0] * 13 + [1] * 7)
    folds = stratified_folds(labels, 4, seed=3)
    assert folds.shape == (20,) and set(folds.tolist()) == {0, 1, 2, 3}
    sizes = np.bincount(folds)
    assert sizes.max() - sizes.min() <= 1
    for label in (0, 1):  # each class spread evenly
        per_class = np.bincount(folds[labels == label], minlength=4)
        assert per_class.max() - per_class.min() <= 1
    np.testing.assert_array_equal(folds, stratified_folds(labels, 4, seed=3))
    assert not np.array_equal(folds, stratified_folds(labels, 4, seed=4))
    with pytest.raises(ConfigError):
        stratified_folds(labels, 1)
    with pytest.raises(DataError):
        stratified_folds(labels[:3], 4)


def _tiny_classifier_without_dropout(folder):
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0, classifier_dropout=0.0, num_labels=2,
                        id2label=dict(enumerate(NAMES)), label2id={n: i for i, n in enumerate(NAMES)})
    BertForSequenceClassification(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(minilm_dir()).save_pretrained(folder)
    return folder


def test_dynamics_are_one_entry_per_example_and_epoch_equal_to_the_model_at_that_step(tmp_path):
    import torch

    from influence_core.sources.models import ModelSource, load_classifier

    base = _tiny_classifier_without_dropout(tmp_path / "base")
    table = tiny_corpus(n_train=12, n_test=0)
    texts, labels = table["text"].tolist(), table["label"].tolist()
    # one batch per epoch: epoch 1 sees the base model, epoch 2 the model after one step (= a one-epoch fine-tune:
    # without warm-up both take the same first step)
    recipe = {"lr": 1e-2, "batch_size": 16, "max_length": 32, "seed": 0}
    two = finetune(base, texts, labels, label_names=NAMES, out_dir=tmp_path / "two", epochs=2, **recipe)
    one = finetune(base, texts, labels, label_names=NAMES, out_dir=tmp_path / "one", epochs=1, **recipe)
    dynamics = load_dynamics(two.out_dir)
    assert dynamics is not None and dynamics.given_prob.shape == (2, 12) and dynamics.margin.shape == (2, 12)
    np.testing.assert_allclose(dynamics.given_prob, two.dynamics.given_prob)
    assert np.isfinite(dynamics.given_prob).all() and ((dynamics.given_prob >= 0) & (dynamics.given_prob <= 1)).all()
    rows = np.arange(12)
    for epoch, folder in ((0, base), (1, one.out_dir)):
        loaded = load_classifier(ModelSource("local", str(folder)))
        probs = predict_proba(loaded.model, loaded.tokenizer, texts, max_length=32)
        np.testing.assert_allclose(dynamics.given_prob[epoch], probs[rows, labels], atol=1e-5)
        logits = torch.log(torch.as_tensor(probs))  # the margin is a difference of logits: log-softmax shifts cancel
        expected = (logits[rows, labels] - logits[rows, 1 - np.asarray(labels)]).numpy()
        np.testing.assert_allclose(dynamics.margin[epoch], expected, atol=1e-4)
        np.testing.assert_array_equal(dynamics.correct[epoch], probs.argmax(1) == np.asarray(labels))
    np.testing.assert_array_equal(dynamics.rows_for(texts[::-1], labels[::-1]), rows[::-1])
    assert dynamics.rows_for(["never seen"]).tolist() == [-1]


def test_dynamics_with_several_batches_cover_every_example_once_per_epoch(tiny_encoder_dir, tmp_path):  # noqa: F811
    table = tiny_corpus(n_train=20, n_test=0)
    result = finetune(tiny_encoder_dir, table["text"].tolist(), table["label"].tolist(), label_names=NAMES,
                      out_dir=tmp_path / "m", epochs=3, lr=1e-3, batch_size=6, max_length=32)
    dynamics = result.dynamics
    assert dynamics.given_prob.shape == (3, 20) and not np.isnan(dynamics.given_prob).any()
    assert ((dynamics.margin > 0) == dynamics.correct).all()
    stats = mislabel.dynamics_signals([(np.arange(20), dynamics)], 20)
    np.testing.assert_allclose(stats["aum"], dynamics.margin.mean(axis=0))
    np.testing.assert_allclose(stats["confidence"], dynamics.given_prob.mean(axis=0))
    np.testing.assert_allclose(stats["variability"], dynamics.given_prob.std(axis=0))
    assert (stats["epochs_seen"] == 3).all()


def test_dynamics_signals_pool_runs_and_count_forgetting():
    from influence_core.training.finetune import TrainingDynamics

    def run(correct, prob):
        correct, prob = np.asarray(correct, dtype=bool), np.asarray(prob, dtype=float)
        return TrainingDynamics(given_prob=prob, margin=prob - 0.5, correct=correct, labels=np.zeros(prob.shape[1]),
                                text_keys=np.array(["x"] * prob.shape[1]))

    first = run([[1, 0, 1], [0, 0, 1], [1, 0, 1]], [[0.9, 0.1, 0.8], [0.2, 0.3, 0.9], [0.9, 0.2, 0.7]])
    second = run([[1], [1]], [[0.6], [0.8]])
    stats = mislabel.dynamics_signals([(np.array([0, 1, 2]), first), (np.array([2]), second)], 4)
    # row 0: correct, wrong, correct: 1 event; row 1: never right: 3 (its epochs); row 2: none
    assert stats["forgetting"].tolist()[:3] == [1.0, 3.0, 0.0] and np.isnan(stats["forgetting"][3])
    assert stats["epochs_seen"].tolist() == [3, 3, 5, 0]
    np.testing.assert_allclose(stats["confidence"][2], np.mean([0.8, 0.9, 0.7, 0.6, 0.8]))
    assert np.isnan(stats["aum"][3])


FILLERS = ["quite", "really", "very", "truly", "rather", "so"]
FLIPS = (3, 10, 17, 28, 35, 44)
FOLDS = 4


def _rare(i: int, slot: int) -> str:
    """A word of row ``i``'s own (one per filler slot): made-up, so no other row has it."""
    letters = "bcdfghjklmnpqrstvwxz"
    return f"q{letters[i % 20]}o{letters[(i // 20) % 20]}u{letters[slot]}"


def _memorisable_task(n=72, flips=FLIPS):
    """Reviews whose two sentiment words give the label away, each sentiment word after a filler (quite, very, ...).

    A flipped review (label against its words) has a made-up word of its own in both filler slots, so a model that
    trains on it can memorise it through those words (in sample its loss is as low as a clean row's), while a model
    that never saw them follows the sentiment words (out of fold its loss is high). Every third clean review also
    has a made-up word in one slot, so "an unknown word means the label is flipped" is no rule a fold could learn.
    """
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        label = i % 2
        words = POSITIVE_WORDS if label else NEGATIVE_WORDS
        flipped = i in flips
        first, second = (FILLERS[rng.integers(len(FILLERS))] for _ in range(2))
        if flipped:
            first, second = _rare(i, 0), _rare(i, 1)
        elif i % 3 == 0:
            first = _rare(i, 0)
        text = (f"{SUBJECTS[i % len(SUBJECTS)]} was {first} {words[rng.integers(len(words))]} and {second} "
                f"{words[rng.integers(len(words))]}.")
        rows.append({"text": text, "label": 1 - label if flipped else label, "flipped": flipped})
    return pd.DataFrame(rows)


def _word_level_encoder(folder, texts):
    """A bare one-layer BERT (hidden 32, no dropout) with a whole-word vocabulary of ``texts``: tiny and fast, and
    every word has an embedding of its own (MiniLM's word pieces would share pieces between the made-up words)."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    words = sorted({w for t in texts for w in t.replace(".", " . ").split()})
    folder.mkdir(parents=True)
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    tokenizer = BertTokenizerFast(vocab=str(folder / "vocab.txt"))
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=32, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0)
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def memorised(tmp_path_factory):
    import os

    import torch

    cache = tmp_path_factory.mktemp("cache")
    old = os.environ.get("INFLUENCE_EXPLORER_CACHE")
    os.environ["INFLUENCE_EXPLORER_CACHE"] = str(cache)
    # tiny models: one thread is ~100x faster than two fighting over a loaded CPU, and bit-for-bit repeatable
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        table = _memorisable_task()
        base = _word_level_encoder(cache / "base", table["text"].tolist())
        recipe = {"epochs": 40, "lr": 3e-3, "batch_size": 8, "max_length": 32, "seed": 0}
        model = finetune(base, table["text"].tolist(), table["label"].tolist(), label_names=NAMES,
                         out_dir=cache / "model", **recipe)
        calls = []
        fit = cross_fit(model.out_dir, table["text"].tolist(), table["label"].tolist(), k=FOLDS,
                        progress=lambda *a: calls.append(a))
        loaded_probs = _probs(model.out_dir, table["text"].tolist())
        stages = []
        again = cross_fit(model.out_dir, table["text"].tolist(), table["label"].tolist(), k=FOLDS,
                          progress=lambda done, total, stage: stages.append(stage))
        yield table, model, fit, loaded_probs, calls, (again, stages)
    finally:
        torch.set_num_threads(threads)
        if old is None:
            os.environ.pop("INFLUENCE_EXPLORER_CACHE", None)
        else:
            os.environ["INFLUENCE_EXPLORER_CACHE"] = old


def _probs(folder, texts):
    from influence_core.sources.models import ModelSource, load_classifier

    loaded = load_classifier(ModelSource("local", str(folder)))
    return predict_proba(loaded.model, loaded.tokenizer, texts, max_length=32)


def test_cross_fit_holds_every_row_out_once_and_scores_it_with_the_model_that_did_not_see_it(memorised):
    table, model, fit, _, calls, _ = memorised
    assert fit.k == FOLDS and fit.probs.shape == (len(table), 2)
    np.testing.assert_allclose(fit.probs.sum(axis=1), 1.0)
    assert sorted(np.bincount(fit.folds).tolist()) == [18] * FOLDS
    for fold, folder in enumerate(fit.model_dirs):
        held = np.flatnonzero(fit.folds == fold)
        record = load_dynamics(folder)
        assert record.n == len(table) - len(held)  # trained on the others only
        inside = np.flatnonzero(fit.folds != fold)
        np.testing.assert_array_equal(record.text_keys, text_keys(table["text"].iloc[inside].tolist()))
        np.testing.assert_allclose(fit.probs[held], _probs(folder, table["text"].iloc[held].tolist()), atol=1e-6)
    assert calls and calls[-1][0] == calls[-1][1]
    assert all(a[0] <= b[0] for a, b in zip(calls, calls[1:]))  # progress never steps back
    # the folds' dynamics map back onto the table's rows
    runs = fit.fold_dynamics()
    assert len(runs) == FOLDS and sorted(np.concatenate([rows for rows, _ in runs]).tolist()) == sorted(
        [i for i in range(len(table)) for _ in range(FOLDS - 1)])
    # asking again costs only the predictions: the fine-tunes are cached
    again, stages = memorised[5]
    np.testing.assert_allclose(again.probs, fit.probs)
    assert sum("(cached)" in stage for stage in stages) == FOLDS


def test_out_of_fold_loss_finds_memorised_flips_that_in_sample_loss_misses(memorised):
    table, model, fit, in_sample, _, _ = memorised
    truth = table["flipped"].to_numpy()
    labels = table["label"].to_numpy()
    in_loss = mislabel.label_losses(in_sample, labels)
    oof_loss = mislabel.label_losses(fit.probs, labels)
    # the flips are memorised: the model under study agrees with their wrong labels and fits them (loss below log 2)
    assert (in_sample.argmax(1)[truth] == labels[truth]).mean() >= 0.8
    assert (in_loss[truth] < np.log(2)).mean() >= 0.8
    # out of fold the model disagrees with them: their loss ranks them above the clean rows, in sample it does not
    assert (oof_loss[truth] > np.log(2)).mean() >= 0.8
    oof_auc, in_auc = mislabel.roc_auc(oof_loss, truth), mislabel.roc_auc(in_loss, truth)
    assert oof_auc >= 0.9 and oof_auc > in_auc, (oof_auc, in_auc)
    n_flips = int(truth.sum())
    assert mislabel.precision_at_k(oof_loss, truth, n_flips) > mislabel.precision_at_k(in_loss, truth, n_flips)
    # AUM from the recorded dynamics (model under study and the folds)
    runs = [(np.arange(len(table)), load_dynamics(model.out_dir)), *fit.fold_dynamics()]
    stats = mislabel.dynamics_signals(runs, len(table))
    assert mislabel.roc_auc(-stats["aum"].to_numpy(), truth) >= 0.7
    proposed = mislabel.propose_trusted_slice(labels, in_sample, fit.probs, stats["variability"].to_numpy())
    assert proposed.sum() >= 0.15 * len(table) and not (proposed & truth).any()


def test_cleanlab_sees_the_out_of_fold_probabilities_only(memorised, monkeypatch):
    import cleanlab.count
    import cleanlab.rank

    table, _, fit, in_sample, _, _ = memorised
    seen = {}
    real_rank, real_count = cleanlab.rank.get_label_quality_scores, cleanlab.count.num_label_issues

    def rank_spy(labels, pred_probs, **kwargs):
        seen["rank"] = np.array(pred_probs)
        return real_rank(labels, pred_probs, **kwargs)

    def count_spy(labels, pred_probs, **kwargs):
        seen["count"] = np.array(pred_probs)
        return real_count(labels, pred_probs, **kwargs)

    monkeypatch.setattr(cleanlab.rank, "get_label_quality_scores", rank_spy)
    monkeypatch.setattr(cleanlab.count, "num_label_issues", count_spy)
    signals = mislabel.TrainingSignals(dampings=np.array([1.0]), layers=["x"], self_influence=None,
                                       trusted_influence=None, train_probs=in_sample,
                                       train_labels=table["label"].to_numpy())
    frame = mislabel.mislabel_scores(signals, out_of_fold=fit.probs)
    np.testing.assert_allclose(seen["rank"], fit.probs)
    np.testing.assert_allclose(seen["count"], fit.probs)
    assert {"oof_loss", "oof_margin", "cleanlab"} <= set(frame.columns)
    assert frame.attrs["combined_parts"] == ["oof_loss", "cleanlab"]
    assert 0 <= frame.attrs["estimated_wrong_labels"] <= len(table)
    assert mislabel.roc_auc(frame["cleanlab"].to_numpy(), table["flipped"].to_numpy()) >= 0.7
