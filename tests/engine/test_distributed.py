"""Several ranks give one process's results: factors, scores and self-influence, sharded and merged back.

The multi-rank checks start two local gloo workers with ``launch`` (one thread each); the rest runs in-process.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from influence_core import EngineConfig, InfluenceEngine
from influence_core.engine.distributed import Distributed, launch
from influence_core.errors import DataError
from tests.conftest import minilm_path, tiny_bert

TEXTS = [
    "a great film with a warm heart", "terrible acting and a dull plot", "i loved it",
    "not good at all, i left early", "meh, fine i guess but far too long", "the soundtrack alone is worth the ticket",
    "why would anyone make this", "a quiet, patient and moving story", "two hours i will never get back",
    "funny from start to end", "the plot makes no sense", "beautifully shot",
]
LABELS = [1, 0, 1, 0, 1, 1, 0, 1, 0, 1, 0, 1]
TEST = slice(0, 3)


def _engine(batch_size: int = 3, model=None) -> InfluenceEngine:
    from transformers import AutoTokenizer

    config = EngineConfig(layers="ffn,head", dtype="float64", damping=1e-3, batch_size=batch_size)
    return InfluenceEngine(model or tiny_bert(), AutoTokenizer.from_pretrained(minilm_path()), config)


def _results(engine: InfluenceEngine, distributed: Distributed | None) -> dict[str, np.ndarray]:
    factors = engine.fit(TEXTS, LABELS, distributed=distributed)
    table = engine.score(TEXTS[TEST], LABELS[TEST], TEXTS, LABELS, distributed=distributed)
    out = {"self": engine.self_influence(TEXTS, LABELS, distributed=distributed),
           "pairwise": table.pairwise, "table_self": table.self_influence, "train_probs": table.train_probs,
           "world_size": np.array(factors.meta.get("world_size", 1))}
    for name, layer in factors.layers.items():
        out[f"{name}:a_sum"], out[f"{name}:g_sum"], out[f"{name}:l_sum"] = layer.a_sum, layer.g_sum, layer.l_sum
        out[f"{name}:a_eigvals"], out[f"{name}:g_eigvals"] = layer.a_eigvals, layer.g_eigvals
        out[f"{name}:counts"] = np.array([layer.a_count, layer.g_count, layer.l_count])
    return {key: np.asarray(value) for key, value in out.items()}


def _two_ranks(distributed: Distributed) -> list[dict[str, np.ndarray]]:
    """In each worker: contiguous shards with batch size 3, then strided shards with batch size 2."""
    strided = dataclasses.replace(distributed, sharding="strided", owns_group=False)
    eigvecs = {}
    runs = []
    for dist, batch_size in ((distributed, 3), (strided, 2)):
        engine = _engine(batch_size)
        runs.append(_results(engine, dist))
        eigvecs[batch_size] = torch.cat([layer.a_eigvecs.reshape(-1) for layer in engine.factors.layers.values()])
    # every rank must hold rank 0's eigenvectors, bit for bit
    gathered = [None] * distributed.world_size
    torch.distributed.all_gather_object(gathered, eigvecs)
    same = all(torch.equal(g[b], gathered[0][b]) for g in gathered for b in (2, 3))
    return [*runs, {"same_eigvecs": np.array(same)}]


def _close(actual, expected, rtol):
    actual, expected = np.asarray(actual, dtype=float), np.asarray(expected, dtype=float)
    scale = max(np.abs(expected).max(), 1e-300)
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale)


@pytest.mark.slow
def test_two_ranks_match_one_process():
    torch.set_num_threads(1)
    expected = _results(_engine(4), None)
    contiguous, strided, checks = launch(_two_ranks, 2, threads=1, timeout_s=120)
    assert bool(checks["same_eigvecs"])
    for run in (contiguous, strided):
        assert int(run["world_size"]) == 2
        for key, value in expected.items():
            if key == "world_size":
                continue
            rtol = 1e-8 if key in ("pairwise", "self", "table_self") else 1e-10
            _close(run[key], value, rtol)


def test_single_distributed_is_one_process_and_resumes(tmp_path, monkeypatch):
    torch.set_num_threads(1)
    expected = _results(_engine(), None)
    first = Distributed.single(shard_dir=tmp_path)
    got = _results(_engine(), first)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "covariances-rank-0-of-1.npz", "eigenvalues-rank-0-of-1.npz", "scores-rank-0-of-1.npz",
        "self-influence-rank-0-of-1.npz"]
    for key, value in expected.items():
        _close(got[key], value, 1e-12)

    def refuse(*args, **kwargs):
        raise AssertionError("should have been resumed from the shard files")

    again = Distributed.single(shard_dir=tmp_path)
    engine = _engine()
    for name in ("covariance_statistics", "eigenvalue_statistics", "score", "self_influence"):
        monkeypatch.setattr(engine, name, refuse)  # the flows call the engine's plain methods on the shard
    factors = again.fit(engine, engine.encode(TEXTS, LABELS))
    table = again.score(engine, engine.encode(TEXTS[TEST], LABELS[TEST]), engine.encode(TEXTS, LABELS))
    values = again.self_influence(engine, engine.encode(TEXTS, LABELS))
    assert again.resumed == ["covariances", "eigenvalues", "scores", "self-influence"]
    _close(table.pairwise, expected["pairwise"], 1e-12)
    _close(values, expected["self"], 1e-12)
    name = engine.layers[0]
    _close(factors.layers[name].l_sum, expected[f"{name}:l_sum"], 1e-12)


def test_changed_inputs_are_recomputed(tmp_path):
    torch.set_num_threads(1)
    engine = _engine()
    engine.fit(TEXTS, LABELS, distributed=Distributed.single(shard_dir=tmp_path))
    again = Distributed.single(shard_dir=tmp_path)
    _engine().fit(TEXTS[:-1], LABELS[:-1], distributed=again)
    assert again.resumed == []


@pytest.mark.parametrize("sharding", ["contiguous", "strided"])
@pytest.mark.parametrize("n", [2, 5, 7, 12])
def test_shards_partition_the_examples(sharding, n):
    for world_size in (1, 2, 3):
        if n < world_size:
            with pytest.raises(DataError, match="cannot be split"):
                Distributed(rank=0, world_size=world_size, sharding=sharding).shard(n)
            continue
        parts = [Distributed(rank=r, world_size=world_size, sharding=sharding).shard(n) for r in range(world_size)]
        assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(n))
        assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_without_torchrun_is_a_single_process(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    distributed = Distributed.from_env()
    assert (distributed.rank, distributed.world_size, distributed.active) == (0, 1, False)
    index = np.array([0, 1, 2])
    merged = distributed.gather_columns({"x": np.arange(6.0).reshape(2, 3), "none": None}, index, 3)
    assert np.array_equal(merged["x"], np.arange(6.0).reshape(2, 3)) and merged["none"] is None
