"""The linear datamodeling score: the score itself on synthetic outcomes, the subset cache, resumption, the CLI."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from influence_core import lds
from influence_core.engine.config import EngineConfig
from influence_core.lds import LDSCancelled, LDSConfig, draw_subsets, linear_datamodeling_score, run_lds

WORDS = "good great bad awful fine dull warm boring lovely terrible".split()
POSITIVE = {"good", "great", "fine", "warm", "lovely"}


def reviews(n: int, seed: int):
    rng = np.random.default_rng(seed)
    texts = [" ".join(rng.choice(WORDS, 5)) for _ in range(n)]
    return texts, [int(sum(w in POSITIVE for w in t.split()) >= 3) for t in texts]


def test_lds_of_an_additive_model_is_close_to_one():
    rng = np.random.default_rng(0)
    n_test, n_train = 20, 40
    scores = rng.standard_normal((n_test, n_train))
    masks = draw_subsets(n_train, 60, 0.5, seed=1)
    # linear model with squared loss: removing helpful examples raises the loss additively (plus a little noise)
    actual = -(masks @ scores.T) + 0.05 * rng.standard_normal((60, n_test))
    value = linear_datamodeling_score(scores, masks, actual, bootstrap=200)
    assert value.lds > 0.95 and value.ci_low <= value.lds <= value.ci_high
    assert linear_datamodeling_score(-scores, masks, actual).lds < -0.95  # the sign convention matters
    margin = linear_datamodeling_score(scores, masks, -actual, measure="margin")
    assert margin.lds > 0.95


def test_lds_of_random_scores_is_close_to_zero():
    rng = np.random.default_rng(1)
    masks = draw_subsets(50, 80, 0.5, seed=2)
    actual = -(masks @ rng.standard_normal((30, 50)).T)
    value = linear_datamodeling_score(rng.standard_normal((30, 50)), masks, actual, bootstrap=200)
    assert abs(value.lds) < 0.1 and value.ci_low < 0 < value.ci_high


def tiny_run(tokenizer, **changes):
    from tests.conftest import tiny_bert

    train, train_y = reviews(40, 0)
    test, test_y = reviews(6, 1)
    config = LDSConfig(subsets=6, methods=("ekfac", "identity"), dampings=(1e-4, 1e-3), bootstrap=100, **changes)
    return run_lds(tiny_bert(), tokenizer, train, train_y, test, test_y, config=config,
                   engine_config=EngineConfig(max_length=16))


def test_end_to_end_head_recipe_gives_a_finite_lds(tokenizer):
    result = tiny_run(tokenizer, seeds=2)
    table = result.table
    assert {"method", "fisher", "damping", "lds", "ci_low", "ci_high", "subsets", "relative"} <= set(table.columns)
    assert "random" in set(table["method"]) and result.recipe.startswith("head")
    assert np.isfinite(table["lds"]).all() and (table["subsets"] == 6).all()
    assert len(table) == 2 * 2 + 2 + 1  # ekfac x 2 dampings x raw/relative, identity raw/relative, random
    assert result.ceiling is not None and np.isfinite(result.ceiling.lds)
    assert result.retrained == 12


def test_the_subset_cache_is_reused(tokenizer, monkeypatch):
    first = tiny_run(tokenizer)

    def no_training(*args, **kwargs):
        raise AssertionError("retrained although every subset was cached")

    monkeypatch.setattr(lds, "train_head_subset", no_training)
    second = tiny_run(tokenizer)
    assert second.retrained == 0
    pd.testing.assert_frame_equal(first.table, second.table)


def test_an_interrupted_run_resumes_to_the_same_result(tokenizer, tmp_path, monkeypatch):
    monkeypatch.setenv("INFLUENCE_EXPLORER_CACHE", str(tmp_path / "straight"))
    straight = tiny_run(tokenizer, subset_seed=5)
    monkeypatch.setenv("INFLUENCE_EXPLORER_CACHE", str(tmp_path / "interrupted"))
    calls = []
    original = lds.train_head_subset

    def stop_after_three(*args, **kwargs):
        if len(calls) == 3:
            raise LDSCancelled("interrupted")
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(lds, "train_head_subset", stop_after_three)
    with pytest.raises(LDSCancelled):
        tiny_run(tokenizer, subset_seed=5)
    monkeypatch.setattr(lds, "train_head_subset", original)
    resumed = tiny_run(tokenizer, subset_seed=5)
    assert resumed.retrained == 3
    pd.testing.assert_frame_equal(straight.table, resumed.table)


@pytest.mark.parametrize("extra", [["--fraction", "1.5"], ["--methods", "ekfac,magic"], ["--dampings", "a,b"],
                                   ["--subsets", "1"]])
def test_the_cli_refuses_bad_input_in_one_line(tmp_path, capsys, extra):
    from influence_core.cli import main

    data = tmp_path / "train.csv"
    pd.DataFrame({"text": ["good", "bad"], "label": [1, 0]}).to_csv(data, index=False)
    code = main(["lds", "--model", str(tmp_path / "missing"), "--train", str(data), "--test", str(data),
                 "--out", str(tmp_path / "out.csv"), *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("error:")


def test_the_cli_writes_one_row_per_variant(tmp_path, tokenizer, capsys):
    from influence_core.cli import main
    from tests.conftest import tiny_bert

    folder = tmp_path / "model"
    tiny_bert().save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    train, train_y = reviews(30, 0)
    test, test_y = reviews(4, 1)
    pd.DataFrame({"text": train, "label": train_y}).to_csv(tmp_path / "train.csv", index=False)
    pd.DataFrame({"text": test, "label": test_y}).to_csv(tmp_path / "test.csv", index=False)
    out = tmp_path / "lds.csv"
    code = main(["lds", "--model", str(folder), "--train", str(tmp_path / "train.csv"), "--test",
                 str(tmp_path / "test.csv"), "--subsets", "4", "--methods", "kfac,identity", "--dampings", "1e-3",
                 "--max-length", "16", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    table = pd.read_csv(out)
    assert list(table["variant"]) == ["kfac true 0.001", "kfac true relative 0.001", "identity", "identity relative",
                                      "random"]
    assert "recipe: head" in printed and "ceiling" in printed


def test_index_variants_score_the_index_estimates_and_match_ekfac_when_nothing_is_projected(tokenizer):
    from influence_core.lds import score_variants
    from tests.conftest import tiny_bert

    train, train_y = reviews(20, 0)
    test, test_y = reviews(4, 1)
    engine_config = EngineConfig(layers="head", dtype="float64", max_length=16)
    config = LDSConfig(subsets=3, methods=("ekfac",), dampings=(1e-3, 1e-2), relative=False,
                       index_projections=(4, 10_000))  # 10,000 keeps every side whole: the exact gradients
    variants = {v["variant"]: v for v in score_variants(tiny_bert(), tokenizer, engine_config, train, train_y, test,
                                                        test_y, config=config)}
    assert set(variants) == {"ekfac true 0.001", "ekfac true 0.01", "index k=4 true 0.001", "index k=4 true 0.01",
                             "index k=10000 true 0.001", "index k=10000 true 0.01"}
    for damping in ("0.001", "0.01"):
        exact, whole = variants[f"ekfac true {damping}"]["scores"], variants[f"index k=10000 true {damping}"]["scores"]
        np.testing.assert_allclose(whole, exact, rtol=1e-5, atol=1e-8 * np.abs(exact).max())
        small = variants[f"index k=4 true {damping}"]
        assert small["method"] == "index" and small["scores"].shape == exact.shape
        # a real compression: the eigen index drops entries, so it is close to the exact score but not equal to it
        assert np.abs(small["scores"] - exact).max() > 1e-9 * np.abs(exact).max()
    with pytest.raises(Exception, match="include ekfac"):
        LDSConfig(methods=("kfac",), index_projections=(8,))
