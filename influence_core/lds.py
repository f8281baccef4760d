"""Do the influence numbers predict retraining? The linear datamodeling score (LDS; Park et al. 2023, TRAK).

Draw ``M`` random subsets of the training set (each a fraction ``alpha`` of it, seeded), retrain the model on each
with the model's own recipe and measure, for every test example, the loss of its given label (or its margin).
The additive datamodel predicts that outcome from the scores alone::

    predicted loss of q after training on S  ~  - sum_{m in S} I(q, m)      (positive I = helpful lowers the loss)
    predicted margin of q                    ~  + sum_{m in S} I(q, m)

and the LDS is the mean over test examples of the Spearman correlation, across the ``M`` subsets, between the
predicted and the measured outcome (1 = the scores rank the subsets exactly as retraining does; a control row with
random scores sits near 0). A bootstrap over test examples gives a 95% interval. With several seeds per subset the
same correlation between two seeds' measured outcomes is the *ceiling*: no score can predict retraining better
than retraining predicts itself.

Two retraining recipes:

- ``head``: only the classifier head (for BERT: pooler dense + classifier, exactly what ``layers="head"`` tracks) is
  trained, full batch with L-BFGS and an L2 pull toward its starting point, on frozen encoder features computed once.
  A retrain takes well under a second, so 50+ subsets are affordable on a CPU. The model under study is then the
  same recipe applied to the full training set, and influence is tracked on the head only.
- ``finetune``: the model's recorded fine-tuning recipe (``finetune.json``, see
  :func:`influence_core.training.retrain.recipe_of`); minutes per retrain, for small data only.

Every retrain's test log-probabilities are cached on disk by (recipe, subset, seed) under ``cache_dir("lds")``,
so an interrupted run resumes where it stopped and a second analysis of the same data reuses them.

    from influence_core.lds import LDSConfig, run_lds
    result = run_lds(model, tokenizer, train_texts, train_labels, test_texts, test_labels, config=LDSConfig(subsets=50))
    result.table   # one row per scoring variant: method, fisher, damping, relative, lds, ci_low, ci_high, subsets
"""

from __future__ import annotations

import contextlib
import copy
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy import stats

from influence_core.cache import cache_dir, stable_hash
from influence_core.engine.batches import batches
from influence_core.engine.config import EngineConfig, check_damping
from influence_core.engine.index import GradientIndex, IndexConfig
from influence_core.engine.influence import InfluenceEngine
from influence_core.engine.layers import layer_groups
from influence_core.engine.tracking import model_logits
from influence_core.errors import ConfigError, DataError, InfluenceError, ModelError

Progress = Callable[[int, int, str], None]
Cancel = Callable[[], bool]

RECIPES = ("head", "finetune")
MEASURES = ("loss", "margin")
#: The default damping grid (absolute): the head recipe's L2 strength (1e-3) sits in the middle.
DEFAULT_DAMPINGS = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1)


class LDSCancelled(InfluenceError):
    """``cancel()`` returned True; every finished retrain is kept on disk, so the next run resumes."""


# ----------------------------------------------------------------------------------------------- configuration
@dataclass(frozen=True)
class HeadRecipe:
    """The cheap retraining recipe: the classifier head alone on frozen encoder features.

    Attributes:
        steps: L-BFGS iterations (full batch, strong Wolfe line search); a fixed budget, so every retrain is the
            same amount of training.
        l2: Strength of the pull ``(l2 / 2) ||theta - theta_0||^2`` toward the starting head (pooler as in the
            model, classifier drawn from the seed). It keeps the optimum finite on separable data, and the matching
            damping of the influence is ``l2`` (absolute).
    """

    steps: int = 100
    l2: float = 1e-3

    def describe(self) -> str:
        return f"head (classifier head only on frozen encoder features, L-BFGS {self.steps} steps, L2 {self.l2:g})"


