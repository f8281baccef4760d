"""Fine-tune an encoder into a sequence classifier and save it as a standard Hugging Face folder.

Influence is computed for a trained classifier; when one only has an encoder (the MiniLM shipped with the
project, any BERT-like Hub model) this makes one. A plain PyTorch loop: AdamW, linear warm-up then decay,
batches of similar length with dynamic padding (cheap on a CPU), deterministic for a given seed. The folder
holds ``model.safetensors``, the tokenizer, the label names in ``config.id2label``/``label2id`` and
``finetune.json`` (hyper-parameters, loss history, accuracy, library versions) and ``dynamics.npz``: the training
dynamics, per example and epoch the probability of the given label and the logit margin, read off the forward
pass of each training batch (free: no extra pass; as AUM and data maps do, Pleiss et al. 2020, Swayamdipta et al.
2020). :func:`load_dynamics` reads them back. It is written to a temporary folder first and renamed, so an
interrupted run never leaves half a model.

The ``finetune`` command of :mod:`influence_core.cli` wraps :func:`finetune`.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from influence_core.errors import ConfigError, DataError, InfluenceError, ModelError

Progress = Callable[[int, int, str], None]

#: Share of the optimisation steps spent warming the learning rate up from 0.
WARMUP_FRACTION = 0.1
#: Batches are grouped by length within windows of this many batches, then the batches are shuffled.
LENGTH_GROUP_WINDOW = 50
#: The training dynamics saved next to ``finetune.json``.
DYNAMICS_FILE = "dynamics.npz"
#: Bump when this loop's arithmetic changes (same recipe, different weights), so cached fine-tunes are redone.
#: 2: the fused AdamW update (the same update as ``foreach``, equal to rounding, about 5x faster on 2 CPU cores).
LOOP_VERSION = 2


class FinetuneCancelled(InfluenceError):
    """``cancel()`` returned True: training stopped between two steps and nothing was written."""


@dataclass
class TrainingDynamics:
    """What the model said about each training example during training, read off each batch's forward pass.

    Entry ``[e, i]`` is recorded when example ``i`` (its position in the training texts given to :func:`finetune`)
    was in a batch during epoch ``e + 1``, from that batch's forward pass (train mode, dropout on) *before* the
    optimiser step of that batch, as AUM (Pleiss et al. 2020) and data maps (Swayamdipta et al. 2020) do.

    Attributes:
        given_prob: Probability of the given label, shape [epochs, n], in [0, 1].
        margin: Logit of the given label minus the largest other logit, shape [epochs, n]; negative = the model
            prefers another class (AUM averages it over epochs).
        correct: Whether the arg-max was the given label, shape [epochs, n] (forgetting events are its 1 -> 0 steps).
        labels: The given labels, shape [n].
        text_keys: A short hash of each training text, shape [n]: maps another table's rows onto these
            (:meth:`rows_for`).
    """

    given_prob: np.ndarray
    margin: np.ndarray
    correct: np.ndarray
    labels: np.ndarray
    text_keys: np.ndarray

    @property
    def epochs(self) -> int:
        return int(self.given_prob.shape[0])

    @property
    def n(self) -> int:
        return int(self.given_prob.shape[1])

    def rows_for(self, texts: Sequence[str], labels: Sequence[int] | None = None) -> np.ndarray:
        """Position in these dynamics of each of ``texts`` (same text and, if given, same label), -1 if absent;
        shape [len(texts)]."""
        where: dict[tuple, int] = {}
        for i, key in enumerate(self.text_keys.tolist()):
            where.setdefault((key, int(self.labels[i])), i)
            where.setdefault((key, None), i)
        keys = text_keys(texts)
        return np.array([where.get((key, None if labels is None else int(label)), -1)
                         for key, label in zip(keys, labels if labels is not None else [None] * len(keys))],
                        dtype=np.int64)

    def save(self, path: Path) -> None:
        np.savez_compressed(path, given_prob=self.given_prob, margin=self.margin, correct=self.correct,
                            labels=self.labels, text_keys=self.text_keys)


def text_keys(texts: Sequence[str]) -> np.ndarray:
    """A 16-hex-digit hash of each text, shape [n] (str): how dynamics recognise their examples elsewhere."""
    import hashlib

    return np.array([hashlib.sha1(str(t).encode("utf-8")).hexdigest()[:16] for t in texts])


def load_dynamics(model_dir: str | os.PathLike) -> TrainingDynamics | None:
    """The training dynamics saved with a fine-tuned model folder, or None when it has none (e.g. a Hub model or a
    fine-tune from before they were recorded)."""
    path = Path(model_dir).expanduser() / DYNAMICS_FILE
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            return TrainingDynamics(given_prob=data["given_prob"], margin=data["margin"], correct=data["correct"],
                                    labels=data["labels"], text_keys=data["text_keys"])
    except (OSError, ValueError, KeyError) as err:
        raise ModelError(f"cannot read the training dynamics {path}: {err}") from err


@dataclass
class FinetuneResult:
    """What a fine-tune produced.

    Attributes:
        out_dir: the saved Hugging Face folder.
        history: one dict per optimisation step: ``epoch`` (1-based), ``step`` (1-based, global), ``loss``
            (mean cross-entropy of the batch), ``lr``.
        eval_accuracy: accuracy on the evaluation texts, in [0, 1]; None without them.
        seconds: wall-clock time of the whole call.
        eval_loss: mean cross-entropy on the evaluation texts; None without them.
        epoch_losses: mean training loss of each epoch.
        dynamics: the training dynamics (also saved as ``dynamics.npz``).
    """

    out_dir: Path
    history: list[dict] = field(default_factory=list)
    eval_accuracy: float | None = None
    seconds: float = 0.0
    eval_loss: float | None = None
    epoch_losses: list[float] = field(default_factory=list)
    dynamics: TrainingDynamics | None = None


def finetune(
    base: str | os.PathLike,
    train_texts: Sequence[str],
    train_labels: Sequence[int],
    *,
    label_names: Sequence[str],
    out_dir: str | os.PathLike,
    epochs: int = 3,
    lr: float = 5e-5,
    batch_size: int = 16,
    max_length: int = 128,
    seed: int = 0,
    eval_texts: Sequence[str] | None = None,
    eval_labels: Sequence[int] | None = None,
    progress: Progress | None = None,
    cancel: Callable[[], bool] | None = None,
    weight_decay: float = 0.01,
    freeze_embeddings: bool = False,
    extra_metadata: dict | None = None,
) -> FinetuneResult:
    """Train a sequence classifier on top of ``base`` and save it to ``out_dir``.

    Args:
        base: an encoder or classifier folder, or a Hub id. A classifier head of another size is replaced.
        train_texts, train_labels: the training examples; labels are class ids in ``[0, len(label_names))``.
        label_names: class names in id order; saved as ``id2label``/``label2id``.
        out_dir: the folder to write. It must not exist, be empty, or hold an earlier fine-tune (replaced).
        epochs, lr, batch_size, max_length, seed, weight_decay: training hyper-parameters.
        freeze_embeddings: keep the input (word) embedding matrix fixed. On MiniLM it is half of the weights, so
            this cuts a CPU fine-tune by about a third (the demo's recipe: same test accuracy, 39 s instead of 56 s
            on 2 cores; see ``influence_core.demo``).
        eval_texts, eval_labels: optional held-out examples, scored once after training.
        progress: ``progress(done, total, stage)`` after every step (and for tokenize/evaluate/save).
        cancel: called between steps; returning True stops with :class:`FinetuneCancelled`.
        extra_metadata: merged into ``finetune.json`` (e.g. a cache key).

    Returns:
        A :class:`FinetuneResult`; the model on disk is in eval mode when loaded again.
    """
    started = time.perf_counter()
    names = [str(n) for n in label_names]
    texts, labels = _check_examples(train_texts, train_labels, names, "training")
    if eval_texts is not None or eval_labels is not None:
        if eval_texts is None or eval_labels is None:
            raise DataError("give both eval_texts and eval_labels, or neither")
        eval_texts, eval_labels = _check_examples(eval_texts, eval_labels, names, "evaluation")
    _check_hyperparameters(epochs, lr, batch_size, max_length)
    out_dir = Path(out_dir).expanduser()
    _check_out_dir(out_dir)

    import torch

    model, tokenizer = _load_base(str(base), names, seed)
    if freeze_embeddings:
        model.get_input_embeddings().weight.requires_grad_(False)
    report = progress or (lambda done, total, stage: None)
    report(0, 1, "tokenize")
    encoded = _tokenize(tokenizer, texts, max_length)
    rng = random.Random(seed)
    batches_per_epoch = math.ceil(len(texts) / batch_size)
    total_steps = epochs * batches_per_epoch
    optimizer = _adamw(_parameter_groups(model, weight_decay), lr)
    warmup = int(WARMUP_FRACTION * total_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _linear_schedule(warmup, total_steps))

    history: list[dict] = []
    epoch_losses: list[float] = []
    given_prob = np.full((epochs, len(texts)), np.nan)
    margin = np.full((epochs, len(texts)), np.nan)
    correct = np.zeros((epochs, len(texts)), dtype=bool)
    step = 0
    model.train()
    for epoch in range(1, epochs + 1):
        losses = []
        for batch_rows in _length_grouped_batches(encoded, batch_size, rng):
            if cancel is not None and cancel():
                raise FinetuneCancelled(f"fine-tuning cancelled after {step} of {total_steps} steps; nothing saved")
            inputs = _collate(tokenizer, [encoded[i] for i in batch_rows])
            targets = torch.tensor([labels[i] for i in batch_rows], dtype=torch.long)
            logits = model(**inputs).logits
            loss = torch.nn.functional.cross_entropy(logits, targets)
            _record_dynamics(logits.detach(), targets, batch_rows, epoch - 1, given_prob, margin, correct)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            step += 1
            losses.append(float(loss.detach()))
            history.append({"epoch": epoch, "step": step, "loss": losses[-1], "lr": float(scheduler.get_last_lr()[0])})
            report(step, total_steps, f"fine-tune epoch {epoch}/{epochs}")
        epoch_losses.append(float(np.mean(losses)))
    model.eval()

    eval_accuracy = eval_loss = None
    if eval_texts is not None:
        report(0, 1, "evaluate")
        probabilities = predict_proba(model, tokenizer, eval_texts, max_length=max_length, batch_size=2 * batch_size)
        targets_np = np.asarray(eval_labels)
        eval_accuracy = float((probabilities.argmax(axis=1) == targets_np).mean())
        eval_loss = float(-np.log(np.clip(probabilities[np.arange(len(targets_np)), targets_np], 1e-12, None)).mean())
        report(1, 1, "evaluate")

    report(0, 1, "save")
    seconds = time.perf_counter() - started
    metadata = {
        "base": str(base),
        "label_names": names,
        "hyperparameters": {
            "epochs": epochs,
            "lr": lr,
            "batch_size": batch_size,
            "max_length": max_length,
            "seed": seed,
            "weight_decay": weight_decay,
            "freeze_embeddings": bool(freeze_embeddings),
            "warmup_fraction": WARMUP_FRACTION,
        },
        "n_train": len(texts),
        "n_eval": 0 if eval_texts is None else len(eval_texts),
        "epoch_losses": epoch_losses,
        "eval_accuracy": eval_accuracy,
        "eval_loss": eval_loss,
        "seconds": round(seconds, 2),
        "versions": library_versions(),
        "history": history,
        **(extra_metadata or {}),
    }
    dynamics = TrainingDynamics(given_prob=given_prob, margin=margin, correct=correct,
                                labels=np.asarray(labels, dtype=np.int64), text_keys=text_keys(texts))
    _save_atomically(model, tokenizer, metadata, out_dir, dynamics)
    report(1, 1, "save")
    return FinetuneResult(
        out_dir=out_dir,
        history=history,
        eval_accuracy=eval_accuracy,
        seconds=time.perf_counter() - started,
        eval_loss=eval_loss,
        epoch_losses=epoch_losses,
        dynamics=dynamics,
    )


def _record_dynamics(logits: Any, targets: Any, rows: list[int], epoch: int, given_prob: np.ndarray,
                     margin: np.ndarray, correct: np.ndarray) -> None:
    """Write one batch's p(given label), logit margin and correctness into row ``epoch`` of the dynamics arrays."""
    import torch

    values = logits.double()
    index = torch.arange(len(rows))
    given = values[index, targets]
    others = values.clone()
    others[index, targets] = -torch.inf
    given_prob[epoch, rows] = torch.softmax(values, dim=-1)[index, targets].numpy()
    margin[epoch, rows] = (given - others.max(dim=-1).values).numpy()
    correct[epoch, rows] = (values.argmax(dim=-1) == targets).numpy()


