"""What a run will cost before it starts: a cost model of passes, rotations and eigendecompositions."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from explorer.spec import AnalysisSpec, demo_model_ready, factors_ready, model_identity
from influence_core.cache import cache_dir, stable_hash


# ------------------------------------------------------------------------------------------- estimates
@dataclass
class CostEstimate:
    """What a run will cost, before it starts (rough: the first run on a machine calibrates later ones).

    Attributes:
        seconds: wall time, including a first-use fine-tune of the demo model.
        memory_bytes: peak extra memory for gradients, factors and scores.
        steps: what will run, in words.
    """

    seconds: float
    memory_bytes: float
    steps: list[str]

    def describe(self) -> str:
        return f"about {format_seconds(self.seconds)} and {format_bytes(self.memory_bytes)} of memory"


# Rough per-unit costs on one CPU core pair, calibrated on MiniLM; a finished run rescales them (see record_speed).
FORWARD_BACKWARD_S_PER_PARAM = 4e-9  # one example's forward and backward pass, per model parameter
MAC_S = 7e-11  # one multiply-accumulate in the eigenbasis rotations and score products
EIGH_S_PER_CUBE = 5e-9  # eigendecomposition of an n x n factor, per n**3


def estimate_cost(
    spec: AnalysisSpec, n_train: int, n_test: int, *, layer_sizes: Mapping[str, tuple[int, int]] | None = None
) -> CostEstimate:
    """Estimate time and memory of :func:`compute_analysis` for ``n_train`` x ``n_test`` reviews.

    ``layer_sizes`` maps each analysed layer to ``(in_features + 1, out_features)``; without it the sizes are
    guessed from the model's ``config.json`` (demo and local folders). Times come from a simple cost model
    (forward/backward passes, eigenbasis rotations, eigendecompositions) scaled by how fast the last run on this
    machine was, so the first estimate is the roughest.
    """
    sizes = dict(layer_sizes) if layer_sizes else _guess_layer_sizes(spec)
    finetune = spec.model.kind == "demo" and not demo_model_ready()
    fit = not factors_ready(spec)
    seconds, steps = _model_seconds(spec, n_train, n_test, sizes, finetune=finetune, fit=fit)
    seconds *= _load_speed(spec) or 1.0
    width = sum(i * o for i, o in sizes.values())
    chunk = max(1, min(n_test, int(2 * 1024**3 // max(width * 4, 1))))
    k = len(spec.dampings)
    factors_bytes = sum((i * i + o * o + i * o) * 8 for i, o in sizes.values())
    queries_bytes = chunk * width * 4
    scores_bytes = k * max(len(sizes), 1) * n_test * n_train * 8 * 2
    widest = max((i * o for i, o in sizes.values()), default=0)
    batch_bytes = spec.config.batch_size * (width + widest * max(k, 1)) * 4  # captures, then one layer's K weightings
    memory = factors_bytes + queries_bytes + scores_bytes + batch_bytes + _guess_parameters(spec) * 4 * 3
    return CostEstimate(seconds=seconds, memory_bytes=float(memory), steps=steps)


FINETUNE_OVERHEAD = 1.5  # optimiser step and bookkeeping on top of a forward and backward pass


def finetune_recipe(spec: AnalysisSpec) -> dict:
    """The hyper-parameters a retrain of the model under study uses (``epochs``, ``max_length``, ...), read from the
    model's ``finetune.json`` when it has one; the retrain defaults otherwise."""
    from influence_core.training.retrain import DEFAULT_RECIPE

    hyper = dict(DEFAULT_RECIPE)
    try:
        from explorer.spec import study_model

        record = json.loads((Path(study_model(spec)).expanduser() / "finetune.json").read_text(encoding="utf-8"))
        hyper.update({k: v for k, v in record.get("hyperparameters", {}).items() if k in hyper})
    except (OSError, ValueError, AttributeError):
        pass
    return hyper


def estimate_finetune(spec: AnalysisSpec, n_train: int, *, runs: int = 1, epochs: int | None = None,
                      max_length: int | None = None) -> CostEstimate:
    """Time and memory of ``runs`` fine-tunes of the model's recipe on ``n_train`` reviews (retrain, counterfactual).

    ``epochs`` and ``max_length`` default to the recipe's (:func:`finetune_recipe`). Each epoch is one forward and
    backward pass per review plus the optimiser step, from the same cost model as :func:`estimate_cost` and
    rescaled by the speed this machine recorded for the model, so the first estimate is the roughest.
    """
    recipe = finetune_recipe(spec)
    epochs = int(recipe["epochs"] if epochs is None else epochs)
    max_length = int(recipe["max_length"] if max_length is None else max_length)
    parameters = _guess_parameters(spec)
    per_example = FORWARD_BACKWARD_S_PER_PARAM * parameters * (max_length / 128) * FINETUNE_OVERHEAD
    seconds = max(int(runs), 0) * epochs * max(int(n_train), 0) * per_example * (_load_speed(spec) or 1.0)
    memory = parameters * 4 * 4  # weights, gradients and two Adam moments in float32
    steps = [f"{runs} fine-tune{'s' if runs != 1 else ''} of {epochs} epoch{'s' if epochs != 1 else ''} on "
             f"{n_train} training reviews"]
    return CostEstimate(seconds=float(seconds), memory_bytes=float(memory), steps=steps)


