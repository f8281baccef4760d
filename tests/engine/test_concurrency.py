"""Two scorings at once on one model (two tabs, a tab and a background job) give the numbers of one after the other."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from influence_core import EngineConfig, InfluenceEngine
from influence_core.engine.batches import encode
from influence_core.sources.data import check_texts
from tests.conftest import LABELS, TEXTS, tiny_bert

# one long text, so a tokenizer whose truncation another thread switched off would give a longer sequence
LONG = "a slow, long and winding story that never seems to end " * 6
TRAIN = [*TEXTS, LONG]
TRAIN_LABELS = [*LABELS, 0]


def _engines(model, tokenizer):
    # different layer sets, dtypes, methods and lengths on ONE nn.Module: hooks, flags and dtype are the module's
    first = InfluenceEngine(model, tokenizer, EngineConfig(layers="ffn,head", dtype="float64", batch_size=3,
                                                             damping=1e-3, max_length=12))
    second = InfluenceEngine(model, tokenizer, EngineConfig(layers="attention", dtype="float32", method="kfac",
                                                              batch_size=2, damping=1e-2, max_length=16))
    first.fit(TRAIN)
    second.fit(TRAIN)
    return first, second


def _work(first, second):
    """What each thread does: scores at two dampings, and a token highlighting, several times."""

    def one():
        table = first.score(TEXTS[:3], LABELS[:3], TRAIN, TRAIN_LABELS, dampings=[1e-3, 1e-1])
        tokens = first.token_influence(TEXTS[0], LABELS[0], LONG, 0, damping=1e-3)
        return table.pairwise, table.self_influence, tokens.scores

    def two():
        table = second.score(TEXTS[2:], LABELS[2:], TRAIN, TRAIN_LABELS, dampings=[1e-2])
        tokens = second.token_influence(TEXTS[1], LABELS[1], TEXTS[5], LABELS[5], damping=1e-2)
        probs = second.predict_proba(TRAIN)
        return table.pairwise, tokens.scores, probs

    return one, two


def _run_together(fns, rounds: int):
    results: dict[int, list] = {i: [] for i in range(len(fns))}
    errors: list[BaseException] = []
    start = threading.Barrier(len(fns))

    def worker(i, fn):
        try:
            start.wait(10)
            for _ in range(rounds):
                results[i].append(fn())
        except BaseException as err:  # noqa: BLE001 - reported by the main thread
            errors.append(err)

    threads = [threading.Thread(target=worker, args=(i, fn)) for i, fn in enumerate(fns)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not any(thread.is_alive() for thread in threads), "a scoring thread hung"
    if errors:
        raise errors[0]
    return results


def _assert_same(actual, expected):
    for got, want in zip(actual, expected, strict=True):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_two_engines_on_one_model_score_at_once_as_one_after_the_other(tokenizer):
    model = tiny_bert()
    dtype = next(model.parameters()).dtype
    first, second = _engines(model, tokenizer)
    one, two = _work(first, second)
    alone = (one(), two())  # one after the other
    together = _run_together([one, two], rounds=3)
    for i, fn_results in together.items():
        for result in fn_results:
            _assert_same(result, alone[i])
    # the model is left as it was found
    assert next(model.parameters()).dtype == dtype
    assert not model.training
    assert all(p.requires_grad for p in model.parameters())
    assert not any(module._forward_hooks for module in model.modules())


def test_fit_while_another_engine_scores(tokenizer):
    model = tiny_bert()
    first, second = _engines(model, tokenizer)
    expected = second.factors.layers
    refit = InfluenceEngine(model, tokenizer, second.config)

    def fit():
        factors = refit.fit(TRAIN)
        return [factors.layers[name].g_sum for name in refit.layers]

    def score():
        return [first.score(TEXTS[:2], LABELS[:2], TRAIN, TRAIN_LABELS).pairwise]

    alone = score()
    together = _run_together([fit, score], rounds=2)
    for sums in together[0]:
        _assert_same(sums, [expected[name].g_sum for name in refit.layers])
    for result in together[1]:
        _assert_same(result, alone)
    assert refit.fingerprint == first.fingerprint == second.fingerprint


@pytest.mark.parametrize("rounds", [30])
def test_tokenizing_while_another_caller_checks_texts(tokenizer, rounds):
    """``check_texts`` tokenizes without truncation on the same tokenizer an engine truncates with."""
    from pandas import DataFrame

    frame = DataFrame({"text": TRAIN * 20, "label": TRAIN_LABELS * 20})
    want = encode(tokenizer, TRAIN, TRAIN_LABELS, 12)

    def engine_side():
        got = encode(tokenizer, TRAIN * 20, TRAIN_LABELS * 20, 12)
        assert got.input_ids == want.input_ids * 20
        return got.lengths.max()

    def checker():
        return check_texts(frame, tokenizer, 12)

    results = _run_together([engine_side, checker], rounds=rounds)
    assert all(length <= 12 for length in results[0])
