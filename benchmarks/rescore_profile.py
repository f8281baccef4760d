"""Where the exact re-score's time goes: one query against 200 SST-2 training sentences (the index's 100 per side).

    python -m benchmarks.rescore_profile --model ~/.cache/influence-explorer/models/demo-<key> --threads 2

Fits EK-FAC factors (FFN + head) on 300 SST-2 training sentences, then times ``engine.score`` of one dev sentence
against 200 other training sentences three times, prints the profiler's table of a fourth, then the rate of plain
fp32 products of the pass's shapes (10 repetitions each).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch


def main(argv: list[str] | None = None) -> list[float]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.rescore_profile", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="a fine-tuned classifier folder (default: MiniLM + seeded head)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--candidates", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=32, help="the engine's batch size")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from torch.profiler import profile

    from benchmarks.index import sst2_workload

    engine, train_texts, train_labels, query_texts, query_labels = sst2_workload(
        args.model, 300 + args.candidates, 1, batch_size=args.batch_size)
    engine.fit(train_texts[:300], train_labels[:300])
    texts, labels = train_texts[300:], train_labels[300:]
    tokens = engine.encode(texts, labels).lengths
    print(f"{len(texts)} candidates, {tokens.mean():.1f} tokens each on average ({tokens.sum()} in all)")
    times = []
    for _ in range(3):
        start = time.perf_counter()
        engine.score(query_texts, query_labels, texts, labels, self_influence=False)
        times.append(time.perf_counter() - start)
    print("re-score seconds:", ", ".join(f"{t:.2f}" for t in times), f"(median {np.median(times):.2f})")
    with profile() as prof:
        engine.score(query_texts, query_labels, texts, labels, self_influence=False)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))
    for rows, inner, cols in ((int(tokens.sum()), 384, 1536), (int(tokens.sum()), 1536, 384), (2048, 2048, 2048)):
        left, right = torch.randn(rows, inner), torch.randn(inner, cols)
        for _ in range(3):
            left @ right
        start = time.perf_counter()
        for _ in range(10):
            left @ right
        rate = 2 * rows * inner * cols * 10 / (time.perf_counter() - start) / 1e9
        print(f"fp32 product [{rows}, {inner}] x [{inner}, {cols}]: {rate:.0f} GFLOP/s")
    return times


if __name__ == "__main__":
    main()