def predict_proba(
    model: Any, tokenizer: Any, texts: Sequence[str], *, max_length: int = 128, batch_size: int = 32
) -> np.ndarray:
    """Class probabilities of ``texts``; shape ``[n, C]``, rows sum to 1. Runs without gradients, eval mode."""
    import torch

    encoded = _tokenize(tokenizer, list(texts), max_length)
    order = np.argsort([len(row["input_ids"]) for row in encoded], kind="stable")
    out = np.zeros((len(texts), int(model.config.num_labels)), dtype=np.float64)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            logits = model(**_collate(tokenizer, [encoded[i] for i in rows])).logits
            out[rows] = torch.softmax(logits.double(), dim=-1).numpy()
    model.train(was_training)
    return out


def library_versions() -> dict[str, str]:
    """Versions of the code that decides what a fine-tune produces: torch, transformers and this loop (part of
    the cache keys of the demo model and of every retrain)."""
    import torch
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__, "loop": str(LOOP_VERSION)}


# --- training helpers -------------------------------------------------------------------------------------


def _check_examples(texts: Sequence[str], labels: Sequence[int], names: list[str], what: str) -> tuple[list, list]:
    texts, labels = list(texts), [int(label) for label in labels]
    if len(names) < 2:
        raise DataError(f"a classifier needs at least two label names, got {names}")
    if not texts:
        raise DataError(f"no {what} examples")
    if len(texts) != len(labels):
        raise DataError(f"{len(texts)} {what} texts but {len(labels)} labels")
    if any(not isinstance(t, str) or not t.strip() for t in texts):
        raise DataError(f"every {what} text must be a non-empty string")
    bad = sorted({label for label in labels if not 0 <= label < len(names)})
    if bad:
        raise DataError(f"{what} labels {bad} are outside 0..{len(names) - 1} (labels: {', '.join(names)})")
    return texts, labels


