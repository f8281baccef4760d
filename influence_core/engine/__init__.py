"""The EK-FAC engine: pure computation on a model and tokenized examples (no files of data, no training).

Modules, each one stage of the computation, every import pointing to an earlier line:

- ``config``: :class:`EngineConfig`, what to compute (layers, method, Fisher, damping, ...).
- ``batches``: tokenized examples (:class:`Encoded`) and length-sorted batches.
- ``layers``: which ``nn.Linear`` modules are analysed (groups ``ffn``, ``attention``, ``head``, ``all``).
- ``tracking``: one forward and the backward passes per gradient term, capturing inputs and output gradients.
- ``factors``: covariance factors, their eigendecompositions and corrected eigenvalues (:class:`Factors`).
- ``scores``: :class:`ScoreTable`, every score of one scoring pass, per damping value and layer.
- ``distributed``: :class:`Distributed`, the same work sharded across processes (torchrun, a process group).
- ``influence``: :class:`InfluenceEngine`, which fits factors and scores examples.
- ``index``: :class:`GradientIndex`, every training gradient stored once (compressed) for instant questions.
"""

from influence_core.engine.batches import Encoded, encode
from influence_core.engine.config import EngineConfig
from influence_core.engine.factors import Factors, LayerFactors, model_fingerprint
from influence_core.engine.index import GradientIndex, IndexConfig, fit_and_index
from influence_core.engine.influence import InfluenceEngine, ProgressCounter, TokenInfluence, model_lock
from influence_core.engine.layers import layer_groups, select_layers
from influence_core.engine.scores import ScoreTable

__all__ = [
    "Encoded", "EngineConfig", "Factors", "GradientIndex", "IndexConfig", "InfluenceEngine", "LayerFactors",
    "ProgressCounter", "ScoreTable", "TokenInfluence", "encode", "fit_and_index", "layer_groups", "model_fingerprint",
    "model_lock", "select_layers",
]
