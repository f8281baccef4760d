"""The app's retrain and counterfactual check compare like with like, and say what the fine-tunes cost."""

from __future__ import annotations

import importlib
import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from explorer import cost, retraining
from influence_core.sources.models import ModelSource

RETRAIN = importlib.import_module("influence_core.training.retrain")  # the module (the package re-exports retrain())


class _Stop(Exception):
    pass


class _Progress:
    def span(self, start, end):
        return self

    def __call__(self, *args):
        pass


def _analysis():
    train = pd.DataFrame({"row_id": [10, 11, 12, 13], "text": list("abcd"), "label": [0, 1, 0, 1]})
    test = pd.DataFrame({"row_id": [0, 1], "text": ["x", "y"], "label": [1, 0]})
    return SimpleNamespace(train=train, test=test, label_names=["negative", "positive"])


def _spec(name="some/model"):
    return SimpleNamespace(model=ModelSource("local", name))


def test_retrain_cleaned_compares_with_the_recipe_on_the_analysed_slice(monkeypatch):
    seen = {}

    def fake_retrain(model, train_df, test_df, **kwargs):
        seen.update(model=model, train=train_df, **kwargs)
        raise _Stop

    monkeypatch.setattr(RETRAIN, "retrain", fake_retrain)
    analysis = _analysis()
    cleaned = analysis.train.iloc[[0, 2, 3]].assign(label=[0, 1, 1])
    with pytest.raises(_Stop):
        retraining.retrain_cleaned(_spec(), analysis, cleaned, 1e-3, _Progress())
    assert seen["before"] == "retrain"
    pd.testing.assert_frame_equal(seen["original_train_df"], analysis.train[["text", "label"]])
    assert seen["train"]["label"].tolist() == [0, 1, 1]


def test_counterfactual_trains_full_on_the_same_slice(monkeypatch):
    seen = {}

    def fake_check(model, train_df, test_text, test_label, influence, **kwargs):
        seen.update(train=train_df, text=test_text, label=test_label, seeds=kwargs["seeds"])
        raise _Stop

    monkeypatch.setattr(RETRAIN, "counterfactual_check", fake_check)
    analysis = _analysis()
    with pytest.raises(_Stop):
        retraining.counterfactual(_spec(), analysis, 1, np.zeros(4), 1, 1, _Progress(), seeds=3)
    assert seen["train"]["row_id"].tolist() == [10, 11, 12, 13] and (seen["text"], seen["label"]) == ("y", 0)
    assert seen["seeds"] == 3


def test_finetune_estimate_from_model_size_rows_and_epochs(tmp_path, monkeypatch):
    folder = tmp_path / "model"
    folder.mkdir()
    config = {"hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2, "vocab_size": 1000}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "finetune.json").write_text(json.dumps({"hyperparameters": {"epochs": 4, "max_length": 64}}))
    spec = _spec(str(folder))
    parameters = 2 * (4 * 32 * 32 + 2 * 32 * 48) + 1000 * 32
    per_run = 4 * 100 * cost.FORWARD_BACKWARD_S_PER_PARAM * parameters * (64 / 128) * cost.FINETUNE_OVERHEAD
    monkeypatch.setattr(cost, "_load_speed", lambda spec: None)
    estimate = cost.estimate_finetune(spec, 100, runs=3)
    assert estimate.seconds == pytest.approx(3 * per_run)
    assert "3 fine-tunes of 4 epochs on 100 training reviews" in estimate.steps[0]
    assert cost.estimate_finetune(spec, 100, epochs=1).seconds == pytest.approx(per_run / 4)
    # rescaled by the speed this machine recorded, like the analysis estimate
    monkeypatch.setattr(cost, "_load_speed", lambda spec: 2.5)
    assert cost.estimate_finetune(spec, 100, runs=3).seconds == pytest.approx(7.5 * per_run)
    assert "about" in estimate.describe()
