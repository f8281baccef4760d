"""influence_core: EK-FAC influence functions for Hugging Face text classifiers.

Sign convention everywhere: a **positive** influence of training example ``m`` on test example ``q``
means ``m`` is helpful (up-weighting it lowers the loss on ``q``); negative means harmful.

    from influence_core import EngineConfig, InfluenceEngine
    engine = InfluenceEngine(model, tokenizer, EngineConfig(layers="ffn,head"))
    engine.fit(train_texts)
    scores = engine.influences(test_texts, test_labels, train_texts, train_labels)  # [n_test, n_train]
"""

__version__ = "0.1.0"

from influence_core.batches import Encoded, encode
from influence_core.config import EngineConfig
from influence_core.engine import InfluenceEngine, TokenInfluence
from influence_core.errors import ConfigError, DataError, FactorsError, InfluenceError, ModelError
from influence_core.factors import Factors, LayerFactors, model_fingerprint
from influence_core.layers import layer_groups, select_layers
from influence_core.scores import ScoreTable

__all__ = [
    "ConfigError", "DataError", "Encoded", "EngineConfig", "Factors", "FactorsError", "InfluenceEngine",
    "InfluenceError", "LayerFactors", "ModelError", "ScoreTable", "TokenInfluence", "encode", "layer_groups",
    "model_fingerprint", "select_layers", "__version__",
]
