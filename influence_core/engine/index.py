"""GradientIndex: every training example's per-layer gradient stored once, so a new question costs one query gradient.

For a tracked layer with per-example gradient ``DW_m = sum_t g_t a_t^T`` [out, in(+1)] (given label), the engine's
influence of training example ``m`` on a query is ``<Q', U_G^T DW_m U_A>`` with the rotated, preconditioned query
``Q' = (U_G^T DW_q U_A) / (L + damping)``. The index stores, per training example, a compressed form of the
rotated gradients, in one of two bases:

``eigen`` (the default): the entries ``(i, j)`` of ``U_G^T DW_m U_A`` with the largest K-FAC eigenvalue
``lambda_G,i lambda_A,j`` relative to their layer's mean, chosen across all layers together, computed from the
tokens as ``((g U_G[:, R])^T (a U_A[:, C]))[chosen]`` (``R``, ``C``: the rows and columns the chosen entries use;
``DW_m`` is never formed). A query is ``Q'`` at the same entries, so the estimate is the engine's own score with
the dropped entries left out: deterministic, and the score's variance sits mostly in the entries of the largest
eigenvalues (see :class:`_EigenSelector`). Entries are stored heaviest first, so the first ``e`` columns are the
index of ``e`` entries. A query on a large index scans a count sketch of every row (:class:`_CountSketch`,
16 kB), then the whole width of a shortlist.

``random``: the whitened Kronecker projection ``R_m = P_out D_out U_G^T DW_m U_A D_in P_in^T = sum_t (M_out g_t)
(M_in a_t)^T`` [k_out, k_in] with ``M_out = P_out D_out U_G^T`` and ``M_in = P_in D_in U_A^T``, ``D =
diag((lambda + eps mean(lambda))^(-whiten_exponent))`` from the K-FAC eigenvalues of ``G`` and ``A``, and ``P``
with iid ``N(0, 1/k)`` (or ``+-1/sqrt(k)``) entries, so ``E[P^T P] = I``. A query is projected as ``P_out
D_out^-1 Q' D_in^-1 P_in^T``, so that ``E <query block, R_m> = <Q', U_G^T DW_m U_A>``: an unbiased estimate. Each
layer's block has at most ``projection**2`` entries (``allocation``: both sides ``projection``, or split in the
ratio ``out : in``); a side no larger than needed is kept whole.

When every exact per-example gradient fits the memory budget (or ``exact=True``) the index is exact (``kind =
"exact"``), else ``kind="projected"``. The rows depend on the model, the training data, the layers and the
factors' eigenbases (the index refuses other factors), not on the damping: changing the damping re-preconditions
only the queries. :meth:`GradientIndex.query` re-scores the index's best candidates with the engine itself, so
the numbers shown are the engine's. **Positive = helpful**, as everywhere.

Measured on the fine-tuned demo MiniLM (``ffn,head``, relative damping 10; ``benchmarks/INDEX.md``): over the
whole SST-2 training set (67,349 sentences, 50 queries) the eigen index's median per-query Pearson with the engine
is 0.927 at 16,384 entries per example, 0.963 at 32,768 and 0.978 at 54,018 (the storage of ``projection=64``,
the default); the random projection gave 0.677 at that storage on 1,000 sentences. ``dtype="int8"`` agrees with
float16 to the third decimal at every width in half the bytes: 0.992 at 131,072 entries (128 kB per example).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from influence_core.cache import stable_hash
from influence_core.engine.batches import Batch, Encoded, batches, num_batches
from influence_core.engine.factors import Factors
from influence_core.engine.influence import InfluenceEngine, ProgressCounter, damped_inverse
from influence_core.engine.tracking import LayerCapture, label_terms
from influence_core.errors import ConfigError, DataError, FactorsError

INDEX_FORMAT = 2
ROWS_FILE = "rows.npy"
SCALES_FILE = "scales.npy"
META_FILE = "index.json"
FACTORS_FILE = "factors.safetensors"
STORAGE = {"int8": np.int8, "float16": np.float16, "float32": np.float32, "float64": np.float64}
SCALED = ("int8", "float16")  # storages whose rows carry a float32 scale each
Progress = Callable[[int, int, str], None]
CHUNK_BYTES = 256 * 1024**2  # stored rows read per product
GATHER_BYTES = 64 * 1024**2  # scattered rows copied per product, into one buffer reused for every chunk
COARSE_BYTES = 16384  # bytes per row of the coarse first pass of an eigen index (a count sketch of each row)
SHORTLIST_FACTOR = 20  # rows the coarse pass keeps, per candidate asked for
COARSE_SIGMAS = 1.5  # the coarse pass ranks each row by its estimate widened by this many of its error's deviations
COARSE_FILE = "coarse-{buckets}-{seed}.npz"  # the coarse pass's sketch, kept next to the rows after its first use
FIRST_ROUND = 20  # candidates per side the adaptive re-score starts with
MARGIN_SIGMAS = 4.0  # how far (in measured standard deviations) a skipped candidate's estimate must stay off the top


@dataclass(frozen=True)
class IndexConfig:
    """How the training gradients are compressed.

    Attributes:
        projection: Each layer's block holds at most ``projection**2`` entries (``projection`` rows of ``P_out`` and
            of ``P_in`` with ``allocation="square"``); a side that is not larger is kept whole and the other side gets
            the rest of the budget.
        exact: ``True`` stores exact per-example gradients (identity projection), ``False`` always projects, ``None``
            stores exact gradients when they fit ``memory_bytes``.
        memory_bytes: Budget for the stored rows when ``exact`` is None.
        seed: Seed of the projections (the same ones serve the queries).
        distribution: ``gaussian`` (``N(0, 1/k)``) or ``rademacher`` (``+-1/sqrt(k)``).
        dtype: Storage of the rows: ``int8``, ``float16``, ``float32`` or ``float64`` (queries are computed in the
            engine's). ``float16`` rows are stored divided by their largest entry (kept as a float32 scale per row),
            so small gradients do not underflow; ``int8`` rows are rounded to 127 steps of their largest entry (the
            scale per row likewise), half the bytes of ``float16``, so twice the entries fit the same memory.
        allocation: ``square`` (``projection`` rows per side) or ``proportional`` (``projection**2`` split in the
            ratio ``out : in``).
        whiten_exponent: ``D = (lambda + eps * mean(lambda))^(-whiten_exponent)`` on each side, in the factors'
            eigenbasis (0 = plain Gaussian projection); any value keeps the estimate unbiased, 0.5 whitens.
        whiten_eps: ``eps`` above, relative to each factor's mean eigenvalue (a reference damping; the rows do not
            depend on the damping a query uses).
    """

    projection: int = 64
    exact: bool | None = None
    memory_bytes: int = 512 * 1024**2
    seed: int = 0
    distribution: str = "gaussian"
    dtype: str = "float32"
    allocation: str = "proportional"
    whiten_exponent: float = 0.5
    whiten_eps: float = 0.1
    basis: str = "eigen"
    entries: int | None = None

    def __post_init__(self) -> None:
        if self.projection < 1:
            raise ConfigError(f"the projection size must be at least 1, got {self.projection}")
        if self.allocation not in ("square", "proportional"):
            raise ConfigError(f"unknown allocation {self.allocation!r}: use square or proportional")
        if not 0 <= self.whiten_exponent <= 1:
            raise ConfigError(f"the whitening exponent must lie in [0, 1], got {self.whiten_exponent}")
        if not self.whiten_eps > 0:
            raise ConfigError(f"the whitening floor must be positive, got {self.whiten_eps}")
        if self.distribution not in ("gaussian", "rademacher"):
            raise ConfigError(f"unknown projection {self.distribution!r}: use gaussian or rademacher")
        if self.basis not in ("random", "eigen"):
            raise ConfigError(f"unknown index basis {self.basis!r}: use random or eigen")
        if self.entries is not None and self.entries < 1:
            raise ConfigError(f"the index needs at least 1 entry per example, got {self.entries}")
        if self.dtype not in STORAGE:
            raise ConfigError(f"unknown index dtype {self.dtype!r}: use int8, float16, float32 or float64")


def training_hash(texts: Sequence[str], labels: Sequence[int] | np.ndarray) -> str:
    """A stable hash of the training texts and their labels (order matters)."""
    return stable_hash({"texts": list(texts), "labels": [int(y) for y in labels]})


def factors_fingerprint(factors: Factors | None) -> str:
    """SHA-256 (20 hex digits) of what preconditions a query: model, method, Fisher, layers, eigen-decompositions."""
    if factors is None:
        return "none"
    digest = hashlib.sha256(json.dumps([factors.fingerprint, factors.method, factors.fisher, factors.layer_names,
                                        factors.num_examples]).encode())
    for layer in factors.layers.values():
        for value in (layer.a_eigvals, layer.g_eigvals, layer.l_sum):
            if value is not None:
                digest.update(value.detach().to("cpu", torch.float64).contiguous().numpy().tobytes())
        digest.update(str((layer.a_count, layer.g_count, layer.l_count)).encode())
    return digest.hexdigest()[:20]


def projection_matrix(rows: int, cols: int, seed: int, layer: str, side: str, distribution: str) -> torch.Tensor:
    """``P`` [rows, cols] (float64, CPU) with ``E[P^T P] = I``, the same in every process for these arguments."""
    generator = torch.Generator().manual_seed(int(stable_hash([seed, layer, side, rows, cols]), 16) % 2**63)
    if distribution == "rademacher":
        signs = torch.randint(0, 2, (rows, cols), generator=generator, dtype=torch.int64)
        return (2.0 * signs.to(torch.float64) - 1.0) / rows**0.5
    return torch.randn(rows, cols, generator=generator, dtype=torch.float64) / rows**0.5


def whitening(values: torch.Tensor, exponent: float, eps: float) -> torch.Tensor:
    """``(lambda + eps * mean(lambda))^(-exponent)`` (float64), normalised to root-mean-square 1."""
    values = values.to(torch.float64).clamp_min(0)
    floor = eps * float(values.mean())
    if exponent == 0 or floor <= 0:
        return torch.ones_like(values)
    scale = (values + floor).pow(-exponent)
    return scale / scale.square().mean().sqrt()


class _Projector:
    """Per layer and side the training map ``M`` and the query map ``N`` (None = identity), and the block offsets.

    A projected side has ``M = P D U^T`` (applied to the tokens' ``g`` or ``a``) and ``N = P D^-1`` (applied to the
    rotated, preconditioned query); a side kept whole has ``M = I`` and ``N = U`` (the query mapped back). ``U`` are
    the factors' eigenvectors and ``D`` the whitening (``I`` for the identity method or ``whiten_exponent=0``).
    """

    def __init__(self, meta: dict, dtype: torch.dtype, device, factors: Factors | None = None):
        self.sizes = {name: tuple(meta["projected"][name]) for name in meta["layers"]}
        self.offsets, start = {}, 0
        for name in meta["layers"]:
            k_out, k_in = self.sizes[name]
            self.offsets[name] = (start, start + k_out * k_in)
            start += k_out * k_in
        self.width = start
        whiten = meta.get("whiten") or {}
        rotate = factors is not None and meta.get("method") != "identity"
        self.train_maps, self.query_maps = {}, {}
        for name in meta["layers"]:
            out, width = meta["shapes"][name]
            layer = factors.layers[name] if rotate else None
            train, query = [], []
            for side, k, full in (("out", self.sizes[name][0], out), ("in", self.sizes[name][1], width)):
                vectors = None if layer is None else layer.g_eigvecs if side == "out" else layer.a_eigvecs
                if k >= full:
                    train.append(None)
                    query.append(None if vectors is None else vectors.to(device=device, dtype=dtype))
                    continue
                p = projection_matrix(k, full, meta["seed"], name, side, meta["distribution"])
                if vectors is None:
                    train.append(p.to(device=device, dtype=dtype))
                    query.append(train[-1])
                    continue
                values = layer.g_eigvals if side == "out" else layer.a_eigvals
                d = whitening(values, whiten.get("exponent", 0.0), whiten.get("eps", 1.0))
                train.append(((p * d) @ vectors.to(torch.float64).T).to(device=device, dtype=dtype))
                query.append((p / d).to(device=device, dtype=dtype))
            self.train_maps[name], self.query_maps[name] = tuple(train), tuple(query)

    def training_block(self, name: str, a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """``sum_t (M_out g_t)(M_in a_t)^T`` for a [B, T, in(+1)] and g [B, T, out]: [B, k_out * k_in]."""
        m_out, m_in = self.train_maps[name]
        if m_in is not None:
            a = a @ m_in.T
        if m_out is not None:
            g = g @ m_out.T
        return torch.matmul(g.transpose(-1, -2), a).reshape(a.shape[0], -1)

    def query_block(self, name: str, query: torch.Tensor, out: int) -> torch.Tensor:
        """``N_out Q' N_in^T`` for queries [..., out * in(+1)] (rotated and preconditioned, ``Q' = U_G^T Q U_A``;
        the plain gradient for the identity method): [..., k_out * k_in]."""
        n_out, n_in = self.query_maps[name]
        q = query.reshape(*query.shape[:-1], out, -1)
        if n_out is not None:
            q = n_out @ q
        if n_in is not None:
            q = q @ n_in.T
        return q.reshape(*query.shape[:-1], -1)

    def arrange(self, joined: torch.Tensor) -> torch.Tensor:
        """Layer blocks joined in layer order are stored as they are."""
        return joined

    def layer_columns(self) -> dict[str, np.ndarray]:
        """The stored columns of each layer's block, in layer order."""
        return {name: np.arange(start, end) for name, (start, end) in self.offsets.items()}


