"""The gradient index against the engine: exact when unprojected, unbiased when projected, refused when stale."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from influence_core import EngineConfig, InfluenceEngine
from influence_core.engine.index import GradientIndex, IndexConfig, fit_and_index
from influence_core.errors import ConfigError, DataError, FactorsError
from tests.conftest import TinyMLP, tiny_bert

DAMPING = 1e-3
EXACT = IndexConfig(exact=True, dtype="float64")


def _engine(model, tokenizer, **overrides):
    config = EngineConfig(**{"dtype": "float64", "damping": DAMPING, "batch_size": 3, **overrides})
    return InfluenceEngine(model, tokenizer, config)


def _fitted(tokenizer, texts, model=None, **overrides):
    engine = _engine(model or tiny_bert(), tokenizer, **overrides)
    if engine.config.method != "identity":
        engine.fit(texts)
    return engine


def _close(actual, expected, tol=1e-6):
    scale = np.abs(expected).max()
    np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol * scale)


@pytest.mark.parametrize("method", ["ekfac", "kfac", "identity"])
def test_identity_projection_equals_the_engine(method, tokenizer, texts, labels):
    engine = _fitted(tokenizer, texts, method=method)
    index = GradientIndex.build(engine, texts, labels, config=EXACT)
    assert index.meta["kind"] == "exact"
    expected = engine.score(texts[:3], labels[:3], texts, labels, self_influence=False).total(0)
    _close(index.estimates(texts[:3], labels[:3])[0], expected)


@pytest.mark.parametrize("dtype", ["float64", "float16"])
def test_layer_estimates_are_the_engines_layers(dtype, tokenizer, texts, labels):
    engine = _fitted(tokenizer, texts)
    index = GradientIndex.build(engine, texts, labels, config=IndexConfig(exact=True, dtype=dtype))
    expected = engine.score(texts[:3], labels[:3], texts, labels, dampings=[1e-2], self_influence=False)
    got = index.layer_estimates(texts[:3], labels[:3], damping=1e-2, chunk_rows=4)  # several chunks
    assert got.shape == (len(engine.layers), 3, len(texts))
    tol = 1e-6 if dtype == "float64" else 2e-3
    for i, _ in enumerate(engine.layers):
        _close(got[i], expected.pairwise[0, i], tol)
    _close(got.sum(axis=0), index.estimates(texts[:3], labels[:3], dampings=[1e-2])[0], tol)


def test_a_damping_change_only_repreconditions_the_queries(tokenizer, texts, labels):
    engine = _fitted(tokenizer, texts)
    index = GradientIndex.build(engine, texts, labels, config=EXACT)
    dampings = [1e-4, 1e-1]
    expected = engine.score(texts[:2], labels[:2], texts, labels, dampings=dampings, self_influence=False)
    got = index.estimates(texts[:2], labels[:2], dampings=dampings)
    for k in range(len(dampings)):
        _close(got[k], expected.total(k))
    relative = _engine(engine.model, tokenizer, relative_damping=0.5)
    relative.factors = engine.factors
    rel_index = GradientIndex(index.rows, index.meta, relative, texts, labels)
    _close(rel_index.estimates(texts[:2], labels[:2])[0],
           relative.score(texts[:2], labels[:2], texts, labels, self_influence=False).total(0))


@pytest.mark.parametrize("relative", [False, True])
def test_eigen_queries_are_the_engines_rotated_queries_at_the_stored_entries(relative, tokenizer, texts, labels):
    """An eigen index computes its queries at the stored entries only (never the whole rotated gradient): they
    equal the engine's whole rotated, preconditioned query gradients read at those entries, at several dampings at
    once, over batches of several lengths."""
    from influence_core.engine.influence import ProgressCounter

    engine = _fitted(tokenizer, texts, **({"relative_damping": 1.0} if relative else {}))
    index = GradientIndex.build(engine, texts, labels, config=IndexConfig(exact=False, entries=40, dtype="float64"))
    assert index.meta["kind"] == "projected" and index.meta["basis"] == "eigen"
    dampings = [1e-4, 1e-1, 3.0]
    asked = engine.encode(texts[:5], labels[:5])
    rotations, weights = engine.preconditioner(engine.damping_values(dampings))
    with engine.session():
        queries, _, _ = engine.query_gradients(asked, rotations, weights, ProgressCounter(None, 0),
                                               {name: "rotated" for name in engine.layers})
    projector = index.projector()
    blocks = [projector.query_block(name, queries[name].unsqueeze(0) * weights[name].unsqueeze(1),
                                    index.meta["shapes"][name][0]) for name in engine.layers]
    expected = projector.arrange(torch.cat(blocks, dim=-1)).numpy()
    got = index.query_rows(texts[:5], labels[:5], dampings=dampings).numpy()
    assert got.shape == (3, 5, 40)
    _close(got, expected, 1e-10)


@pytest.mark.parametrize("method,exponent", [("ekfac", 0.5), ("ekfac", 0.0), ("kfac", 0.25)])
def test_projected_scores_are_unbiased(method, exponent, tokenizer, texts, labels):
    """One small layer (5 x 7), both sides projected to 3: the mean over seeds converges to the exact score,
    whitened or not."""
    engine = _fitted(tokenizer, texts, model=TinyMLP(), layers="hidden", method=method)
    exact = engine.score(texts[:2], labels[:2], texts, labels, self_influence=False).total(0)
    draws = []
    for seed in range(300):
        config = IndexConfig(projection=3, exact=False, seed=seed, dtype="float64", whiten_exponent=exponent,
                             distribution="rademacher" if seed % 2 else "gaussian", basis="random")
        index = GradientIndex.build(engine, texts, labels, config=config)
        assert index.meta["kind"] == "projected" and index.rows.shape == (len(texts), 9)
        draws.append(index.estimates(texts[:2], labels[:2])[0])
    draws = np.array(draws)
    error = np.abs(draws.mean(0) - exact)
    stderr = draws.std(0) / np.sqrt(len(draws))
    assert (error <= 4.5 * stderr + 1e-12).all()
    assert np.abs(draws[0] - exact).max() > 5 * error.max()  # one draw is noisy; the mean is not


@pytest.mark.parametrize("method", ["ekfac", "kfac"])
def test_an_eigen_index_is_the_engine_score_on_its_heaviest_entries(method, tokenizer, texts, labels):
    """Dense reference: rotate the exact per-example gradients, keep the entries of the largest K-FAC eigenvalue
    (relative to each layer's mean, across layers), and sum the preconditioned products there."""
    engine = _fitted(tokenizer, texts, model=TinyMLP(), layers="hidden,head", method=method)
    entries = 12
    index = GradientIndex.build(engine, texts, labels, config=IndexConfig(exact=False, entries=entries,
                                                                          dtype="float64"))
    assert index.meta["kind"] == "projected" and index.meta["basis"] == "eigen"
    assert index.rows.shape == (len(texts), entries)
    train = GradientIndex.build(engine, texts, labels, config=EXACT)  # plain per-example gradients
    test = GradientIndex.build(engine, texts[:3], labels[:3], config=EXACT)
    factors, expected, weights, by_layer = engine.factors, 0.0, [], []
    for name in engine.layers:
        layer = factors.layers[name]
        kfac = torch.outer(layer.g_eigvals, layer.a_eigvals)
        weights.append((kfac / kfac.mean()).reshape(-1))
    cutoff = torch.sort(torch.cat(weights), descending=True).values[entries - 1]
    for number, name in enumerate(engine.layers):
        layer, (start, stop) = factors.layers[name], _columns(train.meta, name)
        out, width = train.meta["shapes"][name]

        def rotated(rows, start=start, stop=stop, out=out, width=width, layer=layer):
            grads = torch.from_numpy(np.asarray(rows[:, start:stop])).reshape(-1, out, width)
            return layer.g_eigvecs.T @ grads @ layer.a_eigvecs

        keep = (weights[number] >= cutoff).reshape(out, width)
        lam = factors.eigenvalues(name, method) + DAMPING
        layer_part = torch.einsum("qij,mij->qm", rotated(test.rows) / lam * keep, rotated(train.rows))
        by_layer.append(layer_part.numpy())
        expected = expected + layer_part
    _close(index.estimates(texts[:3], labels[:3])[0], expected.numpy(), 1e-9)
    layerwise = index.layer_estimates(texts[:3], labels[:3])
    for number in range(len(engine.layers)):  # each layer's estimate is the reference on that layer's entries
        np.testing.assert_allclose(layerwise[number], by_layer[number], rtol=1e-9, atol=1e-9 * np.abs(expected.numpy()).max())
    exact = engine.score(texts[:3], labels[:3], texts, labels, self_influence=False).total(0)
    assert np.abs(index.estimates(texts[:3], labels[:3])[0] - exact).max() > 1e-6  # something was left out


def _columns(meta, name):
    start = 0
    for other in meta["layers"]:
        out, width = meta["shapes"][other]
        if other == name:
            return start, start + out * width
        start += out * width
    raise KeyError(name)


def test_an_eigen_index_stores_its_heaviest_entries_first(tokenizer, texts, labels, monkeypatch):
    """The first columns of a wide eigen index are the narrow one; the coarse pass over every row's sketch feeds
    the shortlist that the exact re-score ranks."""
    from influence_core.engine import index as index_module

    engine = _fitted(tokenizer, texts, model=TinyMLP(), layers="hidden,head")
    wide = GradientIndex.build(engine, texts, labels, config=IndexConfig(exact=False, entries=30, dtype="float64"))
    narrow = GradientIndex.build(engine, texts, labels, config=IndexConfig(exact=False, entries=6, dtype="float64"))
    np.testing.assert_allclose(wide.rows[:, :6], narrow.rows, rtol=1e-12)
    _close(wide.estimates(texts[:2], labels[:2], entries=6), narrow.estimates(texts[:2], labels[:2]), 1e-12)
    exact = engine.score(texts[:2], labels[:2], texts, labels, self_influence=False).total(0)
    assert np.abs(wide.estimates(texts[:2], labels[:2])[0] - exact).max() < \
        np.abs(narrow.estimates(texts[:2], labels[:2])[0] - exact).max()
    monkeypatch.setattr(index_module, "COARSE_BYTES", 6 * 8)  # 6 float64 buckets
    monkeypatch.setattr(index_module, "SHORTLIST_FACTOR", 2)
    projected = wide.query_rows(texts[:2], labels[:2])[0]
    sketch, stored, _ = wide.coarse_sketch()
    assert stored.shape == (len(texts), 6) and sketch.buckets == 6
    coarse = sketch.apply(projected).numpy() @ stored.T
    fine = wide.estimates(texts[:2], labels[:2])[0]
    norms = np.linalg.norm(wide.rows, axis=1) * (1 if wide.scales is None else wide.scales)
    np.testing.assert_allclose(wide.row_norms(), norms, rtol=1e-6)
    for q, got in enumerate(wide.shortlist(projected, 1)):
        spread = index_module.COARSE_SIGMAS * float(projected[q].norm()) * norms / np.sqrt(6)
        near = np.union1d(np.argsort(-(coarse[q] + spread))[:2], np.argsort(coarse[q] - spread)[:2])
        assert set(got) == {near[np.argmax(fine[q, near])], near[np.argmin(fine[q, near])]}
    sigmas = index_module.COARSE_SIGMAS
    monkeypatch.setattr(index_module, "COARSE_SIGMAS", 1e6)  # then the two heaviest rows are kept on each side
    heaviest = set(np.argsort(-norms)[:2])
    for got in wide.shortlist(projected, 1):
        assert set(got) <= heaviest
    monkeypatch.setattr(index_module, "COARSE_SIGMAS", sigmas)
    answer = wide.query(texts[:2], labels[:2], top=1, rerank=1)
    for q, got in enumerate(wide.shortlist(projected, 1)):
        rows = answer[answer["query"] == q].set_index("direction")
        assert rows.loc["helpful", "train_row"] == got[np.argmax(exact[q, got])]
        _close(rows["influence"].to_numpy(), exact[q, rows["train_row"].to_numpy()], 1e-9)


@pytest.mark.parametrize("dtype", ["int8", "float64"])
def test_a_lookup_of_chosen_rows_equals_those_columns_of_the_whole_lookup(tokenizer, texts, labels, tmp_path, dtype):
    """Chosen rows (any order, repeats, chunks smaller than the request, so the gather buffer is reused and the last
    chunk is short) read the same products as the whole lookup, held in memory, memory-mapped or as a prefix."""
    from influence_core.engine.index import _Gather

    engine = _fitted(tokenizer, texts, model=TinyMLP(), layers="hidden,head")
    index = GradientIndex.build(engine, texts, labels, config=IndexConfig(exact=False, entries=30, dtype=dtype))
    projected = index.query_rows(texts[:3], labels[:3])[0]
    chosen = np.array([5, 0, 6, 6, 2, 4, 1])
    loaded = GradientIndex.load(index.save(tmp_path / "ix"), engine, texts, labels)
    assert isinstance(loaded.rows, np.memmap)
    assert _Gather(index.rows, index.rows.shape[1]).fast and not _Gather(loaded.rows, loaded.rows.shape[1]).fast
    for source in (index, loaded):
        whole = source.lookup(projected)
        _close(source.lookup(projected, rows=chosen, chunk_rows=3), whole[:, chosen], 1e-12)
        _close(source.lookup(projected, rows=chosen, chunk_rows=3, entries=6),
               source.lookup(projected, entries=6)[:, chosen], 1e-12)


def test_the_coarse_sketch_is_an_unbiased_estimate_of_the_whole_row():
    """With a bucket per entry the sketch's product is the rows' product; with fewer it is unbiased (its mean over
    seeds converges to the product), and int8 sketch rows round each entry to 127 steps of the row's largest."""
    from influence_core.engine.index import _CountSketch

    rng = np.random.default_rng(0)
    q, x = torch.from_numpy(rng.normal(size=(1, 40))), torch.from_numpy(rng.normal(size=(3, 40)))
    exact = (q @ x.T).numpy()
    whole = _CountSketch(40, 40, seed=3)
    _close((whole.apply(q) @ whole.apply(x).T).numpy(), exact, 1e-12)
    draws = np.stack([(s.apply(q) @ s.apply(x).T).numpy() for s in (_CountSketch(40, 7, seed) for seed in range(4000))])
    assert np.all(np.abs(draws.mean(0) - exact) < 4 * draws.std(0) / np.sqrt(len(draws)))
    assert np.all(draws.std(0) > 0.1)  # 7 buckets for 40 entries do collide
    sketch = _CountSketch(40, 7, seed=1)
    stored, scales = sketch.rows(x.numpy().astype(np.float16), np.array([2.0, 1.0, 0.5], np.float32), np.dtype(np.int8))
    plain = sketch.apply(torch.from_numpy(x.numpy().astype(np.float16).astype(np.float32)) *
                         torch.tensor([[2.0], [1.0], [0.5]])).numpy()
    assert stored.dtype == np.int8 and np.abs(stored).max() == 127
    assert np.all(np.abs(stored * scales[:, None] - plain) <= 0.5 * scales[:, None] + 1e-6)
    # its error's standard deviation is about |q| |x| / sqrt(buckets), the spread the coarse pass widens by
    q, x = torch.from_numpy(rng.normal(size=(1, 400))), torch.from_numpy(rng.normal(size=(3, 400)) * [[0.5], [1], [3]])
    errors = np.stack([(s.apply(q) @ s.apply(x).T).numpy() - (q @ x.T).numpy()
                       for s in (_CountSketch(400, 20, seed) for seed in range(2000))])
    ratio = errors.std(0)[0] / (q.norm() * x.norm(dim=1) / np.sqrt(20)).numpy()
    assert np.all((ratio > 0.85) & (ratio < 1.1)), ratio


def test_the_coarse_sketch_is_kept_next_to_the_rows(tokenizer, texts, labels, tmp_path, monkeypatch):
    from influence_core.engine import index as index_module

    monkeypatch.setattr(index_module, "COARSE_BYTES", 4)
    engine = _fitted(tokenizer, texts, model=TinyMLP(), layers="hidden,head")
    built = GradientIndex.build(engine, texts, labels, config=IndexConfig(exact=False, entries=30, dtype="int8"))
    built.save(tmp_path)
    first = GradientIndex.load(tmp_path, engine, texts, labels)
    _, stored, scales = first.coarse_sketch()
    kept = list(tmp_path.glob("coarse-*.npz"))
    assert [k.name for k in kept] == [f"coarse-4-{built.meta['seed']}.npz"]
    _, again, again_scales = GradientIndex.load(tmp_path, engine, texts, labels).coarse_sketch()
    np.testing.assert_array_equal(again, stored)
    np.testing.assert_array_equal(again_scales, scales)
    norms = first.row_norms()
    with np.load(kept[0]) as file:
        np.testing.assert_array_equal(file["norms"], norms)
    np.savez(kept[0], rows=stored, scales=scales)  # a sketch kept before the row norms were: they are added
    GradientIndex.load(tmp_path, engine, texts, labels).coarse_sketch()
    with np.load(kept[0]) as file:
        np.testing.assert_allclose(file["norms"], norms, rtol=1e-12)
    built.save(tmp_path)  # new rows in the folder: the old sketch goes
    assert not list(tmp_path.glob("coarse-*.npz"))


def test_exact_rows_are_chosen_when_they_fit_the_budget(tokenizer, texts, labels):
    engine = _fitted(tokenizer, texts)
    assert GradientIndex.build(engine, texts, labels).meta["kind"] == "exact"
    small = GradientIndex.build(engine, texts, labels, config=IndexConfig(memory_bytes=1000, projection=4))
    assert small.meta["kind"] == "projected"
    for name, (k_out, k_in) in small.meta["projected"].items():
        out, width = small.meta["shapes"][name]
        assert k_out * k_in <= 16 and k_out <= out and k_in <= width
    square = GradientIndex.plan(engine, len(texts), IndexConfig(exact=False, projection=4, allocation="square"))
    for name, (k_out, k_in) in square["projected"].items():
        out, width = square["shapes"][name]
        assert (k_out, k_in) == ((out, width) if out * width <= 16 else (out, 16 // out) if out < 4
                                 else (4, 4) if width >= 4 else (16 // width, width))
    assert small.bytes_per_example == small.rows.shape[1] * 4


@pytest.mark.parametrize("basis", ["eigen", "random"])
def test_a_sharded_build_equals_a_one_shot_build(basis, tokenizer, texts, labels):
    engine = _fitted(tokenizer, texts)
    config = IndexConfig(projection=4, exact=False, dtype="float64", basis=basis)
    whole = GradientIndex.build(engine, texts, labels, config=config)
    seen = []
    parts = [GradientIndex.build(engine, texts, labels, config=config, start=s, stop=e,
                                 progress=lambda d, t, stage: seen.append((d, t, stage)))
             for s, e in ((3, 7), (0, 3))]
    joined = GradientIndex.concatenate(parts)
    np.testing.assert_allclose(joined.rows, whole.rows, rtol=1e-12, atol=1e-15)
    assert joined.meta["rows"] == [0, len(texts)] and seen[-1] == (1, 1, "index")
    with pytest.raises(DataError, match="gap"):
        GradientIndex.concatenate(parts[:1])
    with pytest.raises(DataError, match="shard"):
        parts[0].query(texts[:1], labels[:1])


@pytest.mark.parametrize("fisher,classes,basis", [("true", 2, "eigen"), ("true", 3, "random"),
                                                  ("empirical", 2, "eigen")])
def test_fit_and_index_rides_on_the_eigenvalue_pass(fisher, classes, basis, tokenizer, texts, labels):
    labels = [y if classes == 2 else i % 3 for i, y in enumerate(labels)]
    engine = _engine(tiny_bert(num_labels=classes), tokenizer, fisher=fisher)
    factors, riding = fit_and_index(engine, texts, labels, config=EXACT)
    separate = GradientIndex.build(engine, texts, labels, config=EXACT)
    _close(riding.rows, separate.rows, 1e-9)
    assert riding.meta["factors_fingerprint"] == separate.meta["factors_fingerprint"]
    projected = IndexConfig(projection=3, exact=False, dtype="float64", basis=basis)  # with the fresh factors
    _, riding = fit_and_index(engine, texts, labels, config=projected)
    _close(riding.rows, GradientIndex.build(engine, texts, labels, config=projected).rows, 1e-9)
    reference = _engine(engine.model, tokenizer, fisher=fisher)
    reference.fit(texts, labels)
    for name in engine.layers:
        _close(factors.layers[name].l_sum, reference.factors.layers[name].l_sum, 1e-12)


def test_query_reranks_with_the_engine(tokenizer, texts, labels):
    engine = _fitted(tokenizer, texts)
    exact = engine.score(texts[:2], labels[:2], texts, labels, self_influence=False).total(0)
    projected = GradientIndex.build(engine, texts, labels, config=IndexConfig(projection=2, exact=False))
    answer = projected.query(texts[:2], labels[:2], top=3, rerank=len(texts))
    assert list(answer.columns) == ["query", "direction", "rank", "train_row", "influence", "exact"]
    assert len(answer) == 2 * 2 * 3 and (answer["exact"] == 1).all()
    for q in range(2):
        for direction, order in (("helpful", np.argsort(-exact[q])), ("harmful", np.argsort(exact[q]))):
            rows = answer[(answer["query"] == q) & (answer["direction"] == direction)].sort_values("rank")
            assert rows["train_row"].tolist() == order[:3].tolist()
            _close(rows["influence"].to_numpy(), exact[q, order[:3]])
    estimates = projected.query(texts[:2], labels[:2], top=2, rerank=0)
    assert (estimates["exact"] == 0).all()
    first = estimates[(estimates["query"] == 0) & (estimates["direction"] == "helpful")]
    assert first["influence"].is_monotonic_decreasing
    with pytest.raises(ConfigError):
        projected.query(texts[:1], labels[:1], top=0)


def test_a_stale_or_mismatched_index_is_refused(tokenizer, texts, labels, tmp_path):
    engine = _fitted(tokenizer, texts)
    GradientIndex.build(engine, texts, labels, config=EXACT, info={"train_file": "x.csv"}).save(tmp_path / "ix")
    fresh = _engine(engine.model, tokenizer)
    loaded = GradientIndex.load(tmp_path / "ix", fresh, texts, labels)  # loads the stored factors
    assert isinstance(loaded.rows, np.memmap) and loaded.meta["info"]["train_file"] == "x.csv"
    _close(loaded.estimates(texts[:1], labels[:1])[0],
           engine.score(texts[:1], labels[:1], texts, labels, self_influence=False).total(0))
    with pytest.raises(FactorsError, match="another model"):
        GradientIndex.load(tmp_path / "ix", _fitted(tokenizer, texts, model=tiny_bert(seed=1)), texts, labels)
    with pytest.raises(DataError, match="other training data"):
        GradientIndex.load(tmp_path / "ix", engine, texts, [1 - y for y in labels])
    with pytest.raises(FactorsError, match="other factors"):
        other = _engine(engine.model, tokenizer)
        other.fit(texts[:4])
        GradientIndex.load(tmp_path / "ix", other, texts, labels)
    with pytest.raises(FactorsError, match="layers"):
        GradientIndex.load(tmp_path / "ix", _fitted(tokenizer, texts, model=engine.model, layers="head"))
    with pytest.raises(DataError, match="max_length"):
        GradientIndex.load(tmp_path / "ix", _fitted(tokenizer, texts, model=engine.model, max_length=8))
    with pytest.raises(FactorsError, match="no gradient index"):
        GradientIndex.load(tmp_path / "missing", engine)


@pytest.mark.parametrize("dtype,size,tol", [("float16", 2, 2e-3), ("int8", 1, 3e-2)])
def test_scaled_rows_keep_small_gradients(dtype, size, tol, tokenizer, texts, labels, tmp_path):
    engine = _fitted(tokenizer, texts)
    exact = GradientIndex.build(engine, texts, labels, config=EXACT)
    small = GradientIndex.build(engine, texts, labels, config=IndexConfig(exact=True, dtype=dtype))
    assert small.scales is not None and small.bytes_per_example == exact.rows.shape[1] * size
    assert small.rows.dtype == np.dtype(dtype)
    _close(small.estimates(texts[:2], labels[:2])[0], exact.estimates(texts[:2], labels[:2])[0], tol)
    if dtype == "int8":  # every row is rounded to 127 steps of its largest entry: the error is at most half a step
        full = np.asarray(exact.rows)
        step = np.abs(full).max(axis=1) / 127
        assert np.all(np.abs(small.rows * small.scales[:, None] - full) <= 0.5 * step[:, None] * (1 + 1e-6))
        assert np.abs(small.rows).max() == 127
    small.save(tmp_path / dtype)
    loaded = GradientIndex.load(tmp_path / dtype, engine, texts, labels)
    _close(loaded.estimates(texts[:2], labels[:2])[0], small.estimates(texts[:2], labels[:2])[0], 1e-12)
    _close(loaded.layer_estimates(texts[:2], labels[:2]).sum(axis=0), small.estimates(texts[:2], labels[:2])[0],
           1e-3)  # the layers' products round separately


def test_the_adaptive_rescore_skips_only_candidates_that_cannot_enter_the_top(tokenizer, texts, labels, monkeypatch):
    """First the best of each side, then only what the measured error leaves in reach: with an exact index
    nothing more is needed; with an unbounded margin everything is re-scored, as without ``adaptive``."""
    from influence_core.engine import index as index_module

    engine = _fitted(tokenizer, texts, model=TinyMLP(), layers="hidden,head")
    monkeypatch.setattr(index_module, "FIRST_ROUND", 1)
    scored = []
    score = engine.score

    def counting(*args, **kwargs):
        scored.append(len(args[2]))
        return score(*args, **kwargs)

    monkeypatch.setattr(engine, "score", counting)
    exact_index = GradientIndex.build(engine, texts, labels, config=EXACT)
    answer = exact_index.query(texts[:1], labels[:1], top=1, rerank=len(texts), adaptive=True)
    truth = score(texts[:1], labels[:1], texts, labels, self_influence=False).total(0)[0]
    assert scored == [4]  # the best two of each side (2 top); the exact estimates leave nothing else in reach
    assert answer.set_index("direction").loc["helpful", "train_row"] == int(np.argmax(truth))
    assert answer.set_index("direction").loc["harmful", "train_row"] == int(np.argmin(truth))

    rough = GradientIndex.build(engine, texts, labels, config=IndexConfig(exact=False, entries=2))
    monkeypatch.setattr(index_module, "MARGIN_SIGMAS", 1e9)
    scored.clear()
    wide = rough.query(texts[:2], labels[:2], top=1, rerank=len(texts), adaptive=True)
    assert len(scored) == 2 and scored[0] < len(texts)  # a first round, then the rest
    plain = rough.query(texts[:2], labels[:2], top=1, rerank=len(texts), adaptive=False)
    pd.testing.assert_frame_equal(wide, plain)


def test_int8_rows_multiply_in_integers_with_a_two_part_query(monkeypatch):
    from influence_core.engine import index as index_module
    from influence_core.engine.index import _IntegerQuery, _product

    generator = torch.Generator().manual_seed(0)
    rows = torch.randint(-127, 128, (50, 300), dtype=torch.int8, generator=generator)
    query = torch.randn(3, 300, generator=generator, dtype=torch.float64) ** 3  # heavy-tailed, like a gradient
    expected = query @ rows.double().T
    got = _product(query, rows)
    assert got.dtype == torch.float64 and got.shape == (3, 50)
    # the two int8 parts keep the query to 1/(2 * 127^2) of its largest entry
    bound = query.abs().amax(dim=1, keepdim=True) / (2 * 127**2) * rows.double().abs().sum(dim=1)
    assert torch.all((got - expected).abs() <= bound * (1 + 1e-9))
    one_part = torch.round(query / (query.abs().amax(dim=1, keepdim=True) / 127))  # what a single int8 part keeps
    assert (got - expected).abs().max() < 0.01 * (one_part * query.abs().amax(dim=1, keepdim=True) / 127
                                                  @ rows.double().T - expected).abs().max()
    split = _IntegerQuery.split(query)  # split once, reused for every chunk of rows
    torch.testing.assert_close(torch.cat([_product(split, rows[:20]), _product(split, rows[20:])], dim=1), got,
                               rtol=0, atol=0)
    monkeypatch.setattr(index_module, "INT32_SAFE_WIDTH", 64)  # five windows of columns, the last one short
    windowed = _IntegerQuery.split(query)
    assert [w.shape for w in windowed.windows] == [(64, 6)] * 4 + [(44, 6)]
    torch.testing.assert_close(_product(windowed, rows), got, rtol=1e-12, atol=1e-9)


def test_an_int8_eigen_index_keeps_its_small_entries(tokenizer, texts, labels, monkeypatch):
    """int8 eigen rows are divided by sqrt(K-FAC eigenvalue) per entry before rounding, so the later (smaller)
    entries survive: the estimate stays close to the float64 index's, and closer than plain per-row int8."""
    engine = _fitted(tokenizer, texts, model=TinyMLP(), layers="hidden,head")
    reference = GradientIndex.build(engine, texts, labels, config=IndexConfig(exact=False, entries=40,
                                                                              dtype="float64"))
    expected = reference.estimates(texts[:3], labels[:3])[0]
    int8 = IndexConfig(exact=False, entries=40, dtype="int8")
    index = GradientIndex.build(engine, texts, labels, config=int8)
    assert index.meta["whitened_int8"] and index.rows.dtype == np.int8
    whitened = index.estimates(texts[:3], labels[:3])[0]
    _close(whitened, expected, 2e-2)
    plan = GradientIndex.plan
    monkeypatch.setattr(GradientIndex, "plan", staticmethod(lambda *a: {**plan(*a), "whitened_int8": False}))
    plain = GradientIndex.build(engine, texts, labels, config=int8).estimates(texts[:3], labels[:3])[0]
    assert np.abs(whitened - expected).max() < np.abs(plain - expected).max()
