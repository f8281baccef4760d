"""Which training labels are wrong: several suspicion rankings, a combined one, and how to grade them.

Every ranking is a score per training example, shape [n_train], where **higher = more suspicious**:

- ``self_influence``: ``I(m, m) = g_m^T (F + damping)^-1 g_m`` (EK-FAC, damped), as in Koh & Liang and
  kronfluence's mislabel example. A wrong label must be memorised, so its own loss depends strongly on its
  weight.
- ``trusted_influence``: minus the example's summed influence on a held-out slice with labels one trusts
  (``-sum_q I(q, m)``). A wrong label pushes the model away from clean data, so its influence there is
  negative (harmful) and this score is high.
- ``relative_harm``: minus the example's mean *relative* influence on the trusted slice,
  ``-mean_q I(q, m) / sqrt(I(q, q) I(m, m))`` (a cosine in the damped Fisher metric, as in RelatIF, Barshan et
  al. 2020). Raw influence is dominated by examples with large gradients, and a hard but correctly labelled
  example has a large gradient that *helps* similar clean examples; dividing by the norms leaves the
  direction: does the example pull the model away from what clean data needs?
- ``loss``: cross-entropy of the given label, ``-log p_y``.
- ``margin``: minus the prediction margin, ``max_{c != y} p_c - p_y``, in [-1, 1].
- ``oof_loss``, ``oof_margin``: loss and margin from *out-of-fold* probabilities (each example scored by a model
  that did not train on it: :func:`influence_core.training.crossfit.cross_fit`, or the user's own). A memorised
  wrong label has a low in-sample loss but a high out-of-fold one.
- ``cleanlab``: one minus cleanlab's label-quality score (``cleanlab.rank.get_label_quality_scores``, confident
  learning, Northcutt et al. 2021) from the out-of-fold probabilities only; :func:`confident_learning` also
  returns cleanlab's estimate of how many labels are wrong (``cleanlab.count.num_label_issues``).
- ``low_aum``, ``low_confidence``, ``variability``, ``forgetting``: training dynamics recorded during fine-tuning
  (:func:`dynamics_signals`): minus the area under the margin (AUM, Pleiss et al. 2020: mean over epochs of the
  given label's logit minus the largest other), one minus the data-map confidence (mean p_y over epochs,
  Swayamdipta et al. 2020), its standard deviation (high = ambiguous rather than wrong), and forgetting events
  (Toneva et al. 2019: correct at one epoch, wrong at the next; never learned counts as forgotten every epoch).
- ``combined``: the mean of the percentile ranks of the available parts chosen by :func:`combined_parts` (see
  :func:`combine`); ``rank`` orders it (1 = most suspicious).

``loss`` and ``margin`` use the model's in-sample probabilities (or the ``probs`` given, for compatibility).
Without a trusted slice, :func:`propose_trusted_slice` proposes one: the examples predicted most confidently and
consistently out of fold, in sample and across epochs. The core functions are pure: :func:`mislabel_scores` works on a cached
:class:`~influence_core.engine.scores.ScoreTable` (the app's test slice serves as the trusted slice) and
:func:`training_signals` computes the same inputs for a large training set from one gradient pass (the
CLI's ``mislabels`` command). :func:`evaluate_rankings` grades rankings against known mislabels.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats

from influence_core.engine.scores import ScoreTable
from influence_core.errors import DataError

Progress = Callable[[int, int, str], None]

#: Every ranking column of :func:`mislabel_scores`, in display order (``combined`` last).
RANKINGS = ("self_influence", "trusted_influence", "relative_harm", "loss", "margin", "oof_loss", "oof_margin",
            "cleanlab", "low_aum", "low_confidence", "variability", "forgetting", "combined")
#: The rankings averaged (as percentile ranks) into ``combined`` when only the model under study is available (no
#: out-of-fold probabilities, no training dynamics): the data scientist's baseline (loss: the model
#: disagrees with the label) and the curvature-aware direction test (relative harm: the example pulls the model
#: away from what clean data needs). They fail differently: loss misses flips the model has memorised,
#: relative harm is blind to how wrong the model is on the example. Chosen on development data only (SST-2 seed 100
#: of benchmarks/mislabel.py and the demo corpus's planted errors, never the evaluation seeds): on seed 100 it was
#: the only mean of ranks that beat both of its parts on ROC-AUC, average precision and top-20% recall; means
#: with self-influence or raw trusted influence scored lower (see the README). ``margin`` orders binary examples
#: exactly as ``loss`` and would count twice.
FALLBACK_PARTS = ("relative_harm", "loss")
#: ``combined`` when out-of-fold probabilities or training dynamics are available: the signals that see memorised
#: flips (out-of-fold loss, cleanlab's class-calibrated quality, AUM) and the direction test against a trusted slice
#: (relative harm; the proposed one when the user has none). Fixed without looking at evaluation labels: one
#: representative per family of evidence (held-out disagreement, confident learning, training dynamics, influence),
#: equal weights; margin variants and data-map confidence order binary examples almost as loss and AUM do and would
#: count twice. Measured against each part on the development data only (benchmarks/mislabel.py --dev).
COMBINED_PARTS = ("oof_loss", "cleanlab", "low_aum", "relative_harm")
#: Without any of these the model's in-sample loss is all there is: ``combined`` falls back to FALLBACK_PARTS.
HELD_OUT_SIGNALS = ("oof_loss", "cleanlab", "low_aum")
#: One-line explanations for the UI and the CLI.
DESCRIPTIONS = {
    "self_influence": "EK-FAC self-influence I(m, m): how much the review's own loss depends on its weight.",
    "trusted_influence": "Minus the review's summed influence on the trusted slice: high = it hurts clean data.",
    "relative_harm": "Minus the review's mean relative influence (a cosine) on the trusted slice: high = it pulls "
                     "the model away from clean data, whatever its size.",
    "loss": "Cross-entropy of the given label (out-of-sample when such predictions are supplied).",
    "margin": "Minus the prediction margin p(given label) - max p(other label).",
    "oof_loss": "Cross-entropy of the given label under a model that never trained on the review (cross-fitting): "
                "high even when the model under study memorised a wrong label.",
    "oof_margin": "Minus the out-of-fold prediction margin: the held-out model prefers another label.",
    "cleanlab": "One minus cleanlab's label quality (confident learning on the out-of-fold probabilities).",
    "low_aum": "Minus the area under the margin (AUM): during training the model kept preferring another label.",
    "low_confidence": "One minus the mean probability of the given label over the training epochs (data map).",
    "variability": "Spread of that probability over the epochs: high = ambiguous or hard rather than wrong.",
    "forgetting": "Forgetting events during training (learned, then wrong again); never learned counts at every epoch.",
    "combined": "Mean percentile rank of " + ", ".join(COMBINED_PARTS) + " (those available; without out-of-fold "
                "probabilities or training dynamics: " + ", ".join(FALLBACK_PARTS) + ").",
}
#: Reasons in words for the review card, keyed by signal: why a high percentile is suspicious.
REASONS = {
    "self_influence": "its own loss depends strongly on its weight (memorised)",
    "trusted_influence": "it hurts the trusted slice",
    "relative_harm": "it pulls the model away from the trusted slice",
    "loss": "the model disagrees with the label",
    "margin": "the model prefers another label",
    "oof_loss": "a model that never saw it disagrees with the label",
    "oof_margin": "a model that never saw it prefers another label",
    "cleanlab": "confident learning flags the label",
    "low_aum": "during training the model kept preferring another label",
    "low_confidence": "the label's probability stayed low during training",
    "variability": "the model wavered on it during training",
    "forgetting": "the model learned and forgot it during training",
}


# ----------------------------------------------------------------------------------------------- inputs
@dataclass
class TrainingSignals:
    """Per-training-example quantities the rankings are built from.

    Attributes:
        dampings: Damping values, shape [K].
        layers: Layer names, length L.
        self_influence: ``I(m, m)``, shape [K, L, n_train] (>= 0), or None.
        trusted_influence: ``sum_q I(q, m)`` over the trusted slice, shape [K, L, n_train]; positive = helpful
            for the trusted slice. None without a trusted slice.
        train_probs: Predicted class probabilities, shape [n_train, C].
        train_labels: Given labels, shape [n_train].
        n_trusted: Size of the trusted slice (0 without one).
        trusted_relative: ``sum_q I(q, m) / sqrt(I(q, q))`` over the trusted slice, shape [K, L, n_train], where
            ``I(q, q)`` is the trusted example's self-influence over *all* layers at that damping; None without a
            trusted slice. :meth:`relative_total` divides it by ``sqrt(I(m, m))`` and ``n_trusted``.
        trusted_pairwise: ``I(q, m)`` per trusted example, shape [K, L, n_trusted, n_train], and
        trusted_self_influence: ``I(q, q)``, shape [K, L, n_trusted]: kept by :meth:`from_table` (references to
            the table's arrays, no copy) so that :meth:`relative_total` normalises over the chosen layers exactly
            as :meth:`ScoreTable.relative` does. None for one-pass signals.
    """

    dampings: np.ndarray
    layers: list[str]
    self_influence: np.ndarray | None
    trusted_influence: np.ndarray | None
    train_probs: np.ndarray
    train_labels: np.ndarray
    n_trusted: int = 0
    meta: dict = field(default_factory=dict)
    trusted_relative: np.ndarray | None = None
    trusted_pairwise: np.ndarray | None = None
    trusted_self_influence: np.ndarray | None = None

    @classmethod
    def from_table(cls, table: ScoreTable) -> TrainingSignals:
        """The signals of a ScoreTable; its test examples are the trusted slice."""
        trusted = table.pairwise.sum(axis=2) if table.n_test else None
        relative = None
        if table.n_test:
            norms = np.sqrt(np.clip(table.test_self_influence.sum(axis=1), 0.0, None))  # [K, n_test]
            with np.errstate(divide="ignore", invalid="ignore"):
                inverse = np.where(norms > 0, 1.0 / norms, 0.0)
            relative = np.einsum("klqm,kq->klm", table.pairwise, inverse)
        return cls(dampings=np.asarray(table.dampings), layers=list(table.layers), self_influence=table.self_influence,
                   trusted_influence=trusted, train_probs=np.asarray(table.train_probs),
                   train_labels=np.asarray(table.train_labels), n_trusted=table.n_test, meta=dict(table.meta),
                   trusted_relative=relative, trusted_pairwise=table.pairwise if table.n_test else None,
                   trusted_self_influence=table.test_self_influence if table.n_test else None)

    @property
    def n_train(self) -> int:
        return len(self.train_labels)

    def _layer_index(self, layers: Sequence[str] | None) -> list[int]:
        if layers is None:
            return list(range(len(self.layers)))
        unknown = [name for name in layers if name not in self.layers]
        if unknown:
            raise DataError(f"layers not in these scores: {', '.join(unknown)}; choose among {', '.join(self.layers)}")
        return [self.layers.index(name) for name in layers]

    def self_total(self, k: int = 0, layers: Sequence[str] | None = None) -> np.ndarray | None:
        """Self-influence summed over ``layers``, shape [n_train], or None if not computed."""
        if self.self_influence is None:
            return None
        return self.self_influence[k, self._layer_index(layers)].sum(axis=0)

    def trusted_total(self, k: int = 0, layers: Sequence[str] | None = None) -> np.ndarray | None:
        """Summed influence on the trusted slice, shape [n_train] (positive = helpful), or None."""
        if self.trusted_influence is None:
            return None
        return self.trusted_influence[k, self._layer_index(layers)].sum(axis=0)

    def relative_total(self, k: int = 0, layers: Sequence[str] | None = None) -> np.ndarray | None:
        """Mean relative influence on the trusted slice, ``mean_q I(q, m) / sqrt(I(q, q) I(m, m))``, shape
        [n_train] in [-1, 1] (positive = helpful), or None; pairs with a zero self-influence count 0.

        With per-example trusted scores (:meth:`from_table`) every term, ``I(q, m)``, ``I(q, q)`` and ``I(m, m)``,
        is summed over ``layers``: the mean over q of ``ScoreTable.relative(k, layers)``, the table's relative
        influence. One-pass signals (:func:`training_signals`) only keep ``sum_q I(q, m) / sqrt(I(q, q))``, so
        there ``I(q, q)`` spans every layer while ``I(q, m)`` and ``I(m, m)`` follow ``layers``; the two agree
        when ``layers`` is None.
        """
        if self.self_influence is None or not self.n_trusted:
            return None
        if self.trusted_pairwise is not None and self.trusted_self_influence is not None:
            index = self._layer_index(layers)
            pairwise = self.trusted_pairwise[k, index].sum(axis=0)  # [n_trusted, n_train]
            q_self = self.trusted_self_influence[k, index].sum(axis=0)  # [n_trusted]
            denominator = np.sqrt(np.outer(q_self, self.self_total(k, layers)))
            with np.errstate(divide="ignore", invalid="ignore"):
                return np.where(denominator > 0, pairwise / denominator, 0.0).mean(axis=0)
        if self.trusted_relative is None:
            return None
        norms = np.sqrt(np.clip(self.self_total(k, layers), 0.0, None))
        summed = self.trusted_relative[k, self._layer_index(layers)].sum(axis=0)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(norms > 0, summed / norms, 0.0) / self.n_trusted


def training_signals(engine, train_texts, train_labels, trusted_texts=None, trusted_labels=None, *,
                     dampings: Sequence[float] | None = None, progress: Progress | None = None,
                     distributed=None) -> TrainingSignals:
    """Self-influence, summed influence on the trusted slice and predictions from one training-gradient pass.

    The trusted slice's gradients are rotated and *summed* before the training pass, so memory does not
    grow with its size and the training examples are visited once (``engine.score`` would keep one
    rotated gradient per trusted example and pass over the training set once per chunk of them). By
    linearity ``trusted_influence[k, l, m] == engine.score(...).pairwise[k, l].sum(axis=0)[m]``.

    Args:
        engine: A fitted :class:`~influence_core.engine.influence.InfluenceEngine` (factors fitted or loaded).
        train_texts, train_labels: The training examples to rank (n_train).
        trusted_texts, trusted_labels: The trusted slice, or None.
        dampings: Damping values to compute (default: the engine's).
        distributed: A :class:`~influence_core.engine.distributed.Distributed`: each rank takes its shard of the
            training examples (the trusted slice is summed on every rank) and every rank gets all the signals.

    Returns:
        TrainingSignals with arrays [K, L, n_train].
    """
    if distributed is not None and distributed.active:
        return _sharded_signals(engine, train_texts, train_labels, trusted_texts, trusted_labels, dampings,
                                progress, distributed)
    import torch

    from influence_core.engine.batches import num_batches
    from influence_core.engine.influence import ProgressCounter

    values = engine.damping_values(dampings)
    train = engine.encode(train_texts, train_labels)
    if (train.labels < 0).any():
        raise DataError("every training example needs a label to be ranked")
    trusted = None
    if trusted_texts is not None:
        trusted = engine.encode(trusted_texts, trusted_labels)
        if len(trusted) == 0:
            raise DataError("the trusted slice is empty")
        if (trusted.labels < 0).any():
            raise DataError("every trusted example needs a label")
    rotations, weights = engine.preconditioner(values)
    dtype, device = engine.config.torch_dtype, engine.config.device
    sizes = {name: engine.layer_size(name) for name in engine.layers}
    per_query = sum(sizes.values()) * torch.tensor([], dtype=dtype).element_size()
    chunk = max(1, engine.query_memory_bytes // max(per_query, 1))
    n_trusted = 0 if trusted is None else len(trusted)
    steps = num_batches(len(train), engine.config.batch_size)
    steps += sum(num_batches(min(chunk, n_trusted - s), engine.config.batch_size) for s in range(0, n_trusted, chunk))
    tracker = ProgressCounter(progress, steps)
    k = len(values)
    # row 0: sum_q g_q; row 1 + j: sum_q g_q / sqrt(I(q, q)) at damping j (rotated gradients; one row per damping
    # because the normalisation depends on it). The training pass meets all 1 + K rows at every damping, and
    # the relative sums are the diagonal (row 1 + j, damping j).
    summed = {name: torch.zeros(1 + k, size, dtype=dtype, device=device) for name, size in sizes.items()}
    with engine.session():
        for start in range(0, n_trusted, chunk):
            rows = np.arange(start, min(start + chunk, n_trusted))
            queries, _, q_self = engine.query_gradients(trusted.subset(rows), rotations, weights, tracker)
            norms = torch.as_tensor(np.sqrt(np.clip(q_self.sum(axis=1), 0.0, None)), dtype=dtype, device=device)
            inverse = torch.where(norms > 0, 1.0 / norms, torch.zeros_like(norms))  # [K, n]
            for name in engine.layers:
                summed[name][0] += queries[name].sum(dim=0)
                summed[name][1:] += inverse @ queries[name]
            del queries
        block, self_values, probs = engine.training_pass(train, summed, rotations, weights, True, tracker)
    relative = None
    if trusted is not None:
        relative = np.stack([block[j, :, 1 + j, :] for j in range(k)])  # [K, L, n_train]
    return TrainingSignals(
        dampings=values, layers=list(engine.layers), self_influence=self_values,
        trusted_influence=block[:, :, 0, :] if trusted is not None else None, train_probs=probs,
        train_labels=train.labels.copy(), n_trusted=n_trusted,
        meta={"config": engine.config.key(), "fingerprint": engine.fingerprint}, trusted_relative=relative,
    )


def _sharded_signals(engine, train_texts, train_labels, trusted_texts, trusted_labels, dampings, progress,
                     distributed) -> TrainingSignals:
    """:func:`training_signals` on this rank's shard of the training examples, gathered in the original order."""
    from influence_core.engine.distributed import digest_encoded, factors_key

    train = engine.encode(train_texts, train_labels)
    trusted = None if trusted_texts is None else engine.encode(trusted_texts, trusted_labels)
    index = distributed.shard(len(train))
    inputs = {"fingerprint": engine.fingerprint, "config": engine.config.key(), "train": digest_encoded(train),
              "trusted": None if trusted is None else digest_encoded(trusted), "rows": index.tolist(),
              "dampings": list(map(float, dampings or [])), "factors": factors_key(engine)}
    keys = ("self_influence", "trusted_influence", "trusted_relative", "train_probs", "train_labels")
    with distributed.guard("mislabel signals"):
        def compute():
            local = training_signals(engine, train.subset(index), None, trusted, None, dampings=dampings,
                                     progress=progress)
            return {"dampings": local.dampings, **{key: getattr(local, key) for key in keys}}

        arrays = distributed.resumable("mislabel-signals", inputs, compute)
    merged = distributed.gather_rows({key: arrays[key] for key in keys}, index, len(train),
                                     {key: -1 for key in keys[:3]})
    distributed.log(f"mislabel signals of {len(index)} of {len(train)} training examples")
    return TrainingSignals(
        dampings=np.asarray(arrays["dampings"]), layers=list(engine.layers),
        n_trusted=0 if trusted is None else len(trusted),
        meta={"config": engine.config.key(), "fingerprint": engine.fingerprint, "world_size": distributed.world_size},
        **merged,
    )


# ----------------------------------------------------------------------------------------------- held-out signals
def confident_learning(labels: np.ndarray, out_of_fold: np.ndarray) -> tuple[np.ndarray, int]:
    """cleanlab's label quality and its estimate of how many labels are wrong, from out-of-fold probabilities.

    Args:
        labels: Given labels, shape [n].
        out_of_fold: Class probabilities of each example from a model that did not train on it, shape [n, C]
            (in-sample probabilities would make confident learning trust memorised labels).

    Returns:
        ``(quality, n_issues)``: quality [n] in [0, 1], *lower* = the label is less likely correct (the
        self-confidence after subtracting each class's mean confidence, ``adjust_pred_probs=True``: a class the
        model is less sure of overall does not flood the top); ``n_issues``: cleanlab's estimate of the number of
        wrong labels (``num_label_issues``, off-diagonal mass of the confident joint).
    """
    from cleanlab import count, rank

    labels = np.asarray(labels, dtype=np.int64)
    probs = np.asarray(out_of_fold, dtype=float)
    quality = rank.get_label_quality_scores(labels, probs, adjust_pred_probs=True)
    n_issues = int(count.num_label_issues(labels, probs))
    return np.asarray(quality, dtype=float), n_issues


def dynamics_signals(runs: Sequence[tuple[np.ndarray, object]], n: int) -> pd.DataFrame:
    """Training-dynamics statistics of each of ``n`` examples, pooled over every fine-tune that trained on it.

    Args:
        runs: ``(rows, dynamics)`` per fine-tune: ``rows`` [n_run] the examples' positions in this table (in the
            dynamics' order), ``dynamics`` a :class:`~influence_core.training.finetune.TrainingDynamics`
            (``given_prob``, ``margin``, ``correct``, each [epochs, n_run]). The model under study and the
            cross-fit folds count alike.
        n: Number of examples.

    Returns:
        One row per example: ``aum`` (mean logit margin over every recorded epoch; negative = the model preferred
        another label), ``confidence`` (mean p_y), ``variability`` (std of p_y), ``forgetting`` (1 -> 0 steps of
        correctness within each run, summed; a run that never got it right counts its epochs), ``epochs_seen``.
        NaN where no run trained on the example.
    """
    probs: list[list[np.ndarray]] = [[] for _ in range(n)]
    margins: list[list[np.ndarray]] = [[] for _ in range(n)]
    forgetting = np.zeros(n)
    seen = np.zeros(n, dtype=np.int64)
    for rows, dynamics in runs:
        rows = np.asarray(rows, dtype=np.int64)
        given, margin, correct = dynamics.given_prob, dynamics.margin, np.asarray(dynamics.correct, dtype=bool)
        if given.shape[1] != len(rows):
            raise DataError(f"training dynamics of {given.shape[1]} examples given for {len(rows)} rows")
        keep = rows >= 0
        events = (correct[:-1] & ~correct[1:]).sum(axis=0).astype(float)
        never = ~correct.any(axis=0)
        events[never] = correct.shape[0]
        for j in np.flatnonzero(keep):
            i = rows[j]
            probs[i].append(given[:, j])
            margins[i].append(margin[:, j])
        np.add.at(forgetting, rows[keep], events[keep])
        np.add.at(seen, rows[keep], correct.shape[0])
    frame = pd.DataFrame({
        "aum": [float(np.nanmean(np.concatenate(m))) if m else np.nan for m in margins],
        "confidence": [float(np.nanmean(np.concatenate(p))) if p else np.nan for p in probs],
        "variability": [float(np.nanstd(np.concatenate(p))) if p else np.nan for p in probs],
        "forgetting": np.where(seen > 0, forgetting, np.nan),
        "epochs_seen": seen,
    })
    return frame


def propose_trusted_slice(labels: np.ndarray, in_sample: np.ndarray, out_of_fold: np.ndarray | None = None,
                          variability: np.ndarray | None = None, *, fraction: float = 0.2) -> np.ndarray:
    """A *proposed* trusted slice when the user has none: the examples predicted most confidently and consistently.

    An example is a candidate when both its in-sample and (if given) out-of-fold probability of the given label
    exceed 1/2; candidates are ordered by ``min(p_in, p_oof) - variability`` (variability of p_y over the
    training epochs, if given) and the top ``fraction`` of all examples is taken, spread over the classes in
    proportion to their size so the slice covers every class. No label is checked: it is a guess, to be labelled
    "proposed trusted slice" wherever it is shown.

    Returns:
        Bool mask [n]; True = in the proposed trusted slice.
    """
    labels = np.asarray(labels, dtype=np.int64)
    rows = np.arange(len(labels))
    score = np.asarray(in_sample, dtype=float)[rows, labels]
    if out_of_fold is not None:
        score = np.minimum(score, np.asarray(out_of_fold, dtype=float)[rows, labels])
    candidate = score > 0.5
    if variability is not None:
        score = score - np.nan_to_num(np.asarray(variability, dtype=float), nan=0.0)
    chosen = np.zeros(len(labels), dtype=bool)
    for label in np.unique(labels):
        members = np.flatnonzero((labels == label) & candidate)
        take = int(math.ceil(fraction * int((labels == label).sum())))
        chosen[members[np.argsort(-score[members], kind="stable")[:take]]] = True
    return chosen


# ----------------------------------------------------------------------------------------------- rankings
def combined_parts(available: Sequence[str]) -> list[str]:
    """The rankings ``combined`` averages, given those ``available``: :data:`COMBINED_PARTS` when a held-out signal
    (out-of-fold loss, cleanlab, AUM) is among them, else :data:`FALLBACK_PARTS`; only those available."""
    available = list(available)
    parts = COMBINED_PARTS if any(name in available for name in HELD_OUT_SIGNALS) else FALLBACK_PARTS
    return [name for name in parts if name in available]


def percentile_ranks(scores: np.ndarray) -> np.ndarray:
    """Rank of each score divided by n, in (0, 1]; ties share their mean rank, NaN ranks lowest. Shape [n]."""
    scores = np.asarray(scores, dtype=float)
    if scores.size == 0:
        return scores.copy()
    filled = np.where(np.isnan(scores), -np.inf, scores)
    return stats.rankdata(filled, method="average") / scores.size


def combine(columns: Mapping[str, np.ndarray]) -> np.ndarray:
    """Mean of the percentile ranks of several suspicion scores (each [n], higher = more suspicious), [n].

    Percentile ranks put scores on one scale without any fitted weight: the rankings are on incomparable
    scales (self-influence spans orders of magnitude), and equal weights need no labels to tune.
    """
    if not columns:
        raise DataError("nothing to combine: no ranking is available")
    return np.mean([percentile_ranks(values) for values in columns.values()], axis=0)


def label_losses(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Cross-entropy of the given labels, ``-log p_y``, shape [n]; higher = more suspicious."""
    probs, labels = np.asarray(probs, dtype=float), np.asarray(labels, dtype=int)
    return -np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, None))


def negative_margins(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``max_{c != y} p_c - p_y``, shape [n], in [-1, 1]; higher = more suspicious (the model prefers another class)."""
    probs, labels = np.asarray(probs, dtype=float), np.asarray(labels, dtype=int)
    rows = np.arange(len(labels))
    given = probs[rows, labels]
    others = probs.copy()
    others[rows, labels] = -np.inf
    return others.max(axis=1) - given


def _check_probs(probs: np.ndarray, n: int, classes: int) -> np.ndarray:
    probs = np.asarray(probs, dtype=float)
    if probs.ndim != 2 or probs.shape[0] != n:
        raise DataError(f"out-of-sample probabilities must have one row per training example ({n}), got {probs.shape}")
    if classes and probs.shape[1] != classes:
        raise DataError(f"out-of-sample probabilities have {probs.shape[1]} columns but the model has {classes} classes")
    if not np.isfinite(probs).all() or (probs < 0).any():
        raise DataError("out-of-sample probabilities must be finite and non-negative")
    return probs / np.clip(probs.sum(axis=1, keepdims=True), 1e-12, None)


def mislabel_scores(table: ScoreTable | TrainingSignals, k: int = 0, layers: Sequence[str] | None = None,
                    trusted: bool = True, probs: np.ndarray | None = None,
                    parts: Sequence[str] | None = None, *, out_of_fold: np.ndarray | None = None,
                    dynamics: pd.DataFrame | None = None) -> pd.DataFrame:
    """Every suspicion ranking for the training examples of ``table``, without recomputing anything.

    Args:
        table: A ScoreTable (its test examples are the trusted slice) or :class:`TrainingSignals`.
        k: Damping index.
        layers: Layers to sum (default: all in the table).
        trusted: Include ``trusted_influence`` (only meaningful when the test slice's labels are trusted).
        probs: Probabilities [n_train, C] that replace the in-sample ones for ``loss`` and ``margin`` (kept for
            compatibility; prefer ``out_of_fold``).
        parts: The rankings averaged into ``combined`` (those unavailable are skipped); default
            :func:`combined_parts` of what is available.
        out_of_fold: Out-of-fold probabilities [n_train, C] (e.g. ``cross_fit(...).probs``): adds ``oof_loss``,
            ``oof_margin`` and ``cleanlab`` (cleanlab sees these only).
        dynamics: Training-dynamics statistics from :func:`dynamics_signals` (n_train rows): adds ``low_aum``,
            ``low_confidence``, ``variability``, ``forgetting`` (NaN rows, never trained on, rank lowest).

    Returns:
        DataFrame with n_train rows in training order and one column per available ranking of :data:`RANKINGS`
        (all: higher = more suspicious) and ``rank`` (1 = most suspicious by ``combined``). ``df.attrs`` holds
        ``probs`` ("out-of-sample" or "in-sample"), ``combined_parts``, ``n_trusted`` and, with out-of-fold
        probabilities, ``estimated_wrong_labels`` (cleanlab's count).
    """
    signals = TrainingSignals.from_table(table) if isinstance(table, ScoreTable) else table
    if not 0 <= k < len(signals.dampings):
        raise DataError(f"damping index {k} is outside 0..{len(signals.dampings) - 1}")
    columns: dict[str, np.ndarray] = {}
    self_values = signals.self_total(k, layers)
    if self_values is not None:
        columns["self_influence"] = self_values
    trusted_values = signals.trusted_total(k, layers) if trusted else None
    if trusted_values is not None:
        columns["trusted_influence"] = -trusted_values
    relative_values = signals.relative_total(k, layers) if trusted else None
    if relative_values is not None:
        columns["relative_harm"] = -relative_values
    source = signals.train_probs
    if probs is not None:
        source = _check_probs(probs, signals.n_train, signals.train_probs.shape[1])
    columns["loss"] = label_losses(source, signals.train_labels)
    columns["margin"] = negative_margins(source, signals.train_labels)
    estimated = None
    if out_of_fold is not None:
        held_out = _check_probs(out_of_fold, signals.n_train, signals.train_probs.shape[1])
        columns.update(held_out_columns(held_out, signals.train_labels))
        quality, estimated = confident_learning(signals.train_labels, held_out)
        columns["cleanlab"] = 1.0 - quality
    if dynamics is not None:
        columns.update(dynamics_columns(dynamics, signals.n_train))
    names = combined_parts(list(columns)) if parts is None else [name for name in parts if name in columns]
    used = {name: columns[name] for name in names}
    frame = pd.DataFrame(columns)
    frame["combined"] = combine(used)
    frame["rank"] = rank_order(frame["combined"].to_numpy())
    frame.attrs.update(probs="out-of-sample" if probs is not None else "in-sample", combined_parts=list(used),
                       n_trusted=signals.n_trusted if trusted_values is not None else 0)
    if estimated is not None:
        frame.attrs["estimated_wrong_labels"] = estimated
    return frame


def held_out_columns(out_of_fold: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
    """``oof_loss`` and ``oof_margin`` [n] (higher = more suspicious) from out-of-fold probabilities [n, C]."""
    return {"oof_loss": label_losses(out_of_fold, labels), "oof_margin": negative_margins(out_of_fold, labels)}


def dynamics_columns(dynamics: pd.DataFrame, n: int) -> dict[str, np.ndarray]:
    """The suspicion columns of :func:`dynamics_signals`' statistics, each [n], higher = more suspicious:
    ``low_aum`` (-aum), ``low_confidence`` (1 - confidence), ``variability``, ``forgetting``."""
    if len(dynamics) != n:
        raise DataError(f"training dynamics for {len(dynamics)} rows given for {n} training examples")
    return {"low_aum": -dynamics["aum"].to_numpy(dtype=float),
            "low_confidence": 1.0 - dynamics["confidence"].to_numpy(dtype=float),
            "variability": dynamics["variability"].to_numpy(dtype=float),
            "forgetting": dynamics["forgetting"].to_numpy(dtype=float)}


def rank_order(scores: np.ndarray) -> np.ndarray:
    """1-based rank of each score, highest first; ties keep row order, NaN last. Shape [n], int."""
    order = _descending(scores)
    ranks = np.empty(len(order), dtype=np.int64)
    ranks[order] = np.arange(1, len(order) + 1)
    return ranks


def rankings(table: ScoreTable, k: int = 0, layers: Sequence[str] | None = None, *,
             out_of_fold: np.ndarray | None = None, dynamics: pd.DataFrame | None = None) -> dict[str, np.ndarray]:
    """The rankings for the app's mislabel finder: ``{name: [n_train]}``, higher = more suspicious."""
    frame = mislabel_scores(table, k=k, layers=layers, out_of_fold=out_of_fold, dynamics=dynamics)
    return {name: frame[name].to_numpy() for name in RANKINGS if name in frame.columns}


def signal_percentiles(scores: Mapping[str, np.ndarray]) -> pd.DataFrame:
    """Percentile rank in (0, 1] of every example under every signal (1 = the most suspicious), [n, n_signals]."""
    return pd.DataFrame({name: percentile_ranks(np.asarray(values, dtype=float)) for name, values in scores.items()})


def suspicion_reasons(percentiles: Mapping[str, float], *, threshold: float = 0.9) -> str:
    """Why one example is suspected, in words: the signals that put it in their top ``1 - threshold``, most
    suspicious first, e.g. ``"a model that never saw it disagrees with the label (top 2%); ..."``."""
    flagged = sorted(((float(value), name) for name, value in percentiles.items()
                      if name in REASONS and np.isfinite(value) and value >= threshold), reverse=True)
    if not flagged:
        return f"no signal puts it in its top {1 - threshold:.0%}"
    return "; ".join(f"{REASONS[name]} (top {max(1.0 - value, 0.0) * 100:.0f}%)" if 1.0 - value >= 0.005 else
                     f"{REASONS[name]} (top)" for value, name in flagged)


# ----------------------------------------------------------------------------------------------- grading
def _descending(scores: np.ndarray) -> np.ndarray:
    scores = np.asarray(scores, dtype=float)
    return np.argsort(-np.where(np.isnan(scores), -np.inf, scores), kind="stable")


def _truth(truth: np.ndarray, n: int) -> np.ndarray:
    truth = np.asarray(truth).astype(bool).reshape(-1)
    if truth.shape != (n,):
        raise DataError(f"the ground truth has {truth.size} entries but there are {n} scores")
    return truth


def precision_at_k(scores: np.ndarray, truth: np.ndarray, k: int) -> float:
    """Share of true mislabels among the ``k`` highest scores (ties: earlier rows first)."""
    truth = _truth(truth, len(scores))
    k = int(k)
    if k < 1:
        raise DataError(f"k must be at least 1, got {k}")
    return float(truth[_descending(scores)[:k]].mean())


def recall_at_fraction(scores: np.ndarray, truth: np.ndarray, fraction: float) -> float:
    """Share of all true mislabels found when inspecting the top ``ceil(fraction * n)`` scores."""
    truth = _truth(truth, len(scores))
    if not truth.any():
        return float("nan")
    top = max(1, math.ceil(fraction * len(truth) - 1e-9))
    return float(truth[_descending(scores)[:top]].sum() / truth.sum())


def recall_curve(scores: np.ndarray, truth: np.ndarray) -> pd.DataFrame:
    """Inspecting the highest scores first: columns ``inspected`` (1..n), ``fraction`` (inspected / n),
    ``found`` (true mislabels so far), ``recall`` and ``precision``; one row per inspected example."""
    truth = _truth(truth, len(scores))
    found = np.cumsum(truth[_descending(scores)])
    inspected = np.arange(1, len(truth) + 1)
    total = max(int(truth.sum()), 1)
    return pd.DataFrame({"inspected": inspected, "fraction": inspected / len(truth), "found": found,
                         "recall": found / total, "precision": found / inspected})


def _finite(scores: np.ndarray) -> np.ndarray:
    """Scores with NaN below every finite value (NaN ranks lowest), as scikit-learn refuses NaN and infinity."""
    scores = np.asarray(scores, dtype=float)
    finite = scores[np.isfinite(scores)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    span = max(high - low, 1.0)
    scores = np.where(np.isposinf(scores), high + span, scores)
    return np.where(np.isnan(scores) | np.isneginf(scores), low - span, scores)


def roc_auc(scores: np.ndarray, truth: np.ndarray) -> float:
    """Probability that a random true mislabel scores above a random clean example (ties count 1/2).

    ``sklearn.metrics.roc_auc_score``; NaN scores rank lowest; NaN if one class is empty.
    """
    from sklearn.metrics import roc_auc_score

    truth = _truth(truth, len(scores))
    if truth.all() or not truth.any():
        return float("nan")
    return float(roc_auc_score(truth, _finite(scores)))


def average_precision(scores: np.ndarray, truth: np.ndarray) -> float:
    """``sum_n (R_n - R_{n-1}) P_n`` over distinct score thresholds, highest first
    (``sklearn.metrics.average_precision_score``: tied scores enter together). 1 = every mislabel ranked above
    every clean example; a random ranking scores about the mislabel rate. NaN without a true mislabel."""
    from sklearn.metrics import average_precision_score

    truth = _truth(truth, len(scores))
    if not truth.any():
        return float("nan")
    return float(average_precision_score(truth, _finite(scores)))


def evaluate_rankings(df: pd.DataFrame | Mapping[str, np.ndarray], truth: np.ndarray, *, k: int | None = None,
                      columns: Sequence[str] | None = None) -> pd.DataFrame:
    """Grade each ranking against known mislabels.

    Args:
        df: Scores, one column per ranking (higher = more suspicious), e.g. from :func:`mislabel_scores`.
        truth: True where the label is known to be wrong, shape [n].
        k: For precision at k; default the number of true mislabels.
        columns: Rankings to grade; default every known ranking column present (see :data:`RANKINGS`).

    Returns:
        One row per ranking: ``ranking``, ``roc_auc``, ``average_precision``, ``precision_at_k``,
        ``recall_at_10pct``, ``recall_at_20pct``; ``attrs["k"]`` is the k used.
    """
    frame = pd.DataFrame(df) if not isinstance(df, pd.DataFrame) else df
    if columns is None:
        columns = [name for name in frame.columns if name in RANKINGS]
        columns += [name for name in frame.columns if name not in RANKINGS and name != "rank"
                    and isinstance(df, Mapping) and not isinstance(df, pd.DataFrame)]
    truth = _truth(truth, len(frame))
    k = int(truth.sum()) if k is None else int(k)
    rows = []
    for name in columns:
        scores = frame[name].to_numpy(dtype=float)
        rows.append({"ranking": name, "roc_auc": roc_auc(scores, truth),
                     "average_precision": average_precision(scores, truth),
                     "precision_at_k": precision_at_k(scores, truth, k) if k >= 1 else float("nan"),
                     "recall_at_10pct": recall_at_fraction(scores, truth, 0.10),
                     "recall_at_20pct": recall_at_fraction(scores, truth, 0.20)})
    result = pd.DataFrame(rows, columns=["ranking", "roc_auc", "average_precision", "precision_at_k",
                                         "recall_at_10pct", "recall_at_20pct"])
    result.attrs["k"] = k
    return result


def probabilities_from_table(table: pd.DataFrame, label_names: Sequence[str], n: int, where: str) -> np.ndarray:
    """Probabilities [n, C] from a table: columns named by the labels (``prob_<label>`` too) or all numeric."""
    names = [str(name) for name in label_names]
    for prefix in ("", "prob_", "p_"):
        wanted = [prefix + name for name in names]
        if all(col in table.columns for col in wanted):
            values = table[wanted]
            break
    else:
        values = table.select_dtypes("number")
        if values.shape[1] != len(names):
            raise DataError(f"{where}: expected {len(names)} probability columns named {', '.join(names)} "
                            f"(or exactly {len(names)} numeric columns), found {', '.join(map(str, table.columns))}")
    return _check_probs(values.to_numpy(dtype=float), n, len(names))


__all__ = [
    "COMBINED_PARTS", "DESCRIPTIONS", "FALLBACK_PARTS", "HELD_OUT_SIGNALS", "RANKINGS", "REASONS", "TrainingSignals",
    "average_precision", "combine", "combined_parts", "confident_learning", "dynamics_columns", "dynamics_signals",
    "evaluate_rankings", "held_out_columns", "label_losses", "mislabel_scores", "negative_margins",
    "percentile_ranks", "precision_at_k", "probabilities_from_table", "propose_trusted_slice", "rank_order",
    "rankings", "recall_at_fraction", "recall_curve", "roc_auc", "signal_percentiles", "suspicion_reasons",
    "training_signals",
]
