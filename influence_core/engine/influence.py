"""InfluenceEngine: fit EK-FAC factors once, then score test examples against training examples.

    influence(q, m) = sum_l sum_ij (U_G^T DW_q U_A)_ij (U_G^T DW_m U_A)_ij / (L_ij + damping)

for a test example ``q`` and a training example ``m``, both with their given labels. **Positive means
helpful**: up-weighting ``m`` lowers the loss on ``q``. Negative means harmful.

Training examples are streamed in length-sorted batches and never held as per-example gradients all at
once. The test side is rotated into the eigenbasis once and reused for every training batch and every
damping value. When the test gradients of every layer would not fit in ``query_memory_bytes``, the layers are
split into groups that do (one pass over the training set per group, each layer's training gradients rotated
once); only when a single layer's test gradients do not fit is the test set itself processed in chunks.
"""

from __future__ import annotations

import contextlib
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from influence_core.engine.batches import Batch, Encoded, batches, encode, num_batches
from influence_core.engine.config import EngineConfig, check_damping
from influence_core.engine.distributed import Distributed
from influence_core.engine.factors import Factors, LayerFactors, model_fingerprint, rotate
from influence_core.engine.layers import select_layers
from influence_core.engine.scores import ScoreTable
from influence_core.engine.tracking import (
    LayerCapture,
    LayerTracker,
    TermFn,
    analysis_mode,
    label_terms,
    model_logits,
    sampled_terms,
    true_fisher_terms,
)
from influence_core.errors import ConfigError, DataError, FactorsError

Progress = Callable[[int, int, str], None]
"""``progress(done, total, stage)``; it may raise (e.g. to cancel a background job)."""

Texts = Sequence[str] | Encoded
BatchHook = Callable[[Batch, torch.Tensor, dict], None]
"""``on_batch(batch, logits [B, C], captures)`` of a fitting pass."""


TOKEN_ROUTE_QUERIES = 4  # up to this many preconditioned queries meet the training tokens directly


#: Columns per step of :func:`_damped_scores`: its [K * batch, chunk] temporary then stays in the CPU's cache.
DAMPED_CHUNK = 8192


def damped_inverse(eigenvalues: torch.Tensor, dampings: torch.Tensor, layer: str) -> torch.Tensor:
    """``1 / (L + damping_k)`` [K, n] for eigenvalues [n] and one layer's absolute dampings [K], in float64."""
    denominator = eigenvalues.to(torch.float64).unsqueeze(0) + dampings.unsqueeze(1)
    if (denominator <= 0).any():
        raise ConfigError(f"damping 0 leaves zero eigenvalues in layer {layer}; use a positive damping")
    return 1.0 / denominator


