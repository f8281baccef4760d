"""Out-of-fold probabilities by cross-fitting: every training example scored by a model that never saw it.

In-sample probabilities miss the wrong labels a model has memorised (it fits them, so their loss is low).
:func:`cross_fit` splits the training rows into ``k`` stratified, seeded folds and fine-tunes the model's own
recipe (:func:`~influence_core.training.retrain.recipe_of`: its recorded base and hyper-parameters, or, for a
classifier without a recipe such as a Hub model, that classifier trained further) on all folds but one, then
scores the held-out fold. Each fine-tune is cached like the retrains
(:func:`~influence_core.training.retrain.train_cached`) and records its training dynamics, so the folds'
dynamics count too (:meth:`CrossFit.fold_dynamics`).

    fit = cross_fit("models/sst2", texts, labels, k=4, progress=print_progress)
    fit.probs  # [n, C] out-of-fold probabilities
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from influence_core.errors import ConfigError, DataError
from influence_core.training.finetune import FinetuneCancelled, TrainingDynamics, load_dynamics
from influence_core.training.retrain import Recipe, predict_probabilities, recipe_of, train_cached

Progress = Callable[[int, int, str], None]
Cancel = Callable[[], bool]

#: Folds when the caller names none.
DEFAULT_FOLDS = 4


def stratified_folds(labels: Sequence[int], k: int, seed: int = 0) -> np.ndarray:
    """The fold of each row, shape [n], ints in ``[0, k)``: every class is spread evenly over the folds.

    Within each class the rows are shuffled with ``seed`` and dealt out in turn; the dealing continues from
    class to class, so the fold sizes differ by at most one.
    """
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    k = int(k)
    if k < 2:
        raise ConfigError(f"cross-fitting needs at least 2 folds, not {k}")
    if len(labels) < k:
        raise DataError(f"{len(labels)} rows cannot be split into {k} folds")
    rng = np.random.default_rng(seed)
    folds = np.empty(len(labels), dtype=np.int64)
    dealt = 0
    for label in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == label))
        folds[rows] = (dealt + np.arange(len(rows))) % k
        dealt += len(rows)
    return folds


@dataclass
class CrossFit:
    """The result of :func:`cross_fit`.

    Attributes:
        probs: Out-of-fold class probabilities, shape [n, C]: row ``i`` comes from the model that did not train on it.
        folds: Fold of each row, shape [n] (row ``i`` was held out by fold ``folds[i]``).
        labels: Given labels, shape [n].
        model_dirs: The ``k`` fine-tuned folders, fold order.
        recipe: Base, hyper-parameters and label names used.
        notes: What was assumed (e.g. a model without a recipe was trained further).
        seconds: Wall time.
    """

    probs: np.ndarray
    folds: np.ndarray
    labels: np.ndarray
    model_dirs: list[Path]
    recipe: Recipe
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def k(self) -> int:
        return len(self.model_dirs)

    def fold_dynamics(self) -> list[tuple[np.ndarray, TrainingDynamics]]:
        """``(rows, dynamics)`` per fold that recorded its training dynamics: ``rows`` [n_fold_train] are the
        positions (in the cross-fitted table) of the examples the fold trained on, in the dynamics' order."""
        out = []
        for fold, folder in enumerate(self.model_dirs):
            dynamics = load_dynamics(folder)
            rows = np.flatnonzero(self.folds != fold)
            if dynamics is not None and dynamics.n == len(rows):
                out.append((rows, dynamics))
        return out


def cross_fit(model: str | os.PathLike, texts: Sequence[str], labels: Sequence[int], *, k: int = DEFAULT_FOLDS,
              seed: int = 0, label_names: Sequence[str] | None = None, progress: Progress | None = None,
              cancel: Cancel | None = None, **overrides) -> CrossFit:
    """Fine-tune ``model``'s recipe ``k`` times, each on all folds but one, and score the held-out fold.

    Args:
        model: The model under study (folder or Hub id); see :func:`~influence_core.training.retrain.recipe_of`.
        texts, labels: The training rows (labels: class ids), n of them.
        k: Number of folds (>= 2). seed: Seed of the fold assignment (the fine-tunes use the recipe's seed).
        label_names: Needed for a bare encoder.
        progress: ``progress(done, total, stage)``; cancel: ``cancel()`` returning True stops between steps
            (:class:`~influence_core.training.finetune.FinetuneCancelled`).
        overrides: epochs, lr, batch_size, max_length, seed of the fine-tunes (None = the recipe's).

    Returns:
        CrossFit with ``probs`` [n, C]; ``k`` fine-tunes, each cached (asking again costs only the predictions).
    """
    start = time.perf_counter()
    recipe = recipe_of(model, label_names=label_names, **overrides)
    texts = [str(t) for t in texts]
    labels_np = np.asarray(labels, dtype=np.int64).reshape(-1)
    if len(texts) != len(labels_np):
        raise DataError(f"{len(texts)} texts but {len(labels_np)} labels")
    n_classes = len(recipe.label_names)
    if len(labels_np) and (labels_np.min() < 0 or labels_np.max() >= n_classes):
        raise DataError(f"labels must be class ids in 0..{n_classes - 1}")
    folds = stratified_folds(labels_np, k, seed)
    probs = np.zeros((len(texts), n_classes))
    max_length = int(recipe.hyperparameters["max_length"])
    ticks = 1000
    done_ticks = [0]

    def report(fold: int, fraction: float, stage: str) -> None:
        # never step back: stages without steps (tokenize, save) report the fold's progress so far
        done_ticks[0] = max(done_ticks[0], int(ticks * (fold + min(max(fraction, 0.0), 1.0))))
        if progress is not None:
            progress(done_ticks[0], ticks * k, stage)

    folders: list[Path] = []
    for fold in range(int(k)):
        if cancel is not None and cancel():
            raise FinetuneCancelled(f"cross-fitting cancelled after {fold} of {k} folds")
        inside, held = np.flatnonzero(folds != fold), np.flatnonzero(folds == fold)

        def part(done: int, total: int, stage: str, fold: int = fold) -> None:
            # fine-tuning is 95% of a fold; the prediction of the held-out rows the rest
            share = 0.95 * done / max(total, 1) if stage.startswith("fine-tune") else 0.0
            report(fold, share, f"fold {fold + 1}/{k}: {stage}")

        folder = train_cached(recipe, [texts[i] for i in inside], labels_np[inside].tolist(), progress=part,
                              cancel=cancel)
        report(fold, 0.95, f"fold {fold + 1}/{k}: score the {len(held)} held-out rows")
        probs[held] = predict_probabilities(folder, [texts[i] for i in held], max_length=max_length)
        folders.append(Path(folder))
    report(int(k), 0.0, "done")
    return CrossFit(probs=probs, folds=folds, labels=labels_np, model_dirs=folders, recipe=recipe,
                    notes=list(recipe.notes), seconds=time.perf_counter() - start)


__all__ = ["CrossFit", "DEFAULT_FOLDS", "cross_fit", "stratified_folds"]
