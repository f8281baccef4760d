"""Fine-tuning: learns, is deterministic, saves a loadable folder atomically, cancels cleanly, CLI."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file

from influence_core.cli.finetune import add_parser
from influence_core.errors import ConfigError, DataError
from influence_core.sources.models import ModelSource, load_classifier
from influence_core.training.finetune import (
    LOOP_VERSION,
    FinetuneCancelled,
    _adamw,
    finetune,
    library_versions,
    predict_proba,
)
from tests.data_fixtures import tiny_classifier_dir, tiny_corpus, tiny_encoder_dir  # noqa: F401

SST2 = Path(__file__).resolve().parents[3] / "shared" / "data" / "sst2"
TINY = {"epochs": 3, "lr": 1e-2, "batch_size": 8, "max_length": 32}


@pytest.fixture(scope="module")
def corpus():
    table = tiny_corpus(n_train=96, n_test=32)
    train, test = table[table["split"] == "train"], table[table["split"] == "test"]
    return train["text"].tolist(), train["label"].tolist(), test["text"].tolist(), test["label"].tolist()


def test_short_finetune_of_a_tiny_encoder_lowers_the_loss(tiny_encoder_dir, corpus, tmp_path):  # noqa: F811
    train_texts, train_labels, test_texts, test_labels = corpus
    calls = []
    result = finetune(
        tiny_encoder_dir, train_texts, train_labels, label_names=["negative", "positive"], out_dir=tmp_path / "m",
        eval_texts=test_texts, eval_labels=test_labels, progress=lambda *a: calls.append(a), **TINY,
    )  # fmt: skip
    assert result.epoch_losses[-1] < 0.5 * result.epoch_losses[0]
    assert result.eval_accuracy is not None and result.eval_accuracy >= 0.9
    assert len(result.history) == 3 * 12 and result.history[-1]["step"] == 36
    assert ("fine-tune epoch 3/3" in {c[2] for c in calls}) and (36, 36, "fine-tune epoch 3/3") in calls

    loaded = load_classifier(ModelSource("local", str(result.out_dir)))
    assert loaded.label_names == ["negative", "positive"]
    assert loaded.model.config.label2id == {"negative": 0, "positive": 1}
    accuracy = (predict_proba(loaded.model, loaded.tokenizer, test_texts).argmax(1) == np.array(test_labels)).mean()
    assert accuracy == pytest.approx(result.eval_accuracy)
    assert (result.out_dir / "model.safetensors").is_file() and not list(result.out_dir.glob("*.bin"))
    meta = json.loads((result.out_dir / "finetune.json").read_text())
    assert meta["hyperparameters"]["lr"] == 1e-2 and "torch" in meta["versions"]
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # no staging folder left behind


def test_same_seed_same_weights(tiny_classifier_dir, corpus, tmp_path):  # noqa: F811
    texts, labels = corpus[0][:32], corpus[1][:32]
    args = {"label_names": ["negative", "positive"], "epochs": 1, "lr": 1e-3, "batch_size": 8, "max_length": 16}
    first = finetune(tiny_classifier_dir, texts, labels, out_dir=tmp_path / "a", seed=1, **args)
    second = finetune(tiny_classifier_dir, texts, labels, out_dir=tmp_path / "b", seed=1, **args)
    other = finetune(tiny_classifier_dir, texts, labels, out_dir=tmp_path / "c", seed=2, **args)
    weights = [load_file(r.out_dir / "model.safetensors") for r in (first, second, other)]
    assert all((weights[0][k] == weights[1][k]).all() for k in weights[0])
    assert not all((weights[0][k] == weights[2][k]).all() for k in weights[0])
    assert [h["loss"] for h in first.history] == [h["loss"] for h in second.history]


def test_frozen_embeddings_stay_put_and_the_recipe_records_it(tiny_classifier_dir, corpus, tmp_path):  # noqa: F811
    from influence_core.training.retrain import recipe_of

    texts, labels = corpus[0][:32], corpus[1][:32]
    args = {"label_names": ["negative", "positive"], "epochs": 1, "lr": 1e-2, "batch_size": 8, "max_length": 16}
    before = load_file(Path(tiny_classifier_dir) / "model.safetensors")
    frozen = finetune(tiny_classifier_dir, texts, labels, out_dir=tmp_path / "f", freeze_embeddings=True, **args)
    after = load_file(frozen.out_dir / "model.safetensors")
    embedding = next(name for name in after if name.endswith("word_embeddings.weight"))
    assert np.array_equal(after[embedding].numpy(), before[embedding].numpy())
    moved = [name for name in after if name in before and not np.array_equal(after[name].numpy(), before[name].numpy())]
    assert any("encoder" in name for name in moved)  # the rest of the network did train
    trained = finetune(tiny_classifier_dir, texts, labels, out_dir=tmp_path / "t", **args)
    assert not np.array_equal(load_file(trained.out_dir / "model.safetensors")[embedding].numpy(),
                              before[embedding].numpy())
    assert recipe_of(frozen.out_dir).hyperparameters["freeze_embeddings"] is True  # retrains repeat it
    assert recipe_of(trained.out_dir).hyperparameters["freeze_embeddings"] is False


def test_the_update_is_fused_adamw_equal_to_foreach_and_versions_name_the_loop():
    import torch

    torch.manual_seed(0)
    start = [torch.randn(48, 96), torch.randn(96)]
    steps = [[torch.randn_like(t) for t in start] for _ in range(10)]
    final = {}
    for name in ("fused", "foreach"):
        params = [torch.nn.Parameter(t.clone()) for t in start]
        groups = [{"params": params[:1], "weight_decay": 0.01}, {"params": params[1:], "weight_decay": 0.0}]
        optimizer = _adamw(groups, 1e-2) if name == "fused" else torch.optim.AdamW(groups, lr=1e-2, foreach=True)
        assert bool(optimizer.defaults["fused"]) is (name == "fused")
        for grads in steps:
            for param, grad in zip(params, grads):
                param.grad = grad.clone()
            optimizer.step()
        final[name] = [p.detach() for p in params]
    moved = max(float((a - b).abs().max()) for a, b in zip(final["fused"], start))
    assert moved > 0.05  # it trained
    assert max(float((a - b).abs().max()) for a, b in zip(final["fused"], final["foreach"])) < 1e-6
    meta = [torch.nn.Parameter(torch.zeros(3, device="meta"))]  # no fused kernel: foreach instead
    assert not _adamw([{"params": meta}], 1e-2).defaults["fused"]
    assert library_versions()["loop"] == str(LOOP_VERSION)  # part of every fine-tune's cache key


def test_cancel_stops_between_steps_and_leaves_nothing(tiny_classifier_dir, corpus, tmp_path):  # noqa: F811
    steps = []
    with pytest.raises(FinetuneCancelled, match="after 2 of"):
        finetune(
            tiny_classifier_dir, corpus[0], corpus[1], label_names=["negative", "positive"], out_dir=tmp_path / "m",
            progress=lambda done, total, stage: stage.startswith("fine-tune") and steps.append(done),
            cancel=lambda: len(steps) >= 2, **TINY,
        )  # fmt: skip
    assert list(tmp_path.iterdir()) == []


def test_an_earlier_finetune_is_replaced_but_other_folders_are_protected(tiny_classifier_dir, corpus, tmp_path):  # noqa: F811
    args = {"label_names": ["negative", "positive"], "epochs": 1, "batch_size": 16, "max_length": 16}
    out = tmp_path / "m"
    finetune(tiny_classifier_dir, corpus[0][:16], corpus[1][:16], out_dir=out, **args)
    finetune(tiny_classifier_dir, corpus[0][:16], corpus[1][:16], out_dir=out, **args)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="not empty"):
        finetune(tiny_classifier_dir, corpus[0][:16], corpus[1][:16], out_dir=precious, **args)
    assert (precious / "notes.txt").read_text() == "keep me"


def test_bad_inputs_are_refused_before_training(tiny_classifier_dir, tmp_path):  # noqa: F811
    names = ["negative", "positive"]
    with pytest.raises(DataError, match="outside 0..1"):
        finetune(tiny_classifier_dir, ["a", "b"], [0, 2], label_names=names, out_dir=tmp_path / "x")
    with pytest.raises(DataError, match="2 training texts but 1 labels"):
        finetune(tiny_classifier_dir, ["a", "b"], [0], label_names=names, out_dir=tmp_path / "x")
    with pytest.raises(ConfigError, match="learning rate"):
        finetune(tiny_classifier_dir, ["a", "b"], [0, 1], label_names=names, out_dir=tmp_path / "x", lr=0)


def test_cli_trains_from_files(tiny_encoder_dir, tmp_path, capsys):  # noqa: F811
    table = tiny_corpus(n_train=32, n_test=16)
    table["label"] = table["label"].map({0: "negative", 1: "positive"})
    table[table["split"] == "train"].rename(columns={"text": "sentence"}).to_csv(
        tmp_path / "train.tsv", sep="\t", index=False
    )
    table[table["split"] == "test"].to_json(tmp_path / "dev.jsonl", orient="records", lines=True)
    parser = argparse.ArgumentParser(prog="influence_core")
    add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        ["finetune", "--base", str(tiny_encoder_dir), "--train", str(tmp_path / "train.tsv"),
         "--out", str(tmp_path / "m"), "--eval", str(tmp_path / "dev.jsonl"),
         "--epochs", "1", "--lr", "1e-2", "--max-length", "32"]
    )  # fmt: skip
    assert args.func(args) == 0
    assert "eval accuracy" in capsys.readouterr().out
    assert load_classifier(ModelSource("local", str(tmp_path / "m"))).label_names == ["negative", "positive"]


@pytest.mark.realdata
@pytest.mark.slow
@pytest.mark.skipif(not SST2.is_dir(), reason="../shared/data/sst2 is not present")
def test_minilm_on_2000_sst2_sentences_reaches_80_percent(tmp_path):
    from influence_core.sources.data import read_table
    from influence_core.sources.models import base_encoder_path

    train = read_table(SST2 / "train.tsv").iloc[:2000]
    dev = read_table(SST2 / "dev.tsv")
    started = time.perf_counter()
    result = finetune(
        base_encoder_path(), train["sentence"].tolist(), train["label"].tolist(), label_names=["negative", "positive"],
        out_dir=tmp_path / "sst2", epochs=2, lr=1e-4, batch_size=16, max_length=128, seed=0,
        eval_texts=dev["sentence"].tolist(), eval_labels=dev["label"].tolist(),
    )  # fmt: skip
    seconds = time.perf_counter() - started
    print(f"SST-2 dev accuracy {result.eval_accuracy:.4f} after {seconds:.1f} s")
    assert result.eval_accuracy >= 0.80
