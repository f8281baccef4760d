"""Model sources: local folders, refusals (bare encoder, pickle, offline Hub), labels from the config."""

from __future__ import annotations

import json
import time

import pytest
import torch
from safetensors.torch import load_file

from influence_core.errors import ModelError
from influence_core.sources.models import (
    PRESET_MODELS,
    ModelSource,
    base_encoder_path,
    hub_offline_reason,
    label_names_of,
    load_classifier,
)
from tests.data_fixtures import save_tiny_classifier, tiny_classifier_dir, tiny_encoder_dir  # noqa: F401


def test_local_folder_loads_in_eval_mode_with_config_labels(tiny_classifier_dir):  # noqa: F811
    loaded = load_classifier(ModelSource("local", str(tiny_classifier_dir)))
    saved = load_file(tiny_classifier_dir / "model.safetensors")  # the weights written by save_tiny_classifier
    state = loaded.model.state_dict()
    # embeddings 5 + 2 layers x 16 + pooler 2 + classifier 2 tensors
    assert set(saved) == set(state) and len(saved) == 5 + 2 * 16 + 2 + 2
    assert all(torch.equal(state[name], value) for name, value in saved.items())
    assert loaded.model.config.hidden_size == 32 and loaded.model.config.num_hidden_layers == 2
    assert loaded.label_names == ["negative", "positive"]
    assert not loaded.model.training
    assert loaded.source == ModelSource("local", str(tiny_classifier_dir))
    batch = loaded.tokenizer(["a fine film"], return_tensors="pt")
    with torch.no_grad():
        assert loaded.model(**batch).logits.shape == (1, 2)
    again = load_classifier(ModelSource("local", str(tiny_classifier_dir)))
    assert again.fingerprint == loaded.fingerprint and len(loaded.fingerprint) == 16


def test_generic_label_names_are_kept(tmp_path):
    folder = save_tiny_classifier(
        tmp_path / "generic", num_labels=3, id2label={0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"}
    )
    assert load_classifier(ModelSource("local", str(folder))).label_names == ["LABEL_0", "LABEL_1", "LABEL_2"]


def test_bare_encoder_is_refused_with_a_pointer_to_finetune(tiny_encoder_dir):  # noqa: F811
    with pytest.raises(ModelError, match="not a sequence classifier.*finetune"):
        load_classifier(ModelSource("local", str(tiny_encoder_dir)))


def test_the_shipped_minilm_encoder_is_refused():
    with pytest.raises(ModelError, match="BertModel.*finetune --base"):
        load_classifier(ModelSource("local", base_encoder_path()))


def test_head_missing_from_the_weights_is_refused(tiny_encoder_dir, tmp_path):  # noqa: F811
    # A config that claims to be a classifier but whose weights lack the head would get a random head.
    folder = tmp_path / "liar"
    folder.mkdir()
    for item in tiny_encoder_dir.iterdir():
        (folder / item.name).write_bytes(item.read_bytes())
    config = json.loads((folder / "config.json").read_text())
    config["architectures"] = ["BertForSequenceClassification"]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match="not a sequence classifier.*classifier"):
        load_classifier(ModelSource("local", str(folder)))


def test_pickle_only_folder_is_refused(tiny_classifier_dir, tmp_path):  # noqa: F811
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(tiny_classifier_dir)
    folder = tmp_path / "pickle"
    folder.mkdir()
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    (folder / "config.json").write_text((tiny_classifier_dir / "config.json").read_text())
    with pytest.raises(ModelError, match="safetensors"):
        load_classifier(ModelSource("local", str(folder)))


def test_missing_folder_and_bad_sources(tmp_path):
    with pytest.raises(ModelError, match="no such model folder"):
        load_classifier(ModelSource("local", str(tmp_path / "nope")))
    with pytest.raises(ModelError, match="no config.json"):
        load_classifier(ModelSource("local", str(tmp_path)))
    with pytest.raises(ModelError, match="unknown model source kind"):
        ModelSource("s3", "x")
    with pytest.raises(ModelError, match="needs a name"):
        ModelSource("hub")


@pytest.mark.parametrize("name", ["distilbert-base-uncased-finetuned-sst-2-english", "someone/not-cached-model"])
def test_hub_id_offline_is_refused_within_seconds(monkeypatch, name):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()
    with pytest.raises(ModelError, match="offline.*built-in demo model or a local model folder"):
        load_classifier(ModelSource("hub", name))
    assert time.perf_counter() - started < 10


def test_unreachable_hub_is_detected_without_the_env_flag(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "https://no-such-host.invalid")
    started = time.perf_counter()
    assert "no-such-host.invalid" in hub_offline_reason(timeout=3)
    assert time.perf_counter() - started < 5


def test_presets_and_label_names_of():
    assert PRESET_MODELS["demo"] == ModelSource("demo")
    assert PRESET_MODELS["assemblyai/distilbert-base-uncased-sst2"].kind == "hub"
    assert "distilbert-base-uncased-finetuned-sst-2-english" in PRESET_MODELS

    class Config:
        num_labels = 2
        id2label = {"1": "POSITIVE", "0": "NEGATIVE"}

    assert label_names_of(Config()) == ["NEGATIVE", "POSITIVE"]
