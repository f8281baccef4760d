"""What every contender process shares: the saved workload, the worker protocol, timing and memory.

This module runs inside every contender's virtual environment, so it imports only torch, numpy and
transformers (never ``influence_core``, pandas or scipy).

A workload folder holds ``model/`` (the fine-tuned classifier), ``batches.pt`` (the tokenized batches,
identical for every contender) and ``workload.json`` (what they are). A worker is started once per
(contender, stage, run) in a fresh process::

    <venv>/bin/python -m benchmarks.contender_<name> --workload DIR --stage STAGE --state DIR --out FILE.json

and writes ``FILE.json`` (timings, memory, notes) and, for score stages, ``FILE.npy`` (scores in batch order).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

STAGES = ("fit", "pairwise", "self", "sweep")
#: The floor is a stage of its own contender (plain forward and backward, no influence work).
ALL_STAGES = (*STAGES, "floor")
TRACKED_LAYERS = "ffn,head"


@dataclass
class Workload:
    """The saved workload.

    Attributes:
        folder: Where it lives.
        meta: ``workload.json``: sizes, batch size, dampings, layer names, data selection.
        train: Training batches in order; each a dict of int64 tensors ``input_ids``, ``attention_mask``,
            ``token_type_ids`` [B, T] and ``labels`` [B], plus ``index`` [B] (row in the sampled table).
        test: Test batches, same layout.
    """

    folder: Path
    meta: dict
    train: list[dict[str, torch.Tensor]]
    test: list[dict[str, torch.Tensor]]

    @property
    def model_dir(self) -> Path:
        return self.folder / "model"

    @property
    def dampings(self) -> list[float]:
        return [float(d) for d in self.meta["dampings"]]

    @property
    def damping(self) -> float:
        return float(self.meta["damping"])

    @property
    def layers(self) -> list[str]:
        return list(self.meta["layers"])

    @property
    def batch_size(self) -> int:
        return int(self.meta["batch_size"])

    @property
    def n_train(self) -> int:
        return sum(len(b["labels"]) for b in self.train)

    @property
    def n_test(self) -> int:
        return sum(len(b["labels"]) for b in self.test)


def load_workload(folder: str | os.PathLike) -> Workload:
    folder = Path(folder)
    meta = json.loads((folder / "workload.json").read_text())
    saved = torch.load(folder / "batches.pt", weights_only=True)
    return Workload(folder, meta, saved["train"], saved["test"])


def load_model(workload: Workload, **kwargs) -> torch.nn.Module:
    """The fine-tuned classifier in eval mode, float32, CPU (``kwargs`` go to ``from_pretrained``)."""
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    model = AutoModelForSequenceClassification.from_pretrained(str(workload.model_dir), use_safetensors=True,
                                                               **kwargs)
    model.eval()
    return model


def model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {key: batch[key] for key in ("input_ids", "attention_mask", "token_type_ids")}


class BatchDataset(torch.utils.data.Dataset):
    """Examples in saved-batch order; with ``loader()`` a DataLoader yields exactly the saved batches.

    Libraries that build their own DataLoader from a Dataset (kronfluence) get a sequential sampler and
    ``collate``: consecutive indices of one saved batch are turned back into that very batch.
    """

    def __init__(self, saved: list[dict[str, torch.Tensor]]):
        self.saved = saved
        self.starts = np.cumsum([0] + [len(b["labels"]) for b in saved])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitem__(self, index: int) -> tuple[BatchDataset, int]:
        # The item names its dataset, so one collate serves several datasets (kronfluence shares one
        # DataLoaderKwargs between the query and the training data).
        return self, int(index)

    @staticmethod
    def collate(items: list[tuple[BatchDataset, int]]) -> dict[str, torch.Tensor]:
        dataset = items[0][0]
        return dataset.rows([index for _, index in items])

    def rows(self, indices: list[int]) -> dict[str, torch.Tensor]:
        which = int(np.searchsorted(self.starts, indices[0], side="right") - 1)
        start, stop = int(self.starts[which]), int(self.starts[which + 1])
        if list(indices) != list(range(start, stop)):
            raise RuntimeError(f"batch boundaries moved: got rows {indices[0]}..{indices[-1]}, saved {start}..{stop - 1}")
        return dict(self.saved[which])

    def loader(self, batch_size: int) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(self, batch_size=batch_size, shuffle=False, collate_fn=self.collate)


def rss_bytes() -> int:
    """Current resident set size of this process."""
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far (``VmHWM``).

    Not ``ru_maxrss``: Linux carries it over ``execve`` from the forked parent, so a worker started by a
    large parent would report the parent's size.
    """
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@dataclass
class Report:
    """What one worker run writes: timings in seconds, memory in bytes, free-form notes.

    ``rss_start``: after imports, before the model is loaded; ``rss_before``: just before the timed block;
    ``peak_rss``: the process's peak once the block is done.
    """

    contender: str
    stage: str
    seconds: float = float("nan")
    peak_rss: int = 0
    rss_before: int = 0
    rss_start: int = field(default_factory=lambda: _RSS_START)
    notes: dict = field(default_factory=dict)


@contextmanager
def timed(report: Report):
    """Time the block; record RSS before it and the process peak after it."""
    report.rss_before = rss_bytes()
    start = time.perf_counter()
    yield
    report.seconds = time.perf_counter() - start
    report.peak_rss = peak_rss_bytes()


_RSS_START = 0


def worker_args(contender: str, argv: list[str] | None = None) -> argparse.Namespace:
    """Parse a worker's arguments; call it after the imports and before loading anything (it notes the RSS)."""
    global _RSS_START
    _RSS_START = rss_bytes()
    parser = argparse.ArgumentParser(prog=f"benchmarks.contender_{contender}")
    parser.add_argument("--workload", required=True, help="workload folder (made by benchmarks.run)")
    parser.add_argument("--stage", required=True, choices=ALL_STAGES)
    parser.add_argument("--state", required=True, help="folder for this contender's fitted factors")
    parser.add_argument("--out", required=True, help="result JSON path; scores go next to it as .npy")
    parser.add_argument("--variant", default="", help="contender-specific variant (e.g. kfac/ekfac for pyDVL)")
    args = parser.parse_args(argv)
    Path(args.state).mkdir(parents=True, exist_ok=True)
    return args


def jsonable(value):
    """``json.dumps(default=...)`` for numpy scalars and arrays (anything else becomes its string)."""
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def write_result(out: str | os.PathLike, report: Report, scores: np.ndarray | None = None) -> None:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if scores is not None:
        np.save(out.with_suffix(".npy"), np.asarray(scores, dtype=np.float64))
    payload = {
        "contender": report.contender,
        "stage": report.stage,
        "seconds": report.seconds,
        "peak_rss": report.peak_rss,
        "rss_before": report.rss_before,
        "rss_start": report.rss_start,
        "notes": report.notes,
        "environment": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "numpy": np.__version__,
            "executable": sys.executable,
        },
    }
    out.write_text(json.dumps(payload, indent=2) + "\n")


def package_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


__all__ = [
    "ALL_STAGES",
    "STAGES",
    "TRACKED_LAYERS",
    "BatchDataset",
    "Report",
    "Workload",
    "load_model",
    "load_workload",
    "model_inputs",
    "package_version",
    "peak_rss_bytes",
    "rss_bytes",
    "timed",
    "worker_args",
    "write_result",
]
