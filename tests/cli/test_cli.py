"""The batch CLI: a real run on a tiny local model folder, and one clear line for every bad input."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
from torch import nn

from influence_core import cli
from tests.conftest import LABELS, TEXTS, minilm_path


@pytest.fixture
def files(tmp_path):
    train = tmp_path / "train.csv"
    pd.DataFrame({"text": TEXTS, "label": LABELS}).to_csv(train, index=False)
    test = tmp_path / "test.tsv"
    pd.DataFrame({"sentence": TEXTS[:3], "label": ["positive", "negative", "positive"]}).to_csv(test, sep="\t",
                                                                                                  index=False)
    return train, test


def _run(argv, capsys):
    code = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_fit_then_scores_and_self_influence(model_dir, files, tmp_path, capsys):
    train, test = files
    factors = tmp_path / "factors.safetensors"
    code, out, _ = _run(["fit", "--model", model_dir, "--data", train, "--out", factors, "--dtype", "float64"], capsys)
    assert code == 0 and factors.is_file() and (tmp_path / "factors.json").is_file()
    scores = tmp_path / "scores.npz"
    code, out, _ = _run(["scores", "--model", model_dir, "--train", train, "--test", test, "--factors", factors,
                         "--dtype", "float64", "--damping", "1e-3", "--out", scores], capsys)
    assert code == 0, out
    result = np.load(scores)
    assert result["influences"].shape == (3, len(TEXTS))
    layers = [str(x) for x in result["layers"]]
    assert sum(result[f"layer:{name}"] for name in layers) == pytest.approx(result["influences"])
    assert result["self_influence"].shape == (len(TEXTS),)
    # fitting inline on the training file gives the same numbers as the saved factors
    inline = tmp_path / "inline.npz"
    code, _, _ = _run(["scores", "--model", model_dir, "--train", train, "--test", test, "--dtype", "float64",
                       "--damping", "1e-3", "--out", inline], capsys)
    assert code == 0
    np.testing.assert_allclose(np.load(inline)["influences"], result["influences"], rtol=1e-10)
    ranked = tmp_path / "self.csv"
    code, _, _ = _run(["self-influence", "--model", model_dir, "--train", train, "--factors", factors,
                       "--dtype", "float64", "--damping", "1e-3", "--out", ranked], capsys)
    assert code == 0
    table = pd.read_csv(ranked)
    assert list(table.columns[:2]) == ["text", "label"] and len(table) == len(TEXTS)
    np.testing.assert_allclose(table["self_influence"], result["self_influence"], rtol=1e-8)
    assert table.loc[table["rank"] == 1, "self_influence"].item() == table["self_influence"].max()


def test_module_entry_point_runs(model_dir, files, tmp_path):
    train, test = files
    out = tmp_path / "s.npz"
    done = subprocess.run([sys.executable, "-m", "influence_core", "scores", "--model", str(model_dir), "--train",
                           str(train), "--test", str(test), "--layers", "head", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert np.load(out)["influences"].shape == (3, len(TEXTS))


def _bad(argv, capsys, pattern):
    code, _, err = _run(argv, capsys)
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert pattern.lower() in lines[0].lower(), lines[0]


def test_bad_inputs_get_one_line_and_exit_2(model_dir, files, tmp_path, capsys):
    train, test = files
    out = str(tmp_path / "o.npz")
    base = ["scores", "--model", model_dir, "--test", test, "--out", out]
    _bad([*base, "--train", tmp_path / "missing.csv"], capsys, "no such file")
    empty = tmp_path / "empty.csv"
    empty.write_text("text,label\n")
    _bad([*base, "--train", empty], capsys, "no rows")
    wrong = tmp_path / "wrong.csv"
    pd.DataFrame({"review": TEXTS, "label": LABELS}).to_csv(wrong, index=False)
    _bad([*base, "--train", wrong], capsys, "no text column")
    _bad([*base, "--train", wrong], capsys, "name the text column with --text-col")  # the CLI's words, not the app's
    _bad([*base, "--train", train, "--label-col", "y"], capsys, "name the label column with --label-col")
    unknown = tmp_path / "unknown.csv"
    pd.DataFrame({"text": TEXTS[:3], "label": ["positive", "neutral", "negative"]}).to_csv(unknown, index=False)
    _bad([*base, "--train", unknown], capsys, "neutral")
    _bad([*base, "--train", train, "--layers", "ffn,nonexistent"], capsys, "unknown layer")
    _bad([*base, "--train", train, "--damping", "-1"], capsys, "damping")
    _bad([*base, "--train", train, "--damping", "nan"], capsys, "damping")
    _bad([*base, "--train", train, "--damping", "inf"], capsys, "damping")
    _bad([*base, "--train", train, "--damping", "lots"], capsys, "invalid float")
    _bad(["scores", "--model", model_dir, "--train", train, "--test", test, "--out", tmp_path / "nope" / "o.npz"],
         capsys, "does not exist")
    _bad([*base, "--train", train, "--factors", tmp_path / "none.safetensors"], capsys, "no factors file")
    _bad(["scores", "--model", tmp_path / "not-a-model", "--train", train, "--test", test, "--out", out], capsys,
         "no such")


def test_factors_for_another_layer_set_are_refused(model_dir, files, tmp_path, capsys):
    train, test = files
    factors = tmp_path / "f.safetensors"
    assert _run(["fit", "--model", model_dir, "--data", train, "--layers", "head", "--out", factors], capsys)[0] == 0
    _bad(["scores", "--model", model_dir, "--train", train, "--test", test, "--factors", factors, "--layers", "ffn",
          "--out", tmp_path / "o.npz"], capsys, "do not cover")


def test_hub_id_offline_fails_fast(files, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    train, test = files
    start = time.perf_counter()
    _bad(["scores", "--model", "someone/some-sentiment-model", "--train", train, "--test", test, "--out",
          tmp_path / "o.npz"], capsys, "offline")
    assert time.perf_counter() - start < 10


def test_model_without_linear_layers_is_refused(files, tmp_path, capsys, monkeypatch):
    from influence_core.sources.models import LoadedModel, ModelSource

    class NoLinear(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(30522, 2)

        def forward(self, input_ids, attention_mask):
            return self.embed(input_ids).mean(1)

    def fake_load(args):
        from transformers import AutoTokenizer

        return LoadedModel(NoLinear(), AutoTokenizer.from_pretrained(minilm_path()), ["negative", "positive"],
                           ModelSource("local", "x"))

    from influence_core.cli import scores as scores_command

    monkeypatch.setattr(scores_command, "load_model", fake_load)
    train, test = files
    _bad(["scores", "--model", "x", "--train", train, "--test", test, "--out", tmp_path / "o.npz"], capsys,
         "no torch.nn.Linear")
