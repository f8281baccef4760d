"""``index`` and ``query`` on a tiny local model folder: the engine's top rows, and one line for bad inputs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from influence_core import EngineConfig, InfluenceEngine, ModelSource, cli, load_classifier
from tests.conftest import LABELS, TEXTS


@pytest.fixture(scope="module")
def built(model_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("index")
    train = folder / "train.csv"
    pd.DataFrame({"text": TEXTS, "label": LABELS}).to_csv(train, index=False)
    code = cli.main([str(a) for a in ["index", "--model", model_dir, "--train", train, "--dtype", "float64",
                                      "--damping", "1e-3", "--batch-size", "3", "--out", folder / "ix"]])
    assert code == 0
    return train, folder / "ix"


def _run(argv, capsys):
    code = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _engine_scores(model_dir, queries, labels, damping=1e-3):
    loaded = load_classifier(ModelSource("local", str(model_dir)))
    engine = InfluenceEngine(loaded.model, loaded.tokenizer, EngineConfig(dtype="float64", damping=damping,
                                                                          batch_size=3))
    engine.fit(TEXTS, LABELS)
    return engine.score(queries, labels, TEXTS, LABELS, self_influence=False).total(0)


@pytest.mark.parametrize("rerank", [3, 0])
def test_query_output_equals_the_engine_top_k(rerank, model_dir, built, tmp_path, capsys):
    train, index = built
    queries = tmp_path / "q.csv"
    pd.DataFrame({"text": TEXTS[:2], "label": ["positive", "negative"]}).to_csv(queries, index=False)
    out = tmp_path / "out.csv"
    code, stdout, err = _run(["query", "--index", index, "--queries", queries, "--top", 2, "--rerank", rerank,
                              "--damping", "0.1", "--out", out], capsys)
    assert code == 0, err
    answer = pd.read_csv(out)
    assert list(answer.columns) == ["query", "direction", "rank", "train_row", "influence", "exact"]
    assert (answer["exact"] == (1 if rerank else 0)).all()
    exact = _engine_scores(model_dir, TEXTS[:2], [1, 0], damping=0.1)
    for q in range(2):
        for direction, order in (("helpful", np.argsort(-exact[q])), ("harmful", np.argsort(exact[q]))):
            rows = answer[(answer["query"] == q) & (answer["direction"] == direction)].sort_values("rank")
            assert rows["rank"].tolist() == [1, 2]
            assert rows["train_row"].tolist() == order[:2].tolist()
            np.testing.assert_allclose(rows["influence"], exact[q, order[:2]], rtol=1e-5,
                                       atol=1e-5 * np.abs(exact).max())


def test_one_text_query(built, tmp_path, capsys):
    _, index = built
    out = tmp_path / "one.csv"
    code, _, err = _run(["query", "--index", index, "--text", "what a film", "--label", "positive", "--out", out],
                        capsys)
    assert code == 0, err
    answer = pd.read_csv(out)
    assert len(answer) == 2 * len(TEXTS) and set(answer["query"]) == {0}


def test_bad_inputs_get_one_line_and_exit_2(model_dir, built, tmp_path, capsys):
    train, index = built
    out = tmp_path / "out.csv"
    stale = tmp_path / "stale.csv"
    pd.DataFrame({"text": TEXTS, "label": LABELS[::-1]}).to_csv(stale, index=False)
    bad = [
        ["query", "--index", tmp_path / "nope", "--text", "x", "--label", "1", "--out", out],
        ["query", "--index", index, "--text", "x", "--out", out],
        ["query", "--index", index, "--text", "x", "--label", "1", "--top", 0, "--out", out],
        ["query", "--index", index, "--text", "x", "--label", "1", "--rerank", -1, "--out", out],
        ["query", "--index", index, "--text", "x", "--label", "7", "--out", out],
        ["query", "--index", index, "--text", "x", "--label", "1", "--damping", -1, "--out", out],
        ["query", "--index", index, "--text", "x", "--label", "1", "--out", tmp_path / "no" / "out.csv"],
        ["query", "--index", index, "--out", out],
        ["index", "--model", model_dir, "--train", tmp_path / "missing.csv", "--out", tmp_path / "ix2"],
        ["index", "--model", model_dir, "--train", train, "--projection-size", 0, "--out", tmp_path / "ix3"],
    ]
    for argv in bad:
        code, _, err = _run(argv, capsys)
        assert code == 2, (argv, err)
        assert len(err.strip().splitlines()) == 1, (argv, err)
    # the index's training file changed under it: refused
    import json

    meta = json.loads((index / "index.json").read_text())
    meta["info"]["train_file"] = str(stale)
    moved = tmp_path / "moved"
    moved.mkdir()
    for name in ("rows.npy", "factors.safetensors"):
        (moved / name).write_bytes((index / name).read_bytes())
    (moved / "index.json").write_text(json.dumps(meta))
    code, _, err = _run(["query", "--index", moved, "--text", "x", "--label", "1", "--out", out], capsys)
    assert code == 2 and "other training data" in err and len(err.strip().splitlines()) == 1