def _check_hyperparameters(epochs: int, lr: float, batch_size: int, max_length: int) -> None:
    if epochs < 1:
        raise ConfigError(f"epochs must be at least 1, not {epochs}")
    if not 0 < lr < 1:
        raise ConfigError(f"the learning rate must be in (0, 1), not {lr}")
    if batch_size < 1:
        raise ConfigError(f"the batch size must be at least 1, not {batch_size}")
    if max_length < 8:
        raise ConfigError(f"max_length must be at least 8 tokens, not {max_length}")


def _check_out_dir(out_dir: Path) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"{out_dir} exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / "finetune.json").is_file():
        raise ConfigError(f"{out_dir} is not empty and does not hold an earlier fine-tune; choose another --out")


def _load_base(base: str, names: list[str], seed: int) -> tuple[Any, Any]:
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    from influence_core.sources.models import hub_offline_reason, quiet_transformers

    local = Path(base).expanduser().is_dir()
    offline = None if local else hub_offline_reason()
    kwargs = {"trust_remote_code": False, "local_files_only": local or offline is not None}
    id2label = dict(enumerate(names))
    try:
        with quiet_transformers():
            config = AutoConfig.from_pretrained(base, **kwargs)
            config.num_labels = len(names)
            config.id2label = id2label
            config.label2id = {name: i for i, name in id2label.items()}
            # The classifier head is initialised from the global torch generator: seed it for reproducibility.
            _seed_everything(seed)
            model = AutoModelForSequenceClassification.from_pretrained(
                base, config=config, use_safetensors=True, ignore_mismatched_sizes=True, **kwargs
            )
            tokenizer = AutoTokenizer.from_pretrained(base, **kwargs)
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        if offline is not None:
            raise ModelError(
                f"cannot load {base!r}: the Hugging Face Hub is unreachable ({offline}) and it is not in the local "
                "cache. Fine-tune from a local folder instead (e.g. the built-in MiniLM encoder)."
            ) from err
        text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelError(f"cannot load the base model {base}: {text}") from err
    if tokenizer.pad_token is None:
        raise ModelError(f"the tokenizer of {base} has no padding token; it cannot batch texts of different lengths")
    torch.manual_seed(seed)
    return model, tokenizer