@dataclass(frozen=True)
class LDSConfig:
    """What an LDS run measures.

    Attributes:
        subsets: Number ``M`` of random training subsets retrained on.
        fraction: Share ``alpha`` of the training set in each subset, in (0, 1).
        seeds: Retrains per subset (different seeds); with 2 or more the retraining-noise ceiling is reported.
        subset_seed: Seed of the subset draws (and of the random control and the bootstrap).
        recipe: ``head`` (see :class:`HeadRecipe`) or ``finetune`` (the model's recorded recipe).
        measure: ``loss`` (cross-entropy of the given test label) or ``margin`` (its log-probability minus the
            largest other one).
        methods: Scoring methods among ``ekfac``, ``kfac``, ``identity``.
        fishers: Fishers for ``ekfac`` and ``kfac`` among ``true``, ``sampled``, ``empirical``.
        dampings: Damping values scored for ``ekfac`` and ``kfac`` (all from one gradient pass).
        relative_damping: Read ``dampings`` as relative factors (``r x mean eigenvalue`` per layer).
        relative: Also score relative influence ``I(q,m) / sqrt(I(q,q) I(m,m))`` for every variant.
        index_projections: Also score the training-gradient index (method ``index``, see
            :class:`influence_core.engine.index.GradientIndex`) at each of these projection sizes, always projected
            (never exact), on the EK-FAC factors of each Fisher, at every damping. Empty: no index variants.
        bootstrap: Bootstrap resamples of the test examples for the 95% interval.
        head: The head recipe's settings.
    """

    subsets: int = 50
    fraction: float = 0.5
    seeds: int = 1
    subset_seed: int = 0
    recipe: str = "head"
    measure: str = "loss"
    methods: tuple[str, ...] = ("ekfac", "kfac", "identity")
    fishers: tuple[str, ...] = ("true",)
    dampings: tuple[float, ...] = DEFAULT_DAMPINGS
    relative_damping: bool = False
    relative: bool = True
    index_projections: tuple[int, ...] = ()
    bootstrap: int = 1000
    head: HeadRecipe = field(default_factory=HeadRecipe)

    def __post_init__(self) -> None:
        if self.subsets < 3:
            raise ConfigError(f"the LDS needs at least 3 subsets to rank, got {self.subsets}")
        if not 0 < self.fraction < 1:
            raise ConfigError(f"the subset fraction must be in (0, 1), got {self.fraction}")
        if self.seeds < 1:
            raise ConfigError(f"seeds must be at least 1, got {self.seeds}")
        if self.recipe not in RECIPES:
            raise ConfigError(f"unknown recipe {self.recipe!r}: choose head or finetune")
        if self.measure not in MEASURES:
            raise ConfigError(f"unknown measure {self.measure!r}: choose loss or margin")
        if not self.methods:
            raise ConfigError("choose at least one method (ekfac, kfac, identity)")
        for method in self.methods:
            if method not in ("ekfac", "kfac", "identity"):
                raise ConfigError(f"unknown method {method!r}: choose among ekfac, kfac, identity")
        for fisher in self.fishers:
            if fisher not in ("true", "sampled", "empirical"):
                raise ConfigError(f"unknown Fisher {fisher!r}: choose among true, sampled, empirical")
        if any(m != "identity" for m in self.methods) and not (self.fishers and self.dampings):
            raise ConfigError("ekfac and kfac need at least one Fisher and one damping value")
        for value in self.dampings:
            check_damping(value)
        if any(int(k) < 1 for k in self.index_projections):
            raise ConfigError(f"index projection sizes must be at least 1, got {list(self.index_projections)}")
        if self.index_projections and "ekfac" not in self.methods:
            raise ConfigError("the index variants use the EK-FAC factors: include ekfac in the methods")
        if self.head.steps < 1 or not self.head.l2 >= 0:
            raise ConfigError("the head recipe needs steps >= 1 and l2 >= 0")


# ----------------------------------------------------------------------------------------------- the score
@dataclass(frozen=True)
class LDSValue:
    """A mean Spearman correlation over test examples with its bootstrap 95% interval.

    Attributes:
        lds: Mean over test examples (NaN correlations, from constant outcomes, are left out).
        ci_low, ci_high: 2.5% and 97.5% percentiles of the bootstrap mean.
        per_example: The correlation of each test example, shape [n_test].
    """

    lds: float
    ci_low: float
    ci_high: float
    per_example: np.ndarray


def spearman_per_column(predicted: np.ndarray, actual: np.ndarray) -> np.ndarray:
    """Spearman correlation of each column of ``predicted`` with the same column of ``actual`` ([M, n] each) -> [n].

    NaN where either column is constant."""
    out = np.full(predicted.shape[1], np.nan)
    for q in range(predicted.shape[1]):
        a, b = predicted[:, q], actual[:, q]
        if np.ptp(a) > 0 and np.ptp(b) > 0:
            out[q] = stats.spearmanr(a, b).statistic
    return out


