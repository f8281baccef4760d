"""influence_core: EK-FAC influence functions for Hugging Face text classifiers.

Sign convention everywhere: a **positive** influence of training example ``m`` on test example ``q``
means ``m`` is helpful (up-weighting it lowers the loss on ``q``); negative means harmful.

    from influence_core import EngineConfig, InfluenceEngine
    engine = InfluenceEngine(model, tokenizer, EngineConfig(layers="ffn,head"))
    engine.fit(train_texts)
    scores = engine.influences(test_texts, test_labels, train_texts, train_labels)  # [n_test, n_train]

The architecture, in layers; each imports only from the layers above it in this list:

1. ``errors``, ``cache``, ``version``: the exception hierarchy; cache folders and stable hashes; the version.
2. ``engine``: the computation (config, batches, layers, tracking, factors, scores, the engine).
3. ``sources``: where examples and models come from (tables, Hub datasets, slices, the demo corpus, models).
4. ``training``: fine-tuning and retraining classifiers.
5. ``mislabel``: suspicion rankings of training labels.
6. ``demo``: the built-in demo model (trained on first use); composes sources and training.
7. ``cli``: ``python -m influence_core``, one module per command. Nothing in the library imports it.
"""

from influence_core.demo import load_model
from influence_core.engine import (
    Encoded,
    EngineConfig,
    Factors,
    InfluenceEngine,
    LayerFactors,
    ScoreTable,
    TokenInfluence,
    encode,
    layer_groups,
    model_fingerprint,
    select_layers,
)
from influence_core.errors import ConfigError, DataError, FactorsError, InfluenceError, ModelError
from influence_core.sources import DataSource, LoadedModel, ModelSource, SliceSpec, load_classifier
from influence_core.version import __version__

__all__ = [
    "ConfigError", "DataError", "DataSource", "Encoded", "EngineConfig", "Factors", "FactorsError", "InfluenceEngine",
    "InfluenceError", "LayerFactors", "LoadedModel", "ModelError", "ModelSource", "ScoreTable", "SliceSpec",
    "TokenInfluence", "encode", "layer_groups", "load_classifier", "load_model", "model_fingerprint",
    "select_layers", "__version__",
]
