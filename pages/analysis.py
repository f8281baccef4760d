"""What the explorer computes and keeps, without any Streamlit: specs, stores, jobs' bodies and views.

An *analysis* is one model, one training slice, one test slice and one engine configuration, scored for a
few damping values at once. :func:`compute_analysis` (run in a background job) loads the model (fine-tuning
the demo model the first time), fits or reloads the factors, scores and writes everything under
``cache_dir("analyses", spec.key())``; :func:`load_analysis` reads it back. Pages only ever read an
:class:`Analysis`, so changing the damping (among computed values), the layers or the displayed example
re-renders from these arrays without touching a gradient.

Keys are small hashes (:func:`influence_core.cache.stable_hash`) of frozen dataclasses, never tensors.
Sign convention: positive influence = helpful (up-weighting the training review lowers the test review's
loss), negative = harmful.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from influence_core.cache import cache_dir, stable_hash
from influence_core.config import EngineConfig
from influence_core.data import DataSource, align_labels, check_texts, load_table
from influence_core.errors import DataError, FactorsError, InfluenceError
from influence_core.models import LoadedModel, ModelSource
from influence_core.scores import ScoreTable
from influence_core.slices import SliceSpec

Progress = Callable[[int, int, str], None]

ENV_MODEL = "INFLUENCE_EXPLORER_MODEL"  # test hook: a local model folder used as the default model
FORMAT_VERSION = 1  # bump when the files of an analysis change meaning
DAMPING_STEPS = (0.01, 0.1, 1.0, 10.0, 100.0)  # the sweep: these multiples of the chosen damping
KEPT_COLUMNS = ("row_id", "text", "label", "label_name", "label_raw")


# ------------------------------------------------------------------------------------------- the spec
@dataclass(frozen=True)
class AnalysisSpec:
    """Everything that determines an analysis's numbers (hashable: a cache key; printable: shown in the UI).

    Attributes:
        model: which classifier.
        train_data, test_data: where training and test reviews come from.
        train_slice, test_slice: which rows of each.
        config: layers, method, Fisher, damping (the chosen value), max_length, ...
        dampings: every damping value scored, ascending; the chosen one is among them.
    """

    model: ModelSource
    train_data: DataSource
    test_data: DataSource
    train_slice: SliceSpec
    test_slice: SliceSpec
    config: EngineConfig
    dampings: tuple[float, ...]

    def key(self) -> str:
        """The analysis folder's name: a hash of every field and of the model's weights' identity."""
        return stable_hash(
            {"v": FORMAT_VERSION, "model": model_identity(self.model), "spec": self, "config": _scoring_config(self.config)}
        )

    def factors_key(self) -> str:
        """Factors depend on the model, the fitting data and the curvature settings, not on damping."""
        fit = {name: getattr(self.config, name) for name in ("layers", "method", "fisher", "max_length", "seed", "dtype")}
        return stable_hash(
            {"v": FORMAT_VERSION, "model": model_identity(self.model), "data": self.train_data, "slice": self.train_slice, "fit": fit}
        )

    @property
    def chosen_damping(self) -> float:
        config = self.config
        return float(config.relative_damping if config.relative_damping is not None else config.damping)

    @property
    def damping_mode(self) -> str:
        return "relative" if self.config.relative_damping is not None else "absolute"

    def summary(self) -> dict[str, str]:
        """Key facts for the sidebar and the report."""
        config = self.config
        return {
            "model": self.model.describe(),
            "training reviews": f"{self.train_data.describe()}; {self.train_slice.describe()}",
            "test reviews": f"{self.test_data.describe()}; {self.test_slice.describe()}",
            "layers": config.layers,
            "method": f"{config.method}, {config.fisher} Fisher",
            "damping": f"{self.damping_mode}; chosen {self.chosen_damping:g}; scored "
            + ", ".join(f"{d:g}" for d in self.dampings),
        }


def damping_grid(chosen: float, steps: Sequence[float] = DAMPING_STEPS) -> tuple[float, ...]:
    """The damping values to score: ``chosen`` times each step (rounded to 3 significant digits), ascending."""
    values = {float(f"{chosen * step:.3g}") for step in steps} | {float(f"{chosen:.3g}")}
    return tuple(sorted(v for v in values if v > 0)) or (float(chosen),)


def model_identity(source: ModelSource) -> object:
    """What names a model's weights without loading them: demo recipe key, folder files, or Hub id."""
    if source.kind == "demo":
        from influence_core.demo import demo_model_key

        return {"demo": demo_model_key()}
    if source.kind == "local":
        folder = Path(source.name).expanduser()
        files = []
        if folder.is_dir():
            for item in sorted(folder.glob("*.safetensors")) + [folder / "config.json"]:
                if item.is_file():
                    stat = item.stat()
                    files.append([item.name, stat.st_size, stat.st_mtime_ns])
        return {"local": str(folder.resolve()) if folder.exists() else source.name, "files": files}
    return {"hub": source.name}


