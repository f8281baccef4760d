"""Fix and retrain: apply a reviewer's verdicts to the training set, fine-tune again, compare before and after.

- :func:`clean_dataset` turns marks (``row_id -> "fine" | "drop" | "mislabeled" | new label``) into the cleaned
  training table.
- :func:`retrain` fine-tunes a classifier on it with the recipe of the model under study (its ``finetune.json``:
  base encoder and hyper-parameters) and reports test accuracy and loss before and after.
- :func:`counterfactual_check` is the honest test of influence for one test review: retrain without its ``k``
  most harmful training reviews and without ``k`` random ones (same base and hyper-parameters, one or more
  training seeds) and compare the review's loss with that of a model retrained on everything; the verdict is
  given only when the difference exceeds the spread the seeds and random draws show.

Every fine-tune is cached under ``cache_dir("retrained", key)`` (key: base, recipe, texts, labels), so asking
twice costs nothing, and every long call takes ``progress(done, total, stage)`` and ``cancel() -> bool``.

CLI::

    python -m influence_core clean-and-retrain --model FOLDER --train train.csv --flags flags.csv \\
        --test test.csv --out retrained/
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from influence_core.errors import ConfigError, DataError, ModelError

Progress = Callable[[int, int, str], None]
Cancel = Callable[[], bool]

#: What a reviewer can say about a training row (besides naming its new label).
ACTIONS = ("fine", "drop", "mislabeled", "relabel")
#: Hyper-parameters used when the model records none (those of :func:`influence_core.training.finetune.finetune`).
DEFAULT_RECIPE = {"epochs": 3, "lr": 5e-5, "batch_size": 16, "max_length": 128, "seed": 0, "freeze_embeddings": False}


# ----------------------------------------------------------------------------------------------- cleaning
def clean_dataset(df: pd.DataFrame, marks: Mapping[int, object], *, label_names: Sequence[str] | None = None,
                  mislabeled: str = "drop", strict: bool = False) -> pd.DataFrame:
    """The training table after review.

    Args:
        df: Rows with ``text`` and an int ``label`` in ``[0, C)``; ``row_id`` names the rows (the position in the
            full table, as slices add it), else the position in ``df``.
        marks: ``row_id -> verdict``, where a verdict is ``"fine"`` (keep), ``"drop"`` (remove), ``"mislabeled"``
            (see ``mislabeled``), a new label (an int id, a label name, or ``"relabel:<label>"``), or the app's
            mark ``{"state": "fine" | "mislabeled" | "relabel" | "drop", "new_label": int | None}``.
        label_names: Class names in id order, to accept names as new labels and check ids.
        mislabeled: What ``"mislabeled"`` does: ``"drop"`` (default, like the app's export) or ``"flip"`` (give
            the other label; binary tasks only).
        strict: Refuse marks for rows that are not in ``df`` (by default they are ignored: marks persist across
            slices of a larger table).

    Returns:
        The kept rows in their order with a fresh index, every column of ``df`` plus ``original_label`` (int)
        and ``action`` (``"keep"``, ``"relabel"``); ``label`` holds the new labels.
    """
    if mislabeled not in ("drop", "flip"):
        raise ConfigError(f"mislabeled must be 'drop' or 'flip', not {mislabeled!r}")
    for column in ("text", "label"):
        if column not in df.columns:
            raise DataError(f"the training table has no {column!r} column")
    labels = _int_labels(df["label"])
    n_classes = len(label_names) if label_names else int(max(labels.max(initial=0) + 1, 2))
    row_ids = df["row_id"].to_numpy(dtype=np.int64) if "row_id" in df.columns else np.arange(len(df), dtype=np.int64)
    if len(set(row_ids.tolist())) != len(row_ids):
        raise DataError("row_id is not unique in the training table")
    position = {int(r): i for i, r in enumerate(row_ids)}
    unknown = [int(r) for r in marks if int(r) not in position]
    if strict and unknown:
        raise DataError(f"{len(unknown)} marked rows are not in the training table (first: row {unknown[0]}); "
                        "row ids are the training file's row_id column, else 0-based row numbers")
    keep = np.ones(len(df), dtype=bool)
    new_labels = labels.copy()
    actions = np.array(["keep"] * len(df), dtype=object)
    for row_id, verdict in marks.items():
        i = position.get(int(row_id))
        if i is None:
            continue
        action, label = _verdict(verdict, label_names, n_classes, int(row_id))
        if action == "mislabeled":
            if mislabeled == "drop":
                action = "drop"
            else:
                if n_classes != 2:
                    raise DataError(f"row {row_id} is marked mislabeled, but flipping needs two classes; "
                                    "give its new label instead")
                action, label = "relabel", 1 - int(labels[i])
        if action == "drop":
            keep[i] = False
        elif action == "relabel":
            new_labels[i] = label
            actions[i] = "relabel" if label != labels[i] else "keep"
    out = df.copy()
    out["original_label"] = labels
    out["label"] = new_labels
    out["action"] = actions
    return out[keep].reset_index(drop=True)


def _int_labels(column: pd.Series) -> np.ndarray:
    try:
        values = column.to_numpy(dtype=np.int64)
    except (TypeError, ValueError):
        raise DataError("labels must be class ids (align them to the model's labels first)") from None
    if (values < 0).any():
        raise DataError("labels must be class ids >= 0")
    return values


def _verdict(verdict: object, label_names: Sequence[str] | None, n_classes: int, row_id: int) -> tuple[str, int]:
    """(action, new label) for one mark; action is fine, drop, mislabeled or relabel."""
    if isinstance(verdict, Mapping):
        state = str(verdict.get("state", "")).strip().lower()
        if state == "relabel":
            if verdict.get("new_label") is None:
                raise DataError(f"row {row_id} is marked relabel without a new label")
            return "relabel", _label_id(verdict["new_label"], label_names, n_classes, row_id)
        verdict = state
    if verdict is None or (isinstance(verdict, float) and np.isnan(verdict)):
        return "fine", -1
    if isinstance(verdict, (bool, np.bool_)):
        raise DataError(f"row {row_id}: the verdict {verdict!r} is ambiguous; use fine, drop, mislabeled or a label")
    if isinstance(verdict, (int, np.integer)):
        return "relabel", _label_id(int(verdict), label_names, n_classes, row_id)
    text = str(verdict).strip()
    lowered = text.lower()
    if lowered in ("", "fine", "keep", "ok"):
        return "fine", -1
    if lowered in ("drop", "remove", "delete"):
        return "drop", -1
    if lowered in ("mislabeled", "mislabelled", "wrong"):
        return "mislabeled", -1
    if lowered.startswith("relabel"):
        text = text.split(":", 1)[1].strip() if ":" in text else ""
        if not text:
            raise DataError(f"row {row_id}: write relabel:<label>, e.g. relabel:positive")
    return "relabel", _label_id(text, label_names, n_classes, row_id)


def _label_id(value: object, label_names: Sequence[str] | None, n_classes: int, row_id: int) -> int:
    text = str(value).strip()
    names = [str(n) for n in label_names] if label_names else []
    folded = [n.casefold() for n in names]
    if text.casefold() in folded:
        return folded.index(text.casefold())
    try:
        label = int(float(text))
    except ValueError:
        known = ", ".join(names) if names else f"ids 0..{n_classes - 1}"
        raise DataError(f"row {row_id}: unknown verdict or label {value!r}; use fine, drop, mislabeled or a label "
                        f"({known})") from None
    if not 0 <= label < n_classes:
        raise DataError(f"row {row_id}: label {label} is outside 0..{n_classes - 1}")
    return label


# ----------------------------------------------------------------------------------------------- recipes
@dataclass(frozen=True)
class Recipe:
    """How to train a classifier again: from which base, with which hyper-parameters and label names.

    Attributes:
        base: Encoder (or classifier) folder or Hub id that fine-tuning starts from.
        hyperparameters: ``epochs``, ``lr``, ``batch_size``, ``max_length``, ``seed``, ``freeze_embeddings``.
        label_names: Class names in id order.
        before: The model under study (a folder or Hub id), or None when there is none to compare with.
        notes: What was assumed (e.g. a classifier without ``finetune.json`` is trained further).
    """

    base: str
    hyperparameters: dict
    label_names: tuple
    before: str | None
    notes: tuple = ()


def recipe_of(model: str | os.PathLike, *, label_names: Sequence[str] | None = None, **overrides) -> Recipe:
    """The training recipe of ``model``.

    A folder written by :func:`~influence_core.training.finetune.finetune` (the demo model, the ``finetune`` command)
    records its base and hyper-parameters: retraining starts from that base, so before and after differ only
    in the data. A classifier without that record (e.g. from the Hub) is fine-tuned further on the new data.
    A bare encoder has no "before" model; ``label_names`` are then required (resolve "demo" first with
    :func:`influence_core.demo.resolve_model`).
    ``overrides`` (epochs, lr, batch_size, max_length, seed, freeze_embeddings; None = keep) replace recorded values.
    """
    name = str(model)
    folder = Path(name).expanduser()
    notes: list[str] = []
    hyper = dict(DEFAULT_RECIPE)
    record = _read_json(folder / "finetune.json") if folder.is_dir() else None
    config = _read_json(folder / "config.json") if folder.is_dir() else None
    if folder.exists() and not folder.is_dir():
        raise ModelError(f"{folder} is not a model folder")
    if record is not None:
        hyper.update({k: record.get("hyperparameters", {}).get(k, v) for k, v in hyper.items()})
        names = record.get("label_names") or _config_labels(config)
        base = str(record.get("base", ""))
        before: str | None = str(folder)
        if not base or not Path(base).expanduser().exists():
            notes.append(f"the recorded base {base or '(none)'} is not available here; training {folder.name} further")
            base = str(folder)
    elif config is not None and any(str(a).endswith("ForSequenceClassification")
                                    for a in config.get("architectures") or []):
        names, base, before = _config_labels(config), str(folder), str(folder)
        notes.append("the model records no training recipe (no finetune.json); it is fine-tuned further on the "
                     "new data with default hyper-parameters, so 'after' also had more training")
    else:
        names, base, before = None, name, None
    if label_names:
        names = [str(n) for n in label_names]
    if not names:
        raise DataError(f"{name} is not a fine-tuned classifier; give the label names to train one")
    for key, value in overrides.items():
        if key not in DEFAULT_RECIPE:
            raise ConfigError(f"unknown hyper-parameter {key!r}: choose among {', '.join(DEFAULT_RECIPE)}")
        if value is not None:
            hyper[key] = value
    return Recipe(base=base, hyperparameters=hyper, label_names=tuple(names), before=before, notes=tuple(notes))


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _config_labels(config: dict | None) -> list[str] | None:
    if not config or not config.get("id2label"):
        return None
    id2label = {int(k): str(v) for k, v in config["id2label"].items()}
    return [id2label[i] for i in sorted(id2label)]


def train_cached(recipe: Recipe, texts: Sequence[str], labels: Sequence[int], *, out_dir: str | os.PathLike | None = None,
                 progress: Progress | None = None, cancel: Cancel | None = None) -> Path:
    """Fine-tune ``recipe.base`` on (texts, labels) with ``recipe``'s hyper-parameters; a cached folder.

    Without ``out_dir`` the folder is ``cache_dir("retrained", key)`` and an earlier identical fine-tune is
    reused.
    """
    from influence_core.cache import cache_dir, stable_hash
    from influence_core.training.finetune import finetune, library_versions

    texts, labels = [str(t) for t in texts], [int(x) for x in labels]
    key = stable_hash({"base": recipe.base, "hyperparameters": recipe.hyperparameters, "labels": labels,
                       "label_names": list(recipe.label_names), "texts": stable_hash(texts),
                       "versions": library_versions()})
    folder = Path(out_dir) if out_dir is not None else cache_dir("retrained") / key
    if _recorded_key(folder) == key:
        if progress is not None:
            progress(1, 1, "fine-tune (cached)")
        return folder
    finetune(recipe.base, texts, labels, label_names=list(recipe.label_names), out_dir=folder, progress=progress,
             cancel=cancel, extra_metadata={"key": key}, **recipe.hyperparameters)
    return folder


def _recorded_key(folder: Path) -> str | None:
    record = _read_json(folder / "finetune.json")
    return None if record is None else record.get("key")


def predict_probabilities(model: str | os.PathLike, texts: Sequence[str], *, max_length: int = 128) -> np.ndarray:
    """Class probabilities of ``texts`` under the classifier in ``model`` (folder or Hub id), [n, C]."""
    from influence_core.sources.models import ModelSource, load_classifier
    from influence_core.training.finetune import predict_proba

    source = ModelSource("local", str(model)) if Path(str(model)).expanduser().exists() else ModelSource("hub", str(model))
    loaded = load_classifier(source)
    return predict_proba(loaded.model, loaded.tokenizer, list(texts), max_length=max_length)


# ----------------------------------------------------------------------------------------------- retrain
@dataclass
class RetrainResult:
    """Before and after a retrain on the cleaned data.

    Attributes:
        model_dir: The retrained classifier.
        recipe: Base, hyper-parameters and label names used.
        n_train: Training rows after cleaning.
        test_labels: Test labels, shape [n_test].
        after_probs: Test probabilities of the retrained model, [n_test, C].
        before_probs: Same for the model before cleaning, or None when there is none.
        seconds: Wall time.
    """

    model_dir: Path
    recipe: Recipe
    n_train: int
    test_labels: np.ndarray
    after_probs: np.ndarray
    before_probs: np.ndarray | None = None
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def after_accuracy(self) -> float:
        return _accuracy(self.after_probs, self.test_labels)

    @property
    def after_loss(self) -> float:
        """Mean test cross-entropy of the retrained model."""
        return _mean_loss(self.after_probs, self.test_labels)

    @property
    def before_accuracy(self) -> float | None:
        return None if self.before_probs is None else _accuracy(self.before_probs, self.test_labels)

    @property
    def before_loss(self) -> float | None:
        return None if self.before_probs is None else _mean_loss(self.before_probs, self.test_labels)

    def summary(self) -> pd.DataFrame:
        """Rows ``before`` (when known) and ``after``; columns ``model``, ``accuracy``, ``loss``, ``n_train``."""
        rows = []
        if self.before_probs is not None:
            rows.append({"model": "before", "accuracy": self.before_accuracy, "loss": self.before_loss,
                         "n_train": None})
        rows.append({"model": "after", "accuracy": self.after_accuracy, "loss": self.after_loss,
                     "n_train": self.n_train})
        return pd.DataFrame(rows)

    def per_example(self) -> pd.DataFrame:
        """One row per test example: ``label``, ``loss_before``, ``loss_after``, ``change`` (after - before)."""
        after = _losses(self.after_probs, self.test_labels)
        before = _losses(self.before_probs, self.test_labels) if self.before_probs is not None else np.full_like(after,
                                                                                                               np.nan)
        return pd.DataFrame({"label": self.test_labels, "loss_before": before, "loss_after": after,
                             "change": after - before})

    def to_dict(self) -> dict:
        return {"model_dir": str(self.model_dir), "base": self.recipe.base,
                "hyperparameters": self.recipe.hyperparameters, "label_names": list(self.recipe.label_names),
                "n_train": self.n_train, "n_test": len(self.test_labels), "before_accuracy": self.before_accuracy,
                "before_loss": self.before_loss, "after_accuracy": self.after_accuracy, "after_loss": self.after_loss,
                "seconds": round(self.seconds, 1), "notes": list(self.notes)}


def _losses(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    return -np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, None))


def _mean_loss(probs: np.ndarray, labels: np.ndarray) -> float:
    return float(_losses(probs, labels).mean())


def _accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    return float((probs.argmax(axis=1) == labels).mean())


def retrain(model: str | os.PathLike, train_df: pd.DataFrame, test_df: pd.DataFrame, *,
            original_train_df: pd.DataFrame | None = None, label_names: Sequence[str] | None = None,
            out_dir: str | os.PathLike | None = None, epochs: int | None = None, lr: float | None = None,
            batch_size: int | None = None, max_length: int | None = None, seed: int | None = None,
            before: str = "model", progress: Progress | None = None, cancel: Cancel | None = None) -> RetrainResult:
    """Fine-tune on the cleaned training table and compare test accuracy and loss with the model before.

    Args:
        model: The model under study: a fine-tuned folder (its recorded base and hyper-parameters are reused),
            a classifier without a record (trained further), or a bare encoder (``label_names``
            needed; "before" comes from ``original_train_df`` if given).
        train_df: The cleaned training rows (``text``, int ``label``), e.g. from :func:`clean_dataset`.
        test_df: Test rows (``text``, int ``label``) scored before and after.
        original_train_df: The uncleaned training rows: when ``model`` has no trained "before" of its own (or
            ``before="retrain"``), one is fine-tuned on these with the same recipe, so before and after differ only
            in the data.
        epochs, lr, batch_size, max_length, seed: Override the recipe.
        before: ``"model"``: "before" is the model under study itself when it is a trained classifier (else the
            recipe on ``original_train_df``, if given). ``"retrain"``: always the recipe fine-tuned on
            ``original_train_df`` (required), e.g. when ``train_df`` cleans a slice of the data the model was
            trained on: the model under study saw more data than either retrain.
        progress: ``progress(done, total, stage)``; cancel: ``cancel()`` returning True stops the fine-tune
            (:class:`~influence_core.training.finetune.FinetuneCancelled`) and nothing is saved.

    Returns:
        RetrainResult with before/after probabilities, accuracy and mean loss on ``test_df``.
    """
    start = time.perf_counter()
    if before not in ("model", "retrain"):
        raise ConfigError(f"before must be 'model' or 'retrain', got {before!r}")
    if before == "retrain" and original_train_df is None:
        raise DataError("before='retrain' needs original_train_df: the uncleaned rows to fine-tune 'before' on")
    recipe = recipe_of(model, label_names=label_names, epochs=epochs, lr=lr, batch_size=batch_size,
                       max_length=max_length, seed=seed)
    own_before = recipe.before if before == "model" else None
    train_texts, train_labels = _examples(train_df, "cleaned training", len(recipe.label_names))
    test_texts, test_labels = _examples(test_df, "test", len(recipe.label_names))
    max_len = int(recipe.hyperparameters["max_length"])
    notes = list(recipe.notes)
    report = _Stages(progress, ["before", "fine-tune", "after"] if own_before or original_train_df is not None
                     else ["fine-tune", "after"])
    _check_cancel(cancel)
    before_probs = None
    if own_before is not None:
        report.start("before", "evaluate the model before cleaning")
        before_probs = predict_probabilities(own_before, test_texts, max_length=max_len)
    elif original_train_df is not None:
        texts, labels = _examples(original_train_df, "original training", len(recipe.label_names))
        before_dir = train_cached(recipe, texts, labels, progress=report.part("before", "train on the original data"),
                                  cancel=cancel)
        before_probs = predict_probabilities(before_dir, test_texts, max_length=max_len)
        notes.append(f"'before' was fine-tuned on the {len(texts)} original rows with the same recipe")
    _check_cancel(cancel)
    model_dir = train_cached(recipe, train_texts, train_labels, out_dir=out_dir,
                             progress=report.part("fine-tune", "fine-tune on the cleaned data"), cancel=cancel)
    report.start("after", "evaluate the retrained model")
    after_probs = predict_probabilities(model_dir, test_texts, max_length=max_len)
    report.done()
    return RetrainResult(model_dir=Path(model_dir), recipe=recipe, n_train=len(train_texts),
                         test_labels=np.asarray(test_labels), after_probs=after_probs, before_probs=before_probs,
                         seconds=time.perf_counter() - start, notes=notes)


def _examples(df: pd.DataFrame, what: str, n_classes: int) -> tuple[list[str], list[int]]:
    for column in ("text", "label"):
        if column not in df.columns:
            raise DataError(f"the {what} table has no {column!r} column")
    if len(df) == 0:
        raise DataError(f"the {what} table is empty")
    labels = _int_labels(df["label"])
    if (labels >= n_classes).any():
        raise DataError(f"{what} labels must be ids in 0..{n_classes - 1}; align them to the model's labels first")
    return df["text"].astype(str).tolist(), labels.tolist()


def _check_cancel(cancel: Cancel | None) -> None:
    if cancel is not None and cancel():
        from influence_core.training.finetune import FinetuneCancelled

        raise FinetuneCancelled("cancelled before training; nothing saved")


class _Stages:
    """Map the progress of several phases onto one ``progress(done, total, stage)`` stream (1000 ticks each)."""

    TICKS = 1000

    def __init__(self, progress: Progress | None, phases: Sequence[str]):
        self.progress, self.phases, self.done_ticks = progress, list(phases), 0

    def _emit(self, phase: str, fraction: float, stage: str) -> None:
        if self.progress is None:
            return
        index = self.phases.index(phase)
        # never step back: stages without steps (tokenize, save) report the phase's progress so far
        self.done_ticks = max(self.done_ticks, int(self.TICKS * (index + min(max(fraction, 0.0), 1.0))))
        self.progress(self.done_ticks, self.TICKS * len(self.phases), stage)

    def start(self, phase: str, stage: str) -> None:
        self._emit(phase, 0.0, stage)

    def part(self, phase: str, label: str) -> Progress:
        def report(done: int, total: int, stage: str) -> None:
            self._emit(phase, done / max(total, 1) if stage.startswith("fine-tune") else 0.0, f"{label}: {stage}")

        return report

    def done(self) -> None:
        if self.progress is not None:
            self.progress(self.TICKS * len(self.phases), self.TICKS * len(self.phases), "done")


# ----------------------------------------------------------------------------------------------- counterfactual
#: Below this p-value (Welch's t-test of the harmful against the random removals) the check gives a verdict.
SIGNIFICANCE = 0.05


@dataclass
class CounterfactualResult:
    """The loss of one test review after retraining on the full data, without its ``k`` most harmful training
    reviews, and without ``k`` random ones; each of them with every training seed in ``seeds``.

    Changes are paired by seed (``minus - full`` of the same seed), so the seed's own noise in the full model
    cancels. The verdict compares the harmful removals' changes (one per seed) with the random removals' (one per
    seed and draw) by Welch's t-test and is given only when their difference exceeds that spread.

    Attributes:
        k: Reviews removed.
        harmful: Row ids (positions in the training table, or its ``row_id``) removed as most harmful.
        random: Row ids removed in each random draw.
        seeds: The training seeds (the recipe's own first).
        losses_full: Test loss of the model retrained on every training review, per seed.
        losses_minus_harmful: Test loss without the harmful reviews, per seed.
        losses_minus_random: Test loss without each random draw, ``[seed][draw]``.
        predicted_change: First-order influence prediction of the change from removing the harmful reviews,
            ``sum(influence[harmful]) / n_train`` (negative = the loss should drop).
        harmful_influence: Influence of each removed harmful review (all negative when ``k`` harmful exist).
    """

    test_text: str
    test_label: int
    k: int
    harmful: list[int]
    random: list[list[int]]
    seeds: list[int]
    losses_full: list[float]
    losses_minus_harmful: list[float]
    losses_minus_random: list[list[float]]
    predicted_change: float
    harmful_influence: list[float]
    seconds: float = 0.0

    @property
    def loss_full(self) -> float:
        return float(np.mean(self.losses_full))

    @property
    def loss_minus_harmful(self) -> float:
        return float(np.mean(self.losses_minus_harmful))

    @property
    def loss_minus_random_mean(self) -> float:
        return float(np.mean(self.losses_minus_random))

    @property
    def harmful_changes(self) -> np.ndarray:
        """``minus harmful - full`` per seed."""
        return np.asarray(self.losses_minus_harmful) - np.asarray(self.losses_full)

    @property
    def random_changes(self) -> np.ndarray:
        """``minus random - full`` per seed and draw, flattened seed-major."""
        return (np.asarray(self.losses_minus_random) - np.asarray(self.losses_full)[:, None]).ravel()

    @property
    def difference(self) -> float:
        """Mean change without the harmful reviews minus mean change without random ones (negative = harmful
        removal lowered the loss more)."""
        return float(self.harmful_changes.mean() - self.random_changes.mean())

    @property
    def spread(self) -> float | None:
        """Standard error of :attr:`difference` (Welch), or None with fewer than two values on a side."""
        h, r = self.harmful_changes, self.random_changes
        if len(h) < 2 or len(r) < 2:
            return None
        return float(np.sqrt(h.var(ddof=1) / len(h) + r.var(ddof=1) / len(r)))

    @property
    def seed_noise(self) -> float | None:
        """Standard deviation of the full model's test loss across seeds (the retraining noise), or None."""
        return float(np.std(self.losses_full, ddof=1)) if len(self.losses_full) > 1 else None

    @property
    def p_value(self) -> float | None:
        """Welch's t-test of harmful against random changes (two-sided), or None when it cannot be computed."""
        if self.spread is None:
            return None
        if self.spread == 0.0:
            return 0.0 if self.difference != 0.0 else 1.0
        from scipy.stats import ttest_ind

        return float(ttest_ind(self.harmful_changes, self.random_changes, equal_var=False).pvalue)

    @property
    def verdict(self) -> str:
        """``lower`` (removing the harmful reviews lowered the loss more than chance), ``higher`` (it raised it
        more), ``within noise``, or ``too few retrains`` (under two seeds, or a single random removal)."""
        p = self.p_value
        if p is None:
            return "too few retrains"
        if p >= SIGNIFICANCE:
            return "within noise"
        return "lower" if self.difference < 0 else "higher"

    @property
    def harmful_beats_random(self) -> bool:
        """True only when removing the harmful reviews lowered the loss more than chance explains."""
        return self.verdict == "lower"

    def summary(self) -> pd.DataFrame:
        """One row per retrain: ``model``, ``seed``, ``loss``, ``change`` (vs the full model of the same seed)."""
        rows = []
        for s, seed in enumerate(self.seeds):
            named = [("full", self.losses_full[s]), (f"minus {self.k} most harmful", self.losses_minus_harmful[s])]
            named += [(f"minus {self.k} random (draw {i + 1})", loss) for i, loss in enumerate(self.losses_minus_random[s])]
            rows += [{"model": name, "seed": seed, "loss": loss, "change": loss - self.losses_full[s]}
                     for name, loss in named]
        return pd.DataFrame(rows)

    def to_dict(self) -> dict:
        return {"test_text": self.test_text, "test_label": self.test_label, "k": self.k, "harmful": self.harmful,
                "random": self.random, "seeds": self.seeds, "losses_full": self.losses_full,
                "losses_minus_harmful": self.losses_minus_harmful, "losses_minus_random": self.losses_minus_random,
                "loss_full": self.loss_full, "loss_minus_harmful": self.loss_minus_harmful,
                "loss_minus_random_mean": self.loss_minus_random_mean, "difference": self.difference,
                "spread": self.spread, "seed_noise": self.seed_noise, "p_value": self.p_value,
                "verdict": self.verdict, "predicted_change": self.predicted_change,
                "harmful_influence": self.harmful_influence, "seconds": round(self.seconds, 1)}


def counterfactual_check(model: str | os.PathLike, train_df: pd.DataFrame, test_text: str, test_label: int,
                         influence: np.ndarray, *, k: int = 10, n_random: int = 1, seeds: int = 1,
                         random_seed: int = 0, label_names: Sequence[str] | None = None, epochs: int | None = None,
                         lr: float | None = None, batch_size: int | None = None, max_length: int | None = None,
                         seed: int | None = None, progress: Progress | None = None,
                         cancel: Cancel | None = None) -> CounterfactualResult:
    """Does removing the training reviews that influence calls most harmful for one test review lower its loss
    more than removing as many random reviews, beyond what retraining noise does?

    Args:
        model: The model the influences were computed for (its recipe is reused; see :func:`recipe_of`).
        train_df: The training rows the model was trained on (``text``, int ``label``), in the order of
            ``influence``.
        test_text, test_label: The test review.
        influence: Influence of each training row on the test review, shape [n_train]; positive = helpful
            (e.g. ``table.total(k)[q]``). The ``k`` most negative are removed.
        k: How many to remove. n_random: Random draws (the same draws for every seed). random_seed: Seed of the
            draws. seeds: Training seeds: the recipe's seed, then the next ones (each seed retrains everything).
        epochs, lr, batch_size, max_length, seed: Override the recipe (the same for every retrain).

    Returns:
        CounterfactualResult; ``seeds * (2 + n_random)`` fine-tunes (the full ones are cached and shared between
        reviews). With ``seeds >= 2`` and ``n_random >= 2`` it says whether the difference exceeds the noise.
    """
    start = time.perf_counter()
    recipe = recipe_of(model, label_names=label_names, epochs=epochs, lr=lr, batch_size=batch_size,
                       max_length=max_length, seed=seed)
    texts, labels = _examples(train_df, "training", len(recipe.label_names))
    influence = np.asarray(influence, dtype=float).reshape(-1)
    if influence.shape != (len(texts),):
        raise DataError(f"influence must have one value per training row ({len(texts)}), got {influence.shape}")
    if not 1 <= int(k) < len(texts):
        raise DataError(f"k must be between 1 and {len(texts) - 1}, got {k}")
    if int(n_random) < 1:
        raise DataError(f"n_random must be at least 1, got {n_random}")
    if int(seeds) < 1:
        raise DataError(f"seeds must be at least 1, got {seeds}")
    if not 0 <= int(test_label) < len(recipe.label_names):
        raise DataError(f"test label {test_label} is outside 0..{len(recipe.label_names) - 1}")
    k = int(k)
    row_ids = train_df["row_id"].to_numpy(dtype=np.int64) if "row_id" in train_df.columns else np.arange(len(texts))
    harmful = np.argsort(np.where(np.isnan(influence), np.inf, influence), kind="stable")[:k]
    rng = np.random.default_rng(random_seed)
    draws = [np.sort(rng.choice(len(texts), k, replace=False)) for _ in range(int(n_random))]
    base_seed = int(recipe.hyperparameters.get("seed", 0))
    training_seeds = [base_seed + i for i in range(int(seeds))]
    phases = [f"{name} seed {s}" for s in training_seeds
              for name in ("full", "harmful", *[f"random {i + 1}" for i in range(len(draws))])]
    report = _Stages(progress, phases)
    max_len = int(recipe.hyperparameters["max_length"])

    def loss_without(training_seed: int, phase: str, removed: np.ndarray | None, label: str) -> float:
        _check_cancel(cancel)
        keep = np.ones(len(texts), dtype=bool)
        if removed is not None:
            keep[removed] = False
        seeded = recipe if training_seed == base_seed else replace(
            recipe, hyperparameters={**recipe.hyperparameters, "seed": training_seed})
        folder = train_cached(seeded, [t for t, ok in zip(texts, keep) if ok],
                              [y for y, ok in zip(labels, keep) if ok],
                              progress=report.part(f"{phase} seed {training_seed}", label), cancel=cancel)
        probs = predict_probabilities(folder, [test_text], max_length=max_len)
        return float(-np.log(max(probs[0, int(test_label)], 1e-12)))

    full, minus_harmful, minus_random = [], [], []
    for s in training_seeds:
        tag = f" (seed {s})" if len(training_seeds) > 1 else ""
        full.append(loss_without(s, "full", None, f"retrain on everything{tag}"))
        minus_harmful.append(loss_without(s, "harmful", harmful, f"retrain without the {k} most harmful{tag}"))
        minus_random.append([loss_without(s, f"random {i + 1}", draw,
                                          f"retrain without {k} random ({i + 1}/{len(draws)}){tag}")
                             for i, draw in enumerate(draws)])
    report.done()
    return CounterfactualResult(
        test_text=str(test_text), test_label=int(test_label), k=k, harmful=[int(row_ids[i]) for i in harmful],
        random=[[int(row_ids[i]) for i in draw] for draw in draws], seeds=training_seeds, losses_full=full,
        losses_minus_harmful=minus_harmful, losses_minus_random=minus_random,
        predicted_change=float(influence[harmful].sum() / len(texts)),
        harmful_influence=[float(v) for v in influence[harmful]], seconds=time.perf_counter() - start)


def read_flags(table: pd.DataFrame) -> dict[int, object]:
    """Marks ``row_id -> verdict`` from a flag table: ``row_id`` + ``action`` (or ``mark``), and ``new_label``."""
    if "row_id" not in table.columns:
        raise DataError(f"the flag list needs a row_id column; it has {', '.join(map(str, table.columns))}")
    action_col = next((c for c in ("action", "mark", "state", "flag") if c in table.columns), None)
    if action_col is None:
        raise DataError("the flag list needs an action column (fine, drop, mislabeled, relabel:<label> or a label)")
    marks: dict[int, object] = {}
    for row in table.itertuples(index=False):
        row = row._asdict()
        try:
            row_id = int(row["row_id"])
        except (TypeError, ValueError):
            raise DataError(f"row_id {row['row_id']!r} is not a number") from None
        action = row[action_col]
        new_label = row.get("new_label")
        if str(action).strip().lower() == "relabel" and not _blank(new_label):
            action = {"state": "relabel", "new_label": new_label}
        elif _blank(action):
            action = "fine"
        if row_id in marks:
            raise DataError(f"row {row_id} is flagged twice in the flag list")
        marks[row_id] = action
    return marks


def _blank(value: object) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value)) or str(value).strip() == ""


__all__ = [
    "ACTIONS", "CounterfactualResult", "DEFAULT_RECIPE", "Recipe", "RetrainResult", "clean_dataset",
    "counterfactual_check", "read_flags", "recipe_of", "retrain", "predict_probabilities", "train_cached",
]
