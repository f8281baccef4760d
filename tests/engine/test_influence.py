"""The engine against the dense reference, and the identities every influence result must satisfy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from influence_core import EngineConfig, FactorsError, InfluenceEngine, ScoreTable
from influence_core.errors import ConfigError, DataError
from tests.conftest import TinyMLP, tiny_bert, tiny_distilbert, tiny_roberta
from tests.reference import Reference

DAMPING = 1e-3


def _engine(model, tokenizer, **overrides):
    config = EngineConfig(**{"dtype": "float64", "damping": DAMPING, "batch_size": 3, **overrides})
    return InfluenceEngine(model, tokenizer, config)


def _assert_close(actual, expected, rtol=1e-5):
    actual, expected = np.asarray(actual), np.asarray(expected)
    scale = np.abs(expected).max()
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale)


MODELS = {"bert": tiny_bert, "distilbert": tiny_distilbert, "mlp": TinyMLP}


@pytest.mark.parametrize("family", list(MODELS))
@pytest.mark.parametrize("method", ["ekfac", "kfac", "identity"])
def test_matches_dense_reference(family, method, tokenizer, texts, labels):
    model = MODELS[family]()
    layers = "all"
    engine = _engine(model, tokenizer, layers=layers, method=method, fisher="true")
    reference = Reference(model, tokenizer, engine.layers).fit(texts, fisher="true")
    if method != "identity":
        engine.fit(texts)
    table = engine.score(texts[:3], labels[:3], texts, labels)
    expected, expected_layers = reference.influences(texts[:3], labels[:3], texts, labels, method, DAMPING)
    _assert_close(table.total(0), expected)
    for name in engine.layers:
        _assert_close(table.by_layer(0)[name], expected_layers[name])


def test_factors_match_reference_with_empirical_fisher(tokenizer, texts, labels):
    model = tiny_bert()
    engine = _engine(model, tokenizer, layers="ffn,head", fisher="empirical")
    factors = engine.fit(texts, labels)
    reference = Reference(model, tokenizer, engine.layers).fit(texts, labels, fisher="empirical")
    for name in engine.layers:
        layer, ref = factors.layers[name], reference.eig[name]
        _assert_close(layer.a_sum / layer.a_count, ref["A"])
        _assert_close(layer.g_sum / layer.g_count, ref["G"])
        _assert_close(layer.corrected_eigenvalues(), ref["L"])
    expected, _ = reference.influences(texts[:2], labels[:2], texts, labels, "ekfac", DAMPING)
    _assert_close(engine.influences(texts[:2], labels[:2], texts, labels), expected)


def test_kfac_is_exact_when_inputs_are_shared(tokenizer):
    """One input vector per example, shared by all examples, different labels: the Fisher is exactly
    A (x) G, so kfac, ekfac and the explicit damped inverse of the Fisher agree."""
    model = TinyMLP()
    texts, labels = ["the same words"] * 6, [0, 1, 1, 0, 1, 1]
    results = {}
    for method in ("ekfac", "kfac"):
        engine = _engine(model, tokenizer, layers="hidden,classifier", method=method, fisher="empirical")
        engine.fit(texts, labels)
        results[method] = engine.influences(texts[:2], labels[:2], texts, labels)
    reference = Reference(model, tokenizer, engine.layers)
    grads = [reference.gradient(t, y) for t, y in zip(texts, labels)]
    explicit = np.zeros((2, len(texts)))
    for name in engine.layers:
        flat = torch.stack([g[name].reshape(-1) for g in grads])
        fisher = flat.T @ flat / len(texts)
        solved = torch.linalg.solve(fisher + DAMPING * torch.eye(fisher.shape[0], dtype=fisher.dtype), flat[:2].T).T
        explicit += (solved @ flat.T).numpy()
    _assert_close(results["kfac"], explicit)
    _assert_close(results["ekfac"], explicit)


def test_layer_sums_token_sums_and_self_influence(tokenizer, texts, labels):
    engine = _engine(tiny_bert(), tokenizer, layers="all")
    engine.fit(texts)
    table = engine.score(texts, labels, texts, labels)
    total = table.total(0)
    _assert_close(sum(table.by_layer(0).values()), total, rtol=1e-12)
    _assert_close(table.self_total(0), np.diag(total), rtol=1e-9)
    _assert_close(table.test_self_total(0), np.diag(total), rtol=1e-9)
    _assert_close(engine.self_influence(texts, labels), np.diag(total), rtol=1e-9)
    assert (table.self_total(0) > 0).all()
    relative = table.relative(0)
    _assert_close(np.diag(relative), np.ones(len(texts)), rtol=1e-9)
    assert np.abs(relative).max() <= 1 + 1e-9
    for q, m in [(0, 1), (2, 3), (4, 4)]:
        tokens = engine.token_influence(texts[q], labels[q], texts[m], labels[m])
        assert len(tokens.tokens) == len(tokens.scores)
        _assert_close(tokens.scores.sum(), total[q, m], rtol=1e-9)
        _assert_close(tokens.total, total[q, m], rtol=1e-9)


def test_invariant_to_padding_and_batch_size(tokenizer, texts, labels):
    model = tiny_bert()
    results = []
    for batch_size in (1, 2, 7):
        engine = _engine(model, tokenizer, layers="ffn,head", batch_size=batch_size)
        engine.fit(texts)
        results.append(engine.influences(texts[:3], labels[:3], texts, labels))
    _assert_close(results[1], results[0], rtol=1e-9)
    _assert_close(results[2], results[0], rtol=1e-9)


def test_float32_is_close_to_float64(tokenizer, texts, labels):
    model = tiny_bert()
    out = {}
    for dtype in ("float32", "float64"):
        engine = _engine(model, tokenizer, dtype=dtype, damping=1e-2)
        engine.fit(texts)
        out[dtype] = engine.influences(texts[:3], labels[:3], texts, labels)
    _assert_close(out["float32"], out["float64"], rtol=1e-3)
    assert next(model.parameters()).dtype == torch.float32


def test_damping_sweep_equals_separate_runs(tokenizer, texts, labels):
    model = tiny_bert()
    dampings = [1e-4, 1e-2, 1.0]
    engine = _engine(model, tokenizer)
    engine.fit(texts)
    sweep = engine.damping_sweep(texts[:2], labels[:2], texts, labels, dampings)
    for k, value in enumerate(dampings):
        single = _engine(model, tokenizer, damping=value)
        single.factors = engine.factors
        table = single.score(texts[:2], labels[:2], texts, labels)
        _assert_close(sweep.total(k), table.total(0), rtol=1e-9)
        _assert_close(sweep.self_total(k), table.self_total(0), rtol=1e-9)
    stability = sweep.stability()
    assert set(stability["layer"]) == {*engine.layers, "total"}
    assert len(stability) == (len(dampings) - 1) * (len(engine.layers) + 1)
    assert stability["pearson"].between(-1, 1).all()


def test_relative_damping_scales_with_mean_eigenvalue(tokenizer, texts, labels):
    model = tiny_bert()
    engine = _engine(model, tokenizer, layers="classifier", relative_damping=0.1)
    factors = engine.fit(texts)
    mean = float(factors.eigenvalues("classifier").mean())
    absolute = _engine(model, tokenizer, layers="classifier", damping=0.1 * mean)
    absolute.factors = factors
    _assert_close(engine.influences(texts[:2], labels[:2], texts, labels),
                  absolute.influences(texts[:2], labels[:2], texts, labels), rtol=1e-9)


def test_true_fisher_is_exact_and_the_mean_of_sampled_fishers(tokenizer, texts):
    model = tiny_bert(num_labels=3)
    true_engine = _engine(model, tokenizer, layers="classifier", fisher="true")
    first = true_engine.covariance_statistics(true_engine.encode(texts))["classifier"]
    again = true_engine.covariance_statistics(true_engine.encode(texts))["classifier"]
    assert torch.equal(first.g_sum, again.g_sum)
    runs = 400
    total = torch.zeros_like(first.g_sum)
    for seed in range(runs):
        sampled = _engine(model, tokenizer, layers="classifier", fisher="sampled", seed=seed)
        total += sampled.covariance_statistics(sampled.encode(texts))["classifier"].g_sum
    mean, truth = total / runs, first.g_sum
    error = (mean - truth).norm() / truth.norm()
    assert error < 0.1, f"mean of {runs} sampled Fishers is {error:.3f} away from the true Fisher"
    repeat = _engine(model, tokenizer, layers="classifier", fisher="sampled", seed=3)
    a = repeat.covariance_statistics(repeat.encode(texts))["classifier"].g_sum
    b = repeat.covariance_statistics(repeat.encode(texts))["classifier"].g_sum
    assert torch.equal(a, b)


def test_label_flip_closed_form_equals_recomputation(tokenizer, texts, labels):
    engine = _engine(tiny_bert(), tokenizer)
    engine.fit(texts)
    flip = np.array([True, False, True, False, False, True, False])
    closed = engine.flipped_influences(texts[:3], labels[:3], texts, labels, flip, mode="closed_form")
    recomputed = engine.flipped_influences(texts[:3], labels[:3], texts, labels, flip, mode="recompute")
    _assert_close(closed, recomputed, rtol=1e-9)
    original = engine.influences(texts[:3], labels[:3], texts, labels)
    assert np.allclose(closed[:, ~flip], original[:, ~flip])
    assert (np.sign(closed[:, flip]) == -np.sign(original[:, flip])).all()


def test_save_load_round_trip_and_refusals(tokenizer, texts, labels, tmp_path):
    model = tiny_bert()
    engine = _engine(model, tokenizer)
    engine.fit(texts)
    path = engine.factors.save(tmp_path / "factors.safetensors")
    meta = (tmp_path / "factors.json").read_text()
    assert engine.fingerprint in meta and "bert.encoder.layer.0.intermediate.dense" in meta
    before = engine.influences(texts[:2], labels[:2], texts, labels)
    loaded = _engine(model, tokenizer)
    loaded.load_factors(path)
    _assert_close(loaded.influences(texts[:2], labels[:2], texts, labels), before, rtol=1e-12)
    with pytest.raises(FactorsError, match="another model"):
        _engine(tiny_bert(seed=1), tokenizer).load_factors(path)
    with pytest.raises(FactorsError, match="do not cover"):
        _engine(model, tokenizer, layers="attention").load_factors(path)
    with pytest.raises(FactorsError, match="not a factors file"):
        (tmp_path / "junk.safetensors").write_bytes(b"not safetensors")
        _engine(model, tokenizer).load_factors(tmp_path / "junk.safetensors")


def test_model_is_left_as_found(tokenizer, texts, labels):
    model = tiny_bert()
    model.train()
    flags = [p.requires_grad for p in model.parameters()]
    snapshot = {k: v.clone() for k, v in model.state_dict().items()}
    engine = _engine(model, tokenizer)
    engine.fit(texts)
    engine.score(texts[:2], labels[:2], texts, labels)
    assert model.training
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in snapshot.items())
    assert next(model.parameters()).dtype == torch.float32


def test_scores_are_deterministic_and_tables_round_trip(tokenizer, texts, labels, tmp_path):
    model = tiny_bert()
    runs = []
    for _ in range(2):
        engine = _engine(model, tokenizer, dtype="float32", fisher="sampled", seed=5)
        engine.fit(texts)
        runs.append(engine.score(texts[:2], labels[:2], texts, labels, dampings=[1e-3, 1e-1]))
    np.testing.assert_array_equal(runs[0].pairwise, runs[1].pairwise)
    path = runs[0].save(tmp_path / "scores.npz")
    loaded = ScoreTable.load(path)
    np.testing.assert_array_equal(loaded.pairwise, runs[0].pairwise)
    assert loaded.layers == runs[0].layers


def test_query_chunks_give_the_same_scores(tokenizer, texts, labels):
    model = tiny_bert()
    engine = _engine(model, tokenizer)
    engine.fit(texts)
    whole = engine.score(texts, labels, texts, labels, dampings=[1e-3, 1e-1])
    engine.query_memory_bytes = 1  # one test example per chunk
    chunked = engine.score(texts, labels, texts, labels, dampings=[1e-3, 1e-1])
    _assert_close(chunked.pairwise, whole.pairwise, rtol=1e-12)
    _assert_close(chunked.self_influence, whole.self_influence, rtol=1e-12)


def test_layer_groups_give_the_same_scores(tokenizer, texts, labels):
    """When every layer's test gradients do not fit but each layer's do, the layers are scored in groups."""
    model = tiny_bert()
    engine = _engine(model, tokenizer)
    engine.fit(texts)
    whole = engine.score(texts, labels, texts, labels, dampings=[1e-3, 1e-1])
    element = torch.tensor([], dtype=engine.config.torch_dtype).element_size()
    engine.query_memory_bytes = max(engine.layer_size(name) for name in engine.layers) * element * len(texts)
    plan = engine._plan(len(texts))
    assert len(plan) > 1 and all(len(rows) == len(texts) for rows, _ in plan)
    assert sorted(name for _, layers in plan for name in layers) == sorted(engine.layers)  # each layer once
    grouped = engine.score(texts, labels, texts, labels, dampings=[1e-3, 1e-1])
    _assert_close(grouped.pairwise, whole.pairwise, rtol=1e-12)
    _assert_close(grouped.self_influence, whole.self_influence, rtol=1e-12)
    _assert_close(grouped.test_self_influence, whole.test_self_influence, rtol=1e-12)
    np.testing.assert_allclose(grouped.train_probs, whole.train_probs)
    np.testing.assert_allclose(grouped.test_probs, whole.test_probs)


def test_bad_inputs_are_refused_clearly(tokenizer, texts, labels):
    model = tiny_bert()
    with pytest.raises(ConfigError, match="damping"):
        EngineConfig(damping=-1)
    with pytest.raises(ConfigError, match="damping"):
        EngineConfig(damping=float("nan"))
    with pytest.raises(ConfigError, match="unknown layer"):
        InfluenceEngine(model, tokenizer, EngineConfig(layers="nope"))
    engine = _engine(model, tokenizer)
    with pytest.raises(FactorsError, match="fit"):
        engine.influences(texts[:1], labels[:1], texts, labels)
    engine.fit(texts)
    with pytest.raises(DataError, match="outside"):
        engine.influences(texts[:1], [5], texts, labels)
    with pytest.raises(DataError, match="empty"):
        engine.influences([], [], texts, labels)


@pytest.mark.parametrize("factory", [tiny_bert, tiny_distilbert, tiny_roberta])
def test_groups_cover_every_family(factory, tokenizer, texts, labels):
    from influence_core import layer_groups

    groups = layer_groups(factory())
    assert len(groups["ffn"]) == 4  # two blocks, in and out projections
    assert len(groups["attention"]) == 8  # query, key, value, output per block
    assert 1 <= len(groups["head"]) <= 2
    assert sorted(groups["all"]) == sorted(groups["ffn"] + groups["attention"] + groups["head"])
    engine = _engine(factory(), tokenizer, layers="ffn,head")
    engine.fit(texts)
    assert engine.influences(texts[:1], labels[:1], texts, labels).shape == (1, len(texts))


def test_minilm_groups():
    from transformers import AutoModelForSequenceClassification

    from influence_core import layer_groups
    from tests.conftest import minilm_path

    model = AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=2)
    groups = layer_groups(model)
    assert len(groups["ffn"]) == 12 and len(groups["attention"]) == 24
    assert groups["head"] == ["bert.pooler.dense", "classifier"]


@pytest.mark.parametrize("dampings", [[1e-3], [1e-3, 1e-1]])
def test_both_contraction_routes_agree(tokenizer, texts, labels, dampings):
    """Few test examples: gradients meet in the parameter basis; with self-influence, in the eigenbasis."""
    engine = _engine(tiny_bert(), tokenizer)
    engine.fit(texts)
    routes = engine._routes(engine.preconditioner(np.array(dampings))[0], 1, len(dampings), 1000, want_self=False)
    assert set(routes.values()) == {"original"}
    original = engine.score(texts[:1], labels[:1], texts, labels, dampings=dampings, self_influence=False)
    rotated = engine.score(texts[:1], labels[:1], texts, labels, dampings=dampings, self_influence=True)
    _assert_close(original.pairwise, rotated.pairwise, rtol=1e-9)


def test_statistics_from_shards_add_up_to_the_whole(tokenizer, texts, labels):
    """Sums with counts: shards fitted apart (as separate processes would) merge into the full statistics."""
    engine = _engine(tiny_bert(), tokenizer, fisher="empirical")
    whole = engine.covariance_statistics(engine.encode(texts, labels))
    first = engine.covariance_statistics(engine.encode(texts[:3], labels[:3]))
    second = engine.covariance_statistics(engine.encode(texts[3:], labels[3:]))
    for name in engine.layers:
        first[name].merge(second[name])
        _assert_close(first[name].a_sum, whole[name].a_sum, rtol=1e-12)
        _assert_close(first[name].g_sum, whole[name].g_sum, rtol=1e-12)
        assert (first[name].a_count, first[name].g_count) == (whole[name].a_count, whole[name].g_count)
    engine.fit(texts, labels)
    full = engine.score(texts[:2], labels[:2], texts, labels)
    left = engine.score(texts[:2], labels[:2], texts[:4], labels[:4])
    right = engine.score(texts[:2], labels[:2], texts[4:], labels[4:])
    _assert_close(np.concatenate([left.total(0), right.total(0)], axis=1), full.total(0), rtol=1e-9)


def test_damped_scores_in_column_slices_equal_the_whole_product(monkeypatch):
    from influence_core.engine import influence

    gen = torch.Generator().manual_seed(0)
    query, rotated, weight = (torch.randn(*shape, generator=gen, dtype=torch.float64)
                              for shape in ((3, 50), (4, 50), (2, 50)))
    expected = torch.einsum("qe,ke,be->kqb", query, weight, rotated)
    for chunk in (7, 50, 8192):  # slices that do not divide the width, one slice, the default
        monkeypatch.setattr(influence, "DAMPED_CHUNK", chunk)
        assert torch.allclose(influence._damped_scores(query, rotated, weight), expected, rtol=0, atol=1e-12)


def test_token_influences_of_many_cards_equal_one_card_at_a_time(tokenizer, texts, labels):
    model = tiny_bert()
    engine = _engine(model, tokenizer, layers="ffn,head", batch_size=3)  # several padded batches
    engine.fit(texts)
    total = engine.score(texts[:1], labels[:1], texts, labels).total(0)[0]
    cards = [len(texts) - 1, 0, 3, 2, 1]
    together = engine.token_influences(texts[0], labels[0], [texts[m] for m in cards], [labels[m] for m in cards])
    assert len(together) == len(cards)
    for m, many in zip(cards, together, strict=True):
        one = engine.token_influence(texts[0], labels[0], texts[m], labels[m])
        assert many.tokens == one.tokens and len(many.scores) == len(many.tokens)
        _assert_close(many.scores, one.scores, rtol=1e-12)
        assert many.pooled == pytest.approx(one.pooled, rel=1e-12, abs=1e-15) and many.pooled != 0
        _assert_close(many.total, total[m], rtol=1e-9)  # the tokens add up to the card's score
    head = [name for name in engine.layers if "classifier" in name or "pooler" in name]
    only_head = engine.token_influences(texts[0], labels[0], [texts[m] for m in cards], [labels[m] for m in cards],
                                        layers=head)
    for many in only_head:  # the pooled layers put everything on the first token
        assert many.scores[0] == pytest.approx(many.pooled) and not many.scores[1:].any()