def _scoring_config(config: EngineConfig) -> dict:
    # batch_size and device do not change the numbers: a different machine reuses the same analysis
    return {k: v for k, v in config.__dict__.items() if k not in ("batch_size", "device")}


def default_model_source() -> ModelSource:
    """The built-in demo, or the folder named by ``$INFLUENCE_EXPLORER_MODEL`` (tests use a tiny model)."""
    folder = os.environ.get(ENV_MODEL)
    return ModelSource("local", folder) if folder else ModelSource("demo")


# ------------------------------------------------------------------------------------------- models
class ModelStore:
    """Loaded models and engines shared by every session of the process (thread-safe, small LRU).

    The app keeps one store in ``st.cache_resource``; background jobs receive it as an argument, so a model
    loaded by a job is the one the pages use, and a second browser tab reuses it.
    """

    def __init__(self, max_models: int = 2) -> None:
        self._models: OrderedDict[str, LoadedModel] = OrderedDict()
        self._engines: OrderedDict[tuple, Any] = OrderedDict()
        self._lock = threading.RLock()
        self._loading: dict[str, threading.Lock] = {}
        self.max_models = max_models

    def model(self, source: ModelSource, *, progress: Progress | None = None, cancel: Callable[[], bool] | None = None) -> LoadedModel:
        """The loaded classifier for ``source`` (loading, or for the demo fine-tuning, it on first use)."""
        key = stable_hash(model_identity(source))
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
            loading = self._loading.setdefault(key, threading.Lock())
        with loading:  # two sessions asking at once load once
            with self._lock:
                if key in self._models:
                    return self._models[key]
            loaded = _load_model(source, progress=progress, cancel=cancel)
            with self._lock:
                self._models[key] = loaded
                while len(self._models) > self.max_models:
                    old, _ = self._models.popitem(last=False)
                    for engine_key in [k for k in self._engines if k[0] == old]:
                        del self._engines[engine_key]
            return loaded

    def has_model(self, source: ModelSource) -> bool:
        with self._lock:
            return stable_hash(model_identity(source)) in self._models

    def engine(self, spec: AnalysisSpec, damping: float | None = None):
        """An InfluenceEngine for ``spec`` with its saved factors loaded, at ``damping`` (default: the chosen one).

        Raises FactorsError when the factors were not fitted yet (run the analysis first).
        """
        from influence_core.engine import InfluenceEngine

        config = scoring_config(spec, damping)
        loaded = self.model(spec.model)
        key = (stable_hash(model_identity(spec.model)), spec.factors_key(), config.key())
        with self._lock:
            if key in self._engines:
                return self._engines[key]
        engine = InfluenceEngine(loaded.model, loaded.tokenizer, config)
        if config.method != "identity":
            path = factors_path(spec)
            if not path.is_file():
                raise FactorsError("the factors for this analysis are not fitted yet: press 'Fit and score' first")
            engine.load_factors(path)
        with self._lock:
            self._engines[key] = engine
            while len(self._engines) > 8:
                self._engines.popitem(last=False)
        return engine


def _load_model(source: ModelSource, *, progress: Progress | None, cancel: Callable[[], bool] | None) -> LoadedModel:
    from influence_core.models import load_classifier

    if source.kind == "demo" and cancel is not None:
        from influence_core.demo import demo_model_dir

        demo_model_dir(progress=progress, cancel=cancel)  # fine-tunes once, cancellably; then loads from disk
    return load_classifier(source, progress=progress)


def demo_model_ready() -> bool:
    """Whether the demo model is already fine-tuned and cached (so a fit will not train it first)."""
    from influence_core.demo import demo_model_key

    folder = cache_dir("models") / f"demo-{demo_model_key()}"
    return (folder / "finetune.json").is_file() and (folder / "config.json").is_file()


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
def analysis_dir(spec: AnalysisSpec) -> Path:
    return cache_dir("analyses", spec.key())


def factors_path(spec: AnalysisSpec) -> Path:
    return cache_dir("factors", spec.factors_key()) / "factors.safetensors"


def analysis_ready(spec: AnalysisSpec) -> bool:
    return (analysis_dir(spec) / "meta.json").is_file()


