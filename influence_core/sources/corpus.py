"""The built-in demo corpus: movie reviews written for this project, with a few planted label errors.

``assets/demo_reviews.csv`` has 480 training and 160 test reviews; a few training labels were flipped on
purpose and marked in ``planted_error``, which is used only to grade how well a ranking finds them, never for
scoring. The demo *model* trained on it lives in :mod:`influence_core.demo`.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from influence_core.errors import DataError

#: The corpus file, found next to the package so it works from a checkout and an editable install.
DEMO_CSV = Path(__file__).resolve().parents[2] / "assets" / "demo_reviews.csv"
#: Class names of the demo corpus and model, in id order.
DEMO_LABELS = ("negative", "positive")
_COLUMNS = ["id", "split", "text", "label", "planted_error"]


def demo_corpus(path: str | os.PathLike | None = None) -> pd.DataFrame:
    """The demo reviews: columns ``id``, ``split`` (``train``/``test``), ``text``, ``label`` (0 = negative,
    1 = positive, int) and ``planted_error`` (bool, True where the training label was flipped on purpose).

    ``df.attrs["label_names"]`` holds :data:`DEMO_LABELS`.
    """
    path = Path(path) if path is not None else DEMO_CSV
    if not path.is_file():
        raise DataError(f"the demo corpus {path} is missing; reinstall Influence Explorer or use your own data")
    table = pd.read_csv(path, keep_default_na=False)
    missing = [c for c in _COLUMNS if c not in table.columns]
    if missing:
        raise DataError(f"the demo corpus {path.name} lacks columns {', '.join(missing)}")
    table["text"] = table["text"].astype(str)
    table["split"] = table["split"].astype(str).str.strip().str.lower()
    table["label"] = [_demo_label(value) for value in table["label"]]
    table["planted_error"] = [str(v).strip().lower() in ("1", "true", "yes") for v in table["planted_error"]]
    table = table[_COLUMNS + [c for c in table.columns if c not in _COLUMNS]].reset_index(drop=True)
    table.attrs["label_names"] = list(DEMO_LABELS)
    return table


def _demo_label(value: object) -> int:
    text = str(value).strip().lower()
    if text in ("0", "negative", "neg"):
        return 0
    if text in ("1", "positive", "pos"):
        return 1
    raise DataError(f"the demo corpus has an unknown label {value!r}")


__all__ = ["DEMO_CSV", "DEMO_LABELS", "demo_corpus"]
