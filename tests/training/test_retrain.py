"""Fix and retrain: clean_dataset semantics, a short retrain of a tiny model (cached, cancellable), the
counterfactual check and the clean-and-retrain CLI."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from influence_core import cli
from influence_core.errors import DataError
from influence_core.training.finetune import FinetuneCancelled, finetune
from influence_core.training.retrain import (
    clean_dataset,
    counterfactual_check,
    read_flags,
    recipe_of,
    retrain,
)
from tests.data_fixtures import tiny_corpus, tiny_encoder_dir  # noqa: F401

NAMES = ["negative", "positive"]
TINY = {"epochs": 2, "lr": 1e-2, "batch_size": 8, "max_length": 32, "seed": 0}


# ------------------------------------------------------------------------------------------ clean_dataset
def _table() -> pd.DataFrame:
    return pd.DataFrame({"row_id": [10, 11, 12, 13, 14], "text": list("abcde"), "label": [0, 1, 0, 1, 0],
                         "extra": [1, 2, 3, 4, 5]})


def test_clean_dataset_semantics():
    marks = {10: "fine", 11: "drop", 12: "mislabeled", 13: 0, 14: "relabel:positive", 99: "drop"}
    cleaned = clean_dataset(_table(), marks, label_names=NAMES)
    assert cleaned["row_id"].tolist() == [10, 13, 14]
    assert cleaned["label"].tolist() == [0, 0, 1] and cleaned["original_label"].tolist() == [0, 1, 0]
    assert cleaned["action"].tolist() == ["keep", "relabel", "relabel"]
    assert cleaned["extra"].tolist() == [1, 4, 5]

    flipped = clean_dataset(_table(), {12: "mislabeled"}, mislabeled="flip")
    assert len(flipped) == 5 and flipped.loc[2, "label"] == 1 and flipped.loc[2, "action"] == "relabel"
    # the app's mark format
    app = clean_dataset(_table(), {10: {"state": "mislabeled", "new_label": None},
                                   11: {"state": "relabel", "new_label": 0}, 12: {"state": "fine"}})
    assert app["row_id"].tolist() == [11, 12, 13, 14] and app["label"].tolist() == [0, 0, 1, 0]
    # relabelling to the same label is not a change; names match case-insensitively
    same = clean_dataset(_table(), {11: "Positive"}, label_names=NAMES)
    assert same["action"].tolist() == ["keep"] * 5
    # without row_id the positions name the rows
    plain = clean_dataset(_table().drop(columns="row_id"), {0: "drop"})
    assert plain["text"].tolist() == list("bcde")
    assert clean_dataset(_table(), {}).equals(clean_dataset(_table(), {10: "fine"}))


@pytest.mark.parametrize("marks, kwargs, message", [
    ({99: "drop"}, {"strict": True}, "not in the training table"),
    ({10: "maybe"}, {"label_names": NAMES}, "unknown verdict"),
    ({10: 5}, {}, "outside"),
    ({10: "relabel"}, {}, "relabel:<label>"),
    ({10: {"state": "relabel"}}, {}, "without a new label"),
    ({10: "fine"}, {"mislabeled": "swap"}, "mislabeled must be"),
])
def test_clean_dataset_refuses_bad_marks(marks, kwargs, message):
    with pytest.raises((DataError, ValueError), match=message):
        clean_dataset(_table(), marks, **kwargs)


def test_flip_needs_two_classes():
    table = _table().assign(label=[0, 1, 2, 1, 0])
    with pytest.raises(DataError, match="two classes"):
        clean_dataset(table, {10: "mislabeled"}, label_names=["a", "b", "c"], mislabeled="flip")


def test_read_flags_accepts_actions_and_the_app_flag_list():
    flags = read_flags(pd.DataFrame({"row_id": [1, 2, 3], "action": ["drop", "relabel:positive", None]}))
    assert flags == {1: "drop", 2: "relabel:positive", 3: "fine"}
    app = read_flags(pd.DataFrame({"row_id": [4, 5], "mark": ["relabel", "mislabeled"], "new_label": [1, ""]}))
    assert app[4] == {"state": "relabel", "new_label": 1} and app[5] == "mislabeled"
    with pytest.raises(DataError, match="twice"):
        read_flags(pd.DataFrame({"row_id": [1, 1], "action": ["drop", "fine"]}))


# ------------------------------------------------------------------------------------------ retrain
def _probs(folder, texts) -> np.ndarray:
    """Test probabilities written out with plain transformers, one text at a time (no padding)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(str(folder)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    with torch.no_grad():
        rows = [torch.softmax(model(**tokenizer([t], return_tensors="pt", truncation=True, max_length=32)).logits[0],
                              -1) for t in texts]
    return torch.stack(rows).double().numpy()


def _accuracy_and_loss(probs: np.ndarray, labels) -> tuple[float, float]:
    labels = np.asarray(labels)
    return float((probs.argmax(1) == labels).mean()), float(-np.log(probs[np.arange(len(labels)), labels]).mean())


@pytest.fixture(scope="module")
def corpus():
    table = tiny_corpus(n_train=48, n_test=16)
    return table[table["split"] == "train"].reset_index(drop=True), table[table["split"] == "test"].reset_index(drop=True)


@pytest.fixture(scope="module")
def studied_model(tiny_encoder_dir, corpus, tmp_path_factory):  # noqa: F811
    """A tiny classifier fine-tuned on the corpus with its planted errors (the 'before' model)."""
    train, _ = corpus
    folder = tmp_path_factory.mktemp("studied") / "model"
    finetune(tiny_encoder_dir, train["text"].tolist(), train["label"].tolist(), label_names=NAMES, out_dir=folder,
             **TINY)
    return folder


def test_recipe_of_a_finetuned_folder(studied_model, tiny_encoder_dir):  # noqa: F811
    recipe = recipe_of(studied_model)
    assert recipe.base == str(tiny_encoder_dir) and recipe.before == str(studied_model)
    assert recipe.hyperparameters == {**TINY, "freeze_embeddings": False} and recipe.label_names == tuple(NAMES)
    assert recipe_of(studied_model, epochs=1).hyperparameters["epochs"] == 1
    with pytest.raises(DataError, match="label names"):
        recipe_of(tiny_encoder_dir)


def test_retrain_on_the_cleaned_set(studied_model, corpus):
    train, test = corpus
    marks = {int(i): "mislabeled" for i in np.flatnonzero(train["planted_error"])}
    cleaned = clean_dataset(train, marks, mislabeled="flip")
    calls = []
    result = retrain(studied_model, cleaned, test, progress=lambda *a: calls.append(a))
    assert result.n_train == len(train) and (result.model_dir / "finetune.json").is_file()
    assert result.before_probs.shape == result.after_probs.shape == (len(test), 2)
    # 'before' is the studied model, 'after' the retrained folder: both evaluated here independently
    before, after = _probs(studied_model, test["text"]), _probs(result.model_dir, test["text"])
    np.testing.assert_allclose(result.before_probs, before, atol=1e-5)
    np.testing.assert_allclose(result.after_probs, after, atol=1e-5)
    np.testing.assert_array_equal(result.test_labels, test["label"])
    for (accuracy, loss), probs in (((result.before_accuracy, result.before_loss), before),
                                    ((result.after_accuracy, result.after_loss), after)):
        expected_accuracy, expected_loss = _accuracy_and_loss(probs, test["label"])
        assert accuracy == pytest.approx(expected_accuracy) and loss == pytest.approx(expected_loss, rel=1e-4)
    summary = result.summary()
    assert summary["model"].tolist() == ["before", "after"]
    assert summary.loc[1, "accuracy"] == pytest.approx(result.after_accuracy)
    assert result.per_example().shape == (len(test), 4)
    done, total = [c[0] for c in calls], calls[-1][1]
    assert done == sorted(done) and calls[-1][0] == total and any("fine-tune epoch" in c[2] for c in calls)
    assert json.loads(json.dumps(result.to_dict()))["n_train"] == len(train)

    # the same request again reuses the cached fine-tune: no training step is reported and its folder is untouched
    written = (result.model_dir / "finetune.json").stat().st_mtime_ns
    calls_again = []
    again = retrain(studied_model, cleaned, test, progress=lambda *a: calls_again.append(a))
    assert again.model_dir == result.model_dir
    assert not any("fine-tune epoch" in c[2] for c in calls_again)
    assert (again.model_dir / "finetune.json").stat().st_mtime_ns == written
    np.testing.assert_allclose(again.after_probs, result.after_probs)

    with pytest.raises(FinetuneCancelled):
        retrain(studied_model, cleaned.iloc[:40], test, cancel=lambda: True)
    with pytest.raises(DataError, match="label"):
        retrain(studied_model, cleaned.assign(label=7), test)


def test_retrain_from_a_base_trains_before_and_after(tiny_encoder_dir, corpus, studied_model):  # noqa: F811
    train, test = corpus
    cleaned = clean_dataset(train, {3: "drop", 10: "drop"})
    result = retrain(tiny_encoder_dir, cleaned, test, original_train_df=train, label_names=NAMES, **TINY)
    # 'before' is the same recipe on the same original rows as the studied model (fine-tuning is deterministic)
    np.testing.assert_allclose(result.before_probs, _probs(studied_model, test["text"]), atol=1e-5)
    np.testing.assert_allclose(result.after_probs, _probs(result.model_dir, test["text"]), atol=1e-5)
    assert result.n_train == len(train) - 2
    assert any("original rows" in note for note in result.notes)


def test_retrain_before_is_the_same_recipe_on_the_uncleaned_slice(studied_model, corpus):
    from influence_core.training.retrain import predict_probabilities

    train, test = corpus
    analysed = train.iloc[:32].reset_index(drop=True)  # the app analyses a slice of what the model was trained on
    # nothing cleaned: "before" and "after" are the same recipe on the same rows, so they agree exactly
    same = retrain(studied_model, analysed, test, original_train_df=analysed, before="retrain")
    np.testing.assert_allclose(same.before_probs, same.after_probs)
    assert any("32 original rows" in note for note in same.notes)
    # the default "before" is the model under study, trained on all 48 rows: not like with like
    default = retrain(studied_model, analysed, test, original_train_df=analysed)
    own = predict_probabilities(studied_model, test["text"].tolist(), max_length=TINY["max_length"])
    np.testing.assert_allclose(default.before_probs, own)
    assert not np.allclose(same.before_probs, own)
    cleaned = clean_dataset(analysed, {0: "drop"})
    fixed = retrain(studied_model, cleaned, test, original_train_df=analysed, before="retrain")
    np.testing.assert_allclose(fixed.before_probs, same.before_probs)  # the cached "before" fine-tune
    assert fixed.n_train == 31
    with pytest.raises(DataError, match="original_train_df"):
        retrain(studied_model, analysed, test, before="retrain")
    with pytest.raises(Exception, match="before must be"):
        retrain(studied_model, analysed, test, before="latest")


def test_counterfactual_check_removes_the_most_harmful(studied_model, corpus):
    train, test = corpus
    influence = np.linspace(-1.0, 1.0, len(train))[::-1].copy()  # the last rows are the most harmful
    calls = []
    result = counterfactual_check(studied_model, train, test["text"].iloc[0], int(test["label"].iloc[0]), influence,
                                  k=3, n_random=1, progress=lambda *a: calls.append(a))
    assert result.harmful == [47, 46, 45] and len(result.random) == 1 and len(result.random[0]) == 3
    assert result.harmful_influence == pytest.approx(influence[[47, 46, 45]].tolist())
    assert result.predicted_change == pytest.approx(influence[[45, 46, 47]].sum() / len(train))
    assert all(np.isfinite([result.loss_full, result.loss_minus_harmful, *result.losses_minus_random[0]]))
    assert result.summary()["model"].tolist() == ["full", "minus 3 most harmful", "minus 3 random (draw 1)"]
    # one seed and one draw show no spread, so there is no verdict
    assert result.spread is None and result.verdict == "too few retrains" and not result.harmful_beats_random
    # the full retrain is the studied model's recipe on the same rows, so its test loss is the studied model's
    label = int(test["label"].iloc[0])
    assert result.loss_full == pytest.approx(-np.log(_probs(studied_model, test["text"].iloc[:1])[0, label]), rel=1e-4)
    assert result.summary()["change"].tolist() == pytest.approx(
        [0.0, result.loss_minus_harmful - result.loss_full, result.losses_minus_random[0][0] - result.loss_full])
    assert calls[-1][0] == calls[-1][1]
    # the full retrain is cached: a second review reuses it
    other = counterfactual_check(studied_model, train, test["text"].iloc[1], int(test["label"].iloc[1]), influence,
                                 k=3, n_random=1)
    assert other.seconds < result.seconds
    with pytest.raises(DataError, match="one value per training row"):
        counterfactual_check(studied_model, train, "x", 0, influence[:5], k=3)
    with pytest.raises(DataError, match="k must be"):
        counterfactual_check(studied_model, train, "x", 0, influence, k=0)
    with pytest.raises(DataError, match="seeds must be"):
        counterfactual_check(studied_model, train, "x", 0, influence, k=3, seeds=0)


def test_counterfactual_check_with_seeds_pairs_changes_and_tests_them(studied_model, corpus):
    train, test = corpus
    influence = np.linspace(-1.0, 1.0, len(train))[::-1].copy()
    label = int(test["label"].iloc[0])
    result = counterfactual_check(studied_model, train, test["text"].iloc[0], label, influence, k=3, n_random=2,
                                  seeds=2)
    assert result.seeds == [0, 1] and len(result.losses_full) == 2
    assert np.asarray(result.losses_minus_random).shape == (2, 2)
    # seed 0 is the studied model's own recipe; seed 1 is another fine-tune, so the full losses differ
    assert result.losses_full[0] == pytest.approx(
        -np.log(_probs(studied_model, test["text"].iloc[:1])[0, label]), rel=1e-4)
    assert result.losses_full[1] != pytest.approx(result.losses_full[0], rel=1e-6)
    # changes are paired with the full model of the same seed
    h = np.array(result.losses_minus_harmful) - np.array(result.losses_full)
    r = (np.array(result.losses_minus_random) - np.array(result.losses_full)[:, None]).ravel()
    np.testing.assert_allclose(result.harmful_changes, h)
    np.testing.assert_allclose(result.random_changes, r)
    assert result.difference == pytest.approx(h.mean() - r.mean())
    assert result.spread == pytest.approx(np.sqrt(h.var(ddof=1) / 2 + r.var(ddof=1) / 4))
    from scipy.stats import ttest_ind

    p = ttest_ind(h, r, equal_var=False).pvalue
    assert result.p_value == pytest.approx(p)
    expected = "within noise" if p >= 0.05 else ("lower" if h.mean() < r.mean() else "higher")
    assert result.verdict == expected and result.harmful_beats_random == (expected == "lower")
    table = result.summary()
    assert table["seed"].tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert table.loc[table["model"] == "full", "change"].tolist() == [0.0, 0.0]


# ------------------------------------------------------------------------------------------ CLI
def test_cli_clean_and_retrain(studied_model, corpus, tmp_path, capsys):
    train, test = corpus
    train_file, test_file, flags_file = tmp_path / "train.csv", tmp_path / "test.csv", tmp_path / "flags.csv"
    train.drop(columns=["split"]).to_csv(train_file, index=False)
    test.drop(columns=["split"]).to_csv(test_file, index=False)
    pd.DataFrame({"row_id": [3, 10, 0], "action": ["relabel:positive", "drop", "fine"]}).to_csv(flags_file,
                                                                                               index=False)
    out = tmp_path / "retrained"
    code = cli.main(["clean-and-retrain", "--model", str(studied_model), "--train", str(train_file), "--flags",
                     str(flags_file), "--test", str(test_file), "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "1 rows dropped, 1 relabelled" in captured.out and "before" in captured.out
    summary = json.loads((out / "retrain.json").read_text())
    assert summary["n_train"] == len(train) - 1 and summary["n_test"] == len(test)
    after_accuracy, after_loss = _accuracy_and_loss(_probs(summary["model_dir"], test["text"]), test["label"])
    before_accuracy, before_loss = _accuracy_and_loss(_probs(studied_model, test["text"]), test["label"])
    assert summary["after_accuracy"] == pytest.approx(after_accuracy)
    assert summary["after_loss"] == pytest.approx(after_loss, rel=1e-4)
    assert summary["before_accuracy"] == pytest.approx(before_accuracy)
    assert summary["before_loss"] == pytest.approx(before_loss, rel=1e-4)
    capsys.readouterr()  # drop the weight-loading progress bars of the checks above
    assert len(pd.read_csv(out / "cleaned_train.csv")) == len(train) - 1

    bad = tmp_path / "bad.csv"
    pd.DataFrame({"row_id": [999], "action": ["drop"]}).to_csv(bad, index=False)
    code = cli.main(["clean-and-retrain", "--model", str(studied_model), "--train", str(train_file), "--flags",
                     str(bad), "--test", str(test_file), "--out", str(tmp_path / "other")])
    captured = capsys.readouterr()
    assert code == 2 and len(captured.err.strip().splitlines()) == 1 and "row 999" in captured.err