def factors_ready(spec: AnalysisSpec) -> bool:
    return spec.config.method == "identity" or factors_path(spec).is_file()


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

    def name(self, label: int) -> str:
        return self.label_names[int(label)] if 0 <= int(label) < len(self.label_names) else str(label)

    def influence(self, k: int = 0, layers: Sequence[str] | None = None, *, relative: bool = False) -> np.ndarray:
        """Test x train influence ``[n_test, n_train]`` at damping index ``k`` over ``layers`` (all if None)."""
        chosen = list(layers) if layers else None
        return self.scores.relative(k, chosen) if relative else self.scores.total(k, chosen)

    def test_hover(self) -> list[str]:
        from influence_core.figures import hover_text

        return [
            hover_text(t, self.name(y), self.name(p))
            for t, y, p in zip(self.test["text"], self.test["label"], self.test_pred, strict=True)
        ]

    def train_hover(self) -> list[str]:
        from influence_core.figures import hover_text

        return [
            hover_text(t, self.name(y), self.name(p))
            for t, y, p in zip(self.train["text"], self.train["label"], self.train_pred, strict=True)
        ]


def compute_analysis(spec: AnalysisSpec, store: ModelStore, progress: Any = None) -> Path:
    """Load, fit (or reload factors), score and save one analysis; returns its folder.

    ``progress`` is a :class:`influence_core.jobs.Progress` (with ``span``) or a plain callback. Raises
    InfluenceError for anything the user can fix (empty slice, labels the model does not know, ...).
    """
    from influence_core.engine import InfluenceEngine

    started = time.time()
    span = getattr(progress, "span", None)
    cancel = getattr(progress, "check", None)
    needs_finetune = spec.model.kind == "demo" and not demo_model_ready()
    needs_fit = not factors_ready(spec)
    # share the bar in proportion to rough costs: fine-tune ~ 3 epochs x 3, fit ~ 2 passes, scoring the rest
    weights = {"model": 9.0 if needs_finetune else 0.3, "fit": 2.0 if needs_fit else 0.1, "score": 3.0}
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
        except Exception:  # noqa: BLE001 - the job's cancel signal
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
    fitted = "reused"
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
            engine.fit(train["text"].tolist(), train["label"].to_numpy(), progress=sub("fit"))
            engine.save_factors(path)
            fitted = "fitted"
    else:
        fitted = "not needed (identity)"
    table = engine.score(
        test["text"].tolist(),
        test["label"].to_numpy(),
        train["text"].tolist(),
        train["label"].to_numpy(),
        dampings=list(spec.dampings),
        progress=sub("score"),
    )
    folder = analysis_dir(spec)
    table.save(folder / "scores.npz")
    _table_for_disk(train).to_parquet(folder / "train.parquet", index=False)
    _table_for_disk(test).to_parquet(folder / "test.parquet", index=False)
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
        "seconds": round(seconds, 1),
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    _record_speed(spec, len(train), len(test), seconds, needs_finetune, needs_fit)
    (folder / "meta.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
    return folder


def _table_for_disk(frame: pd.DataFrame) -> pd.DataFrame:
    out = frame.copy()
    for name in out.columns:
        if out[name].dtype == object:
            out[name] = out[name].astype(str)
    out.columns = [str(c) for c in out.columns]
    return out


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


# ------------------------------------------------------------------------------------------- estimates
@dataclass
class CostEstimate:
    """What a run will cost, before it starts (rough: the first run on a machine calibrates later ones).

    Attributes:
        seconds: wall time, including a first-use fine-tune of the demo model.
        memory_bytes: peak extra memory for gradients, factors and scores.
        steps: what will run, in words.
    """

    seconds: float
    memory_bytes: float
    steps: list[str]

    def describe(self) -> str:
        return f"about {format_seconds(self.seconds)} and {format_bytes(self.memory_bytes)} of memory"


# Rough per-unit costs on one CPU core pair, calibrated on MiniLM; a finished run rescales them (see _record_speed).
FORWARD_BACKWARD_S_PER_PARAM = 4e-9  # one example's forward and backward pass, per model parameter
MAC_S = 7e-11  # one multiply-accumulate in the eigenbasis rotations and score products
EIGH_S_PER_CUBE = 5e-9  # eigendecomposition of an n x n factor, per n**3


def estimate_cost(
    spec: AnalysisSpec, n_train: int, n_test: int, *, layer_sizes: Mapping[str, tuple[int, int]] | None = None
) -> CostEstimate:
    """Estimate time and memory of :func:`compute_analysis` for ``n_train`` x ``n_test`` reviews.

    ``layer_sizes`` maps each analysed layer to ``(in_features + 1, out_features)``; without it the sizes are
    guessed from the model's ``config.json`` (demo and local folders). Times come from a simple cost model
    (forward/backward passes, eigenbasis rotations, eigendecompositions) scaled by how fast the last run on this
    machine was, so the first estimate is the roughest.
    """
    sizes = dict(layer_sizes) if layer_sizes else _guess_layer_sizes(spec)
    finetune = spec.model.kind == "demo" and not demo_model_ready()
    fit = not factors_ready(spec)
    seconds, steps = _model_seconds(spec, n_train, n_test, sizes, finetune=finetune, fit=fit)
    seconds *= _load_speed(spec) or 1.0
    width = sum(i * o for i, o in sizes.values())
    chunk = max(1, min(n_test, int(2 * 1024**3 // max(width * 4, 1))))
    k = len(spec.dampings)
    factors_bytes = sum((i * i + o * o + i * o) * 8 for i, o in sizes.values())
    queries_bytes = chunk * width * 4
    scores_bytes = k * max(len(sizes), 1) * n_test * n_train * 8 * 2
    widest = max((i * o for i, o in sizes.values()), default=0)
    batch_bytes = spec.config.batch_size * (width + widest * max(k, 1)) * 4  # captures, then one layer's K weightings
    memory = factors_bytes + queries_bytes + scores_bytes + batch_bytes + _guess_parameters(spec) * 4 * 3
    return CostEstimate(seconds=seconds, memory_bytes=float(memory), steps=steps)


def _model_seconds(
    spec: AnalysisSpec, n_train: int, n_test: int, sizes: Mapping[str, tuple[int, int]], *, finetune: bool, fit: bool
) -> tuple[float, list[str]]:
    """Unscaled seconds of each stage from the cost model, and the stages in words."""
    config = spec.config
    length = config.max_length / 128
    forward_backward = FORWARD_BACKWARD_S_PER_PARAM * _guess_parameters(spec) * length
    # one example's gradient into the eigenbasis: the engine rotates token by token when that is cheaper than
    # rotating the per-example matrix (reviews fill about half of max_length on average)
    tokens = max(1.0, config.max_length / 2)
    rotation = 0.0 if config.method == "identity" else MAC_S * sum(
        min(i * i * o + i * o * o, tokens * (i * i + o * o + i * o)) for i, o in sizes.values()
    )
    width = sum(i * o for i, o in sizes.values())
    k = len(spec.dampings)
    seconds, steps = 0.0, []
    if finetune:
        seconds += 3 * 480 * forward_backward * 1.5
        steps.append("fine-tune the demo model once (3 epochs on 480 reviews)")
    if fit and config.method != "identity":
        # the true Fisher needs one backward pass per class term; a binary model has one term (the demo's base
        # encoder records no labels: the demo is binary)
        n_labels = len(_model_config(spec).get("id2label") or {}) if spec.model.kind != "demo" else 2
        classes = n_labels if config.fisher == "true" and n_labels > 2 else 1
        passes = 2 if config.method == "ekfac" else 1
        seconds += n_train * forward_backward * classes * passes + n_train * rotation * (passes - 1)
        seconds += EIGH_S_PER_CUBE * sum(i**3 + o**3 for i, o in sizes.values())
        steps.append(f"fit {config.method} factors on {n_train} training reviews ({passes} passes)")
    chunk = max(1, min(n_test, int(2 * 1024**3 // max(width * 4, 1)))) if n_test else 1
    chunks = math.ceil(n_test / chunk) if n_test else 0
    per_train = forward_backward + rotation + MAC_S * min(n_test, chunk) * k * width
    seconds += chunks * n_train * per_train + n_test * (forward_backward + rotation)
    steps.append(
        f"score {n_test} test x {n_train} training reviews over {len(sizes) or '?'} layers at {k} damping values"
        + (f" ({chunks} passes over the training reviews)" if chunks > 1 else "")
    )
    return seconds, steps


def _model_config(spec: AnalysisSpec) -> dict:
    if spec.model.kind == "demo":
        from influence_core.models import base_encoder_path

        folder = Path(base_encoder_path())
    elif spec.model.kind == "local":
        folder = Path(spec.model.name).expanduser()
    else:
        return {}
    try:
        return json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _guess_parameters(spec: AnalysisSpec) -> int:
    cfg = _model_config(spec)
    hidden = int(cfg.get("hidden_size") or cfg.get("dim") or 768)
    inter = int(cfg.get("intermediate_size") or cfg.get("hidden_dim") or 4 * hidden)
    n_layers = int(cfg.get("num_hidden_layers") or cfg.get("n_layers") or 12)
    vocab = int(cfg.get("vocab_size") or 30522)
    return n_layers * (4 * hidden * hidden + 2 * hidden * inter) + vocab * hidden


def _guess_layer_sizes(spec: AnalysisSpec) -> dict[str, tuple[int, int]]:
    cfg = _model_config(spec)
    hidden = int(cfg.get("hidden_size") or cfg.get("dim") or 768)
    inter = int(cfg.get("intermediate_size") or cfg.get("hidden_dim") or 4 * hidden)
    n_layers = int(cfg.get("num_hidden_layers") or cfg.get("n_layers") or 12)
    n_labels = len(cfg.get("id2label") or {}) or 2
    sizes: dict[str, tuple[int, int]] = {}
    for part in [p.strip() for p in spec.config.layers.split(",") if p.strip()]:
        if part in ("ffn", "all"):
            for i in range(n_layers):
                sizes[f"layer.{i}.ffn.in"] = (hidden + 1, inter)
                sizes[f"layer.{i}.ffn.out"] = (inter + 1, hidden)
        if part in ("attention", "all"):
            for i in range(n_layers):
                for name in ("query", "key", "value", "output"):
                    sizes[f"layer.{i}.attention.{name}"] = (hidden + 1, hidden)
        if part in ("head", "all"):
            sizes["pooler"] = (hidden + 1, hidden)
            sizes["classifier"] = (hidden + 1, n_labels)
        if part not in ("ffn", "attention", "head", "all"):
            sizes[part] = (hidden + 1, hidden)
    return sizes


def _speed_file(spec: AnalysisSpec) -> Path:
    return cache_dir("timings") / f"{stable_hash(model_identity(spec.model))}.json"


def _record_speed(spec: AnalysisSpec, n_train: int, n_test: int, seconds: float, finetuned: bool, fitted: bool) -> None:
    """Remember how much faster or slower than the cost model this machine was (for the next estimate)."""
    if finetuned:  # a first-use fine-tune says little about the analysis itself
        return
    modelled, _ = _model_seconds(spec, n_train, n_test, _guess_layer_sizes(spec), finetune=False, fit=fitted)
    if modelled <= 0 or seconds <= 0:
        return
    try:
        _speed_file(spec).write_text(json.dumps({"speed_factor": seconds / modelled}), encoding="utf-8")
    except OSError:
        pass


def _load_speed(spec: AnalysisSpec) -> float | None:
    try:
        return float(json.loads(_speed_file(spec).read_text(encoding="utf-8"))["speed_factor"])
    except (OSError, ValueError, KeyError):
        return None


def format_seconds(seconds: float) -> str:
    if seconds < 1:
        return "under a second"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def format_bytes(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"


# ------------------------------------------------------------------------------------------- views
def top_pairs(matrix: np.ndarray, n: int = 10) -> pd.DataFrame:
    """The ``n`` most positive and ``n`` most negative cells of ``matrix [n_test, n_train]``.

    Returns columns ``test``, ``train`` (positions), ``influence``, ``kind`` (helpful/harmful), most extreme first.
    """
    values = np.asarray(matrix, dtype=float)
    flat = values.ravel()
    n = min(n, flat.size)
    order = np.argsort(flat)
    rows = []
    for kind, picks in (("helpful", order[::-1][:n]), ("harmful", order[:n])):
        for index in picks:
            value = flat[index]
            if (kind == "helpful" and value <= 0) or (kind == "harmful" and value >= 0):
                continue
            q, m = np.unravel_index(index, values.shape)
            rows.append({"test": int(q), "train": int(m), "influence": float(value), "kind": kind})
    frame = pd.DataFrame(rows, columns=["test", "train", "influence", "kind"])
    return frame.reindex(frame["influence"].abs().sort_values(ascending=False).index).reset_index(drop=True)


def layer_shares(scores: ScoreTable, k: int, layers: Sequence[str], test_index: int | None = None) -> dict[str, float]:
    """Each layer's share of the total absolute influence (over all pairs, or one test review's row)."""
    parts = {}
    for name in layers:
        block = scores.pairwise[k, scores.layers.index(name)]
        if test_index is not None:
            block = block[test_index]
        parts[name] = float(np.abs(block).sum())
    total = sum(parts.values()) or 1.0
    return {name: value / total for name, value in parts.items()}


@dataclass
class DampingSuggestion:
    """A damping value to use and why; ``settled`` is False when no computed value met the threshold."""

    value: float | None
    reason: str
    settled: bool


def suggest_damping(stability: pd.DataFrame, threshold: float = 0.99) -> DampingSuggestion:
    """The smallest damping whose ranking barely changes at the next larger value, and why.

    Uses the ``total`` rows of ``ScoreTable.stability()``: the first ``damping_from`` (ascending) whose Spearman
    correlation with its neighbour is at least ``threshold``. Smaller damping follows the curvature more
    closely; once the ranking stops moving, more damping only blurs it.
    """
    if stability.empty:
        return DampingSuggestion(None, "Score at least two damping values to compare them.", False)
    total = stability[stability["layer"] == "total"].sort_values("damping_from")
    for row in total.itertuples():
        if np.isfinite(row.spearman) and row.spearman >= threshold:
            return DampingSuggestion(float(row.damping_from), (
                f"{row.damping_from:g} is the smallest damping whose training-review ranking barely changes at the next "
                f"value {row.damping_to:g} (Spearman {row.spearman:.3f} ≥ {threshold}). Smaller values follow the "
                "curvature more closely but the ranking is not settled there yet."
            ), True)
    best = total.loc[total["spearman"].idxmax()] if total["spearman"].notna().any() else None
    if best is None:
        return DampingSuggestion(None, "The scores are constant or undefined at every damping value; check the layers.", False)
    return DampingSuggestion(float(best["damping_to"]), (
        f"No neighbouring pair reaches Spearman {threshold}; the most stable step is {best['damping_from']:g} → "
        f"{best['damping_to']:g} ({best['spearman']:.3f}). Consider scoring larger damping values."
    ), False)


def flip_mask(n: int, mode: str, *, fraction: float = 0.1, seed: int = 0, chosen: Sequence[int] = ()) -> np.ndarray:
    """Which training reviews to corrupt, ``[n]`` bool: ``all``, a random ``fraction``, or ``chosen`` positions."""
    mask = np.zeros(n, dtype=bool)
    if mode == "all":
        mask[:] = True
    elif mode == "random":
        count = int(round(np.clip(fraction, 0.0, 1.0) * n))
        mask[np.random.default_rng(seed).choice(n, size=count, replace=False)] = True
    elif mode == "chosen":
        picks = [int(i) for i in chosen if 0 <= int(i) < n]
        mask[picks] = True
    else:
        raise DataError(f"unknown corruption mode {mode!r}: use all, random or chosen")
    return mask


def flipped_labels(labels: np.ndarray, flip: np.ndarray, n_classes: int) -> np.ndarray:
    """Labels with ``flip`` rows changed: the other class for binary models, the next class otherwise."""
    labels = np.asarray(labels)
    return np.where(flip, (labels + 1) % max(n_classes, 2), labels)


def sign_changes(before: np.ndarray, after: np.ndarray) -> int:
    """How many pairs switch between helpful and harmful (zeros do not count)."""
    return int(np.sum(np.sign(before) * np.sign(after) < 0))


def recompute_flipped(spec: AnalysisSpec, store: ModelStore, analysis: Analysis, flip: np.ndarray, k: int, progress: Progress | None = None) -> np.ndarray:
    """Influence ``[n_test, n_train]`` at damping index ``k`` after flipping labels, by scoring again (any model)."""
    engine = store.engine(spec, analysis.dampings[k])
    labels = flipped_labels(analysis.train["label"].to_numpy(), flip, len(analysis.label_names))
    table = engine.score(
        analysis.test["text"].tolist(), analysis.test["label"].to_numpy(), analysis.train["text"].tolist(), labels,
        self_influence=False, progress=progress,
    )
    return table.total(0)


# rankings for the mislabel finder: name -> (help text, function(analysis, k, layers) -> [n_train], higher = more suspicious)
Ranking = Callable[[Analysis, int, Sequence[str] | None], np.ndarray]
RANKINGS: dict[str, tuple[str, Ranking]] = {
    "self_influence": (
        "How much the review's own loss depends on its weight: mislabeled reviews must be memorised, so they score high.",
        lambda a, k, layers: a.scores.self_total(k, list(layers) if layers else None),
    ),
    "loss": (
        "The model's loss on the given label: a confident disagreement with the label is suspicious.",
        lambda a, k, layers: a.scores.train_losses(),
    ),
}


def ranking_help() -> dict[str, str]:
    """One line per ranking name, for the UI."""
    helps = {name: text for name, (text, _) in RANKINGS.items()}
    try:
        from influence_core import mislabel

        helps.update(getattr(mislabel, "DESCRIPTIONS", {}))
    except ImportError:
        pass
    return helps


def rankings(analysis: Analysis, k: int, layers: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """Every available suspicion score per training review ``{name: [n_train]}``, higher = more suspicious.

    The rankings of ``influence_core.mislabel`` (self-influence, trusted influence, loss, margin, combined) come
    first when that module is present; the app's own (:data:`RANKINGS`) fill in what it lacks. Each becomes a
    column of the finder's table, so adding a ranking there adds it to the page.
    """
    chosen = list(layers) if layers else None
    out: dict[str, np.ndarray] = {}
    try:
        from influence_core import mislabel

        for name, values in mislabel.rankings(analysis.scores, k=k, layers=chosen).items():
            values = np.asarray(values, dtype=float).reshape(-1)
            if values.shape == (analysis.scores.n_train,):
                out[str(name)] = values
    except (ImportError, AttributeError, InfluenceError, TypeError, ValueError, KeyError):
        pass
    for name, (_, fn) in RANKINGS.items():
        if name not in out:
            out[name] = np.asarray(fn(analysis, k, chosen), dtype=float)
    return out


# ------------------------------------------------------------------------------------------- marks
MARK_STATES = ("mislabeled", "fine", "relabel")


class MarkStore:
    """A reviewer's verdicts on training reviews, persisted as JSON (survives reruns and restarts).

    Stored under ``cache_dir("marks", key)/marks.json`` where ``key`` names the training data source, and
    indexed by ``row_id`` (the review's position in the full table): marks stay valid when the slice, the
    method or the damping change, since they judge a review's label, not a score.
    """

    def __init__(self, key: str) -> None:
        self.path = cache_dir("marks", key) / "marks.json"
        self._lock = threading.Lock()

    @classmethod
    def for_data(cls, source: DataSource) -> MarkStore:
        return cls(stable_hash({"marks": 1, "data": source}))

    def load(self) -> dict[int, dict]:
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return {int(k): v for k, v in raw.items() if isinstance(v, dict) and v.get("state") in MARK_STATES}

    def set(self, row_id: int, state: str, new_label: int | None = None) -> None:
        if state not in MARK_STATES:
            raise DataError(f"unknown mark {state!r}: use {', '.join(MARK_STATES)}")
        if state == "relabel" and new_label is None:
            raise DataError("choose the new label for a relabelled review")
        with self._lock:
            marks = self.load()
            marks[int(row_id)] = {"state": state, "new_label": None if new_label is None else int(new_label), "time": time.time()}
            self._write(marks)

    def clear(self, row_id: int | None = None) -> None:
        """Forget the mark of ``row_id``, or every mark when ``row_id`` is None."""
        with self._lock:
            marks = {}
            if row_id is not None:
                marks = self.load()
                marks.pop(int(row_id), None)
            self._write(marks)

    def _write(self, marks: dict[int, dict]) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({str(k): v for k, v in sorted(marks.items())}, indent=1), encoding="utf-8")
        tmp.replace(self.path)


def cleaned_dataset(train: pd.DataFrame, marks: Mapping[int, dict], label_names: Sequence[str]) -> pd.DataFrame:
    """The training reviews after review: ``mislabeled`` rows dropped, ``relabel`` rows given their new label.

    Columns ``row_id``, ``text``, ``label`` (int), ``label_name``, ``original_label``, ``review``.
    """
    rows = []
    for row in train.itertuples(index=False):
        mark = marks.get(int(row.row_id))
        state = mark["state"] if mark else ""
        if state == "mislabeled":
            continue
        label = int(mark["new_label"]) if state == "relabel" and mark.get("new_label") is not None else int(row.label)
        rows.append(
            {
                "row_id": int(row.row_id),
                "text": row.text,
                "label": label,
                "label_name": label_names[label] if 0 <= label < len(label_names) else str(label),
                "original_label": int(row.label),
                "review": state,
            }
        )
    return pd.DataFrame(rows, columns=["row_id", "text", "label", "label_name", "original_label", "review"])


def flag_list(train: pd.DataFrame, marks: Mapping[int, dict], label_names: Sequence[str]) -> pd.DataFrame:
    """Every marked review: ``row_id``, ``text``, ``label``, ``label_name``, ``mark``, ``new_label``, ``new_label_name``."""
    by_id = train.set_index("row_id")
    rows = []
    for row_id, mark in sorted(marks.items()):
        if row_id not in by_id.index:
            continue
        label = int(by_id.at[row_id, "label"])
        new = mark.get("new_label")
        rows.append(
            {
                "row_id": row_id,
                "text": by_id.at[row_id, "text"],
                "label": label,
                "label_name": label_names[label] if 0 <= label < len(label_names) else str(label),
                "mark": mark["state"],
                "new_label": "" if new is None else int(new),
                "new_label_name": "" if new is None else label_names[int(new)],
            }
        )
    return pd.DataFrame(rows, columns=["row_id", "text", "label", "label_name", "mark", "new_label", "new_label_name"])


# ------------------------------------------------------------------------------------------- uploads
MAX_UPLOAD_BYTES = 50 * 1024 * 1024


def save_upload(data: bytes, filename: str) -> Path:
    """Keep an uploaded table under the cache by content hash (so a link and a restart find it again).

    Validates it first: size, a known extension, readable as a table with at least one row.
    """
    from influence_core.data import read_table

    if len(data) > MAX_UPLOAD_BYTES:
        raise DataError(f"{filename} is {format_bytes(len(data))}; the limit is {format_bytes(MAX_UPLOAD_BYTES)}")
    suffixes = "".join(Path(filename).suffixes[-2:]).lower()
    digest = _sha(data)[:16]
    path = cache_dir("uploads") / f"{digest}{suffixes}"
    if not path.is_file():
        tmp = path.with_name(path.name + ".part")
        tmp.write_bytes(data)
        try:
            table = read_table(str(tmp), filename=filename)
        except InfluenceError:
            tmp.unlink(missing_ok=True)
            raise
        if len(table) == 0:
            tmp.unlink(missing_ok=True)
            raise DataError(f"{filename} has no rows")
        tmp.replace(path)
    return path


def _sha(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def upload_path(token: str) -> Path | None:
    """The saved upload named by ``token`` (its file name in the cache), or None if it is gone."""
    name = Path(token).name
    path = cache_dir("uploads") / name
    return path if name and path.is_file() else None


# ------------------------------------------------------------------------------------------- fix and retrain
def study_model(spec: AnalysisSpec) -> str:
    """The model under study as :mod:`influence_core.retrain` names it: ``"demo"``, a folder or a Hub id."""
    return "demo" if spec.model.kind == "demo" else spec.model.name


def scoring_config(spec: AnalysisSpec, damping: float | None = None) -> EngineConfig:
    """The analysis's engine settings with one damping value (default: the chosen one), absolute or relative."""
    value = spec.chosen_damping if damping is None else float(damping)
    if spec.damping_mode == "relative":
        return spec.config.replace(relative_damping=value)
    return spec.config.replace(damping=value)


@dataclass
class RetrainOutcome:
    """A retrain on the cleaned reviews, and the influences of the retrained model.

    Attributes:
        result: Test accuracy and loss before and after (:class:`influence_core.retrain.RetrainResult`).
        kept: Positions (in the analysed training slice) of the training reviews that remain, [n_kept].
        influence_after: Test x kept-training influence of the retrained model at the given damping, over every
            analysed layer, [n_test, n_kept]; positive = helpful.
    """

    result: Any
    kept: np.ndarray
    influence_after: np.ndarray


def retrain_cleaned(spec: AnalysisSpec, analysis: Analysis, cleaned: pd.DataFrame, damping: float,
                    progress: Progress) -> RetrainOutcome:
    """Fine-tune the model's recipe on ``cleaned`` (from :func:`cleaned_dataset`), compare test accuracy and loss
    with the model under study, then fit and score the retrained model on the same layers at ``damping`` (the
    value the "before" influences are shown at)."""
    from influence_core.engine import InfluenceEngine
    from influence_core.models import load_classifier
    from influence_core.retrain import retrain

    if cleaned.empty:
        raise DataError("every training review is marked mislabeled: nothing is left to train on")
    test = analysis.test[["text", "label"]]
    result = retrain(study_model(spec), cleaned[["text", "label"]], test, label_names=analysis.label_names,
                     progress=progress.span(0.0, 0.7), cancel=_cancel_check(progress))
    loaded = load_classifier(ModelSource("local", str(result.model_dir)))
    engine = InfluenceEngine(loaded.model, loaded.tokenizer, scoring_config(spec, damping))
    texts, labels = cleaned["text"].tolist(), cleaned["label"].to_numpy()
    engine.fit(texts, labels, progress=progress.span(0.7, 0.85))
    table = engine.score(test["text"].tolist(), test["label"].to_numpy(), texts, labels, self_influence=False,
                         progress=progress.span(0.85, 1.0))
    position = {int(r): i for i, r in enumerate(analysis.train["row_id"])}
    kept = np.array([position[int(r)] for r in cleaned["row_id"]], dtype=int)
    return RetrainOutcome(result=result, kept=kept, influence_after=table.total(0))


def counterfactual(spec: AnalysisSpec, analysis: Analysis, test_index: int, influence: np.ndarray, k: int,
                   draws: int, progress: Progress):
    """Retrain without the ``k`` training reviews most harmful to test review ``test_index`` and without ``k``
    random ones (``draws`` times); see :func:`influence_core.retrain.counterfactual_check`."""
    from influence_core.retrain import counterfactual_check

    train = analysis.train[["text", "label", "row_id"]]
    return counterfactual_check(
        study_model(spec), train, analysis.test["text"].iloc[test_index], int(analysis.test["label"].iloc[test_index]),
        influence, k=k, n_random=draws, label_names=analysis.label_names, progress=progress,
        cancel=_cancel_check(progress),
    )


def _cancel_check(progress: Progress) -> Callable[[], bool]:
    """``cancel()`` for :mod:`influence_core.retrain`: True once the job behind ``progress`` was cancelled."""
    from influence_core.jobs import JobCancelled

    check = getattr(progress, "check", None)

    def cancelled() -> bool:
        try:
            if check is not None:
                check()
        except JobCancelled:
            return True
        return False

    return cancelled
