"""Tiny, offline fixtures for the data & models tests (imported by those test files).

A 2-layer, 32-wide BERT sequence classifier saved with the MiniLM tokenizer, and a small corpus in the demo
corpus's format. Everything is seeded and builds in well under a second.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import pandas as pd
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

POSITIVE_WORDS = ["wonderful", "moving", "brilliant", "funny", "beautiful", "gripping", "charming", "superb"]
NEGATIVE_WORDS = ["boring", "clumsy", "dull", "awful", "tedious", "lifeless", "messy", "painful"]
SUBJECTS = ["the film", "this movie", "the sequel", "the story", "the cast", "the ending", "the script"]


def minilm_dir() -> str:
    from influence_core.sources.models import base_encoder_path

    return base_encoder_path()


def tiny_corpus(n_train: int = 48, n_test: int = 16, seed: int = 0) -> pd.DataFrame:
    """Reviews like the demo corpus: columns id, split, text, label (0/1), planted_error (2 flipped in train)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n_train + n_test):
        label = i % 2
        words = POSITIVE_WORDS if label else NEGATIVE_WORDS
        text = f"{rng.choice(SUBJECTS).capitalize()} was {rng.choice(words)} and {rng.choice(words)}."
        rows.append({"id": i, "split": "train" if i < n_train else "test", "text": text, "label": label})
    table = pd.DataFrame(rows)
    table["planted_error"] = False
    for i in (3, 10):
        table.loc[i, "label"] = 1 - table.loc[i, "label"]
        table.loc[i, "planted_error"] = True
    return table


def save_tiny_classifier(folder: Path, *, num_labels: int = 2, id2label: dict | None = None, seed: int = 0) -> Path:
    """A randomly initialised BertForSequenceClassification (hidden 32, 2 layers) with the MiniLM tokenizer."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        num_labels=num_labels,
        id2label=id2label
        or {i: ("negative", "positive")[i] if num_labels == 2 else f"LABEL_{i}" for i in range(num_labels)},
    )
    config.label2id = {name: i for i, name in config.id2label.items()}
    model = BertForSequenceClassification(config)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(minilm_dir()).save_pretrained(folder)
    return folder


def save_tiny_encoder(folder: Path) -> Path:
    """A bare BertModel (no classifier head), the kind of folder that must be refused and fine-tuned first."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    BertModel(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(minilm_dir()).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_classifier_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_classifier(tmp_path_factory.mktemp("tiny-classifier"))


@pytest.fixture(scope="session")
def tiny_encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_encoder(tmp_path_factory.mktemp("tiny-encoder"))


@pytest.fixture(scope="session")
def minilm_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_dir())


@pytest.fixture
def isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the cache at a fresh folder and the demo corpus at a tiny CSV in it."""
    import influence_core.demo as demo
    import influence_core.sources.corpus as corpus_module

    cache = tmp_path / "cache"
    monkeypatch.setenv("INFLUENCE_EXPLORER_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    corpus = tmp_path / "demo_reviews.csv"
    tiny_corpus().to_csv(corpus, index=False)
    monkeypatch.setattr(demo, "DEMO_CSV", corpus)
    monkeypatch.setattr(corpus_module, "DEMO_CSV", corpus)
    return cache


def copy_folder(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target
