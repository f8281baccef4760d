"""Fixtures for AppTest: a tiny local classifier and an analysis computed on a few demo reviews."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
APP = str(ROOT / "app.py")
# A small, fast view of the demo data (bound to the URL, like a shared link would be).
SMALL = {"train_n": "24", "test_n": "8"}


def build_tiny_classifier(folder: Path, labels: tuple[str, ...] = ("negative", "positive")) -> Path:
    """A BERT classifier with hidden size 32 and the MiniLM tokenizer, saved as safetensors (the demo's labels by
    default)."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from influence_core.sources.models import base_encoder_path

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48,
        max_position_embeddings=128, num_labels=len(labels), id2label=dict(enumerate(labels)),
        label2id={name: i for i, name in enumerate(labels)},
    )
    model = BertForSequenceClassification(config).eval()
    model.save_pretrained(folder, safe_serialization=True)
    AutoTokenizer.from_pretrained(base_encoder_path()).save_pretrained(folder)
    return folder


@pytest.fixture(autouse=True)
def _navigation_not_pages_directory(monkeypatch):
    """AppTest re-detects the legacy ``pages/`` directory before every run and then runs a page without app.py.

    Our app registers its pages with ``st.navigation`` (which switches that legacy mode off in a real server after
    the first run); tell AppTest the same from the start, so every run executes the frame.
    """
    from streamlit.runtime.pages_manager import PagesManager

    original = PagesManager.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        PagesManager.uses_pages_directory = False

    monkeypatch.setattr(PagesManager, "__init__", init)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return build_tiny_classifier(tmp_path_factory.mktemp("tiny_classifier"))


@pytest.fixture
def app_env(tiny_model_dir, monkeypatch):
    """The app's test hook: the tiny model is the default model; the cache is the session's temporary one."""
    monkeypatch.setenv("INFLUENCE_EXPLORER_MODEL", str(tiny_model_dir))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tiny_model_dir


def new_app(query: dict | None = None, timeout: float = 60):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(APP, default_timeout=timeout)
    for key, value in {**SMALL, **(query or {})}.items():
        at.query_params[key] = value
    return at


@pytest.fixture
def computed(app_env):
    """An AppTest whose sidebar spec has been computed (directly, not through the job) and rerun."""
    from explorer.analysis import compute_analysis
    from explorer.spec import analysis_ready

    at = new_app()
    at.run()
    spec = at.session_state["_frame"].spec
    assert spec is not None, [e.value for e in at.error]
    if not analysis_ready(spec):
        compute_analysis(spec, _store())
    at.run()
    return at


_STORE = None


def _store():
    global _STORE
    from explorer.store import ModelStore

    if _STORE is None:
        _STORE = ModelStore()
    return _STORE


def no_exceptions(at) -> None:
    assert not at.exception, [e.value for e in at.exception]
