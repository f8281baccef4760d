"""Where Influence Explorer keeps what it computed: fine-tuned demo models, factors and scores.

The root is ``$INFLUENCE_EXPLORER_CACHE`` when set (tests point it at a temporary folder), otherwise
the user cache directory (``~/.cache/influence-explorer`` on Linux).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from platformdirs import user_cache_dir

ENV_VAR = "INFLUENCE_EXPLORER_CACHE"


def cache_root() -> Path:
    """The cache folder, created if missing."""
    root = Path(os.environ.get(ENV_VAR) or user_cache_dir("influence-explorer"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def cache_dir(*parts: str) -> Path:
    """A sub-folder of the cache root (``cache_dir("factors")``), created if missing."""
    path = cache_root().joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def stable_hash(value: object, length: int = 16) -> str:
    """A short hex digest of ``value`` that is the same in every process (unlike ``hash``).

    ``value`` must be JSON-serialisable once dataclasses and tuples are turned into dicts and lists;
    keys are sorted, so dict order does not matter.
    """
    text = json.dumps(value, sort_keys=True, default=_jsonable, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]


def _jsonable(value: object) -> object:
    if hasattr(value, "__dataclass_fields__"):
        return {name: getattr(value, name) for name in value.__dataclass_fields__}
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot hash {type(value).__name__}")


__all__ = ["ENV_VAR", "cache_root", "cache_dir", "stable_hash"]
