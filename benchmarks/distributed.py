"""One process with 2 threads against 2 processes with 1 thread each: fit, pairwise scores, self-influence.

    .venv/bin/python -m benchmarks.distributed --workload benchmarks/results/workload-<key>   # the benchmark workload
    .venv/bin/python -m benchmarks.distributed --tiny                                         # a seconds-long check

Both arms run through ``influence_core.engine.distributed.launch`` (fresh spawned processes, gloo), so their peak
memory is measured the same way: ``ru_maxrss`` of each rank. Wall times are per stage, the slowest rank's. The
two arms' results are compared (float32: they agree to about 1e-5). Writes a JSON report with ``--out``.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time

import numpy as np
import torch

TINY_WORDS = "good bad film plot actor great dull warm long funny slow moving story music boring fine".split()


def _tiny_inputs(n_train: int, n_test: int):
    """A tiny seeded BERT classifier and random sentences (no download, no workload folder)."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from influence_core.sources.models import base_encoder_path

    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(TINY_WORDS, size=rng.integers(3, 20))) for _ in range(n_train + n_test)]
    labels = rng.integers(0, 2, size=len(texts)).tolist()
    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=48, max_position_embeddings=128, num_labels=2)
    model = BertForSequenceClassification(config).eval()
    tokenizer = AutoTokenizer.from_pretrained(base_encoder_path())
    return model, tokenizer, texts[:n_train], labels[:n_train], texts[n_train:], labels[n_train:], 16, 64


def _workload_inputs(folder: str):
    from transformers import AutoTokenizer

    from benchmarks.common import load_model, load_workload
    from benchmarks.contender_ours import encoded_from_batches

    workload = load_workload(folder)
    tokenizer = AutoTokenizer.from_pretrained(str(workload.model_dir))
    pad = tokenizer.pad_token_id or 0
    train, test = encoded_from_batches(workload.train, pad), encoded_from_batches(workload.test, pad)
    return (load_model(workload), tokenizer, train, None, test, None, workload.batch_size,
            int(workload.meta["spec"]["max_length"]))


def _arm(distributed, source: dict) -> dict:
    """Runs in every rank: the three stages, timed; returns every rank's timings and peak memory (rank 0)."""
    from influence_core import EngineConfig, InfluenceEngine

    if source["tiny"]:
        model, tokenizer, train, train_labels, test, test_labels, batch_size, max_length = _tiny_inputs(
            source["n_train"], source["n_test"])
    else:
        model, tokenizer, train, train_labels, test, test_labels, batch_size, max_length = _workload_inputs(
            source["workload"])
    config = EngineConfig(layers="ffn,head", fisher="empirical", batch_size=batch_size, max_length=max_length)
    engine = InfluenceEngine(model, tokenizer, config)
    times = {}
    start = time.perf_counter()
    engine.fit(train, train_labels, distributed=distributed)
    times["fit"] = time.perf_counter() - start
    start = time.perf_counter()
    table = engine.score(test, test_labels, train, train_labels, self_influence=False, distributed=distributed)
    times["pairwise"] = time.perf_counter() - start
    start = time.perf_counter()
    values = engine.self_influence(train, train_labels, distributed=distributed)
    times["self"] = time.perf_counter() - start
    rank = {"times_s": times, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    ranks = [rank]
    if distributed.active:
        ranks = [None] * distributed.world_size
        torch.distributed.all_gather_object(ranks, rank)
    return {"ranks": ranks, "pairwise": table.total(0), "self": values}


def main(argv: list[str] | None = None) -> dict:
    from influence_core.engine.distributed import launch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--workload", help="a workload folder from benchmarks/workload.py")
    group.add_argument("--tiny", action="store_true", help="a tiny seeded model on random sentences")
    parser.add_argument("--n-train", type=int, default=64, help="--tiny: training sentences")
    parser.add_argument("--n-test", type=int, default=8, help="--tiny: test sentences")
    parser.add_argument("--out", help="write the report here (JSON)")
    args = parser.parse_args(argv)
    source = {"tiny": args.tiny, "workload": args.workload}
    if args.tiny:
        source.update(n_train=args.n_train, n_test=args.n_test)
    report = {"source": source}
    results = {}
    for name, nprocs, threads in (("1 process x 2 threads", 1, 2), ("2 processes x 1 thread", 2, 1)):
        start = time.perf_counter()
        results[name] = launch(_arm, nprocs, source, threads=threads)
        ranks = results[name]["ranks"]
        report[name] = {
            "total_s": time.perf_counter() - start,  # with process start-up and model loading
            "stages_s": {stage: max(r["times_s"][stage] for r in ranks) for stage in ranks[0]["times_s"]},
            "peak_rss_mib_per_rank": [round(r["peak_rss_mib"], 1) for r in ranks],
        }
    one, two = results.values()
    scale = np.abs(one["pairwise"]).max()
    report["max_relative_difference"] = {
        "pairwise": float(np.abs(one["pairwise"] - two["pairwise"]).max() / scale),
        "self": float(np.abs(one["self"] - two["self"]).max() / np.abs(one["self"]).max()),
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as handle:
            handle.write(text + "\n")
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
