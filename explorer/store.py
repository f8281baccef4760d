"""Loaded models and engines shared by every session of the server process.

One model per weights, one engine per fitted factors: damping is a query-side parameter (every scoring call
passes its own), so changing it in the View neither reloads the factors nor hashes the model again. Engines
on one model take turns through the model's lock (:func:`influence_core.engine.model_lock`): hooks,
``requires_grad`` flags and dtype changes belong to the ``nn.Module``, so two tabs or a background job never
see each other's.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable

from explorer.spec import AnalysisSpec, Progress, factors_path, index_dir, index_ready, model_identity
from influence_core.cache import stable_hash
from influence_core.demo import load_model
from influence_core.engine.index import GradientIndex, IndexConfig
from influence_core.engine.influence import InfluenceEngine
from influence_core.errors import FactorsError
from influence_core.sources.models import LoadedModel, ModelSource

#: Engines kept per process: each holds one set of factors in memory.
MAX_ENGINES = 4
#: The app's training-gradient index when every whole training gradient fits the library's memory budget: exact.
INDEX_CONFIG = IndexConfig()
#: Otherwise the eigen index in int8, 108,036 entries (bytes) per review: twice the entries of the library's
#: float32 default in half its bytes. On the demo its 10 candidates per side gave the engine's own top 5 cards for
#: 95% of (review, side) pairs, against 90% for the float32 default with 20, and answered faster
#: (``benchmarks/demo_latency.py``).
PROJECTED_INDEX_CONFIG = IndexConfig(exact=False, dtype="int8", entries=108_036)
#: Training reviews the index proposes per direction for the engine to re-score exactly (what a card shows).
RERANK = 10
#: Cards per direction an answer from the index shows by default.
CARDS = 5


def index_config(engine: InfluenceEngine, n_train: int) -> IndexConfig:
    """The index the app builds for ``n_train`` training reviews: exact float32 rows where they fit, else int8."""
    exact = GradientIndex.plan(engine, n_train, INDEX_CONFIG)["kind"] == "exact"
    return INDEX_CONFIG if exact else PROJECTED_INDEX_CONFIG


class ModelStore:
    """Loaded models and engines shared by every session of the process (thread-safe, small LRU).

    The app keeps one store in ``st.cache_resource``; background jobs receive it as an argument, so a model
    loaded by a job is the one the pages use, and a second browser tab reuses it.
    """

    def __init__(self, max_models: int = 2, max_engines: int = MAX_ENGINES) -> None:
        self._models: OrderedDict[str, LoadedModel] = OrderedDict()
        self._engines: OrderedDict[tuple, InfluenceEngine] = OrderedDict()
        self._indexes: OrderedDict[tuple, GradientIndex] = OrderedDict()
        self._lock = threading.RLock()
        self._loading: dict[object, threading.Lock] = {}
        self.max_models = max_models
        self.max_engines = max_engines

    def model(self, source: ModelSource, *, progress: Progress | None = None,
              cancel: Callable[[], bool] | None = None) -> LoadedModel:
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
            loaded = load_model(source, progress=progress, cancel=cancel)
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

    def engine(self, spec: AnalysisSpec) -> InfluenceEngine:
        """The InfluenceEngine for ``spec``'s model and factors (loaded from disk once).

        Keyed by the factors, not the damping: pass ``dampings=[...]`` to ``score`` and ``damping=`` to
        ``token_influence``. Raises FactorsError when the factors were not fitted yet (run the analysis first).
        """
        model_key = stable_hash(model_identity(spec.model))
        config = spec.config  # its damping is only the default: every call passes its own
        key = (model_key, spec.factors_key(), config.method, config.relative_damping is not None)
        with self._lock:
            if key in self._engines:
                self._engines.move_to_end(key)
                return self._engines[key]
            loading = self._loading.setdefault(key, threading.Lock())
        with loading:
            with self._lock:
                if key in self._engines:
                    return self._engines[key]
            loaded = self.model(spec.model)
            engine = InfluenceEngine(loaded.model, loaded.tokenizer, config)
            if config.method != "identity":
                path = factors_path(spec)
                if not path.is_file():
                    raise FactorsError("the factors for this analysis are not fitted yet: press 'Fit and score' first")
                engine.load_factors(path)
            with self._lock:
                self._engines[key] = engine
                while len(self._engines) > self.max_engines:
                    self._engines.popitem(last=False)
            return engine

    def index(self, spec: AnalysisSpec, train_texts, train_labels) -> GradientIndex | None:
        """The analysis's training-gradient index (memory-mapped once per process), or None if it was not built.

        Refused (FactorsError / DataError) when it does not belong to this model, factors or training slice.
        """
        if not index_ready(spec):
            return None
        engine = self.engine(spec)
        key = ("index", spec.factors_key())
        with self._lock:
            if key in self._indexes:
                return self._indexes[key]
        index = GradientIndex.load(index_dir(spec), engine, list(train_texts), train_labels)
        with self._lock:
            self._indexes[key] = index
            while len(self._indexes) > self.max_engines:
                self._indexes.popitem(last=False)
        return index

    def engines_loaded(self) -> int:
        """How many engines (sets of factors) are in memory."""
        with self._lock:
            return len(self._engines)