class _EigenSelector:
    """The ``eigen`` basis: the entries of every layer's rotated gradient ``U_G^T DW U_A`` whose eigenvalue is
    largest relative to the layer's mean, chosen across all layers together and stored heaviest first.

    ``L`` are K-FAC's eigenvalues ``lambda_G,i lambda_A,j``: they exist once the covariances are fitted, so the
    index can ride on EK-FAC's eigenvalue pass (the corrected eigenvalues are only known after it). When both
    gradients have the Fisher's variance ``L`` along an entry, that entry's term of the score has variance
    ``(L / (L + damping))^2``; under the engine's relative damping (a multiple of each layer's mean ``L``) that is
    increasing in ``L / mean(L)``, so the top ``width`` entries by ``L / mean(L)`` carry most of the score. The
    entries of a layer lie in the rows ``R`` and columns ``C`` they use: a training row is ``((g U_G[:, R])^T
    (a U_A[:, C]))[chosen]`` (the [R, C] block, from the tokens) and a query is its rotated, preconditioned gradient
    at the same entries. The estimate is the engine's score with the dropped entries left out (deterministic; equal
    to it when nothing is dropped). Entries are stored in decreasing weight, so the first ``e`` columns are the
    index with budget ``e``: a prefix serves as a coarse first pass.
    """

    def __init__(self, meta: dict, dtype: torch.dtype, device, factors: Factors):
        self.factors, self.device = factors, device
        self._eigenvalues: dict[tuple[str, str], torch.Tensor] = {}  # (method, layer): L at the stored entries
        weights = {}
        for name in meta["layers"]:
            values = factors.layers[name].kfac_eigenvalues().to(torch.float64)
            mean = float(values.mean())
            weights[name] = values / mean if mean > 0 else torch.ones_like(values)
        flat = torch.cat([w.reshape(-1) for w in weights.values()])
        budget = min(int(meta["width"]), flat.numel())
        keep = torch.zeros(flat.numel(), dtype=torch.bool)
        keep[torch.topk(flat, budget).indices] = True
        self.selection = {}
        position, kept_weights = 0, []
        for name in meta["layers"]:
            weight = weights[name]
            mask = keep[position:position + weight.numel()].reshape(weight.shape)
            position += weight.numel()
            rows = torch.nonzero(mask.any(dim=1)).reshape(-1)
            cols = torch.nonzero(mask.any(dim=0)).reshape(-1)
            chosen = torch.nonzero(mask[rows][:, cols].reshape(-1)).reshape(-1)
            layer = factors.layers[name]
            self.selection[name] = (
                layer.g_eigvecs[:, rows].to(device=device, dtype=dtype),
                layer.a_eigvecs[:, cols].to(device=device, dtype=dtype),
                rows.to(device), cols.to(device), chosen.to(device))
            kept_weights.append(weight[rows][:, cols].reshape(-1)[chosen])
        # heaviest first (ties by position, so every process builds the same layout)
        order = torch.sort(-torch.cat(kept_weights), stable=True).indices
        self.order = order.to(device)
        self.width = len(order)
        # sqrt of each stored entry's K-FAC eigenvalue: the typical size of that entry of a gradient. Entries are
        # stored heaviest first, so a row's later entries are far smaller than its first; int8 rows divided by this
        # keep all of them at one scale per row (plain per-row int8 rounds most later entries to 0)
        kept = torch.cat([factors.layers[name].kfac_eigenvalues().to(torch.float64)[rows][:, cols].reshape(-1)[chosen]
                          for name, (_, _, rows, cols, chosen) in self.selection.items()])[order.cpu()]
        self.column_scale = kept.clamp_min(float(kept.max()) * 1e-12 if len(kept) else 1.0).sqrt().to(device)

    def weights(self, method: str, dampings: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``1 / (L + damping)`` at the stored entries of each layer, [K, entries] (float64), for ``method``'s
        eigenvalues ``L`` and each layer's absolute dampings [K]: the preconditioning of an eigen-index query,
        without the whole layer's [K, out * in] (on the demo a sweep of 17 dampings spent 1.6 s forming it)."""
        out = {}
        for name, values in dampings.items():
            if (method, name) not in self._eigenvalues:
                eigenvalues = self.factors.eigenvalues(name, method).to(torch.float64)
                picked = self.query_block(name, eigenvalues.reshape(1, -1).to(self.device), eigenvalues.shape[0])
                self._eigenvalues[(method, name)] = picked[0]
            out[name] = damped_inverse(self._eigenvalues[(method, name)], values.to(self.device), name)
        return out

    def training_block(self, name: str, a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        u_g, u_a, _, _, chosen = self.selection[name]
        block = torch.matmul((g @ u_g).transpose(-1, -2), a @ u_a)  # [B, |R|, |C|]
        return block.reshape(a.shape[0], -1)[:, chosen]

    def query_block(self, name: str, query: torch.Tensor, out: int) -> torch.Tensor:
        _, _, rows, cols, chosen = self.selection[name]
        q = query.reshape(*query.shape[:-1], out, -1)
        q = q.index_select(-2, rows).index_select(-1, cols)
        return q.reshape(*query.shape[:-1], -1)[..., chosen]

    def arrange(self, joined: torch.Tensor) -> torch.Tensor:
        """Layer blocks joined in layer order -> the stored layout (heaviest entry first)."""
        return joined[..., self.order]

    def layer_columns(self) -> dict[str, np.ndarray]:
        """The stored columns that hold each layer's entries (ascending), in layer order."""
        order = self.order.cpu().numpy()
        columns, start = {}, 0
        for name, (_, _, _, _, chosen) in self.selection.items():
            end = start + len(chosen)
            columns[name] = np.flatnonzero((order >= start) & (order < end))
            start = end
        return columns


def _projector(meta: dict, dtype: torch.dtype, device, factors: Factors | None):
    if meta.get("basis") == "eigen" and meta["kind"] == "projected" and factors is not None \
            and meta.get("method") != "identity":
        return _EigenSelector(meta, dtype, device, factors)
    return _Projector(meta, dtype, device, factors)


class GradientIndex:
    """Training gradients of one (model, factors, training data, layers), compressed; answers questions at once.

    Build with :meth:`build` (or :func:`fit_and_index`), save with :meth:`save`, reopen with :meth:`load`.

    Attributes:
        rows: Index rows [n_rows, width] (float16/32/64; a read-only memory map after :meth:`load`), rows
            ``meta["rows"] = [start, stop]`` of the training set.
        meta: What the index was built for (JSON-able); ``kind`` is ``exact`` or ``projected``.
        engine: The engine that preconditions queries and re-scores candidates.
        scales: Per-row factors [n_rows] the stored rows are multiplied by (int8 and float16 storage), or None.
        train_texts, train_labels: The training set (needed by the exact re-scoring), or None.
    """

    def __init__(self, rows: np.ndarray, meta: dict, engine: InfluenceEngine,
                 train_texts: Sequence[str] | None = None, train_labels: Sequence[int] | np.ndarray | None = None,
                 scales: np.ndarray | None = None):
        self.rows, self.meta, self.engine, self.scales = rows, meta, engine, scales
        self.train_texts = None if train_texts is None else list(train_texts)
        self.train_labels = None if train_labels is None else np.asarray(train_labels, dtype=np.int64)
        self._projector: _Projector | _EigenSelector | None = None
        self._coarse: tuple[_CountSketch, np.ndarray, np.ndarray] | None = None
        self._norms: np.ndarray | None = None
        self.folder: Path | None = None  # where :meth:`load` found the index (the coarse sketch is kept there)

    # ----------------------------------------------------------------- building
    @staticmethod
    def plan(engine: InfluenceEngine, n_train: int, config: IndexConfig) -> dict:
        """The metadata of an index of ``n_train`` examples: exact or projected, and the block sizes per layer."""
        shapes = {}
        for name in engine.layers:
            module = engine.tracker.modules[name]
            shapes[name] = [module.out_features, module.in_features + (module.bias is not None)]
        element = np.dtype(STORAGE[config.dtype]).itemsize
        full = sum(out * width for out, width in shapes.values())
        exact = config.exact if config.exact is not None else n_train * full * element <= config.memory_bytes
        k = config.projection
        projected = {name: ([out, width] if exact else _block(out, width, k, config.allocation))
                     for name, (out, width) in shapes.items()}
        width = sum(k_out * k_in for k_out, k_in in projected.values())
        if not exact and config.basis == "eigen" and config.entries is not None:
            width = min(config.entries, full)
        kind = "exact" if exact or width == full else "projected"
        if kind == "exact":
            projected, width = shapes, full
        return {
            "format_version": INDEX_FORMAT,
            "kind": kind,
            "width": width,

            "layers": list(engine.layers),
            "shapes": shapes,
            "projected": projected,
            "projection_size": k,
            "seed": config.seed,
            "distribution": config.distribution,
            "basis": config.basis,
            "dtype": config.dtype,
            # int8 eigen rows are stored divided by sqrt(K-FAC eigenvalue) per entry (queries multiplied by it), so
            # one scale per row suits every entry; see _EigenSelector.column_scale
            "whitened_int8": kind == "projected" and config.basis == "eigen" and config.dtype == "int8"
            and engine.config.method != "identity",
            "allocation": config.allocation,
            "whiten": {"exponent": config.whiten_exponent, "eps": config.whiten_eps, "eigenvalues": "kfac"},
            "config": asdict(config),
            "n_train": n_train,
            "model_fingerprint": engine.fingerprint,
            "max_length": engine.config.max_length,
        }

    @classmethod
    def build(cls, engine: InfluenceEngine, train_texts: Sequence[str], train_labels: Sequence[int] | np.ndarray, *,
              config: IndexConfig | None = None, start: int = 0, stop: int | None = None,
              progress: Progress | None = None, info: dict | None = None) -> GradientIndex:
        """One pass over training rows ``[start, stop)`` (a shard; :meth:`concatenate` joins shards in order).

        The engine's factors (if any) are recorded so that the index refuses other ones later; ``info`` adds
        free-form metadata (model path, training file, ...).
        """
        builder = _Builder(engine, train_texts, train_labels, config or IndexConfig(), start, stop, info)
        encoded = builder.encoded
        counter = ProgressCounter(progress, num_batches(len(encoded), engine.config.batch_size))
        with engine.session():
            for batch in batches(encoded, engine.config.batch_size, engine.config.device):
                _, captures = engine.tracker.run(batch, label_terms(batch.labels))
                builder.absorb(batch.index, {name: c.g[0] for name, c in captures.items()}, captures)
                counter.step("index")
        return builder.finish()

    @classmethod
    def build_sharded(cls, engine: InfluenceEngine, train_texts: Sequence[str], train_labels, distributed, *,
                      config: IndexConfig | None = None, progress: Progress | None = None,
                      info: dict | None = None) -> GradientIndex:
        """:meth:`build` with the training rows split into contiguous blocks, one per rank of ``distributed`` (an
        :class:`influence_core.engine.distributed.Distributed`); every rank returns the whole index, rows in the
        original order, with ``meta["world_size"]`` recorded.

        The engine's factors must be the same on every rank (loaded, or fitted with ``distributed=``): the rows
        depend only on them and on the projection seed, so the result is that of one process up to round-off.
        """
        n = len(train_texts)
        if n < distributed.world_size:
            raise DataError(f"{n} examples cannot be split across {distributed.world_size} processes; use fewer")
        bounds = np.linspace(0, n, distributed.world_size + 1).round().astype(np.int64)
        start, stop = int(bounds[distributed.rank]), int(bounds[distributed.rank + 1])
        with distributed.guard("index"):
            part = cls.build(engine, train_texts, train_labels, config=config, start=start, stop=stop,
                             progress=progress, info=info)
        distributed.log(f"index rows of {stop - start} of {n} examples")
        merged = distributed.gather_rows({"rows": np.asarray(part.rows), "scales": part.scales},
                                         np.arange(start, stop), n)
        meta = {**part.meta, "rows": [0, n], "world_size": distributed.world_size}
        return cls(merged["rows"], meta, engine, train_texts, train_labels, merged["scales"])

    @classmethod
    def concatenate(cls, parts: Sequence[GradientIndex]) -> GradientIndex:
        """Join shards built with the same settings into one index (in the order of their rows)."""
        if not parts:
            raise DataError("no index shards to join")
        parts = sorted(parts, key=lambda p: p.meta["rows"][0])
        first = parts[0]
        ignore = {"rows", "created"}
        expected = 0
        for part in parts:
            if {k: v for k, v in part.meta.items() if k not in ignore} != {k: v for k, v in first.meta.items()
                                                                           if k not in ignore}:
                raise DataError("index shards were built with different settings, data or model; rebuild them")
            if part.meta["rows"][0] != expected:
                raise DataError(f"index shards leave a gap or overlap at training row {expected}")
            expected = part.meta["rows"][1]
        meta = {**first.meta, "rows": [0, expected]}
        rows = np.concatenate([np.asarray(p.rows) for p in parts], axis=0)
        scales = None if first.scales is None else np.concatenate([p.scales for p in parts])
        return cls(rows, meta, first.engine, first.train_texts, first.train_labels, scales)

    # ----------------------------------------------------------------- files
    def save(self, folder: str | Path, *, factors: bool = True) -> Path:
        """Write ``rows.npy``, ``index.json`` and (``factors=True``, when the engine has them) ``factors.safetensors``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob(COARSE_FILE.format(buckets="*", seed="*")):  # sketches of earlier rows
            stale.unlink()
        np.save(folder / ROWS_FILE, np.ascontiguousarray(self.rows))
        if self.scales is not None:
            np.save(folder / SCALES_FILE, self.scales)
        meta = dict(self.meta)
        if factors and self.engine.factors is not None:
            self.engine.factors.save(folder / FACTORS_FILE)
            meta["factors_file"] = FACTORS_FILE
        (folder / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        return folder

    @staticmethod
    def read_meta(folder: str | Path) -> dict:
        path = Path(folder) / META_FILE
        if not path.is_file():
            raise FactorsError(f"no gradient index at {folder} (missing {META_FILE}); build one with "
                               "`python -m influence_core index ...`")
        try:
            meta = json.loads(path.read_text())
        except ValueError as err:
            raise FactorsError(f"{path} is not an index written by influence_core ({err})") from None
        if meta.get("format_version") != INDEX_FORMAT:
            raise FactorsError(f"{path} has index format {meta.get('format_version')}, expected {INDEX_FORMAT}")
        return meta

    @classmethod
    def load(cls, folder: str | Path, engine: InfluenceEngine, train_texts: Sequence[str] | None = None,
             train_labels: Sequence[int] | np.ndarray | None = None) -> GradientIndex:
        """Open a saved index for ``engine`` (memory-mapped), refusing one built for another model, layer set,
        factors, tokenizer setting or training set. Loads the stored factors if the engine has none."""
        folder = Path(folder)
        meta = cls.read_meta(folder)
        if engine.factors is None and engine.config.method != "identity" and meta.get("factors_file"):
            engine.load_factors(folder / meta["factors_file"])
        try:
            rows = np.load(folder / ROWS_FILE, mmap_mode="r")
            scales = np.load(folder / SCALES_FILE) if meta["dtype"] in SCALED else None
        except (OSError, ValueError) as err:
            raise FactorsError(f"cannot read the index rows in {folder} ({err}); rebuild the index") from None
        index = cls(rows, meta, engine, train_texts, train_labels, scales)
        index.check(train_texts, train_labels)
        index.folder = folder
        return index

    def check(self, train_texts: Sequence[str] | None = None, train_labels=None) -> None:
        """Raise FactorsError / DataError unless this index fits its engine (and the given training set)."""
        meta, engine = self.meta, self.engine
        if meta["model_fingerprint"] != engine.fingerprint:
            raise FactorsError(f"this index was built for another model (fingerprint {meta['model_fingerprint']}, "
                               f"this model is {engine.fingerprint}); rebuild the index for this model")
        if meta["layers"] != list(engine.layers):
            raise FactorsError(f"this index covers layers {', '.join(meta['layers'][:4])}, the engine tracks "
                               f"{', '.join(engine.layers[:4])}; use the index's layers or rebuild it")
        if meta["max_length"] != engine.config.max_length:
            raise DataError(f"this index was built with max_length {meta['max_length']}, the engine uses "
                            f"{engine.config.max_length}; use the same tokenizer settings")
        if engine.config.method != "identity":
            found = factors_fingerprint(engine.factors)
            if engine.factors is None or found != meta.get("factors_fingerprint"):
                raise FactorsError(f"this index was built with other factors ({meta.get('factors_fingerprint')}, "
                                   f"the engine has {found}); use the index's factors or rebuild the index")
        if self.rows.shape != (meta["rows"][1] - meta["rows"][0], self.projector().width):
            raise FactorsError(f"the index rows have shape {self.rows.shape}, its metadata says otherwise; rebuild it")
        if train_texts is not None:
            if train_labels is None or training_hash(train_texts, train_labels) != meta["train_hash"]:
                raise DataError("this index was built for other training data (texts or labels differ, hash "
                                f"{meta['train_hash']}); rebuild the index for this training set")

    def projector(self) -> _Projector | _EigenSelector:
        if self._projector is None:
            self._projector = _projector(self.meta, self.engine.config.torch_dtype, self.engine.config.device,
                                         self.engine.factors)
        return self._projector

    @property
    def bytes_per_example(self) -> int:
        return int(self.rows.shape[1] * self.rows.dtype.itemsize)

    # ----------------------------------------------------------------- questions
    def estimates(self, texts: Sequence[str] | Encoded, labels, *, dampings: Sequence[float] | None = None,
                  entries: int | None = None, chunk_rows: int | None = None) -> np.ndarray:
        """Index estimates of the influence of every indexed training row on each query, [K, n_query, n_rows].

        Exact (up to storage rounding) for ``kind="exact"``; for ``projected`` an unbiased estimate (``random``
        basis) or the score restricted to the stored eigen-entries (``eigen`` basis; ``entries`` uses only the
        first, heaviest ones). Positive = helpful. ``dampings`` as in :meth:`InfluenceEngine.score` (default: the
        engine config's single value)."""
        projected = self.query_rows(texts, labels, dampings=dampings)
        k, n = projected.shape[:2]
        out = self.lookup(projected.reshape(k * n, -1), entries=entries, chunk_rows=chunk_rows)
        return out.reshape(k, n, -1)

    def layer_estimates(self, texts: Sequence[str] | Encoded, labels, *, damping: float | None = None,
                        chunk_rows: int | None = None) -> np.ndarray:
        """Index estimates per analysed layer, [n_layers, n_query, n_rows] in the engine's layer order; their sum
        over layers is :meth:`estimates` at ``damping`` (absolute, or relative when the engine's config is; default
        the config's value). Positive = helpful. One query pass; each stored chunk is read once for all layers."""
        projected = self.query_rows(texts, labels, dampings=None if damping is None else [damping])[0]
        columns = list(self.projector().layer_columns().values())
        return self._grouped_lookup(projected, columns, chunk_rows=chunk_rows)

    def query_rows(self, texts: Sequence[str] | Encoded, labels, *,
                   dampings: Sequence[float] | None = None) -> torch.Tensor:
        """The queries in the index's layout, [K, n_query, width]: rotated, preconditioned, then compressed."""
        engine = self.engine
        values = engine.damping_values(dampings)
        test = engine.encode(texts, labels)
        if (test.labels < 0).any():
            raise DataError("every query needs a label")
        projector = self.projector()
        if isinstance(projector, _EigenSelector):
            weights = projector.weights(engine.config.method, engine.layer_dampings(values))
            joined = self._eigen_query_rows(test, weights, projector, len(values))
            return joined * projector.column_scale.to(joined) if self.meta.get("whitened_int8") else joined
        rotations, weights = engine.preconditioner(values)
        routes = {name: "rotated" for name in engine.layers}
        with engine.session():
            queries, _, _ = engine.query_gradients(test, rotations, weights, ProgressCounter(None, 0), routes)
        k = len(values)
        blocks = []
        for name in engine.layers:
            query = queries[name]  # [n, out*in]: rotated (divided by L + damping when k == 1), or plain (identity)
            if weights[name] is not None and k > 1:
                query = query.unsqueeze(0) * weights[name].unsqueeze(1)
            else:
                query = query.unsqueeze(0).expand(k, -1, -1)
            blocks.append(projector.query_block(name, query, self.meta["shapes"][name][0]))
        joined = projector.arrange(torch.cat(blocks, dim=-1))  # [K, n, width]
        if self.meta.get("whitened_int8"):
            joined = joined * projector.column_scale.to(joined)
        return joined

    def _eigen_query_rows(self, test: Encoded, weights: dict[str, torch.Tensor], projector: _EigenSelector,
                          k: int) -> torch.Tensor:
        """Eigen-index queries [K, n, width] computed at the stored entries only: each layer's [R, C] block of the
        rotated gradient from the tokens, as a training row is (:meth:`_EigenSelector.training_block`), times ``1 /
        (L + damping)`` at the same entries. Equal to selecting them from the whole rotated, preconditioned
        gradient, which is never formed (on the demo that was most of a query's time). ``weights``: ``1 / (L +
        damping)`` at the stored entries, [K, entries] per layer (:meth:`_EigenSelector.weights`)."""
        engine = self.engine
        dtype = engine.config.torch_dtype
        scaled = {name: weights[name].to(dtype).unsqueeze(1) for name in engine.layers}  # [K, 1, entries]
        out = torch.empty(k, len(test), projector.width, dtype=dtype, device=engine.config.device)
        with engine.session():
            for batch in batches(test, engine.config.batch_size, engine.config.device):
                _, captures = engine.tracker.run(batch, label_terms(batch.labels))
                blocks = [projector.training_block(name, captures[name].a, captures[name].g[0]).unsqueeze(0)
                          * scaled[name] for name in engine.layers]
                out[:, torch.from_numpy(np.asarray(batch.index))] = projector.arrange(torch.cat(blocks, dim=-1))
        return out

    def lookup(self, projected: torch.Tensor, *, rows: np.ndarray | None = None, entries: int | None = None,
               chunk_rows: int | None = None, stored: np.ndarray | None = None,
               row_scales: np.ndarray | None = None) -> np.ndarray:
        """``projected`` [Q, width] against the stored rows (all, or the training rows ``rows``), [Q, n].

        The product runs in the storage precision (queries scaled to at most 1 first, so float16 cannot overflow;
        int8 rows in integers, see :func:`_product`) and ``entries`` keeps only the first columns. ``stored``
        (with its per-row ``row_scales``, or None): other rows to use instead, such as the coarse sketch."""
        return self._grouped_lookup(projected, None, rows=rows, entries=entries, chunk_rows=chunk_rows,
                                    stored=stored, row_scales=row_scales)[0]

    def _grouped_lookup(self, projected: torch.Tensor, groups: Sequence[np.ndarray] | None, *,
                        rows: np.ndarray | None = None, entries: int | None = None, chunk_rows: int | None = None,
                        stored: np.ndarray | None = None, row_scales: np.ndarray | None = None) -> np.ndarray:
        """:meth:`lookup` restricted to each group of stored columns, [G, Q, n] (one group of every column when
        ``groups`` is None); every chunk of rows is read once for all groups."""
        if stored is None:
            stored, row_scales = self.rows, self.scales
        width = stored.shape[1] if entries is None else max(1, min(int(entries), stored.shape[1]))
        projected = projected[..., :width]
        storage = _product_dtype(stored.dtype)
        peak = projected.abs().amax(dim=-1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
        scaled = (projected / peak).to(storage)
        selected = np.arange(stored.shape[0]) if rows is None else np.asarray(rows, dtype=np.int64)
        gather = _Gather(stored, width) if rows is not None else None
        row_bytes = width * stored.dtype.itemsize
        chunk_rows = chunk_rows or max(1, (CHUNK_BYTES if gather is None else GATHER_BYTES) // row_bytes)
        picks = None if groups is None else [torch.from_numpy(np.asarray(g)).to(projected.device) for g in groups]
        whole = _IntegerQuery.split(scaled) if stored.dtype == np.int8 and picks is None else scaled
        out = np.empty((1 if picks is None else len(picks), projected.shape[0], len(selected)))
        for s in range(0, len(selected), chunk_rows):
            picked = selected[s:s + chunk_rows]
            if gather is not None:
                part = gather(picked)
            else:
                part = np.asarray(stored[picked[0]:picked[-1] + 1, :width])
                if not part.flags.writeable or not part.flags.c_contiguous:  # a slice of a read-only memory map
                    part = np.array(part)
                part = torch.from_numpy(part)
            part = part.to(projected.device)
            if picks is None:
                out[0, :, s:s + chunk_rows] = _product(whole, part).cpu().numpy()
            for i, picked in enumerate(picks or ()):
                out[i, :, s:s + chunk_rows] = _product(scaled.index_select(1, picked),
                                                       part.index_select(1, picked)).cpu().numpy()
        out *= peak.double().cpu().numpy()
        if row_scales is not None:
            out *= row_scales[selected]
        return out

    def _coarse_lookup(self, projected: torch.Tensor) -> np.ndarray:
        """Estimates of every row from its coarse sketch (:class:`_CountSketch`, ``COARSE_BYTES`` per row), [Q, n]:
        unbiased estimates of the whole width's."""
        sketch, stored, scales = self.coarse_sketch()
        return self.lookup(sketch.apply(projected.to(torch.float64)).to(projected.dtype), stored=stored,
                           row_scales=scales)

    def coarse_sketch(self) -> tuple[_CountSketch, np.ndarray, np.ndarray]:
        """The coarse pass's sketch of every row: ``(sketch, rows, scales)``; computed from the stored rows on first
        use (one read of them) and kept in memory and, for an index opened with :meth:`load`, next to its rows."""
        if self._coarse is not None:
            return self._coarse
        storage = self._coarse_storage()
        sketch = _CountSketch(self.rows.shape[1], self._coarse_buckets(), int(self.meta.get("seed", 0)))
        path = None if self.folder is None else self.folder / COARSE_FILE.format(buckets=sketch.buckets,
                                                                                 seed=sketch.seed)
        if path is not None and path.is_file():
            with np.load(path, allow_pickle=False) as kept:
                stored, scales = kept["rows"], kept["scales"]
                norms = kept["norms"] if "norms" in kept.files else None
            if stored.shape == (self.rows.shape[0], sketch.buckets) and stored.dtype == storage:
                self._coarse = (sketch, stored, scales)
                if norms is not None and norms.shape == (self.rows.shape[0],):
                    self._norms = norms
                else:
                    self._save_coarse(path)  # an older file without the row norms: add them
                return self._coarse
        stored, scales = sketch.rows(self.rows, self.scales, storage)
        self._coarse = (sketch, stored, scales)
        self._save_coarse(path)
        return self._coarse

    def _save_coarse(self, path: Path | None) -> None:
        if path is None:
            return
        _, stored, scales = self._coarse
        try:
            np.savez(path, rows=stored, scales=scales, norms=self.row_norms())
        except OSError:  # a read-only index folder: keep the sketch in memory only
            pass

    def row_norms(self) -> np.ndarray:
        """The Euclidean norm of every stored row (times its scale), [n] float64: computed once from the rows, and
        kept in the coarse sketch's file."""
        if self._norms is None:
            norms = np.empty(self.rows.shape[0])
            chunk = max(1, CHUNK_BYTES // (self.rows.shape[1] * 4))
            for start in range(0, len(norms), chunk):
                part = torch.from_numpy(np.array(self.rows[start:start + chunk])).to(torch.float32)
                norms[start:start + chunk] = part.norm(dim=1).double().numpy()
            self._norms = norms if self.scales is None else norms * np.asarray(self.scales, dtype=np.float64)
        return self._norms

    def _coarse_storage(self) -> np.dtype:
        """The coarse sketch's storage: int8 for int8 and float16 rows, else the rows' own float type."""
        return np.dtype(np.int8 if self.rows.dtype.itemsize <= 2 else self.rows.dtype)

    def _coarse_buckets(self) -> int:
        """Entries of a coarse sketch row: ``COARSE_BYTES`` of :meth:`_coarse_storage`."""
        return max(1, min(self.rows.shape[1], COARSE_BYTES // self._coarse_storage().itemsize))

    def shortlist(self, projected: torch.Tensor, width: int) -> list[np.ndarray]:
        """Per query [width]: the training rows of the ``width`` largest and smallest estimates, in one pass over
        all rows when the index is small, else a coarse pass over every row's count sketch (``eigen`` basis) that
        keeps ``SHORTLIST_FACTOR`` times as many rows per side, then the whole width on those.

        A sketch estimate errs with a standard deviation of about ``|q| |x| / sqrt(buckets)`` (query and row norms
        over the whole width; the tests check it), so rows with a large norm are the likeliest to be misplaced. The
        coarse pass therefore keeps, per side, the rows whose estimate widened by ``COARSE_SIGMAS`` of those
        deviations (plus for helpful, minus for harmful) is the most extreme."""
        return [rows for rows, _ in self._shortlist(projected, width)]

    def _shortlist(self, projected: torch.Tensor, width: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """:meth:`shortlist` with each shortlisted row's full-width estimate: ``(rows, estimates)`` per query."""
        n_rows, n_cols = self.rows.shape
        keep = min(n_rows, SHORTLIST_FACTOR * width)
        if self.meta.get("basis") != "eigen" or self.meta["kind"] != "projected" or n_cols <= 2 * self._coarse_buckets() \
                or 2 * keep >= n_rows:
            return [_extremes(row, np.arange(n_rows), width) for row in self.lookup(projected)]
        picked = []
        coarse = self._coarse_lookup(projected)
        spread = COARSE_SIGMAS * self.row_norms() / math.sqrt(self._coarse_buckets())
        for q, row in enumerate(coarse):
            widened = float(projected[q].double().norm()) * spread
            near = np.union1d(np.argpartition(-(row + widened), keep - 1)[:keep],
                              np.argpartition(row - widened, keep - 1)[:keep])
            picked.append(_extremes(self.lookup(projected[q:q + 1], rows=near)[0], near, width))
        return picked

    def query(self, texts: Sequence[str], labels, *, top: int = 10, rerank: int = 100, damping: float | None = None,
              adaptive: bool = False, progress: Progress | None = None) -> pd.DataFrame:
        """The ``top`` most helpful and most harmful training rows for each query.

        The index proposes ``max(rerank, top)`` helpful and as many harmful candidates per query; the engine
        re-scores them exactly (``exact = 1``) and they are ranked by those scores. With ``adaptive`` the engine
        first re-scores the best ``max(2 top, FIRST_ROUND)`` of each side, measures the index's error on them, and
        then only the other candidates whose estimate, widened by that error, could still enter the top; without
        it, every candidate in one pass. ``rerank=0`` returns the index estimates (``exact = 0``). ``damping``:
        absolute, or relative when the engine's config is.

        Returns:
            One row per (query, direction, rank): ``query`` (0-based row of ``texts``), ``direction``
            (``helpful``/``harmful``), ``rank`` (1..top), ``train_row`` (0-based row of the training set),
            ``influence`` (positive = helpful) and ``exact`` (1 if re-scored by the engine).
        """
        if top < 1:
            raise ConfigError(f"top must be at least 1, got {top}")
        if rerank < 0:
            raise ConfigError(f"rerank must be >= 0, got {rerank}")
        if self.meta["rows"] != [0, self.meta["n_train"]]:
            raise DataError("this index is a shard; join every shard (GradientIndex.concatenate) before asking")
        dampings = None if damping is None else [damping]
        projected = self.query_rows(texts, labels, dampings=dampings)[0]  # [n_query, width]
        n_train = self.rows.shape[0]
        top = min(top, n_train)
        records = []
        if rerank == 0:
            for q, (rows, row) in enumerate(self._shortlist(projected, top)):
                for direction, order in (("helpful", np.lexsort((rows, -row))), ("harmful", np.lexsort((rows, row)))):
                    records += [(q, direction, r + 1, int(rows[i]), float(row[i]), 0) for r, i in enumerate(order[:top])]
            return _frame(records)
        if self.train_texts is None or self.train_labels is None:
            raise DataError("re-scoring needs the training set: load the index with train_texts and train_labels")
        width = min(max(rerank, top), n_train)
        candidates, guesses = zip(*self._shortlist(projected, width))
        sides = []  # per query: (helpful, harmful) candidate positions, best estimate first
        for guess in guesses:
            helpful, harmful = np.lexsort((np.arange(len(guess)), -guess)), np.lexsort((np.arange(len(guess)), guess))
            sides.append((helpful[:width], harmful[:width]))
        first = width if not adaptive else min(width, max(2 * top, FIRST_ROUND))
        wanted = [np.union1d(h[:first], b[:first]) for h, b in sides]
        exact = self._rescore(texts, labels, candidates, wanted, dampings, progress)
        if adaptive and first < width:
            more = [self._could_enter(guesses[q], exact[q], sides[q], top) for q in range(len(candidates))]
            if any(len(m) for m in more):
                extra = self._rescore(texts, labels, candidates, more, dampings, progress)
                for q in range(len(candidates)):
                    exact[q].update(extra[q])
        for q, rows in enumerate(candidates):
            positions = np.fromiter(exact[q], dtype=np.int64)
            values = np.array([exact[q][i] for i in positions])
            mine = rows[positions]
            for direction, order in (("helpful", np.lexsort((mine, -values))), ("harmful", np.lexsort((mine, values)))):
                records += [(q, direction, r + 1, int(mine[i]), float(values[i]), 1) for r, i in enumerate(order[:top])]
        return _frame(records)

    def _rescore(self, texts, labels, candidates: list[np.ndarray], wanted: list[np.ndarray], dampings,
                 progress) -> list[dict[int, float]]:
        """Exact engine scores of the ``wanted`` candidate positions of each query: ``{position: score}``."""
        union = np.unique(np.concatenate([rows[w] for rows, w in zip(candidates, wanted)]))
        if len(union) == 0:
            return [{} for _ in candidates]
        table = self.engine.score(texts, labels, [self.train_texts[m] for m in union], self.train_labels[union],
                                  dampings=dampings, self_influence=False, progress=progress)
        scores = table.total(0)  # [n_query, n_union]
        return [{int(i): float(scores[q, np.searchsorted(union, rows[i])]) for i in w}
                for q, (rows, w) in enumerate(zip(candidates, wanted))]

    @staticmethod
    def _could_enter(guess: np.ndarray, exact: dict[int, float], sides, top: int) -> np.ndarray:
        """Candidates not yet re-scored whose estimate, widened by the error measured on the re-scored ones
        (mean + ``MARGIN_SIGMAS`` standard deviations), could still reach the exact top of either side."""
        done = np.fromiter(exact, dtype=np.int64)
        values = np.array([exact[i] for i in done])
        residual = values - guess[done]
        margin = abs(float(residual.mean())) + MARGIN_SIGMAS * float(residual.std())
        best, worst = np.sort(values)[::-1][:top], np.sort(values)[:top]
        helpful, harmful = sides
        more = set()
        if len(best) == top:
            more.update(int(i) for i in helpful if i not in exact and guess[i] + margin >= best[-1])
        if len(worst) == top:
            more.update(int(i) for i in harmful if i not in exact and guess[i] - margin <= worst[-1])
        return np.array(sorted(more), dtype=np.int64)


class _CountSketch:
    """A count sketch of index rows (Charikar, Chen and Farach-Colton 2002): entry ``j`` of a row is added, with a
    random sign ``s_j``, to bucket ``h(j)``, so ``<sketch(q), sketch(x)> = <q, x> + sum_{i != j, h(i) = h(j)} s_i s_j
    q_i x_j``, an unbiased estimate of the product over the whole width, whose error shrinks with the buckets.

    It feeds the coarse pass of an eigen index. A prefix of the same size (the heaviest entries alone) misses rows
    whose score sits in the lighter entries; the sketch sees every entry (measured in ``benchmarks/INDEX.md``).
    ``h`` is a seeded permutation followed by ``mod buckets``: bucket ``b`` sums positions ``b, b + buckets, ...``
    of the permuted row."""

    def __init__(self, width: int, buckets: int, seed: int):
        generator = np.random.default_rng([seed, 0x5EED])
        self.width, self.buckets, self.seed = width, buckets, seed
        self.order = torch.from_numpy(generator.permutation(width))
        self.sign = torch.from_numpy(generator.choice([-1.0, 1.0], width))

    def apply(self, rows: torch.Tensor) -> torch.Tensor:
        """Sketch [..., width] rows (float): [..., buckets]."""
        shuffled = rows.index_select(-1, self.order) * self.sign.to(rows)
        whole = (self.width // self.buckets) * self.buckets
        out = shuffled[..., :whole].reshape(*rows.shape[:-1], -1, self.buckets).sum(-2)
        out[..., :self.width - whole] += shuffled[..., whole:]
        return out

    def rows(self, stored: np.ndarray, scales: np.ndarray | None, storage: np.dtype,
             chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
        """The sketch of every stored row (times its scale), in ``storage`` with one scale per row: int8 rounds
        each sketch row to 127 steps of its largest entry; float rows keep their values (scale 1)."""
        n = stored.shape[0]
        out = np.empty((n, self.buckets), dtype=storage)
        out_scales = np.ones(n, dtype=np.float32 if storage == np.int8 else np.float64)
        float_type = torch.float64 if storage == np.float64 else torch.float32
        for start in range(0, n, chunk):
            part = torch.from_numpy(np.array(stored[start:start + chunk])).to(float_type)  # (memory maps are read-only)
            if scales is not None:
                part = part * torch.from_numpy(np.asarray(scales[start:start + chunk])).to(float_type)[:, None]
            sketched = self.apply(part)
            if storage == np.int8:
                step = sketched.abs().amax(dim=1).clamp_min(torch.finfo(torch.float32).tiny) / 127
                out[start:start + chunk] = torch.round(sketched / step[:, None]).to(torch.int8).numpy()
                out_scales[start:start + chunk] = step.numpy()
            else:
                out[start:start + chunk] = sketched.numpy()
        return out, out_scales


class _Gather:
    """Copies of chosen stored rows (their first ``width`` columns), each chunk into one buffer reused for every
    chunk. A fresh array per chunk costs more than the product itself (the memory is new each time); rows held in
    memory are gathered by ``torch.index_select``, rows of a read-only memory map or a prefix by numpy indexing."""

    def __init__(self, stored: np.ndarray, width: int):
        self.fast = width == stored.shape[1] and stored.flags.writeable and stored.flags.c_contiguous
        self.source = torch.from_numpy(stored) if self.fast else stored
        self.width, self.buffer = width, None

    def __call__(self, picked: np.ndarray) -> torch.Tensor:
        if not self.fast:
            return torch.from_numpy(np.array(self.source[picked, :self.width]))
        if self.buffer is None or self.buffer.shape[0] < len(picked):
            self.buffer = torch.empty((len(picked), self.width), dtype=self.source.dtype)
        part = self.buffer[:len(picked)]
        torch.index_select(self.source, 0, torch.from_numpy(picked), out=part)
        return part


def _product_dtype(stored: np.dtype) -> torch.dtype:
    """The precision a query is cast to for a product with stored rows: the storage's own, float32 for int8 (whose
    product :func:`_product` runs in integers)."""
    return torch.float32 if np.dtype(stored) == np.int8 else torch.from_numpy(np.zeros(0, dtype=stored)).dtype


INT32_SAFE_WIDTH = 2**31 // (127 * 127)  # int8 x int8 products summed over this many columns fit an int32


@dataclass
class _IntegerQuery:
    """A float query [Q, w] split into two int8 parts for :func:`_product`: its 127 steps and the 127 steps of what
    they leave (about 14 bits), each window of ``INT32_SAFE_WIDTH`` columns laid out for ``torch._int_mm``."""

    windows: list[torch.Tensor]  # [window, 2Q] int8 each
    high_step: torch.Tensor  # [Q, 1]
    low_step: torch.Tensor  # [Q, 1]

    @classmethod
    def split(cls, query: torch.Tensor) -> _IntegerQuery:
        query = query.to(torch.float64)
        tiny = torch.finfo(torch.float64).tiny
        high_step = query.abs().amax(dim=1, keepdim=True).clamp_min(tiny) / 127
        high = torch.round(query / high_step)
        rest = query - high * high_step
        low_step = rest.abs().amax(dim=1, keepdim=True).clamp_min(tiny) / 127
        both = torch.cat([high, torch.round(rest / low_step)]).to(torch.int8)  # [2Q, w]
        windows = [both[:, start:start + INT32_SAFE_WIDTH].T.contiguous()
                   for start in range(0, both.shape[1], INT32_SAFE_WIDTH)]
        return cls(windows, high_step, low_step)


def _product(query: torch.Tensor | _IntegerQuery, part: torch.Tensor) -> torch.Tensor:
    """``query @ part.T`` in float64, [Q, n], for queries [Q, w] and stored rows ``part`` [n, w].

    Float rows multiply in their own precision. Int8 rows are never widened (that costs more than the product): the
    query is split into two int8 parts (:class:`_IntegerQuery`; pass it split to reuse it over chunks of rows) and
    both multiply the rows in integer arithmetic (``torch._int_mm``) in one read of them."""
    if part.dtype != torch.int8:
        return (query @ part.T).double()
    split = query if isinstance(query, _IntegerQuery) else _IntegerQuery.split(query)
    total = torch.zeros(part.shape[0], split.windows[0].shape[1], dtype=torch.float64, device=part.device)
    for window, right in enumerate(split.windows):
        start = window * INT32_SAFE_WIDTH
        left = part[:, start:start + right.shape[0]].contiguous()
        try:
            total += torch._int_mm(left, right).double()
        except (RuntimeError, NotImplementedError):  # no integer kernel for these shapes here: widen this block
            total += (left.float() @ right.float()).double()
    n = split.high_step.shape[0]
    return total[:, :n].T * split.high_step + total[:, n:].T * split.low_step


def _extremes(values: np.ndarray, rows: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """The union of the rows of the ``width`` largest and the ``width`` smallest ``values`` (sorted, as ``rows``
    is), with their values."""
    width = min(width, len(values))
    helpful = np.argpartition(-values, width - 1)[:width]
    harmful = np.argpartition(values, width - 1)[:width]
    both = np.union1d(helpful, harmful)
    return rows[both], values[both]


def _block(out: int, width: int, k: int, allocation: str) -> list[int]:
    """``[k_out, k_in]`` of a layer's block: at most ``k * k`` entries, a side no larger than needed kept whole.

    ``square`` gives both sides ``k``, ``proportional`` splits ``k * k`` in the ratio ``out : width``; a side that
    is kept whole hands the rest of the budget to the other one (a 2-class head is then often stored exactly)."""
    budget = k * k
    if out * width <= budget:
        return [out, width]
    k_out = k if allocation == "square" else round(k * (out / width) ** 0.5)
    k_out = max(1, min(out, k_out, budget))
    k_in = min(width, max(1, budget // k_out))
    if k_in == width:
        k_out = min(out, max(1, budget // width))
    return [k_out, k_in]


def _frame(records: list[tuple]) -> pd.DataFrame:
    return pd.DataFrame.from_records(records, columns=["query", "direction", "rank", "train_row", "influence", "exact"])


class _Builder:
    """Accumulates index rows batch by batch, from its own pass or from the fit's eigenvalue pass."""

    def __init__(self, engine: InfluenceEngine, texts, labels, config: IndexConfig, start: int = 0,
                 stop: int | None = None, info: dict | None = None):
        texts = list(texts)
        if labels is None:
            raise DataError("the index needs the labels of the training examples")
        labels = np.asarray(labels, dtype=np.int64)
        stop = len(texts) if stop is None else min(stop, len(texts))
        if not 0 <= start < stop:
            raise DataError(f"index rows [{start}, {stop}) are empty or outside the {len(texts)} training examples")
        self.engine, self.config = engine, config
        self.encoded = engine.encode(texts[start:stop], labels[start:stop])
        if (self.encoded.labels < 0).any():
            raise DataError("every training example needs a label to be indexed")
        self.meta = GradientIndex.plan(engine, len(texts), config)
        self.meta.update({
            "rows": [start, stop], "train_hash": training_hash(texts, labels), "method": engine.config.method,
            "fisher": engine.config.fisher, "factors_fingerprint": factors_fingerprint(engine.factors),
            "info": dict(info or {}), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        })
        self.texts, self.labels, self.stop = texts, labels, stop
        self.factors = engine.factors
        self._projector: _Projector | _EigenSelector | None = None
        self.rows = np.zeros((stop - start, self.meta["width"]), dtype=STORAGE[config.dtype])
        self.scales = np.ones(stop - start, dtype=np.float32) if config.dtype in SCALED else None
        self.seen = np.zeros(stop - start, dtype=bool)

    def absorb(self, index: np.ndarray, gradients: dict[str, torch.Tensor], captures: dict[str, LayerCapture]) -> None:
        """Store rows ``index`` (positions in the shard) from output gradients [B, T, out] of the given labels."""
        if self._projector is None:
            if self.meta["method"] != "identity" and self.factors is None:
                raise FactorsError("no factors yet: fit the engine before building a gradient index")
            self._projector = _projector(self.meta, self.engine.config.torch_dtype, self.engine.config.device,
                                         self.factors)
        blocks = [self._projector.training_block(name, captures[name].a, gradients[name])
                  for name in self.engine.layers]
        rows = self._projector.arrange(torch.cat(blocks, dim=-1)).double()
        if self.meta.get("whitened_int8"):
            rows = rows / self._projector.column_scale.to(rows)
        rows = rows.cpu().numpy()
        if self.scales is not None:
            scale = np.abs(rows).max(axis=1)
            scale[scale == 0] = 1.0
            if self.rows.dtype == np.int8:  # 127 steps of the largest entry, rounded to nearest
                scale = scale / 127.0
                rows = np.rint(rows / scale[:, None])
            else:
                rows = rows / scale[:, None]
            self.scales[index] = scale
        self.rows[index] = rows.astype(self.rows.dtype)
        self.seen[index] = True

    def absorb_fisher(self, batch: Batch, logits: torch.Tensor, captures: dict[str, LayerCapture]) -> None:
        """The fit's hook: turn captures of the Fisher terms into given-label gradients, then :meth:`absorb`.

        The cross-entropy gradient ``p - e_y`` is a multiple of a true-Fisher term: ``-v_y / sqrt(p_y)`` with
        ``v_c = sqrt(p_c)(e_c - p)``, and for two classes (one term ``sqrt(p_0 p_1)(1, -1)``) ``sqrt(p_0/p_1)``
        times it when ``y = 1`` and ``-sqrt(p_1/p_0)`` when ``y = 0``. The backward pass is linear, so the
        captured gradients scale the same way. With the empirical Fisher the term is the gradient itself.
        """
        fisher = self.engine.config.fisher
        labels = batch.labels
        rows = torch.arange(len(batch), device=labels.device)
        if fisher == "empirical":
            gradients = {name: c.g[0] for name, c in captures.items()}
        else:
            z = logits.double()
            log_p = torch.log_softmax(z, dim=-1)
            if z.shape[-1] == 2:
                half = 0.5 * (z[:, 0] - z[:, 1])
                scale = torch.where(labels == 1, torch.exp(half), -torch.exp(-half))
                pick = torch.zeros_like(labels)
            else:
                scale = -torch.exp(-0.5 * log_p[rows, labels])
                pick = labels
            gradients = {}
            for name, c in captures.items():
                g = c.g[pick, rows]  # [B, T, out]
                gradients[name] = g * scale.to(g.dtype).reshape(-1, *([1] * (g.dim() - 1)))
        self.absorb(batch.index, gradients, captures)

    def finish(self) -> GradientIndex:
        if not self.seen.all():
            raise DataError(f"{int((~self.seen).sum())} training rows were not indexed")
        self.meta["factors_fingerprint"] = factors_fingerprint(self.engine.factors)
        return GradientIndex(self.rows, self.meta, self.engine, self.texts, self.labels, self.scales)


def fit_and_index(engine: InfluenceEngine, train_texts: Sequence[str], train_labels, *,
                  config: IndexConfig | None = None, progress: Progress | None = None,
                  info: dict | None = None) -> tuple[Factors, GradientIndex]:
    """Fit the factors on the training set and index it, riding on the fit's eigenvalue-correction pass.

    The EK-FAC pass already captures every example's gradients for the Fisher terms; with the ``true`` or
    ``empirical`` Fisher they are multiples of the given-label gradients, so the index costs no extra pass. For
    ``kfac``, ``identity`` or the ``sampled`` Fisher the index is built in a pass of its own after the fit.
    """
    config = config or IndexConfig()
    if engine.config.method != "ekfac" or engine.config.fisher == "sampled":
        factors = engine.fit(train_texts, train_labels, progress=progress) if engine.config.method != "identity" \
            else None
        return factors, GradientIndex.build(engine, train_texts, train_labels, config=config, progress=progress,
                                            info=info)
    builder = _Builder(engine, train_texts, train_labels, config, info=info)
    # engine.fit's two stages, so that the rows (whitened in the factors' eigenbasis) can ride on the second one
    encoded = builder.encoded
    statistics = engine.covariance_statistics(encoded, progress=progress)
    factors = Factors(statistics, engine.config.method, engine.config.fisher, engine.fingerprint, len(encoded),
                      meta={"max_length": engine.config.max_length})
    for name, layer in factors.layers.items():
        layer.eigendecompose(name)
    builder.factors = factors
    engine.eigenvalue_statistics(encoded, factors, progress=progress, on_batch=builder.absorb_fisher)
    engine.factors = factors
    return factors, builder.finish()


__all__ = ["GradientIndex", "IndexConfig", "factors_fingerprint", "fit_and_index", "projection_matrix",
           "training_hash"]