def _seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _tokenize(tokenizer: Any, texts: list[str], max_length: int) -> list[list[int]]:
    """Token ids of each text, truncated to ``max_length`` (special tokens included), unpadded."""
    encoded = tokenizer(texts, truncation=True, max_length=max_length, padding=False)
    keys = [k for k in ("input_ids", "token_type_ids") if k in encoded]
    return [dict(zip(keys, values, strict=True)) for values in zip(*(encoded[k] for k in keys), strict=True)]


def _collate(tokenizer: Any, rows: list[dict]) -> dict:
    """Pad one batch to its own longest row (dynamic padding); tensors ``[batch, longest]``."""
    return tokenizer.pad(rows, padding="longest", return_tensors="pt", return_attention_mask=True)


def _length_grouped_batches(encoded: list[dict], batch_size: int, rng: random.Random) -> list[list[int]]:
    """Row indices of each batch for one epoch: shuffled, sorted by length within windows, batches shuffled.

    Batches of similar lengths need little padding, which on a CPU is most of the time saved.
    """
    order = list(range(len(encoded)))
    rng.shuffle(order)
    window = batch_size * LENGTH_GROUP_WINDOW
    batches = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda i: len(encoded[i]["input_ids"]))
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches


def _parameter_groups(model: Any, weight_decay: float) -> list[dict]:
    """AdamW groups: no weight decay on biases and normalisation weights (the usual BERT recipe)."""
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        (no_decay if parameter.ndim < 2 or "norm" in name.lower() else decay).append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _adamw(groups: list[dict], lr: float) -> Any:
    """AdamW with the fused update: one kernel over every tensor of a group. On 2 CPU cores a step over MiniLM's
    22.7 million weights takes 25 ms against 121 ms with ``foreach`` (``python -m benchmarks.adamw_step``).
    ``foreach`` where fused is not available for the parameters' device or dtype."""
    import torch
    from torch.utils._foreach_utils import _get_fused_kernels_supported_devices  # the list torch checks at step()

    devices = set(_get_fused_kernels_supported_devices())
    # torch accepts unsupported parameters when the optimizer is built and raises only at the first step
    fused = all(p.is_floating_point() and p.device.type in devices for g in groups for p in g["params"])
    return torch.optim.AdamW(groups, lr=lr, **({"fused": True} if fused else {"foreach": True}))


def _linear_schedule(warmup: int, total: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (total - step) / max(1, total - warmup))

    return factor


def _save_atomically(model: Any, tokenizer: Any, metadata: dict, out_dir: Path,
                     dynamics: TrainingDynamics | None = None) -> None:
    """Write the folder next to ``out_dir`` under a temporary name, then swap it in with renames."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        from influence_core.sources.models import quiet_transformers

        with quiet_transformers():
            model.save_pretrained(staging)
            tokenizer.save_pretrained(staging)
        if not (staging / "model.safetensors").is_file() and not any(staging.glob("model*.safetensors")):
            raise ModelError(f"saving did not produce safetensors weights in {staging}")
        if dynamics is not None:
            dynamics.save(staging / DYNAMICS_FILE)
        # finetune.json is written last: a folder with it is complete.
        (staging / "finetune.json").write_text(json.dumps(metadata, indent=2, default=str))
        old = None
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}-{time.time_ns()}")
            os.replace(out_dir, old)
        os.replace(staging, out_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


__all__ = [
    "DYNAMICS_FILE",
    "FinetuneResult",
    "FinetuneCancelled",
    "TrainingDynamics",
    "load_dynamics",
    "text_keys",
    "finetune",
    "predict_proba",
    "library_versions",
]
