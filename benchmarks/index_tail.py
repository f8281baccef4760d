"""Does widening the index's full-width estimate by its truncation error keep more of the exact top 10 in the top 100?

    .venv/bin/python -m benchmarks.index_tail --model ~/.cache/influence-explorer/models/demo-<key> --threads 2

The eigen index keeps the entries of largest eigenvalue and leaves the rest out, so its estimate misses the left-out
part of the score, ``<q_tail, x_tail>``. The coarse pass already ranks each row by its estimate widened by that
pass's own error (``COARSE_SIGMAS``). This measures whether the same widening would help the full-width ranking,
the one the top 100 comes from, on one int8 eigen index of ``--entries`` built on the fit's pass. Its first ``e``
columns are the index with ``e`` entries, and the columns after ``e`` are a left-out part whose size is known per
query and row. For each ``e`` the rows are ranked by ``estimate + s * sd`` (helpful) and ``estimate - s * sd``
(harmful), with ``sd`` computed three ways:

- ``oracle``: ``sqrt(sum_j q_j^2 x_j^2)`` over the left-out columns, per query and row (what no index could store:
  it needs the left-out part of both);
- ``per-entry``: the row's left-out entries weighted by the queries' mean ``q_j^2``, times the query's own size;
- ``unweighted``: the row's left-out norm times the query's.

It prints the share of queries whose exact top 10 (the engine's, over all ``--n-train`` rows) lie inside the top 100
of each ranking. Writes nothing but its output.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from benchmarks.index import sst2_workload

SIGMAS = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0)


def _covered(exact: np.ndarray, helpful: np.ndarray, harmful: np.ndarray, top: int, candidates: int):
    """Shares of queries whose exact top ``top`` helpful / harmful lie in the rankings' top ``candidates``."""
    hits = np.zeros(2)
    for q, scores in enumerate(exact):
        hits[0] += set(np.argsort(-scores)[:top]) <= set(np.argsort(-helpful[q])[:candidates])
        hits[1] += set(np.argsort(scores)[:top]) <= set(np.argsort(harmful[q])[:candidates])
    return hits / len(exact)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="a fine-tuned classifier folder (the demo model)")
    parser.add_argument("--n-train", type=int, default=5000)
    parser.add_argument("--n-queries", type=int, default=50)
    parser.add_argument("--entries", type=int, default=131072, help="the index built; its prefixes are measured")
    parser.add_argument("--prefixes", default="8192,16384,32768,65536")
    parser.add_argument("--top", type=int, default=10)
    parser.add_argument("--candidates", type=int, default=100)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from influence_core.engine.index import IndexConfig, fit_and_index

    engine, texts, labels, q_texts, q_labels = sst2_workload(args.model, args.n_train, args.n_queries)
    start = time.perf_counter()
    _, index = fit_and_index(engine, texts, labels, config=IndexConfig(exact=False, dtype="int8",
                                                                       entries=args.entries, basis="eigen"))
    print(f"fit + index {time.perf_counter() - start:.0f} s", flush=True)
    start = time.perf_counter()
    exact = engine.score(q_texts, q_labels, texts, labels, self_influence=False).total(0)
    print(f"exact scores {time.perf_counter() - start:.0f} s", flush=True)

    queries = index.query_rows(q_texts, q_labels)[0].double().numpy().astype(np.float32)  # [Q, width]
    rows = np.asarray(index.rows, dtype=np.float32) * index.scales[:, None].astype(np.float32)  # [n, width]
    whole = queries @ rows.T
    lookup = index.lookup(torch.from_numpy(queries).to(engine.config.torch_dtype))
    print(f"dequantized product against the index's lookup: largest difference "
          f"{np.abs(whole - lookup).max() / np.abs(lookup).max():.1e} of the largest score")
    helpful, harmful = _covered(exact, whole, whole, args.top, args.candidates)
    print(f"all {rows.shape[1]} entries: helpful {helpful:.2f}, harmful {harmful:.2f}")
    print("entries  sd          " + "  ".join(f"s={s:<9}" for s in SIGMAS) + "  (helpful/harmful)")
    for e in (int(p) for p in args.prefixes.split(",")):
        estimate = queries[:, :e] @ rows[:, :e].T
        q_tail, x_tail = queries[:, e:] ** 2, rows[:, e:] ** 2
        weight = q_tail.mean(axis=0)
        deviations = {
            "oracle": np.sqrt(q_tail @ x_tail.T),
            "per-entry": np.sqrt(x_tail @ weight)[None, :] * np.sqrt(q_tail.sum(1) / weight.sum())[:, None],
            "unweighted": np.sqrt(x_tail.sum(1))[None, :] * np.sqrt(q_tail.mean(1))[:, None],
        }
        for name, sd in deviations.items():
            shares = [_covered(exact, estimate + s * sd, estimate - s * sd, args.top, args.candidates)
                      for s in SIGMAS]
            print(f"{e:<8} {name:<11} " + "  ".join(f"{up:.2f}/{down:.2f}  " for up, down in shares), flush=True)


if __name__ == "__main__":
    main()
