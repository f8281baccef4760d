"""ModelStore: one engine per factors whatever the damping, shared safely by several sessions at once."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from explorer.analysis import compute_analysis, load_examples
from explorer.spec import AnalysisSpec, damping_grid, factors_path
from explorer.store import ModelStore
from influence_core import InfluenceEngine
from influence_core.engine.config import EngineConfig
from influence_core.sources.data import DataSource
from influence_core.sources.models import ModelSource
from influence_core.sources.slices import SliceSpec


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from tests.app.conftest import build_tiny_classifier

    return build_tiny_classifier(tmp_path_factory.mktemp("tiny_classifier"))


def _spec(model_dir, damping: float) -> AnalysisSpec:
    config = EngineConfig(layers="ffn,head", damping=damping, batch_size=8, max_length=48)
    return AnalysisSpec(
        model=ModelSource("local", str(model_dir)), train_data=DataSource("demo", split="train"),
        test_data=DataSource("demo", split="test"), train_slice=SliceSpec(stop=16), test_slice=SliceSpec(stop=4),
        config=config, dampings=damping_grid(damping),
    )


@pytest.fixture
def fitted(model_dir):
    """A store, the spec at damping 1e-3 whose factors are fitted, and its data."""
    store = ModelStore()
    spec = _spec(model_dir, 1e-3)
    compute_analysis(spec, store)
    loaded = store.model(spec.model)
    train = load_examples(spec.train_data, spec.train_slice, loaded.label_names)
    test = load_examples(spec.test_data, spec.test_slice, loaded.label_names)
    return store, spec, train, test


def _score(engine, train, test, damping):
    return engine.score(test["text"].tolist(), test["label"].to_numpy(), train["text"].tolist(),
                        train["label"].to_numpy(), dampings=[damping]).pairwise


def test_changing_damping_reuses_the_engine(fitted, model_dir):
    store, spec, train, test = fitted
    engine = store.engine(spec)
    other = _spec(model_dir, 0.5)  # the View's damping changed: same factors
    assert other.factors_key() == spec.factors_key() and other.key() != spec.key()
    assert store.engine(other) is engine
    assert store.engines_loaded() == 1
    loaded = store.model(spec.model)
    for damping in (1e-3, 0.5):
        fresh = InfluenceEngine(loaded.model, loaded.tokenizer, spec.config.replace(damping=damping))
        fresh.load_factors(factors_path(spec))
        np.testing.assert_array_equal(_score(engine, train, test, damping), _score(fresh, train, test, damping))
        token = engine.token_influence(test["text"].iloc[0], int(test["label"].iloc[0]), train["text"].iloc[1],
                                       int(train["label"].iloc[1]), damping=damping)
        expected = fresh.token_influence(test["text"].iloc[0], int(test["label"].iloc[0]), train["text"].iloc[1],
                                         int(train["label"].iloc[1]))
        np.testing.assert_array_equal(token.scores, expected.scores)
    assert store.engines_loaded() == 1


def test_two_sessions_score_two_dampings_at_once(fitted, model_dir):
    store, spec, train, test = fitted
    alone = {d: _score(store.engine(_spec(model_dir, d)), train, test, d) for d in (1e-3, 0.5)}
    results: dict[float, list] = {1e-3: [], 0.5: []}
    errors: list[BaseException] = []

    def session(damping):
        try:
            for _ in range(3):
                results[damping].append(_score(store.engine(_spec(model_dir, damping)), train, test, damping))
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=session, args=(d,)) for d in results]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, errors
    for damping, got in results.items():
        assert len(got) == 3
        for value in got:
            np.testing.assert_array_equal(value, alone[damping])
    assert store.engines_loaded() == 1


def test_the_app_keeps_exact_rows_where_they_fit_and_an_int8_eigen_index_beyond(model_dir):
    """Few training reviews: the exact float32 index; more than its memory budget holds (with layers larger than
    the library's projected blocks): the int8 eigen index of PROJECTED_INDEX_CONFIG."""
    from transformers import BertConfig, BertForSequenceClassification

    from explorer.store import INDEX_CONFIG, PROJECTED_INDEX_CONFIG, index_config
    from influence_core.engine.index import GradientIndex

    tokenizer = ModelStore().model(ModelSource("local", str(model_dir))).tokenizer
    model = BertForSequenceClassification(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=192,
                                                     num_hidden_layers=1, num_attention_heads=2,
                                                     intermediate_size=320, num_labels=2)).eval()
    engine = InfluenceEngine(model, tokenizer, EngineConfig(layers="ffn,head"))
    full = sum(engine.layer_size(name) for name in engine.layers)
    fits = INDEX_CONFIG.memory_bytes // (4 * full)
    assert index_config(engine, fits) is INDEX_CONFIG
    assert GradientIndex.plan(engine, fits, INDEX_CONFIG)["kind"] == "exact"
    beyond = index_config(engine, fits + 1)
    assert beyond is PROJECTED_INDEX_CONFIG and beyond.dtype == "int8" and beyond.basis == "eigen"
    plan = GradientIndex.plan(engine, fits + 1, beyond)
    assert plan["kind"] == "projected" and plan["width"] == min(PROJECTED_INDEX_CONFIG.entries, full) < full
