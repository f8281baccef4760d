"""The built-in demo: corpus reading, a cached first-use fine-tune, loading it as a model source."""

from __future__ import annotations

import pytest

import influence_core.demo as demo
from influence_core.errors import DataError
from influence_core.sources.models import ModelSource
from tests.data_fixtures import isolated_cache, tiny_classifier_dir  # noqa: F401


@pytest.fixture
def tiny_demo(isolated_cache, tiny_classifier_dir, monkeypatch):  # noqa: F811
    """The demo recipe on the tiny corpus with the tiny model as base encoder, 1 epoch."""
    monkeypatch.setattr(demo, "base_encoder_path", lambda: str(tiny_classifier_dir))
    monkeypatch.setattr(demo, "DEMO_HYPERPARAMETERS", {**demo.DEMO_HYPERPARAMETERS, "epochs": 1, "max_length": 32})
    return isolated_cache


def test_demo_corpus_columns_and_types(isolated_cache):  # noqa: F811
    corpus = demo.demo_corpus()
    assert list(corpus.columns[:5]) == ["id", "split", "text", "label", "planted_error"]
    assert set(corpus["split"]) == {"train", "test"}
    assert set(corpus["label"]) == {0, 1} and corpus["planted_error"].dtype == bool
    assert corpus.attrs["label_names"] == ["negative", "positive"]


def test_demo_corpus_accepts_label_names_and_reports_a_missing_file(tmp_path):
    path = tmp_path / "named.csv"
    path.write_text("id,split,text,label,planted_error\n1,train,Great fun.,positive,0\n2,test,Dull.,negative,1\n")
    corpus = demo.demo_corpus(path)
    assert corpus["label"].tolist() == [1, 0] and corpus["planted_error"].tolist() == [False, True]
    with pytest.raises(DataError, match="missing"):
        demo.demo_corpus(tmp_path / "absent.csv")


def test_demo_model_is_trained_once_then_cached(tiny_demo, monkeypatch):
    calls = []
    folder = demo.demo_model_dir(progress=lambda *a: calls.append(a))
    assert folder.parent == tiny_demo / "models" and folder.name.startswith("demo-")
    assert any(stage.startswith("fine-tune") for _, _, stage in calls)
    assert (folder / "model.safetensors").is_file() and (folder / "finetune.json").is_file()
    assert [p.name for p in folder.parent.iterdir() if not p.name.endswith(".lock")] == [folder.name]

    def no_training(*args, **kwargs):
        raise AssertionError("the cached demo model was trained again")

    monkeypatch.setattr(demo, "finetune", no_training)
    assert demo.demo_model_dir() == folder
    loaded = demo.load_model(ModelSource("demo"))
    assert loaded.label_names == ["negative", "positive"] and not loaded.model.training


def test_demo_key_follows_corpus_and_hyperparameters(tiny_demo, monkeypatch):
    key = demo.demo_model_key()
    assert key == demo.demo_model_key()
    monkeypatch.setattr(demo, "DEMO_HYPERPARAMETERS", {**demo.DEMO_HYPERPARAMETERS, "lr": 3e-5})
    assert demo.demo_model_key() != key
    with open(demo.DEMO_CSV, "a") as handle:
        handle.write("999,train,One more review.,1,False\n")
    monkeypatch.setattr(demo, "DEMO_HYPERPARAMETERS", {**demo.DEMO_HYPERPARAMETERS, "lr": 1e-4})
    assert demo.demo_model_key() != key  # same hyper-parameters as at first, but the corpus changed