def summarise(per_example: np.ndarray, *, bootstrap: int = 1000, seed: int = 0) -> LDSValue:
    """The mean of ``per_example`` [n] with a bootstrap (over its entries) 95% interval."""
    values = np.asarray(per_example, dtype=float)
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return LDSValue(float("nan"), float("nan"), float("nan"), values)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, finite.size, size=(max(int(bootstrap), 1), finite.size))
    means = finite[draws].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return LDSValue(float(finite.mean()), float(low), float(high), values)


def linear_datamodeling_score(scores: np.ndarray, masks: np.ndarray, actual: np.ndarray, *, measure: str = "loss",
                              bootstrap: int = 1000, seed: int = 0) -> LDSValue:
    """LDS of one score matrix.

    Args:
        scores: Influence of each training example on each test example, [n_test, n_train]; positive = helpful.
        masks: Which training examples each subset holds, bool [M, n_train].
        actual: The measured outcome of each test example after retraining on each subset, [M, n_test]
            (a loss for ``measure="loss"``, where helpful examples lower it; a margin for ``"margin"``).
        measure: ``loss`` or ``margin``: the sign of the additive prediction.
        bootstrap, seed: The bootstrap of the interval over test examples.

    Returns:
        LDSValue: mean Spearman correlation over test examples between ``-masks @ scores.T`` (loss) or
        ``masks @ scores.T`` (margin) and ``actual``, with its 95% interval.
    """
    scores, masks, actual = np.asarray(scores, float), np.asarray(masks, float), np.asarray(actual, float)
    if scores.ndim != 2 or masks.ndim != 2 or actual.ndim != 2:
        raise DataError("scores [n_test, n_train], masks [M, n_train] and actual [M, n_test] must be 2-D")
    if masks.shape[1] != scores.shape[1] or actual.shape != (masks.shape[0], scores.shape[0]):
        raise DataError(f"shapes do not match: scores {scores.shape}, masks {masks.shape}, actual {actual.shape}")
    predicted = masks @ scores.T  # [M, n_test]: the additive datamodel's predicted *benefit*
    if measure == "loss":
        predicted = -predicted
    elif measure != "margin":
        raise ConfigError(f"unknown measure {measure!r}: choose loss or margin")
    return summarise(spearman_per_column(predicted, actual), bootstrap=bootstrap, seed=seed)


def draw_subsets(n_train: int, subsets: int, fraction: float, seed: int = 0) -> np.ndarray:
    """``subsets`` random subsets of ``round(fraction * n_train)`` examples each, as bool masks [M, n_train]."""
    size = int(round(fraction * n_train))
    if not 1 <= size < n_train:
        raise DataError(f"a fraction {fraction} of {n_train} training examples leaves no proper subset")
    rng = np.random.default_rng(seed)
    masks = np.zeros((subsets, n_train), dtype=bool)
    for s in range(subsets):
        masks[s, rng.choice(n_train, size, replace=False)] = True
    return masks


def outcome(logprobs: np.ndarray, labels: np.ndarray, measure: str) -> np.ndarray:
    """Loss (``-log p_y``) or margin (``log p_y - max_{c != y} log p_c``) per example from log-probs [n, C] -> [n]."""
    labels = np.asarray(labels, dtype=int)
    rows = np.arange(len(labels))
    given = logprobs[rows, labels]
    if measure == "loss":
        return -given
    others = logprobs.copy()
    others[rows, labels] = -np.inf
    return given - others.max(axis=1)


# ----------------------------------------------------------------------------------------------- the head recipe
@dataclass
class HeadParams:
    """The head's weights: ``first`` (the pooler / pre-classifier, or None for a single-Linear head) and ``last``
    (the classifier), each ``(weight [out, in], bias [out])`` in float64."""

    first: tuple[torch.Tensor, torch.Tensor] | None
    last: tuple[torch.Tensor, torch.Tensor]

    def tensors(self) -> list[torch.Tensor]:
        return [*(self.first or ()), *self.last]