def _damped_scores(query: torch.Tensor, rotated: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``out[k, q, b] = sum_e query[q, e] * weight[k, e] * rotated[b, e]``, shape [K, Q, B].

    The K damping weightings of the batch's rotated gradients are formed a slice of columns at a time: the whole
    [K * B, out * in] product is hundreds of MB per layer, and writing and reading it back cost twice the matrix
    product on 2 cores (a development micro-benchmark: 0.12 s against 0.055 s per FFN layer and batch of 16, 5
    dampings, 40 queries).
    """
    k, b = weight.shape[0], rotated.shape[0]
    out = torch.zeros(query.shape[0], k * b, dtype=query.dtype, device=query.device)
    for start in range(0, rotated.shape[1], DAMPED_CHUNK):
        columns = slice(start, start + DAMPED_CHUNK)
        weighted = (rotated[None, :, columns] * weight[:, None, columns]).reshape(k * b, -1)
        out.addmm_(query[:, columns], weighted.T)
    return out.reshape(-1, k, b).permute(1, 0, 2)


def _original_scores(capture: LayerCapture, queries: torch.Tensor) -> torch.Tensor:
    """``<Q_q, DW_b>`` for preconditioned queries [Q, out*in] in the parameter basis: [Q, B].

    For a few queries ``sum_t (g_t^T Q) a_t`` is one large product over all tokens of the batch, much faster than
    forming every ``DW_b = sum_t g_t a_t^T`` (a product over the short token axis) and costs the same.
    """
    a, g = capture.a, capture.g[0]  # [B, T, in(+1)], [B, T, out]
    batch, tokens, out = g.shape
    if queries.shape[0] > TOKEN_ROUTE_QUERIES:
        gradient = torch.matmul(g.transpose(-1, -2), a).reshape(batch, -1)
        return queries @ gradient.T
    flat_a, flat_g = a.reshape(batch * tokens, -1), g.reshape(batch * tokens, out)
    scores = [((flat_g @ q.reshape(out, -1)) * flat_a).sum(-1).reshape(batch, tokens).sum(-1) for q in queries]
    return torch.stack(scores)


def _given_labels(logits: torch.Tensor, batch: Batch) -> torch.Tensor:
    return label_terms(batch.labels)(logits, batch)


@dataclass
class TokenInfluence:
    """Per-token contributions of a training example to its influence on one test example.

    Attributes:
        tokens: The training example's tokens (special tokens included), length T.
        scores: Contribution of each token, shape [T]; ``scores.sum() == total``. Layers whose input is
            one vector per example (pooler, classifier head) are credited to the first token ([CLS]).
        total: The pairwise influence (positive = helpful).
        pooled: The part of ``scores[0]`` that comes from such per-example layers.
    """

    tokens: list[str]
    scores: np.ndarray
    total: float
    pooled: float


class InfluenceEngine:
    """EK-FAC influence for a classifier and its tokenizer. The model is left as it was found.

    Args:
        model: A classifier returning logits [batch, classes] (e.g. ``AutoModelForSequenceClassification``).
        tokenizer: Its tokenizer.
        config: What to compute (layers, method, Fisher, damping, ...).
        query_memory_bytes: Memory for rotated test gradients; larger test sets are scored in chunks.
    """

    def __init__(self, model: nn.Module, tokenizer, config: EngineConfig | None = None, *,
                 query_memory_bytes: int = 2 * 1024**3):
        self.model = model
        self.tokenizer = tokenizer
        self.config = config or EngineConfig()
        self.layers = select_layers(model, self.config.layers)
        self.tracker = LayerTracker(model, self.layers)
        self.factors: Factors | None = None
        self.query_memory_bytes = query_memory_bytes
        self._fingerprint: str | None = None
        self.lock = model_lock(model)
        self._depth = 0

    # ----------------------------------------------------------------- inputs
    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            with self.lock:  # not while another engine has the module in its own dtype or device
                self._fingerprint = model_fingerprint(self.model)
        return self._fingerprint

    @property
    def num_classes(self) -> int:
        config = getattr(self.model, "config", None)
        return int(getattr(config, "num_labels", 0) or 0)

    def encode(self, texts: Texts, labels: Sequence[int] | np.ndarray | None = None) -> Encoded:
        """Tokenize ``texts`` (or pass an Encoded through, replacing its labels if given)."""
        if isinstance(texts, Encoded):
            encoded = texts if labels is None else texts.with_labels(labels)
        else:
            encoded = encode(self.tokenizer, texts, labels, self.config.max_length)
        if labels is not None and self.num_classes:
            bad = (encoded.labels < 0) | (encoded.labels >= self.num_classes)
            if bad.any():
                raise DataError(
                    f"label {int(encoded.labels[bad][0])} is outside this model's classes 0..{self.num_classes - 1}"
                )
        return encoded

    @contextlib.contextmanager
    def session(self, *, hooks: bool = True) -> Iterator[None]:
        """Analysis mode (eval, frozen parameters, the engine's dtype and device), with the layer hooks on.

        Holds the model's lock for the whole session, so engines sharing one ``nn.Module`` (another tab, a
        background job) take turns instead of mixing their hooks, flags and dtypes. Re-entrant.
        """
        with self.lock:
            if self._depth:
                self._depth += 1
                try:
                    yield
                finally:
                    self._depth -= 1
                return
            self._depth = 1
            try:
                with analysis_mode(self.model, self.config.torch_dtype, self.config.device):
                    if hooks:
                        with self.tracker.hooks():
                            yield
                    else:
                        yield
            finally:
                self._depth = 0

    def _batches(self, encoded: Encoded):
        return batches(encoded, self.config.batch_size, self.config.device)

    def _fisher_terms(self) -> TermFn:
        if self.config.fisher == "true":
            return true_fisher_terms
        if self.config.fisher == "sampled":
            return sampled_terms(torch.Generator().manual_seed(self.config.seed))
        return _given_labels

    # ----------------------------------------------------------------- fitting
    def fit(self, texts: Texts, labels: Sequence[int] | np.ndarray | None = None, *,
            progress: Progress | None = None, on_batch: BatchHook | None = None,
            distributed: Distributed | None = None) -> Factors:
        """Fit the factors on ``texts``. ``labels`` are needed only for ``fisher="empirical"``.
        ``on_batch``: see :meth:`eigenvalue_statistics` (e.g. a gradient index riding on that pass).
        ``distributed``: fit this rank's shard and combine the ranks' sums (see ``engine.distributed``).

        Two passes over the data: covariances ``A`` and ``G`` (then their eigendecompositions), and,
        for ``ekfac``, the corrected eigenvalues ``L``. Returns the factors and keeps them on the engine.
        """
        if self.config.fisher == "empirical" and labels is None and not isinstance(texts, Encoded):
            raise DataError("the empirical Fisher needs the labels of the fitting examples")
        encoded = self.encode(texts, labels)
        if self.config.fisher == "empirical" and (encoded.labels < 0).any():
            raise DataError("the empirical Fisher needs the labels of the fitting examples")
        if distributed is not None:
            return distributed.fit(self, encoded, progress=progress, on_batch=on_batch)
        statistics = self.covariance_statistics(encoded, progress=progress)
        factors = Factors(statistics, self.config.method, self.config.fisher, self.fingerprint, len(encoded),
                          meta={"max_length": self.config.max_length})
        for name, layer in factors.layers.items():
            layer.eigendecompose(name)
        if self.config.method == "ekfac":
            self.eigenvalue_statistics(encoded, factors, progress=progress, on_batch=on_batch)
        self.factors = factors
        return factors

    def covariance_statistics(self, encoded: Encoded, *, progress: Progress | None = None) -> dict[str, LayerFactors]:
        """Sums of ``a a^T`` and ``g g^T`` with counts, per layer (add shards with ``LayerFactors.merge``)."""
        terms = self._fisher_terms()
        total = num_batches(len(encoded), self.config.batch_size)
        sums: dict[str, LayerFactors] = {}
        with self.session():
            for done, batch in enumerate(self._batches(encoded), 1):
                _, captures = self.tracker.run(batch, terms)
                for name, capture in captures.items():
                    if name not in sums:
                        width, out = capture.a.shape[-1], capture.g.shape[-1]
                        sums[name] = LayerFactors(torch.zeros(width, width, dtype=torch.float64),
                                                  torch.zeros(out, out, dtype=torch.float64))
                    sums[name].add_covariance(capture)
                _report(progress, done, total, "covariances")
        return {name: sums[name] for name in self.layers}

    def eigenvalue_statistics(self, encoded: Encoded, factors: Factors, *, progress: Progress | None = None,
                              on_batch: BatchHook | None = None) -> None:
        """Accumulate the EK-FAC corrected eigenvalue sums into ``factors`` (in place).

        ``on_batch(batch, logits, captures)`` is called with every batch's Fisher-term captures."""
        terms = self._fisher_terms()
        dtype = self.config.torch_dtype
        total = num_batches(len(encoded), self.config.batch_size)
        for layer in factors.layers.values():
            layer.l_sum = torch.zeros(layer.shape, dtype=torch.float64)
            layer.l_count = 0
        with self.session():
            for done, batch in enumerate(self._batches(encoded), 1):
                logits, captures = self.tracker.run(batch, terms)
                if on_batch is not None:
                    on_batch(batch, logits, captures)
                for name, capture in captures.items():
                    layer = factors.layers[name]
                    rotated = rotate(capture, layer, dtype)
                    layer.l_sum += rotated.square().sum(dim=(0, 1)).to(torch.float64).cpu()
                    layer.l_count += len(batch)
                _report(progress, done, total, "eigenvalue correction")

    def save_factors(self, path) -> None:
        self._require_factors().save(path)

    def load_factors(self, path) -> Factors:
        """Load factors from disk, refusing ones fitted for another model, layer set or method."""
        factors = Factors.load(path)
        factors.check_compatible(self.fingerprint, self.layers, self.config.method)
        if factors.layer_names != self.layers:
            factors.layers = {name: factors.layers[name] for name in self.layers}
        self.factors = factors
        return factors

    def _require_factors(self) -> Factors:
        if self.factors is None:
            raise FactorsError("no factors yet: call fit() (or load_factors()) first")
        return self.factors

    # ----------------------------------------------------------------- scoring
    def preconditioner(self, dampings: np.ndarray) -> tuple[dict[str, LayerFactors | None], dict[str, torch.Tensor]]:
        """``(rotations, weights)`` per layer: the factors whose eigenvectors rotate gradients into the eigenbasis
        (None for ``identity``), and ``1 / (L + damping_k)`` flattened, shape [K, out * in] (None for ``identity``).

        ``dampings`` [K] come from :meth:`damping_values` (relative values are scaled by each layer's mean
        eigenvalue here)."""
        dtype, device = self.config.torch_dtype, self.config.device
        if self.config.method == "identity":
            return {name: None for name in self.layers}, {name: None for name in self.layers}
        factors = self._require_factors()
        rotations, weights = {}, {}
        for name, values in self.layer_dampings(dampings).items():
            eigenvalues = factors.eigenvalues(name, self.config.method).reshape(-1)
            rotations[name] = factors.layers[name]
            weights[name] = damped_inverse(eigenvalues, values, name).to(device=device, dtype=dtype)
        return rotations, weights

    def layer_dampings(self, dampings: np.ndarray) -> dict[str, torch.Tensor]:
        """The absolute damping of every layer for each of ``dampings`` [K] (from :meth:`damping_values`), float64
        [K] per layer: the values themselves, or relative values times the layer's mean eigenvalue."""
        factors = self._require_factors()
        factors.check_compatible(self.fingerprint, self.layers, self.config.method)
        values = torch.as_tensor(dampings, dtype=torch.float64)
        if self.config.relative_damping is None:
            return {name: values for name in self.layers}
        return {name: values * factors.eigenvalues(name, self.config.method).mean() for name in self.layers}

    def damping_values(self, dampings: Sequence[float] | None) -> np.ndarray:
        """The damping values to score, [K]: ``dampings`` checked, or the config's single value when None."""
        if dampings is None:
            value = self.config.relative_damping if self.config.relative_damping is not None else self.config.damping
            dampings = [value]
        values = np.array([check_damping(d) for d in dampings], dtype=np.float64)
        if values.size == 0:
            raise ConfigError("give at least one damping value")
        return values

    def score(self, test_texts: Texts, test_labels, train_texts: Texts, train_labels, *,
              dampings: Sequence[float] | None = None, self_influence: bool = True,
              progress: Progress | None = None, distributed: Distributed | None = None) -> ScoreTable:
        """Pairwise influences (and self-influences) for every damping value, from one gradient pass.

        Args:
            test_texts, test_labels: The examples whose loss is explained (n_test).
            train_texts, train_labels: The training examples to score (n_train); any shard of the
                training set can be scored separately and the columns concatenated.
            dampings: Damping values to score (absolute, or relative factors when the config uses relative
                damping); default: the config's value.
            self_influence: Also compute ``I(m, m)`` for the training examples.
            distributed: Score this rank's shard of the training examples and gather every rank's columns.

        Returns:
            A ScoreTable with ``pairwise`` [K, L, n_test, n_train] (positive = helpful).
        """
        values = self.damping_values(dampings)
        test = self.encode(test_texts, test_labels)
        train = self.encode(train_texts, train_labels)
        for which, enc in (("test", test), ("training", train)):
            if (enc.labels < 0).any():
                raise DataError(f"every {which} example needs a label to be scored")
        if distributed is not None:
            return distributed.score(self, test, train, dampings=dampings, self_influence=self_influence,
                                     progress=progress)
        rotations, weights = self.preconditioner(values)
        plan = self._plan(len(test))
        shape = (len(values), len(self.layers))
        pairwise = np.zeros((*shape, len(test), len(train)))
        test_self = np.zeros((*shape, len(test)))
        train_self = np.zeros((*shape, len(train))) if self_influence else None
        test_probs = None
        train_probs = None
        batch_size = self.config.batch_size
        steps = sum(num_batches(len(train), batch_size) + num_batches(len(rows), batch_size) for rows, _ in plan)
        tracker = ProgressCounter(progress, steps)
        self_done: set[str] = set()
        with self.session():
            train_tokens = int(train.lengths.sum())
            for rows, layers in plan:
                index = [self.layers.index(name) for name in layers]
                want_self = self_influence and not self_done.issuperset(layers)
                routes = self._routes(rotations, len(rows), len(values), train_tokens, want_self)
                queries, probs, q_self = self.query_gradients(test.subset(rows), rotations, weights, tracker, routes, layers)
                if test_probs is None:
                    test_probs = np.zeros((len(test), probs.shape[1]))
                test_probs[rows] = probs
                test_self[np.ix_(range(len(values)), index, rows)] = q_self
                block, t_self, train_probs_pass = self.training_pass(train, queries, rotations, weights, want_self,
                                                                   tracker, routes, layers)
                pairwise[np.ix_(range(len(values)), index, rows, range(len(train)))] = block
                if want_self:
                    train_self[:, index] = t_self
                    self_done.update(layers)
                if train_probs is None:
                    train_probs = train_probs_pass
                del queries, block  # before the next pass allocates its own
        return ScoreTable(
            dampings=values, layers=list(self.layers), pairwise=pairwise, self_influence=train_self,
            test_self_influence=test_self, test_probs=test_probs, train_probs=train_probs,
            test_labels=test.labels.copy(), train_labels=train.labels.copy(),
            damping_mode="relative" if self.config.relative_damping is not None else "absolute",
            method=self.config.method, meta={"config": self.config.key(), "fingerprint": self.fingerprint},
        )

    def _plan(self, n_test: int) -> list[tuple[np.ndarray, list[str]]]:
        """Passes over the training set: ``(test rows, layers)`` each, so that one pass's test gradients fit in
        ``query_memory_bytes``. Every test row against all layers in one pass if they fit; else groups of layers
        with every test row (each layer's training gradients are then still rotated once); else, when one layer
        alone is too big, chunks of test rows against all layers."""
        element = torch.tensor([], dtype=self.config.torch_dtype).element_size()
        sizes = {name: self.layer_size(name) * element * max(n_test, 1) for name in self.layers}
        every_row = np.arange(n_test)
        budget = self.query_memory_bytes
        if sum(sizes.values()) <= budget or n_test == 0:
            return [(every_row, list(self.layers))]
        if max(sizes.values()) <= budget:
            groups: list[list[str]] = [[]]
            used = 0
            for name in self.layers:
                if groups[-1] and used + sizes[name] > budget:
                    groups.append([])
                    used = 0
                groups[-1].append(name)
                used += sizes[name]
            return [(every_row, group) for group in groups]
        per_row = sum(sizes.values()) // max(n_test, 1)
        chunk = max(1, budget // max(per_row, 1))
        return [(np.arange(s, min(s + chunk, n_test)), list(self.layers)) for s in range(0, n_test, chunk)]

    def layer_size(self, name: str) -> int:
        module = self.tracker.modules[name]
        return module.out_features * (module.in_features + (module.bias is not None))

    def _routes(self, rotations, n_queries: int, k: int, train_tokens: int, want_self: bool) -> dict[str, str]:
        """Per layer, where test and training gradients meet: ``rotated`` or ``original`` basis.

        ``rotated`` rotates every training token into the eigenbasis (``tokens * (out^2 + in^2)``);
        ``original`` maps each preconditioned test gradient back once (``queries * K * out * in * (out + in)``)
        and then needs only the plain training gradients. Self-influence needs rotated training gradients.
        """
        routes = {}
        for name in self.layers:
            module = self.tracker.modules[name]
            out, width = module.out_features, module.in_features + (module.bias is not None)
            rotated_cost = train_tokens * (out * out + width * width)
            original_cost = n_queries * k * out * width * (out + width)
            cheaper = rotations[name] is not None and original_cost < rotated_cost
            routes[name] = "original" if cheaper and not want_self else "rotated"
        return routes

    def query_gradients(self, test: Encoded, rotations, weights, tracker: ProgressCounter,
                        routes: dict[str, str] | None = None, layers: Sequence[str] | None = None):
        """Test gradients per layer, preconditioned and ready to meet training gradients (call inside :meth:`session`).

        Returns ``(queries, probs, q_self)``: ``queries[name]`` is [n, out*in] (rotated; already divided by
        ``L + damping`` when K == 1) or, on the ``original`` route, [K, n, out*in] preconditioned gradients
        mapped back to the parameter basis; ``probs`` [n, C]; ``q_self`` [K, L, n] test self-influences.
        """
        dtype, device = self.config.torch_dtype, self.config.device
        layers = list(self.layers if layers is None else layers)
        first = weights[self.layers[0]]
        n, k = len(test), 1 if first is None else first.shape[0]
        routes = routes or {name: "rotated" for name in self.layers}
        queries = {name: torch.empty(n, self.layer_size(name), dtype=dtype, device=device) for name in layers}
        q_self = np.zeros((k, len(layers), n))
        probs = np.zeros((n, 0))
        for batch in self._batches(test):
            logits, captures = self.tracker.run(batch, _given_labels, only=layers)
            if probs.shape[1] == 0:
                probs = np.zeros((n, logits.shape[-1]))
            probs[batch.index] = torch.softmax(logits.double(), -1).cpu().numpy()
            for i, name in enumerate(layers):
                rotated = rotate(captures[name], rotations[name], dtype)[0].reshape(len(batch), -1)
                queries[name][batch.index] = rotated
                q_self[:, i, batch.index] = self._self_scores(rotated, weights[name], k)
            tracker.step("test gradients")
        for name in layers:
            if weights[name] is None:
                continue
            if routes[name] == "original":
                factors = rotations[name]
                u_a = factors.a_eigvecs.to(device=device, dtype=dtype)
                u_g = factors.g_eigvecs.to(device=device, dtype=dtype)
                out = u_g.shape[0]
                weighted = queries[name].unsqueeze(0) * weights[name].unsqueeze(1)  # [K, n, out*in]
                mapped = u_g @ weighted.reshape(k, n, out, -1) @ u_a.T
                queries[name] = mapped.reshape(k, n, -1)
            elif k == 1:
                queries[name] *= weights[name][0]
        return queries, probs, q_self

    @staticmethod
    def _self_scores(rotated: torch.Tensor, weight: torch.Tensor | None, k: int) -> np.ndarray:
        squares = rotated.square()
        if weight is None:
            return squares.sum(-1).double().cpu().numpy()[None].repeat(k, 0)
        return (squares @ weight.T).T.double().cpu().numpy()  # [K, B]

    def training_pass(self, train: Encoded, queries, rotations, weights, want_self: bool, tracker: ProgressCounter,
                      routes: dict[str, str] | None = None, layers: Sequence[str] | None = None):
        """One pass over ``train`` meeting every query row (call inside :meth:`session`).

        ``queries[name]`` [Q, out*in] from :meth:`query_gradients` (or sums of them). Returns ``(block, self,
        probs)``: influences [K, L, Q, n_train] (positive = helpful), training self-influences [K, L, n_train]
        (None unless ``want_self``) and the training examples' class probabilities [n_train, C].
        """
        dtype = self.config.torch_dtype
        layers = list(self.layers if layers is None else layers)
        first = weights[self.layers[0]]
        k = 1 if first is None else first.shape[0]
        routes = routes or {name: "rotated" for name in self.layers}
        n_q = queries[layers[0]].shape[-2]
        block = np.zeros((k, len(layers), n_q, len(train)))
        t_self = np.zeros((k, len(layers), len(train))) if want_self else None
        probs = np.zeros((len(train), 0))
        for batch in self._batches(train):
            logits, captures = self.tracker.run(batch, _given_labels, only=layers)
            if probs.shape[1] == 0:
                probs = np.zeros((len(train), logits.shape[-1]))
            probs[batch.index] = torch.softmax(logits.double(), -1).cpu().numpy()
            b = len(batch)
            for i, name in enumerate(layers):
                weight, query = weights[name], queries[name]
                if routes[name] == "original":
                    scores = _original_scores(captures[name], query.reshape(k * n_q, -1)).reshape(k, n_q, b)
                    block[:, i][:, :, batch.index] = scores.double().cpu().numpy()
                    continue
                rotated = rotate(captures[name], rotations[name], dtype)[0].reshape(b, -1)
                if want_self:
                    t_self[:, i, batch.index] = self._self_scores(rotated, weight, k)
                if k == 1 or weight is None:
                    scores = (query @ rotated.T).double().cpu().numpy()
                    block[:, i][:, :, batch.index] = scores[None]
                else:
                    block[:, i][:, :, batch.index] = _damped_scores(query, rotated, weight).double().cpu().numpy()
            tracker.step("training gradients")
        return block, t_self, probs

    def self_influence(self, train_texts: Texts, train_labels, *, dampings: Sequence[float] | None = None,
                       progress: Progress | None = None, distributed: Distributed | None = None) -> np.ndarray:
        """``I(m, m)`` for every training example, shape [n_train] (or [K, n_train] if several dampings).

        Computed directly from each example's own rotated gradient, never through an n x n matrix.
        ``distributed``: this rank's shard, gathered in the original order.
        """
        values = self.damping_values(dampings)
        train = self.encode(train_texts, train_labels)
        if distributed is not None:
            return distributed.self_influence(self, train, dampings=dampings, progress=progress)
        rotations, weights = self.preconditioner(values)
        k = len(values)
        out = np.zeros((k, len(train)))
        tracker = ProgressCounter(progress, num_batches(len(train), self.config.batch_size))
        with self.session():
            for batch in self._batches(train):
                _, captures = self.tracker.run(batch, _given_labels)
                for name in self.layers:
                    rotated = rotate(captures[name], rotations[name], self.config.torch_dtype)[0]
                    out[:, batch.index] += self._self_scores(rotated.reshape(len(batch), -1), weights[name], k)
                tracker.step("self-influence")
        return out[0] if dampings is None or len(values) == 1 else out

    def influences(self, test_texts: Texts, test_labels, train_texts: Texts, train_labels, *,
                   progress: Progress | None = None) -> np.ndarray:
        """Pairwise influences, shape [n_test, n_train]; positive = helpful, negative = harmful."""
        table = self.score(test_texts, test_labels, train_texts, train_labels, self_influence=False, progress=progress)
        return table.total(0)

    def influences_by_layer(self, test_texts: Texts, test_labels, train_texts: Texts, train_labels, *,
                            progress: Progress | None = None) -> dict[str, np.ndarray]:
        """Per-layer influences, each [n_test, n_train]; they add up to ``influences``."""
        table = self.score(test_texts, test_labels, train_texts, train_labels, self_influence=False, progress=progress)
        return table.by_layer(0)

    def damping_sweep(self, test_texts: Texts, test_labels, train_texts: Texts, train_labels,
                      dampings: Sequence[float], *, progress: Progress | None = None) -> ScoreTable:
        """Scores for every value in ``dampings`` from one gradient pass; see ``ScoreTable.stability``."""
        return self.score(test_texts, test_labels, train_texts, train_labels, dampings=sorted(dampings),
                          progress=progress)

    def flipped_influences(self, test_texts: Texts, test_labels, train_texts: Texts, train_labels,
                           flip: np.ndarray, *, mode: str = "closed_form",
                           progress: Progress | None = None) -> np.ndarray:
        """Influences, [n_test, n_train], after flipping the labels of training examples ``flip`` (bool [n_train]).

        ``closed_form`` (binary models) rescales each flipped example's column by ``-p_y / (1 - p_y)``;
        ``recompute`` scores again with the new labels. Both give the same numbers.
        """
        flip = np.asarray(flip, dtype=bool)
        train = self.encode(train_texts, train_labels)
        if flip.shape != (len(train),):
            raise DataError(f"flip must have one entry per training example ({len(train)}), got {flip.shape}")
        if mode == "closed_form":
            table = self.score(test_texts, test_labels, train, None, self_influence=False, progress=progress)
            return table.flipped(flip).total(0)
        if mode == "recompute":
            if self.num_classes not in (0, 2):
                raise ConfigError("flipping labels needs a binary model; give new labels with score() instead")
            new_labels = np.where(flip, 1 - train.labels, train.labels)
            return self.influences(test_texts, test_labels, train, new_labels, progress=progress)
        raise ConfigError(f"unknown flip mode {mode!r}: use closed_form or recompute")

    def token_influence(self, test_text: str, test_label: int, train_text: str, train_label: int, *,
                        damping: float | None = None, layers: Sequence[str] | None = None) -> TokenInfluence:
        """Each token's share of the influence of ``train_text`` on ``test_text`` (sums to the pairwise score).

        ``damping``: absolute, or relative when the config is (default: the config's value). ``layers``: the
        layers summed (default: all), so the tokens add up to the pairwise score over those layers.
        """
        return self.token_influences(test_text, test_label, [train_text], [train_label], damping=damping,
                                     layers=layers)[0]

    def token_influences(self, test_text: str, test_label: int, train_texts: Sequence[str],
                         train_labels: Sequence[int], *, damping: float | None = None,
                         layers: Sequence[str] | None = None) -> list[TokenInfluence]:
        """:meth:`token_influence` of several training texts on one test text, in their order.

        The test text's preconditioned gradient is formed once and the training texts go through the model in
        batches, so the cards of a page cost one query and one short pass instead of one of each per card.
        """
        values = self.damping_values(None if damping is None else [damping])
        rotations, weights = self.preconditioner(values)
        test = self.encode([test_text], [test_label])
        train = self.encode(list(train_texts), list(train_labels))
        chosen = list(self.layers) if layers is None else [n for n in self.layers if n in set(layers)]
        dtype = self.config.torch_dtype
        lengths = train.lengths
        scores = [torch.zeros(int(n), dtype=torch.float64) for n in lengths]
        pooled = np.zeros(len(train))
        with self.session():
            queries, _, _ = self.query_gradients(test, rotations, weights, ProgressCounter(None, 1))
            for batch in self._batches(train):
                _, captures = self.tracker.run(batch, _given_labels)
                for name in chosen:
                    capture, factors = captures[name], rotations[name]
                    query = queries[name][0].reshape(capture.g.shape[-1], -1)
                    a, g = capture.a, capture.g[0]  # [B, T, in], [B, T, out]; pads are zero
                    if factors is not None:
                        a = a @ factors.a_eigvecs.to(a.device, dtype)
                        g = g @ factors.g_eigvecs.to(g.device, dtype)
                    per_token = ((g @ query) * a).sum(-1).double().cpu()  # [B, T]
                    for row, position in enumerate(batch.index):
                        if per_token.shape[1] == 1 and lengths[position] != 1:  # a layer seeing the pooled vector
                            scores[position][0] += per_token[row, 0]
                            pooled[position] += float(per_token[row, 0])
                        else:
                            scores[position] += per_token[row, : lengths[position]]
        out = []
        for position, ids in enumerate(train.input_ids):
            values_ = scores[position]
            out.append(TokenInfluence(tokens=self.tokenizer.convert_ids_to_tokens(list(ids)), scores=values_.numpy(),
                                      total=float(values_.sum()), pooled=float(pooled[position])))
        return out

    # ----------------------------------------------------------------- predictions
    def predict_proba(self, texts: Texts) -> np.ndarray:
        """Class probabilities, shape [n, C]."""
        encoded = self.encode(texts)
        out = None
        with self.session(hooks=False), torch.inference_mode():
            for batch in self._batches(encoded):
                logits = model_logits(self.model, batch)
                if out is None:
                    out = np.zeros((len(encoded), logits.shape[-1]))
                out[batch.index] = torch.softmax(logits.double(), -1).cpu().numpy()
        return out

    def losses(self, texts: Texts, labels) -> np.ndarray:
        """Cross-entropy of the given labels, shape [n]."""
        encoded = self.encode(texts, labels)
        probs = self.predict_proba(encoded)
        return -np.log(np.clip(probs[np.arange(len(encoded)), encoded.labels], 1e-300, None))


class ProgressCounter:
    """Counts finished batches across the passes of one call and reports ``progress(done, total, stage)``."""

    def __init__(self, progress: Progress | None, total: int):
        self.progress, self.total, self.done, self.start = progress, total, 0, time.perf_counter()

    def step(self, stage: str) -> None:
        self.done += 1
        _report(self.progress, self.done, self.total, stage)


def _report(progress: Progress | None, done: int, total: int, stage: str) -> None:
    if progress is not None:
        progress(done, total, stage)


_MODEL_LOCKS: weakref.WeakKeyDictionary[nn.Module, threading.RLock]
_MODEL_LOCKS = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def model_lock(model: nn.Module) -> threading.RLock:
    """The one lock of ``model``: every engine on the same module shares it (hooks, flags and dtype are per module)."""
    with _LOCKS_GUARD:
        lock = _MODEL_LOCKS.get(model)
        if lock is None:
            lock = _MODEL_LOCKS[model] = threading.RLock()
        return lock


__all__ = ["InfluenceEngine", "Progress", "ProgressCounter", "TokenInfluence", "model_lock"]
