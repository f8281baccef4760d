"""An analysis computed (fit, score, save) and read back: everything the pages draw comes from here."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from explorer.cost import record_speed
from explorer.jobs import JobCancelled
from explorer.spec import (
    FORMAT_VERSION,
    KEPT_COLUMNS,
    AnalysisSpec,
    Progress,
    analysis_dir,
    demo_model_ready,
    factors_path,
    factors_ready,
    index_dir,
    index_ready,
)
from explorer.store import CARDS, RERANK, ModelStore, index_config
from influence_core.engine.index import GradientIndex, fit_and_index
from influence_core.engine.scores import ScoreTable
from influence_core.errors import DataError, FactorsError
from influence_core.sources.data import DataSource, align_labels, check_texts, load_table
from influence_core.sources.slices import SliceSpec


# ------------------------------------------------------------------------------------------- data
def load_examples(source: DataSource, spec: SliceSpec, label_names: Sequence[str] | None = None) -> pd.DataFrame:
    """The rows of ``source`` chosen by ``spec`` (columns ``row_id``, ``text``, ``label``, ...).

    With ``label_names`` the labels are aligned to the model's class ids (``label`` int, ``label_name``).
    """
    table = load_table(source)
    if label_names is not None:
        table = align_labels(table, label_names)
    sliced = spec.apply(table)
    if len(sliced) == 0:
        raise DataError("the slice is empty: widen it in the sidebar")
    return sliced


def ground_truth_columns(train: pd.DataFrame) -> list[str]:
    """Columns that can serve as known-mislabel truth: boolean or 0/1 columns (``planted_error`` first)."""
    found = []
    for name in train.columns:
        if name in KEPT_COLUMNS:
            continue
        values = train[name]
        if values.dtype == bool or set(pd.unique(values.astype(str).str.lower())) <= {"0", "1", "true", "false"}:
            found.append(str(name))
    return sorted(found, key=lambda n: (n != "planted_error", n))


# ------------------------------------------------------------------------------------------- files
@dataclass
class Predictions:
    """The model's predictions on the test reviews: what the Overview draws before any influence exists.

    Saved by :func:`compute_analysis` as soon as the model is loaded (seconds), so a first visit sees how good the
    model is while the factors are fitted; a finished analysis hands out the same view (:attr:`Analysis.predictions`).

    Attributes:
        test: the test reviews (``row_id``, ``text``, ``label`` int, ``label_name``, other columns kept).
        test_probs: class probabilities [n_test, C].
        label_names: class names in id order.
        n_train: how many training reviews the analysis has.
        notes: what the data check found (truncated reviews, overlaps).
    """

    test: pd.DataFrame
    test_probs: np.ndarray
    label_names: list[str]
    n_train: int
    notes: list[str] = field(default_factory=list)

    @property
    def test_pred(self) -> np.ndarray:
        return self.test_probs.argmax(axis=1)

    def name(self, label: int) -> str:
        return self.label_names[int(label)] if 0 <= int(label) < len(self.label_names) else str(label)


@dataclass
class Analysis:
    """A computed analysis, read from disk. Everything the pages draw comes from here.

    Attributes:
        spec: what was computed.
        scores: the ScoreTable: pairwise [K, L, n_test, n_train], self-influence [K, L, n_train], probabilities.
        train, test: the reviews (``row_id``, ``text``, ``label`` int, ``label_name``, other columns kept).
        label_names: class names in id order, length C.
        meta: notes, timings and sizes.
    """

    spec: AnalysisSpec
    scores: ScoreTable
    train: pd.DataFrame
    test: pd.DataFrame
    label_names: list[str]
    meta: dict = field(default_factory=dict)

    @property
    def key(self) -> str:
        return self.spec.key()

    @property
    def dampings(self) -> list[float]:
        return [float(d) for d in self.scores.dampings]

    def damping_index(self, damping: float | None) -> int:
        if damping is None:
            damping = self.spec.chosen_damping
        return self.scores.damping_index(float(damping))

    @property
    def train_pred(self) -> np.ndarray:
        return self.scores.train_probs.argmax(axis=1)

    @property
    def test_pred(self) -> np.ndarray:
        return self.scores.test_probs.argmax(axis=1)

    @property
    def test_probs(self) -> np.ndarray:
        return self.scores.test_probs

    @property
    def predictions(self) -> Predictions:
        return Predictions(test=self.test, test_probs=self.scores.test_probs, label_names=list(self.label_names),
                           n_train=self.scores.n_train, notes=list(self.meta.get("notes", [])))

    def name(self, label: int) -> str:
        return self.label_names[int(label)] if 0 <= int(label) < len(self.label_names) else str(label)

    def influence(self, k: int = 0, layers: Sequence[str] | None = None, *, relative: bool = False) -> np.ndarray:
        """Test x train influence ``[n_test, n_train]`` at damping index ``k`` over ``layers`` (all if None)."""
        chosen = list(layers) if layers else None
        return self.scores.relative(k, chosen) if relative else self.scores.total(k, chosen)

    def test_hover(self) -> list[str]:
        from explorer.figures import hover_text

        return [
            hover_text(t, self.name(y), self.name(p))
            for t, y, p in zip(self.test["text"], self.test["label"], self.test_pred, strict=True)
        ]

    def train_hover(self) -> list[str]:
        from explorer.figures import hover_text

        return [
            hover_text(t, self.name(y), self.name(p))
            for t, y, p in zip(self.train["text"], self.train["label"], self.train_pred, strict=True)
        ]


def compute_analysis(spec: AnalysisSpec, store: ModelStore, progress: Any = None) -> Path:
    """Load, fit (or reload factors), score and save one analysis; returns its folder.

    ``progress`` is a :class:`explorer.jobs.Progress` (with ``span``) or a plain callback. Raises
    InfluenceError for anything the user can fix (empty slice, labels the model does not know, ...).
    """
    from influence_core.engine.influence import InfluenceEngine

    started = time.time()
    span = getattr(progress, "span", None)
    cancel = getattr(progress, "check", None)
    needs_finetune = spec.model.kind == "demo" and not demo_model_ready()
    needs_fit = not factors_ready(spec)
    # share the bar in proportion to the costs measured on the demo (2 cores): fine-tune 39 s, fit and index 34 s,
    # scoring 40 test reviews at 5 dampings 47 s (benchmarks/demo_finetune.py; a development profile for the rest)
    weights = {"model": 4.0 if needs_finetune else 0.3, "fit": 3.5 if needs_fit else 0.1, "score": 5.0}
    total = sum(weights.values())
    edges = np.cumsum([0.0] + [w / total for w in weights.values()])
    stage = dict(zip(weights, zip(edges[:-1], edges[1:], strict=True), strict=True))

    def sub(name: str) -> Progress | None:
        if span is not None:
            return span(*stage[name])
        return progress

    def is_cancelled() -> bool:
        if cancel is None:
            return False
        try:
            cancel()
        except JobCancelled:  # the job's cancel signal; any other failure propagates
            return True
        return False

    loaded = store.model(spec.model, progress=sub("model"), cancel=is_cancelled if cancel else None)
    if cancel is not None:
        cancel()
    train = load_examples(spec.train_data, spec.train_slice, loaded.label_names)
    test = load_examples(spec.test_data, spec.test_slice, loaded.label_names)
    notes = [f"training reviews: {n}" for n in check_texts(train, loaded.tokenizer, spec.config.max_length)]
    notes += [f"test reviews: {n}" for n in check_texts(test, loaded.tokenizer, spec.config.max_length)]
    if spec.train_data == spec.test_data and set(train["row_id"]) & set(test["row_id"]):
        shared = len(set(train["row_id"]) & set(test["row_id"]))
        notes.append(f"{shared} reviews are in both the training and the test slice")

    engine = InfluenceEngine(loaded.model, loaded.tokenizer, spec.config)
    folder = analysis_dir(spec)
    if cancel is not None:
        cancel()
    # the reviews first: the early predictions and estimate below read them back, and so does the finished analysis
    _table_for_disk(train).to_parquet(folder / "train.parquet", index=False)
    _table_for_disk(test).to_parquet(folder / "test.parquet", index=False)
    save_predictions(folder, Predictions(test=test, test_probs=engine.predict_proba(test["text"].tolist()),
                                         label_names=list(loaded.label_names), n_train=len(train), notes=notes))
    fitted = "reused"
    index = None
    if spec.config.method != "identity":
        path = factors_path(spec)
        loaded_factors = False
        if path.is_file():
            try:
                engine.load_factors(path)
                loaded_factors = True
            except FactorsError:
                path.unlink(missing_ok=True)
        if not loaded_factors:
            # the index rides on the fit's second pass (no pass of its own for the true or empirical Fisher)
            _, index = fit_and_index(engine, train["text"].tolist(), train["label"].to_numpy(),
                                     config=index_config(engine, len(train)), progress=sub("fit"))
            engine.save_factors(path)
            fitted = "fitted"
    else:
        fitted = "not needed (identity)"
    if index is None and not index_ready(spec):
        index = GradientIndex.build(engine, train["text"].tolist(), train["label"].to_numpy(),
                                    config=index_config(engine, len(train)), progress=sub("fit"))
    if index is not None:
        index.save(index_dir(spec), factors=False)
    estimates = None
    if index is not None or index_ready(spec):
        # the index's estimate at the chosen damping: the heatmap draws it while the exact pass below runs, and
        # the agreement with the exact scores is measured on it afterwards
        index = index or GradientIndex.load(index_dir(spec), engine, train["text"].tolist(), train["label"].to_numpy())
        by_layer = index.layer_estimates(test["text"].tolist(), test["label"].to_numpy(), damping=spec.chosen_damping)
        estimates = by_layer.sum(axis=0)
        save_estimate(folder, estimates, spec.chosen_damping, by_layer=by_layer, layers=list(engine.layers))
    table = engine.score(
        test["text"].tolist(),
        test["label"].to_numpy(),
        train["text"].tolist(),
        train["label"].to_numpy(),
        dampings=list(spec.dampings),
        progress=sub("score"),
    )
    agreement = None
    if estimates is not None:
        k = table.damping_index(spec.chosen_damping)
        # measured as the app asks: the top 5 cards per side among the RERANK candidates it re-scores
        agreement = index_agreement(estimates, table.total(k), top=CARDS, candidates=RERANK)
        agreement.update(kind=index.meta["kind"], bytes_per_example=index.bytes_per_example,
                         basis=index.meta.get("basis", "random"), entries=int(index.rows.shape[1]))
        # and per layer, for the Layers page's early estimate
        agreement["layers"] = {name: index_agreement(by_layer[i], table.pairwise[k, table.layers.index(name)])
                               ["median_pearson"] for i, name in enumerate(engine.layers)}
    table.save(folder / "scores.npz")
    seconds = time.time() - started
    meta = {
        "format_version": FORMAT_VERSION,
        "key": spec.key(),
        "summary": spec.summary(),
        "label_names": list(loaded.label_names),
        "layers": list(engine.layers),
        "n_train": len(train),
        "n_test": len(test),
        "notes": notes,
        "factors": fitted,
        "index": agreement,
        "seconds": round(seconds, 1),
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    record_speed(spec, len(train), len(test), seconds, needs_finetune, needs_fit)
    (folder / "meta.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
    return folder


def index_agreement(estimates: np.ndarray, exact: np.ndarray, top: int = 10, candidates: int = 50) -> dict:
    """How well the index's estimates ``[n_test, n_train]`` agree with the engine's exact scores (same shape).

    ``median_pearson``: median over test reviews of the Pearson correlation of the two rows; ``recall``: the share
    of the exact ``top`` most helpful and most harmful training reviews found among the index's ``candidates``
    per direction (what the exact re-score then ranks).
    """
    pearsons, found, wanted = [], 0, 0
    width = min(candidates, exact.shape[1])
    for guess, truth in zip(estimates, exact, strict=True):
        if np.std(guess) > 0 and np.std(truth) > 0:
            pearsons.append(float(np.corrcoef(guess, truth)[0, 1]))
        for sign in (1.0, -1.0):
            best = set(np.argsort(-sign * truth)[:top].tolist())
            found += len(best & set(np.argsort(-sign * guess)[:width].tolist()))
            wanted += len(best)
    return {"median_pearson": float(np.median(pearsons)) if pearsons else float("nan"),
            "recall": found / max(wanted, 1), "top": top, "candidates": width, "queries": int(exact.shape[0])}


def _table_for_disk(frame: pd.DataFrame) -> pd.DataFrame:
    out = frame.copy()
    for name in out.columns:
        if out[name].dtype == object:
            out[name] = out[name].astype(str)
    out.columns = [str(c) for c in out.columns]
    return out


PREDICTIONS_FILE = "predictions.json"


def save_predictions(folder: Path, predictions: Predictions) -> None:
    """Write the predictions of an analysis still being computed, next to its ``test.parquet`` (the JSON, written
    last, marks them complete)."""
    np.save(folder / "test_probs.npy", predictions.test_probs)
    record = {"label_names": predictions.label_names, "n_train": predictions.n_train, "notes": predictions.notes}
    staged = folder / f".{PREDICTIONS_FILE}.tmp"
    staged.write_text(json.dumps(record), encoding="utf-8")
    staged.replace(folder / PREDICTIONS_FILE)


def load_predictions(spec: AnalysisSpec) -> Predictions | None:
    """The test predictions saved early by ``spec``'s analysis, or None before they exist (a finished analysis has
    them as :attr:`Analysis.predictions`)."""
    folder = analysis_dir(spec)
    if not (folder / PREDICTIONS_FILE).is_file():
        return None
    record = json.loads((folder / PREDICTIONS_FILE).read_text(encoding="utf-8"))
    return Predictions(test=pd.read_parquet(folder / "test.parquet"), test_probs=np.load(folder / "test_probs.npy"),
                       label_names=record["label_names"], n_train=int(record["n_train"]), notes=record["notes"])


ESTIMATE_FILE = "estimate.json"


@dataclass
class Estimate:
    """The training-gradient index's influence estimate of an analysis still being computed.

    Raw influence at the chosen ``damping``; the exact scores replace it when the analysis is done.

    Attributes:
        matrix: Over every analysed layer, [n_test, n_train]; positive = helpful.
        train: The training reviews (as in :class:`Analysis`).
        damping: The damping of the estimate (absolute or relative, as the analysis).
        layers: The analysed layers, in the engine's order.
        by_layer: The same per layer, [n_layers, n_test, n_train] (``matrix`` is its sum), or None when saved by an
            older version.
    """

    matrix: np.ndarray
    train: pd.DataFrame
    damping: float
    layers: list[str] = field(default_factory=list)
    by_layer: np.ndarray | None = None


def save_estimate(folder: Path, matrix: np.ndarray, damping: float, *, by_layer: np.ndarray | None = None,
                  layers: Sequence[str] = ()) -> None:
    """Write the index estimate of an analysis still being computed, next to its ``train.parquet``."""
    np.save(folder / "estimate.npy", np.asarray(matrix, dtype=np.float64))
    if by_layer is not None:
        np.save(folder / "estimate_layers.npy", np.asarray(by_layer, dtype=np.float32))
    staged = folder / f".{ESTIMATE_FILE}.tmp"
    staged.write_text(json.dumps({"damping": float(damping), "layers": list(layers),
                                  "by_layer": by_layer is not None}), encoding="utf-8")
    staged.replace(folder / ESTIMATE_FILE)


def load_estimate(spec: AnalysisSpec) -> Estimate | None:
    """The index estimate saved by ``spec``'s running analysis, or None before it exists."""
    folder = analysis_dir(spec)
    if not (folder / ESTIMATE_FILE).is_file():
        return None
    record = json.loads((folder / ESTIMATE_FILE).read_text(encoding="utf-8"))
    by_layer = np.load(folder / "estimate_layers.npy") if record.get("by_layer") else None
    return Estimate(matrix=np.load(folder / "estimate.npy"), train=pd.read_parquet(folder / "train.parquet"),
                    damping=float(record["damping"]), layers=list(record.get("layers", [])), by_layer=by_layer)


def load_analysis(spec: AnalysisSpec) -> Analysis | None:
    """The saved analysis for ``spec``, or None if it has not been computed."""
    folder = analysis_dir(spec)
    meta_path = folder / "meta.json"
    if not meta_path.is_file():
        return None
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    scores = ScoreTable.load(folder / "scores.npz")
    train = pd.read_parquet(folder / "train.parquet")
    test = pd.read_parquet(folder / "test.parquet")
    return Analysis(spec=spec, scores=scores, train=train, test=test, label_names=meta["label_names"], meta=meta)