class HeadTrainer:
    """Trains the classifier head of ``model`` on frozen encoder features (the ``head`` recipe).

    The features are the inputs of the first head Linear (for BERT: the [CLS] hidden state that enters the
    pooler), computed once per model and texts and cached on disk. The head is ``classifier(act(pooler(x)))``
    with ``act`` tanh (BERT, RoBERTa) or ReLU (DistilBERT), or just ``classifier(x)`` for a one-Linear head.

    Args:
        model, tokenizer: The classifier whose encoder is frozen (left unchanged).
        train_texts, test_texts: Texts whose features are needed.
        recipe: Steps and L2 of the head training.
        config: ``max_length``, ``batch_size`` and ``device`` of the feature pass.
    """

    def __init__(self, model, tokenizer, train_texts: Sequence[str], test_texts: Sequence[str], *,
                 recipe: HeadRecipe | None = None, config: EngineConfig | None = None,
                 progress: Progress | None = None):
        self.model, self.tokenizer, self.recipe = model, tokenizer, recipe or HeadRecipe()
        self.config = (config or EngineConfig()).replace(layers="head")
        names = layer_groups(model)["head"]
        if len(names) not in (1, 2):
            raise ModelError(f"the head recipe needs a head of one or two Linear layers; this model has {names}")
        self.names = names
        modules = dict(model.named_modules())
        self.modules = [modules[n] for n in names]
        kind = str(getattr(getattr(model, "config", None), "model_type", "")).lower()
        self.activation = torch.relu if kind == "distilbert" else torch.tanh
        self.engine = InfluenceEngine(model, tokenizer, self.config)
        texts = [str(t) for t in train_texts] + [str(t) for t in test_texts]
        features = self._features(texts, progress)
        self.train_features = features[: len(train_texts)]
        self.test_features = features[len(train_texts):]

    @property
    def key(self) -> str:
        """Names the frozen features (model weights, texts, max length) and the recipe."""
        return stable_hash({"fingerprint": self.engine.fingerprint, "features": self._features_key, "recipe": self.recipe,
                            "names": self.names})

    def _features(self, texts: list[str], progress: Progress | None) -> torch.Tensor:
        self._features_key = stable_hash({"fingerprint": self.engine.fingerprint, "texts": stable_hash(texts),
                                          "max_length": self.config.max_length, "first": self.names[0]})
        path = cache_dir("lds", "features") / f"{self._features_key}.npy"
        if path.is_file():
            return torch.from_numpy(np.load(path))
        encoded = self.engine.encode(texts)
        out: np.ndarray | None = None
        captured: list[torch.Tensor] = []
        handle = self.modules[0].register_forward_pre_hook(lambda module, args: captured.append(args[0].detach()))
        total = -(-len(texts) // self.config.batch_size)
        try:
            with self.engine.session(hooks=False), torch.inference_mode():
                for done, batch in enumerate(batches(encoded, self.config.batch_size, self.config.device), 1):
                    captured.clear()
                    model_logits(self.model, batch)
                    if len(captured) != 1 or captured[0].dim() != 2:
                        raise ModelError("the head's first Linear does not see one vector per example; "
                                         "the head recipe cannot freeze this encoder")
                    if out is None:
                        out = np.zeros((len(texts), captured[0].shape[-1]))
                    out[batch.index] = captured[0].double().cpu().numpy()
                    if progress is not None:
                        progress(done, total, "encoder features")
        finally:
            handle.remove()
        _save_atomically(path, out)
        return torch.from_numpy(out)

    def initial(self, seed: int) -> HeadParams:
        """The starting head: the first Linear as in the model, the classifier drawn from ``seed``."""
        first = None
        if len(self.modules) == 2:
            m = self.modules[0]
            first = (m.weight.detach().double().clone(), _bias(m).clone())
        last = self.modules[-1]
        std = float(getattr(getattr(self.model, "config", None), "initializer_range", 0.02) or 0.02)
        generator = torch.Generator().manual_seed(int(seed))
        weight = torch.randn(last.weight.shape, generator=generator, dtype=torch.float64) * std
        return HeadParams(first, (weight, torch.zeros(last.out_features, dtype=torch.float64)))

    def logits(self, params: HeadParams, features: torch.Tensor) -> torch.Tensor:
        x = features
        if params.first is not None:
            x = self.activation(x @ params.first[0].T + params.first[1])
        return x @ params.last[0].T + params.last[1]

    def train(self, keep: np.ndarray | None, labels: Sequence[int], seed: int = 0) -> HeadParams:
        """Train the head on the training examples where ``keep`` (bool [n_train]; all when None) from
        :meth:`initial` (``seed``): mean cross-entropy + ``(l2/2) ||theta - theta_0||^2``, full-batch L-BFGS."""
        start = self.initial(seed)
        x = self.train_features if keep is None else self.train_features[torch.as_tensor(np.asarray(keep, bool))]
        y = torch.as_tensor(np.array(labels, dtype=np.int64))
        if keep is not None:
            y = y[torch.as_tensor(np.asarray(keep, bool))]
        params = HeadParams(None if start.first is None else tuple(t.clone().requires_grad_(True) for t in start.first),
                            tuple(t.clone().requires_grad_(True) for t in start.last))
        anchors = start.tensors()
        optimizer = torch.optim.LBFGS(params.tensors(), lr=1.0, max_iter=self.recipe.steps, history_size=20,
                                      tolerance_grad=1e-10, tolerance_change=1e-14, line_search_fn="strong_wolfe")

        def closure():
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(self.logits(params, x), y)
            if self.recipe.l2:
                loss = loss + 0.5 * self.recipe.l2 * sum(((p - a) ** 2).sum() for p, a in zip(params.tensors(), anchors))
            loss.backward()
            return loss

        with torch.enable_grad(), _one_thread():
            optimizer.step(closure)
        detach = lambda pair: tuple(t.detach() for t in pair)  # noqa: E731
        return HeadParams(None if params.first is None else detach(params.first), detach(params.last))

    def test_logprobs(self, params: HeadParams) -> np.ndarray:
        """Log-probabilities of the test texts under ``params``, [n_test, C]."""
        with torch.no_grad():
            return torch.log_softmax(self.logits(params, self.test_features), -1).numpy()

    def model_with(self, params: HeadParams):
        """A copy of the model with the head set to ``params`` (the encoder shared in value, not in memory)."""
        twin = copy.deepcopy(self.model)
        modules = dict(twin.named_modules())
        pairs = ([params.first] if params.first is not None else []) + [params.last]
        with torch.no_grad():
            for name, (weight, bias) in zip(self.names, pairs):
                module = modules[name]
                module.weight.copy_(weight.to(module.weight.dtype))
                if module.bias is not None:
                    module.bias.copy_(bias.to(module.bias.dtype))
        return twin.eval()


@contextlib.contextmanager
def _one_thread():
    """Run the head's small full-batch steps on one thread: on a shared CPU, thread hand-offs cost 30x more than
    the arithmetic of a 384-wide head (1.7 s against 0.05 s per retrain measured on 2 busy cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _bias(module) -> torch.Tensor:
    if module.bias is None:
        return torch.zeros(module.out_features, dtype=torch.float64)
    return module.bias.detach().double()


def _save_atomically(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npy")
    np.save(tmp, array)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------- running it
@dataclass
class LDSResult:
    """An LDS run.

    Attributes:
        table: One row per scoring variant (and a ``random`` control): ``variant``, ``method``, ``fisher``,
            ``damping``, ``relative`` (bool), ``lds``, ``ci_low``, ``ci_high``, ``subsets``.
        ceiling: Retraining noise: mean Spearman correlation across subsets between two seeds' measured outcomes
            (None with one seed).
        recipe: Which retraining recipe was used, in words.
        measure: ``loss`` or ``margin``.
        n_train, n_test, subsets, fraction, seeds: The run's sizes.
        seconds: Wall time per stage (``features``, ``retrain``, ``per_retrain``, ``scoring``, ``total``);
            ``per_retrain`` counts only retrains actually run (NaN when all came from the cache).
        retrained: Retrains run now (the others came from the cache).
        damping_mode: ``absolute`` or ``relative``.
    """

    table: pd.DataFrame
    ceiling: LDSValue | None
    recipe: str
    measure: str
    n_train: int
    n_test: int
    subsets: int
    fraction: float
    seeds: int
    seconds: dict = field(default_factory=dict)
    retrained: int = 0
    damping_mode: str = "absolute"

    def best(self, *, relative: bool | None = None) -> pd.Series:
        """The row with the highest LDS (among raw or relative variants when ``relative`` is given)."""
        rows = self.table[self.table["method"] != "random"]
        if relative is not None:
            rows = rows[rows["relative"] == relative]
        return rows.loc[rows["lds"].idxmax()]

    def to_dict(self) -> dict:
        ceiling = None if self.ceiling is None else {"lds": self.ceiling.lds, "ci_low": self.ceiling.ci_low,
                                                     "ci_high": self.ceiling.ci_high}
        return {"table": self.table.to_dict(orient="records"), "ceiling": ceiling, "recipe": self.recipe,
                "measure": self.measure, "n_train": self.n_train, "n_test": self.n_test, "subsets": self.subsets,
                "fraction": self.fraction, "seeds": self.seeds, "seconds": self.seconds, "retrained": self.retrained,
                "damping_mode": self.damping_mode}

    @classmethod
    def from_dict(cls, data: dict) -> LDSResult:
        ceiling = data.get("ceiling")
        value = None if ceiling is None else LDSValue(ceiling["lds"], ceiling["ci_low"], ceiling["ci_high"], np.array([]))
        fields = {k: data[k] for k in ("recipe", "measure", "n_train", "n_test", "subsets", "fraction", "seeds")}
        return cls(table=pd.DataFrame(data["table"]), ceiling=value, seconds=data.get("seconds", {}),
                   retrained=int(data.get("retrained", 0)), damping_mode=data.get("damping_mode", "absolute"), **fields)


class _Retrainer:
    """One retrain per (subset, seed), cached on disk as the test log-probabilities."""

    def __init__(self, folder: Path, train_fn: Callable[[np.ndarray, int], np.ndarray]):
        self.folder, self.train_fn = folder, train_fn

    def path(self, mask: np.ndarray, seed: int) -> Path:
        return self.folder / f"{stable_hash(np.flatnonzero(mask).tolist())}-seed{seed}.npy"

    def logprobs(self, mask: np.ndarray, seed: int) -> tuple[np.ndarray, bool]:
        path = self.path(mask, seed)
        if path.is_file():
            return np.load(path), False
        values = np.asarray(self.train_fn(mask, seed), dtype=np.float64)
        _save_atomically(path, values)
        return values, True


def train_head_subset(trainer: HeadTrainer, mask: np.ndarray, labels: Sequence[int], seed: int) -> np.ndarray:
    """One retrain of the head recipe: the test log-probabilities [n_test, C] after training on ``mask``."""
    return trainer.test_logprobs(trainer.train(mask, labels, seed))


def train_finetune_subset(recipe, texts: Sequence[str], labels: Sequence[int], test_texts: Sequence[str],
                          mask: np.ndarray, seed: int, cancel: Cancel | None = None) -> np.ndarray:
    """One retrain of the fine-tuning recipe (``recipe`` from ``recipe_of``; ``seed`` is added to its seed)."""
    import dataclasses

    from influence_core.training.retrain import predict_probabilities, train_cached

    hyper = {**recipe.hyperparameters, "seed": int(recipe.hyperparameters.get("seed", 0)) + int(seed)}
    folder = train_cached(dataclasses.replace(recipe, hyperparameters=hyper),
                          [t for t, ok in zip(texts, mask) if ok], [y for y, ok in zip(labels, mask) if ok],
                          cancel=cancel)
    probs = predict_probabilities(folder, list(test_texts), max_length=int(hyper["max_length"]))
    return np.log(np.clip(probs, 1e-300, None))


def run_lds(model, tokenizer, train_texts: Sequence[str], train_labels: Sequence[int], test_texts: Sequence[str],
            test_labels: Sequence[int], *, config: LDSConfig | None = None, engine_config: EngineConfig | None = None,
            model_dir: str | os.PathLike | None = None, progress: Progress | None = None,
            cancel: Cancel | None = None) -> LDSResult:
    """Retrain on random subsets, score every variant from the model under study, and report the LDS of each.

    Args:
        model, tokenizer: The classifier. With ``recipe="head"`` its head is retrained on frozen features and the
            model under study is that head trained on all of ``train_texts``; with ``"finetune"`` the model itself
            is under study and ``model_dir`` (its folder, with ``finetune.json``) gives the recipe.
        train_texts, train_labels: The training set, [n_train] (labels are class ids).
        test_texts, test_labels: The test examples whose outcomes are predicted, [n_test].
        config: Subsets, fraction, seeds, recipe, measure and the scoring variants.
        engine_config: ``max_length``, ``batch_size``, ``dtype``, ``device`` and (finetune recipe) ``layers`` of the
            scoring; its method, Fisher and damping are replaced by each variant's.
        progress: ``progress(done, total, stage)``. cancel: ``cancel() -> bool``, checked between retrains.

    Returns:
        LDSResult. Raises LDSCancelled when cancelled (finished retrains stay cached).
    """
    started = time.perf_counter()
    config, engine_config = config or LDSConfig(), engine_config or EngineConfig()
    train_texts, test_texts = [str(t) for t in train_texts], [str(t) for t in test_texts]
    train_labels = np.asarray(train_labels, dtype=np.int64)
    test_labels = np.asarray(test_labels, dtype=np.int64)
    if len(train_texts) != len(train_labels) or len(test_texts) != len(test_labels):
        raise DataError("every text needs one label")
    if len(test_texts) < 1:
        raise DataError("no test examples")
    report = progress or (lambda done, total, stage: None)
    seconds: dict[str, float] = {}

    if config.recipe == "head":
        trainer = HeadTrainer(model, tokenizer, train_texts, test_texts, recipe=config.head, config=engine_config,
                              progress=report)
        seconds["features"] = time.perf_counter() - started
        study = trainer.model_with(trainer.train(None, train_labels, 0))
        scoring = engine_config.replace(layers="head")
        recipe_text = config.head.describe()
        folder = cache_dir("lds", "retrains", stable_hash({"head": trainer.key, "labels": train_labels.tolist()}))
        retrainer = _Retrainer(folder, lambda mask, seed: train_head_subset(trainer, mask, train_labels, seed))
    else:
        from influence_core.training.finetune import library_versions
        from influence_core.training.retrain import recipe_of

        if model_dir is None:
            raise ConfigError("the finetune recipe needs the model's folder (with finetune.json)")
        recipe = recipe_of(model_dir)
        study, scoring = model, engine_config
        recipe_text = f"finetune (the recipe of {Path(str(model_dir)).name}: " + ", ".join(
            f"{k} {v}" for k, v in recipe.hyperparameters.items()) + ")"
        folder = cache_dir("lds", "retrains", stable_hash({"finetune": recipe, "texts": stable_hash(train_texts),
                                                           "labels": train_labels.tolist(),
                                                           "test": stable_hash(test_texts),
                                                           "versions": library_versions()}))
        retrainer = _Retrainer(folder, lambda mask, seed: train_finetune_subset(
            recipe, train_texts, train_labels.tolist(), test_texts, mask, seed, cancel))
        seconds["features"] = 0.0

    masks = draw_subsets(len(train_texts), config.subsets, config.fraction, config.subset_seed)
    actual = np.zeros((config.seeds, config.subsets, len(test_texts)))
    total = config.subsets * config.seeds
    retrain_started, trained, train_time = time.perf_counter(), 0, 0.0
    for s in range(config.subsets):
        for seed in range(config.seeds):
            if cancel is not None and cancel():
                raise LDSCancelled(f"cancelled after {s * config.seeds + seed} of {total} retrains; they are kept")
            one = time.perf_counter()
            logprobs, fresh = retrainer.logprobs(masks[s], seed)
            if fresh:
                trained += 1
                train_time += time.perf_counter() - one
            actual[seed, s] = outcome(logprobs, test_labels, config.measure)
            report(s * config.seeds + seed + 1, total, "retrain on subsets")
    seconds["retrain"] = time.perf_counter() - retrain_started
    seconds["per_retrain"] = train_time / trained if trained else float("nan")

    scoring_started = time.perf_counter()
    rows = []
    target = actual.mean(axis=0)
    evaluate = lambda scores: linear_datamodeling_score(  # noqa: E731
        scores, masks, target, measure=config.measure, bootstrap=config.bootstrap, seed=config.subset_seed)
    for variant in score_variants(study, tokenizer, scoring, train_texts, train_labels, test_texts, test_labels,
                                  config=config, progress=report, cancel=cancel):
        value = evaluate(variant.pop("scores"))
        rows.append({**variant, "lds": value.lds, "ci_low": value.ci_low, "ci_high": value.ci_high,
                     "subsets": config.subsets})
    rng = np.random.default_rng(config.subset_seed + 1)
    value = evaluate(rng.standard_normal((len(test_texts), len(train_texts))))
    rows.append({"variant": "random", "method": "random", "fisher": "", "damping": float("nan"), "relative": False,
                 "lds": value.lds, "ci_low": value.ci_low, "ci_high": value.ci_high, "subsets": config.subsets})
    seconds["scoring"] = time.perf_counter() - scoring_started
    ceiling = None
    if config.seeds >= 2:
        ceiling = summarise(spearman_per_column(actual[0], actual[1]), bootstrap=config.bootstrap,
                            seed=config.subset_seed)
    seconds["total"] = time.perf_counter() - started
    return LDSResult(table=pd.DataFrame(rows), ceiling=ceiling, recipe=recipe_text, measure=config.measure,
                     n_train=len(train_texts), n_test=len(test_texts), subsets=config.subsets, fraction=config.fraction,
                     seeds=config.seeds, seconds=seconds, retrained=trained,
                     damping_mode="relative" if config.relative_damping else "absolute")


def score_variants(model, tokenizer, engine_config: EngineConfig, train_texts, train_labels, test_texts, test_labels,
                   *, config: LDSConfig, progress: Progress | None = None, cancel: Cancel | None = None):
    """Yield one dict per scoring variant: ``variant``, ``method``, ``fisher``, ``damping``, ``relative`` and
    ``scores`` [n_test, n_train] (positive = helpful). Factors are fitted once per Fisher (EK-FAC's include what
    K-FAC needs) and every damping of a method comes from one gradient pass."""
    dampings = [float(d) for d in config.dampings]
    curvature = [m for m in config.methods if m != "identity"]
    mode = "relative_damping" if config.relative_damping else "damping"

    def check() -> None:
        if cancel is not None and cancel():
            raise LDSCancelled("cancelled while scoring; the retrains are kept")

    def stage(name: str) -> Progress | None:
        return None if progress is None else (lambda done, total, inner: progress(done, total, f"{name}: {inner}"))

    for fisher in config.fishers if curvature else ():
        check()
        base = engine_config.replace(fisher=fisher, **{mode: dampings[0]}, **(
            {"relative_damping": None} if mode == "damping" else {}))
        fit_method = "ekfac" if "ekfac" in curvature else "kfac"
        fitter = InfluenceEngine(model, tokenizer, base.replace(method=fit_method))
        factors = fitter.fit(train_texts, train_labels, progress=stage(f"fit factors ({fisher} Fisher)"))
        for method in curvature:
            check()
            engine = fitter if method == fit_method else InfluenceEngine(model, tokenizer, base.replace(method=method))
            engine.factors = factors
            table = engine.score(test_texts, test_labels, train_texts, train_labels, dampings=dampings,
                                 self_influence=config.relative, progress=stage(f"score {method} ({fisher} Fisher)"))
            for k, damping in enumerate(table.dampings):
                for relative in (False, True) if config.relative else (False,):
                    scores = table.relative(k) if relative else table.total(k)
                    name = f"{method} {fisher}{' relative' if relative else ''} {damping:g}"
                    yield {"variant": name, "method": method, "fisher": fisher, "damping": float(damping),
                           "relative": relative, "scores": scores}
            if method != "ekfac":
                continue
            for size in config.index_projections:
                check()
                index = GradientIndex.build(engine, train_texts, train_labels,
                                            config=IndexConfig(projection=int(size), exact=False),
                                            progress=stage(f"index k={size} ({fisher} Fisher)"))
                estimates = index.estimates(test_texts, test_labels, dampings=dampings)  # [K, n_test, n_train]
                for k, damping in enumerate(table.dampings):
                    yield {"variant": f"index k={size} {fisher} {damping:g}", "method": "index", "fisher": fisher,
                           "damping": float(damping), "relative": False, "scores": estimates[k]}
    if "identity" in config.methods:
        check()
        engine = InfluenceEngine(model, tokenizer, engine_config.replace(method="identity"))
        table = engine.score(test_texts, test_labels, train_texts, train_labels, self_influence=config.relative,
                             progress=stage("score identity"))
        for relative in (False, True) if config.relative else (False,):
            yield {"variant": "identity" + (" relative" if relative else ""), "method": "identity", "fisher": "",
                   "damping": float("nan"), "relative": relative,
                   "scores": table.relative(0) if relative else table.total(0)}


__all__ = [
    "DEFAULT_DAMPINGS", "HeadParams", "HeadRecipe", "HeadTrainer", "LDSCancelled", "LDSConfig", "LDSResult", "LDSValue",
    "MEASURES", "RECIPES", "draw_subsets", "linear_datamodeling_score", "outcome", "run_lds", "score_variants",
    "spearman_per_column", "summarise", "train_finetune_subset", "train_head_subset",
]