def _model_seconds(
    spec: AnalysisSpec, n_train: int, n_test: int, sizes: Mapping[str, tuple[int, int]], *, finetune: bool, fit: bool
) -> tuple[float, list[str]]:
    """Unscaled seconds of each stage from the cost model, and the stages in words."""
    config = spec.config
    length = config.max_length / 128
    forward_backward = FORWARD_BACKWARD_S_PER_PARAM * _guess_parameters(spec) * length
    # one example's gradient into the eigenbasis: the engine rotates token by token when that is cheaper than
    # rotating the per-example matrix (reviews fill about half of max_length on average)
    tokens = max(1.0, config.max_length / 2)
    rotation = 0.0 if config.method == "identity" else MAC_S * sum(
        min(i * i * o + i * o * o, tokens * (i * i + o * o + i * o)) for i, o in sizes.values()
    )
    width = sum(i * o for i, o in sizes.values())
    k = len(spec.dampings)
    seconds, steps = 0.0, []
    if finetune:
        seconds += 3 * 480 * forward_backward * 1.5
        steps.append("fine-tune the demo model once (3 epochs on 480 reviews)")
    if fit and config.method != "identity":
        # the true Fisher needs one backward pass per class term; a binary model has one term (the demo's base
        # encoder records no labels: the demo is binary)
        n_labels = len(_model_config(spec).get("id2label") or {}) if spec.model.kind != "demo" else 2
        classes = n_labels if config.fisher == "true" and n_labels > 2 else 1
        passes = 2 if config.method == "ekfac" else 1
        seconds += n_train * forward_backward * classes * passes + n_train * rotation * (passes - 1)
        seconds += EIGH_S_PER_CUBE * sum(i**3 + o**3 for i, o in sizes.values())
        steps.append(f"fit {config.method} factors on {n_train} training reviews ({passes} passes)")
    chunk = max(1, min(n_test, int(2 * 1024**3 // max(width * 4, 1)))) if n_test else 1
    chunks = math.ceil(n_test / chunk) if n_test else 0
    per_train = forward_backward + rotation + MAC_S * min(n_test, chunk) * k * width
    seconds += chunks * n_train * per_train + n_test * (forward_backward + rotation)
    steps.append(
        f"score {n_test} test x {n_train} training reviews over {len(sizes) or '?'} layers at {k} damping values"
        + (f" ({chunks} passes over the training reviews)" if chunks > 1 else "")
    )
    return seconds, steps


def _model_config(spec: AnalysisSpec) -> dict:
    if spec.model.kind == "demo":
        from influence_core.sources.models import base_encoder_path

        folder = Path(base_encoder_path())
    elif spec.model.kind == "local":
        folder = Path(spec.model.name).expanduser()
    else:
        return {}
    try:
        return json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _guess_parameters(spec: AnalysisSpec) -> int:
    cfg = _model_config(spec)
    hidden = int(cfg.get("hidden_size") or cfg.get("dim") or 768)
    inter = int(cfg.get("intermediate_size") or cfg.get("hidden_dim") or 4 * hidden)
    n_layers = int(cfg.get("num_hidden_layers") or cfg.get("n_layers") or 12)
    vocab = int(cfg.get("vocab_size") or 30522)
    return n_layers * (4 * hidden * hidden + 2 * hidden * inter) + vocab * hidden


def _guess_layer_sizes(spec: AnalysisSpec) -> dict[str, tuple[int, int]]:
    cfg = _model_config(spec)
    hidden = int(cfg.get("hidden_size") or cfg.get("dim") or 768)
    inter = int(cfg.get("intermediate_size") or cfg.get("hidden_dim") or 4 * hidden)
    n_layers = int(cfg.get("num_hidden_layers") or cfg.get("n_layers") or 12)
    n_labels = len(cfg.get("id2label") or {}) or 2
    sizes: dict[str, tuple[int, int]] = {}
    for part in [p.strip() for p in spec.config.layers.split(",") if p.strip()]:
        if part in ("ffn", "all"):
            for i in range(n_layers):
                sizes[f"layer.{i}.ffn.in"] = (hidden + 1, inter)
                sizes[f"layer.{i}.ffn.out"] = (inter + 1, hidden)
        if part in ("attention", "all"):
            for i in range(n_layers):
                for name in ("query", "key", "value", "output"):
                    sizes[f"layer.{i}.attention.{name}"] = (hidden + 1, hidden)
        if part in ("head", "all"):
            sizes["pooler"] = (hidden + 1, hidden)
            sizes["classifier"] = (hidden + 1, n_labels)
        if part not in ("ffn", "attention", "head", "all"):
            sizes[part] = (hidden + 1, hidden)
    return sizes


def _speed_file(spec: AnalysisSpec) -> Path:
    return cache_dir("timings") / f"{stable_hash(model_identity(spec.model))}.json"


def record_speed(spec: AnalysisSpec, n_train: int, n_test: int, seconds: float, finetuned: bool, fitted: bool) -> None:
    """Remember how much faster or slower than the cost model this machine was (for the next estimate)."""
    if finetuned:  # a first-use fine-tune says little about the analysis itself
        return
    modelled, _ = _model_seconds(spec, n_train, n_test, _guess_layer_sizes(spec), finetune=False, fit=fitted)
    if modelled <= 0 or seconds <= 0:
        return
    try:
        _speed_file(spec).write_text(json.dumps({"speed_factor": seconds / modelled}), encoding="utf-8")
    except OSError:
        pass


def _load_speed(spec: AnalysisSpec) -> float | None:
    try:
        return float(json.loads(_speed_file(spec).read_text(encoding="utf-8"))["speed_factor"])
    except (OSError, ValueError, KeyError):
        return None


def format_seconds(seconds: float) -> str:
    if seconds < 1:
        return "under a second"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def format_bytes(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"
