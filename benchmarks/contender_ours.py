"""This engine (``influence_core``) on the benchmark workload.

Variant ``<method>-<fisher>``, default ``ekfac-empirical``: the empirical Fisher (the given labels) makes
the comparison with kronfluence (``use_empirical_fisher=True``) and pyDVL deterministic. ``ekfac-true`` is
the engine's default Fisher (exact expectation under the model's predictions).
"""

from __future__ import annotations

import numpy as np
import torch

from benchmarks.common import Report, Workload, load_model, load_workload, timed, worker_args, write_result
from influence_core import EngineConfig, InfluenceEngine
from influence_core.engine.batches import Encoded, batches


def encoded_from_batches(saved: list[dict[str, torch.Tensor]], pad_id: int) -> Encoded:
    """The examples of ``saved`` in batch order, unpadded; the engine batches them back identically."""
    ids, types, labels = [], [], []
    for batch in saved:
        lengths = batch["attention_mask"].sum(-1).tolist()
        for row, length in enumerate(lengths):
            ids.append(tuple(batch["input_ids"][row, :length].tolist()))
            types.append(tuple(batch["token_type_ids"][row, :length].tolist()))
            labels.append(int(batch["labels"][row]))
    return Encoded(tuple(ids), np.asarray(labels, dtype=np.int64), tuple(types), pad_id)


def check_same_batches(encoded: Encoded, saved: list[dict[str, torch.Tensor]], batch_size: int) -> None:
    ours = list(batches(encoded, batch_size))
    if len(ours) != len(saved):
        raise RuntimeError(f"the engine makes {len(ours)} batches, the workload has {len(saved)}")
    for mine, theirs in zip(ours, saved):
        for key in ("input_ids", "attention_mask", "token_type_ids"):
            if not torch.equal(mine.inputs[key], theirs[key]):
                raise RuntimeError(f"the engine's batches differ from the saved ones ({key})")
        if not torch.equal(mine.labels, theirs["labels"]):
            raise RuntimeError("the engine's batches differ from the saved ones (labels)")


def make_engine(workload: Workload, variant: str) -> tuple[InfluenceEngine, Encoded, Encoded]:
    from transformers import AutoTokenizer

    method, fisher = (variant or "ekfac-empirical").split("-")
    model = load_model(workload)
    tokenizer = AutoTokenizer.from_pretrained(str(workload.model_dir))
    config = EngineConfig(layers=",".join(workload.layers), method=method, fisher=fisher, damping=workload.damping,
                          max_length=int(workload.meta["spec"]["max_length"]), batch_size=workload.batch_size)
    engine = InfluenceEngine(model, tokenizer, config)
    pad = tokenizer.pad_token_id or 0
    train = encoded_from_batches(workload.train, pad)
    test = encoded_from_batches(workload.test, pad)
    check_same_batches(train, workload.train, workload.batch_size)
    check_same_batches(test, workload.test, workload.batch_size)
    return engine, train, test


def main(argv: list[str] | None = None) -> None:
    args = worker_args("ours", argv)
    workload = load_workload(args.workload)
    engine, train, test = make_engine(workload, args.variant)
    factors_path = f"{args.state}/factors.safetensors"
    report = Report("ours", args.stage, notes={"variant": args.variant or "ekfac-empirical", "layers": engine.layers})
    scores = None
    if args.stage == "fit":
        with timed(report):
            engine.fit(train)
            engine.save_factors(factors_path)
    elif args.stage == "pairwise":
        with timed(report):
            engine.load_factors(factors_path)
            scores = engine.influences(test, None, train, None)  # [n_test, n_train], positive = helpful
    elif args.stage == "self":
        with timed(report):
            engine.load_factors(factors_path)
            scores = engine.self_influence(train, None)  # [n_train]
    elif args.stage == "sweep":
        with timed(report):
            engine.load_factors(factors_path)
            table = engine.score(test, None, train, None, dampings=workload.dampings, self_influence=False)
            scores = table.pairwise.sum(axis=1)  # [K, n_test, n_train]
        report.notes["dampings"] = table.dampings.tolist()
    else:
        raise SystemExit(f"ours has no stage {args.stage}")
    write_result(args.out, report, scores)


if __name__ == "__main__":
    main()
