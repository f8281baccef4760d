"""Where training and test examples come from, and whether they fit a model.

Three kinds of source, all ending as one table with a ``text`` column (str) and a ``label`` column:

* ``demo``: the built-in movie-review corpus (``assets/demo_reviews.csv``), split ``train`` or ``test``;
* ``hub``: a Hugging Face dataset loaded with :func:`datasets.load_dataset` (needs the Hub or its local cache);
* ``file``: a local CSV, TSV, Parquet or JSON-lines file (or an uploaded buffer, via :func:`read_table`).

Then :func:`align_labels` turns the raw labels into the model's class ids and explains any mismatch, and
:func:`check_texts` refuses data a model cannot read and notes what it will silently change (truncation) or
what deserves a look (duplicates).
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from influence_core.engine.batches import tokenizer_lock
from influence_core.errors import DataError
from influence_core.sources.corpus import demo_corpus

#: File endings :func:`read_table` understands (a trailing ``.gz``, ``.bz2``, ``.zip`` or ``.xz`` is fine too).
TABLE_FORMATS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
}
_COMPRESSIONS = {".gz": "gzip", ".bz2": "bz2", ".zip": "zip", ".xz": "xz"}

#: Rows named in an error message before "...".
_SHOWN_ROWS = 5


@dataclass(frozen=True)
class DataSource:
    """Where one table of examples comes from (hashable: a cache key, printable: shown in the UI).

    Attributes:
        kind: ``"demo"`` (built-in corpus), ``"hub"`` (Hugging Face dataset id) or ``"file"`` (local path).
        name: the dataset id for ``hub`` (``"imdb"``, ``"glue"``), the path for ``file``; unused for ``demo``.
        config: the dataset configuration for ``hub`` (``"sst2"`` for ``glue``), else ``None``.
        split: ``"train"``/``"test"`` for ``demo``; any split for ``hub`` (``"validation"``); unused for ``file``.
        text_col: the column holding the text; renamed to ``text``.
        label_col: the column holding the label (id or name); renamed to ``label``.
    """

    kind: str
    name: str = ""
    config: str | None = None
    split: str = "train"
    text_col: str = "text"
    label_col: str = "label"

    def __post_init__(self) -> None:
        if self.kind not in ("demo", "hub", "file"):
            raise DataError(f"unknown data source kind {self.kind!r}: use 'demo', 'hub' or 'file'")
        if self.kind in ("hub", "file") and not self.name:
            what = "a dataset id such as 'imdb'" if self.kind == "hub" else "a file path"
            raise DataError(f"a {self.kind} data source needs a name: {what}")

    def describe(self) -> str:
        """One line for the UI and file metadata, e.g. ``glue/sst2 [validation] sentence -> label``."""
        if self.kind == "demo":
            return f"built-in demo reviews [{self.split}]"
        name = self.name if self.config is None else f"{self.name}/{self.config}"
        split = f" [{self.split}]" if self.kind == "hub" else ""
        return f"{name}{split} ({self.text_col}, {self.label_col})"


#: Datasets offered by name. Pick the split with ``dataclasses.replace(source, split=...)``.
PRESET_DATASETS: dict[str, DataSource] = {
    "demo": DataSource("demo"),
    "imdb": DataSource("hub", "imdb", split="test"),
    "glue/sst2": DataSource("hub", "glue", "sst2", split="validation", text_col="sentence"),
    "sst2": DataSource("hub", "glue", "sst2", split="validation", text_col="sentence"),
    "rotten_tomatoes": DataSource("hub", "rotten_tomatoes", split="test"),
}


def load_table(source: DataSource) -> pd.DataFrame:
    """Load the examples of ``source`` as a table with columns ``text``, ``label`` and any others it has.

    Labels are left as stored (ids or names); :func:`align_labels` maps them to a model. Raises
    :class:`DataError` for a missing file, an unreadable format, missing columns or an unreachable Hub.
    """
    if source.kind == "demo":
        corpus = demo_corpus()
        splits = sorted(corpus["split"].unique())
        if source.split not in splits:
            raise DataError(f"the demo corpus has splits {', '.join(splits)}, not {source.split!r}")
        table = corpus[corpus["split"] == source.split].reset_index(drop=True)
    elif source.kind == "hub":
        table = _load_hub_dataset(source)
    else:
        table = read_table(source.name)
    return select_columns(table, source.text_col, source.label_col, where=source.describe())


def read_table(path_or_buffer: str | os.PathLike | io.IOBase | Any, filename: str | None = None, *,
               header: bool = True) -> pd.DataFrame:
    """Read a CSV, TSV, Parquet or JSON-lines table; the format comes from the extension.

    Args:
        path_or_buffer: a path, or an open binary buffer (e.g. a Streamlit upload).
        filename: the name that carries the extension when ``path_or_buffer`` is a buffer; defaults to the
            buffer's ``name`` attribute.
        header: for CSV and TSV, whether the first row names the columns; ``False`` names them ``0, 1, ...``.

    Text cells are kept as written: ``"NA"`` or ``"null"`` stay strings, an empty cell is an empty string.
    """
    if filename is None:
        filename = os.fspath(path_or_buffer) if isinstance(path_or_buffer, (str, os.PathLike)) else None
        filename = filename or getattr(path_or_buffer, "name", None)
    if not filename:
        raise DataError("cannot tell the file format: give a file name ending in " + _formats_text())
    suffixes = [s.lower() for s in Path(str(filename)).suffixes]
    compression = _COMPRESSIONS.get(suffixes[-1]) if suffixes else None
    if compression:
        suffixes = suffixes[:-1]
    fmt = TABLE_FORMATS.get(suffixes[-1]) if suffixes else None
    if fmt is None:
        raise DataError(f"{Path(str(filename)).name}: unsupported file type; use a file ending in {_formats_text()}")
    if isinstance(path_or_buffer, (str, os.PathLike)) and not Path(path_or_buffer).is_file():
        raise DataError(f"no such file: {os.fspath(path_or_buffer)}")
    try:
        if fmt in ("csv", "tsv"):
            return pd.read_csv(
                path_or_buffer,
                sep="\t" if fmt == "tsv" else ",",
                header=0 if header else None,
                keep_default_na=False,
                compression=compression or "infer",
                encoding="utf-8",
            )
        if fmt == "parquet":
            return pd.read_parquet(path_or_buffer)
        return _read_json_table(path_or_buffer, compression)
    except UnicodeDecodeError as err:
        raise DataError(f"{Path(str(filename)).name} is not UTF-8 text ({err.reason}); save it as UTF-8") from err
    except (ValueError, OSError, ImportError, pd.errors.ParserError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(f"cannot read {Path(str(filename)).name} as {fmt.upper()}: {first_line}") from err


def select_columns(table: pd.DataFrame, text_col: str, label_col: str, *, where: str = "the table",
                   options: Mapping[str, str] | None = None) -> pd.DataFrame:
    """Rename ``text_col`` to ``text`` and ``label_col`` to ``label``; keep every other column.

    A different column already named ``text`` or ``label`` is kept as ``text_original``/``label_original``.
    A missing column is reported with what to do: name it with ``options[role]`` (a command line's
    ``{"text": "--text-col", "label": "--label-col"}``), or, without ``options``, choose it in the app's column
    mapping.
    """
    columns = [str(c) for c in table.columns]
    table = table.set_axis(columns, axis=1)
    for wanted, role in ((text_col, "text"), (label_col, "label")):
        if wanted not in columns:
            fix = (f"Name the {role} column with {options[role]}." if options and role in options
                   else f"Choose the {role} column in the column mapping.")
            raise DataError(
                f"{where} has no {role} column {wanted!r}; its columns are: {', '.join(columns) or '(none)'}. {fix}"
            )
    if text_col == label_col:
        raise DataError(f"the text and label columns must differ (both are {text_col!r})")
    renames = {}
    for wanted, role in ((text_col, "text"), (label_col, "label")):
        if wanted != role and role in columns and role not in (text_col, label_col):
            renames[role] = f"{role}_original"
    table = table.rename(columns=renames).rename(columns={text_col: "text", label_col: "label"})
    rest = [c for c in table.columns if c not in ("text", "label")]
    return table[["text", "label", *rest]].reset_index(drop=True)


def align_labels(df: pd.DataFrame, label_names: Sequence[str]) -> pd.DataFrame:
    """Map the raw ``label`` column onto the model's classes ``0 .. C-1``.

    Args:
        df: a table with a ``label`` column of ids (``0``, ``"1"``, ``1.0``), booleans or names.
        label_names: the model's class names in id order (from ``config.id2label``), length ``C``.

    Returns:
        A copy with ``label`` as int64 in ``[0, C)``, the model's name of each label in ``label_name`` and the
        stored value in ``label_raw``.

    When the table names its own classes in ``df.attrs["label_names"]`` (Hugging Face datasets with a
    ``ClassLabel`` column, the demo corpus), ids are matched through those names, so a dataset whose
    ``0`` is "pos" still lines up with a model whose ``0`` is "NEGATIVE".

    Names match case-insensitively, ignoring spaces, dashes and underscores; a unique prefix of at least three
    letters also matches (``neg`` -> ``NEGATIVE``), and so do the generic ``LABEL_<id>`` names. Raises
    :class:`DataError` saying which values do not fit (missing labels, ids out of range, a third class,
    names the model does not know) and what to do about it.
    """
    names = [str(n) for n in label_names]
    n_classes = len(names)
    if n_classes < 1:
        raise DataError("the model has no label names")
    if "label" not in df.columns:
        raise DataError("the table has no label column; choose one in the column mapping")
    raw = df["label"]
    missing = raw.map(_is_missing).to_numpy(dtype=bool)
    if missing.any():
        raise DataError(
            f"{int(missing.sum())} of {len(df)} rows have no label ({_where(df, np.flatnonzero(missing))}); "
            "remove them or choose another label column"
        )
    values = raw.tolist()
    ids = label_ids(values)
    data_names = df.attrs.get("label_names")
    if ids is not None and data_names and all(0 <= i < len(data_names) for i in ids):
        # The source names its classes (a Hugging Face ClassLabel, the demo corpus): match names rather than
        # trusting that its id order is the model's. Generic model names give nothing to match, so ids are kept.
        by_name = [_name_to_id(str(n), names) for n in data_names]
        if all(i is not None for i in by_name) and len(set(by_name)) == len(by_name):
            ids = [by_name[i] for i in ids]
    if ids is not None:
        ids_array = np.asarray(ids, dtype=np.int64)
        _check_id_range(ids_array, names)
    else:
        ids_array = _match_names(values, names)
    out = df.copy()
    if "label_raw" not in out.columns:  # aligning an aligned table keeps the value first stored
        out["label_raw"] = raw.to_numpy()
    out["label"] = ids_array
    out["label_name"] = [names[i] for i in ids_array]
    return out


def check_texts(df: pd.DataFrame, tokenizer: Any, max_length: int) -> list[str]:
    """Refuse texts a model cannot read; return notes about what will change or deserves a look.

    Raises :class:`DataError` for an empty table, a missing ``text`` column, missing or blank texts and values
    that are not text (numbers, lists). Returns human-readable notes: how many texts are longer than
    ``max_length`` tokens and will be truncated, and which texts appear more than once (with conflicting labels
    when a ``label`` column is present). An empty list means nothing to report.
    """
    if df is None or len(df) == 0:
        raise DataError("the data is empty: no rows to analyse (check the file, the split or the slice)")
    if "text" not in df.columns:
        raise DataError(f"the table has no text column; its columns are: {', '.join(map(str, df.columns))}")
    texts = df["text"].tolist()
    not_text = [i for i, t in enumerate(texts) if not _is_missing(t) and not isinstance(t, str)]
    if not_text:
        kinds = sorted({type(texts[i]).__name__ for i in not_text})
        raise DataError(
            f"{len(not_text)} of {len(texts)} texts are not text but {', '.join(kinds)} "
            f"({_where(df, not_text)}, e.g. {texts[not_text[0]]!r}); is the text column the right one?"
        )
    blank = [i for i, t in enumerate(texts) if _is_missing(t) or not t.strip()]
    if blank:
        raise DataError(
            f"{len(blank)} of {len(texts)} rows have no text ({_where(df, blank)}); "
            "remove them or choose another text column"
        )
    notes = []
    limit = _effective_max_length(tokenizer, max_length)
    lengths = token_lengths(texts, tokenizer, limit)
    too_long = np.flatnonzero(lengths > limit)
    if too_long.size:
        notes.append(
            f"{too_long.size} of {len(texts)} texts are longer than {limit} tokens and are truncated to the first "
            f"{limit} tokens (longest: {int(lengths.max())} tokens; {_where(df, too_long)})"
        )
    notes.extend(_duplicate_notes(df))
    return notes


def token_lengths(texts: Sequence[str], tokenizer: Any, max_length: int) -> np.ndarray:
    """Number of tokens of each text, special tokens included. Shape ``[n]``, int64.

    Counts are exact up to ``max_length``; above it, a very long text is only tokenized until it is known to be
    too long, so the count may be a lower bound.
    """
    # A token covers a handful of characters at most, so a prefix of this many characters already tells
    # whether a text fits; huge texts are not tokenized in full.
    prefix_chars = max(64 * max_length, 4096)
    prefixes = [t[:prefix_chars] for t in texts]
    counts = []
    batch = 256
    for start in range(0, len(prefixes), batch):
        with tokenizer_lock(tokenizer):  # an engine may be truncating with this tokenizer in another thread
            encoded = tokenizer(prefixes[start : start + batch], add_special_tokens=True, truncation=False)["input_ids"]
        counts.extend(len(ids) for ids in encoded)
    return np.asarray(counts, dtype=np.int64)


# --- Hub -------------------------------------------------------------------------------------------------


def _load_hub_dataset(source: DataSource) -> pd.DataFrame:
    from influence_core.sources.models import hub_offline_reason

    name = source.name if source.config is None else f"{source.name}/{source.config}"
    reason = hub_offline_reason()
    env_offline = _env_flag("HF_HUB_OFFLINE") or _env_flag("HF_DATASETS_OFFLINE")
    if reason and not env_offline:
        raise DataError(_offline_message(name, reason))
    try:
        import datasets

        loaded = datasets.load_dataset(source.name, source.config, split=source.split)
    except ValueError as err:
        raise DataError(f"cannot load {name} split {source.split!r}: {str(err).splitlines()[0]}") from err
    except Exception as err:  # the Hub client raises many kinds (ConnectionError, HfHubHTTPError, FileNotFoundError)
        if reason or env_offline:
            raise DataError(_offline_message(name, reason or "HF_HUB_OFFLINE is set")) from err
        raise DataError(f"cannot load the Hugging Face dataset {name}: {str(err).splitlines()[0]}") from err
    table = loaded.to_pandas()
    label_feature = loaded.features.get(source.label_col) if hasattr(loaded, "features") else None
    names = getattr(label_feature, "names", None)
    if names:
        # Keep the dataset's own class names next to the ids so a name mismatch with the model is visible.
        table.attrs["label_names"] = list(names)
    return table


def _offline_message(name: str, reason: str) -> str:
    return (
        f"cannot load the Hugging Face dataset {name!r}: the Hub is unreachable ({reason}) and it is not in the "
        "local cache. Use the built-in demo data or a local CSV/TSV/Parquet/JSON-lines file instead."
    )


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


# --- helpers ---------------------------------------------------------------------------------------------


def _read_json_table(path_or_buffer: Any, compression: str | None) -> pd.DataFrame:
    try:
        return pd.read_json(path_or_buffer, lines=True, compression=compression or "infer", dtype=False)
    except ValueError:
        # A ".json" file may hold one array of records instead of one record per line.
        if hasattr(path_or_buffer, "seek"):
            path_or_buffer.seek(0)
        return pd.read_json(path_or_buffer, compression=compression or "infer", dtype=False)


def _formats_text() -> str:
    return ", ".join(sorted(TABLE_FORMATS)) + " (optionally compressed: " + ", ".join(_COMPRESSIONS) + ")"


def _is_missing(value: object) -> bool:
    if value is None:
        return True
    if isinstance(value, str):
        return value.strip() == ""
    if isinstance(value, (float, np.floating)):
        return bool(np.isnan(value))
    return value is pd.NA or value is pd.NaT


def _rows_text(rows: Sequence[int] | np.ndarray) -> str:
    rows = [int(r) for r in rows]
    shown = ", ".join(str(r) for r in rows[:_SHOWN_ROWS])
    more = ", ..." if len(rows) > _SHOWN_ROWS else ""
    return f"row{'s' if len(rows) > 1 else ''} {shown}{more}"


def label_ids(values: list) -> list[int] | None:
    """The labels as integer ids when every one is an id (int, integral float, bool, digit string), else None."""
    ids = []
    for value in values:
        if isinstance(value, (bool, np.bool_)):
            ids.append(int(value))
        elif isinstance(value, (int, np.integer)):
            ids.append(int(value))
        elif isinstance(value, (float, np.floating)) and float(value).is_integer():
            ids.append(int(value))
        elif isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d+(\.0*)?\s*", value):
            ids.append(int(float(value)))
        else:
            return None
    return ids


def _check_id_range(ids: np.ndarray, names: list[str]) -> None:
    n_classes = len(names)
    found = sorted(set(ids.tolist()))
    bad = [v for v in found if v < 0 or v >= n_classes]
    if not bad:
        return
    model = f"the model has {n_classes} classes: " + ", ".join(f"{i} = {n}" for i, n in enumerate(names))
    if found == [-1]:
        raise DataError(
            "every label is -1, which marks unlabelled examples (e.g. the test split of GLUE tasks); "
            "use a labelled split such as 'validation'"
        )
    if len(found) > n_classes:
        raise DataError(
            f"the data has {len(found)} classes (ids {_values_text(found)}) but {model}. "
            "Keep only the model's classes with a label filter, or fine-tune a model for these classes."
        )
    if found == list(range(1, n_classes + 1)):
        raise DataError(
            f"the labels are ids {_values_text(found)} but {model}; the ids seem to start at 1: "
            "subtract 1 from the label column (or use label names)"
        )
    count = int(np.isin(ids, bad).sum())
    raise DataError(
        f"{count} rows have label ids {_values_text(bad)} outside 0..{n_classes - 1}; {model}. "
        "Filter those rows out or fix the label column."
    )


def _normalise_name(name: str) -> str:
    return re.sub(r"[\s_\-]+", "", name.strip().casefold())


def _match_names(values: list, names: list[str]) -> np.ndarray:
    mapping = {value: _name_to_id(value, names) for value in {str(v) for v in values}}
    unknown = sorted(v for v, i in mapping.items() if i is None)
    if unknown:
        counts = pd.Series([str(v) for v in values]).value_counts()
        unknown.sort(key=lambda v: -counts[v])
        generic = all(re.fullmatch(r"LABEL_\d+", n) for n in names)
        advice = (
            f"The model only has generic names, so give the labels as ids 0..{len(names) - 1} instead."
            if generic
            else "Keep only the model's classes with a label filter, rename the labels, or use ids."
        )
        extra = f" The data has {len(mapping)} classes, the model {len(names)}." if len(mapping) > len(names) else ""
        raise DataError(
            f"labels {_values_text(unknown)} ({int(sum(counts[v] for v in unknown))} rows) do not match the model's "
            f"labels {', '.join(names)}.{extra} {advice}"
        )
    return np.asarray([mapping[str(v)] for v in values], dtype=np.int64)


def _name_to_id(value: str, names: list[str]) -> int | None:
    """The class id whose name matches ``value`` (case, spaces, dashes ignored; unique prefix of >= 3), or None."""
    norm = _normalise_name(value)
    normalised = [_normalise_name(n) for n in names]
    if norm in normalised:
        return normalised.index(norm)
    generic = re.fullmatch(r"label(\d+)", norm)
    if generic and int(generic.group(1)) < len(names):
        return int(generic.group(1))
    if len(norm) >= 3:
        candidates = [i for i, n in enumerate(normalised) if n.startswith(norm) or norm.startswith(n) and len(n) >= 3]
        if len(candidates) == 1:
            return candidates[0]
    return None


def _values_text(values: Sequence[object], limit: int = 6) -> str:
    shown = ", ".join(repr(v) if isinstance(v, str) else str(v) for v in list(values)[:limit])
    return shown + (", ..." if len(values) > limit else "")


def _effective_max_length(tokenizer: Any, max_length: int) -> int:
    model_max = getattr(tokenizer, "model_max_length", None)
    # Tokenizers without a limit report a huge sentinel (int(1e30)).
    if isinstance(model_max, int) and 0 < model_max < 1_000_000:
        return min(int(max_length), model_max)
    return int(max_length)


def _duplicate_notes(df: pd.DataFrame) -> list[str]:
    keys = df["text"].astype(str).str.strip().to_numpy()
    positions: dict[str, list[int]] = {}
    for position, key in enumerate(keys):
        positions.setdefault(key, []).append(position)
    groups = [rows for rows in positions.values() if len(rows) > 1]
    if not groups:
        return []
    extra = sum(len(rows) - 1 for rows in groups)
    appear = "texts appear" if len(groups) != 1 else "text appears"
    notes = [
        f"{extra} duplicate row{'s' if extra != 1 else ''}: {len(groups)} {appear} more than once "
        f"(first copies at {_where(df, [rows[0] for rows in groups])})"
    ]
    if "label" in df.columns:
        labels = df["label"].astype(str).to_numpy()
        conflicting = [rows for rows in groups if len({labels[r] for r in rows}) > 1]
        if conflicting:
            carry = "texts carry" if len(conflicting) != 1 else "text carries"
            notes.append(
                f"{len(conflicting)} duplicated {carry} conflicting labels "
                f"(first copies at {_where(df, [rows[0] for rows in conflicting])}): at least one copy is mislabelled"
            )
    return notes


def _where(df: pd.DataFrame, positions: Sequence[int] | np.ndarray) -> str:
    """``rows 3, 17, ...`` naming the rows at these positions of ``df`` (by ``row_id`` when present)."""
    return _rows_text(_row_ids(df, positions))


def _row_ids(df: pd.DataFrame, positions: Sequence[int] | np.ndarray) -> list[int]:
    """Row numbers to show: ``row_id`` (position in the full table) when a slice added it, else the position."""
    positions = [int(p) for p in positions]
    if "row_id" in df.columns:
        row_id = df["row_id"].to_numpy()
        return [int(row_id[p]) for p in positions]
    return positions


__all__ = [
    "DataSource",
    "PRESET_DATASETS",
    "TABLE_FORMATS",
    "load_table",
    "read_table",
    "select_columns",
    "align_labels",
    "check_texts",
    "token_lengths",
    "label_ids",
]
