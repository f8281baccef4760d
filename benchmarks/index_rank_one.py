"""Would storing the rank-one layers exactly keep more of the exact top 10 in the index's top 100?

    .venv/bin/python -m benchmarks.index_rank_one --model ~/.cache/influence-explorer/models/demo-<key> --threads 2

In MiniLM's classifier only the first token's last hidden state reaches the loss (the pooler reads it), so the last
block's feed-forward layers, the pooler and the classifier see a gradient at one token per example: each example's
gradient of those layers is the outer product ``g a^T`` of one output gradient and one input, exactly, and storing
the two vectors (1,921 + 1,921 + 769 + 387 numbers on FFN + head) would give those layers' part of every score
exactly instead of through the eigen index's kept entries. This measures what that would buy before anything is
built. It checks on one batch that those layers' output gradients are non-zero at one token per example, builds one
int8 eigen index of ``--entries`` on the fit's pass (as :mod:`benchmarks.index_tail`), and takes the engine's exact
scores of ``--n-queries`` dev sentences, per layer. For each prefix of ``e`` columns it prints, against the exact top
10 of every query, the share inside the top 100 and the median Pearson of

- ``plain``: the index's first ``e`` columns (the index of ``e`` entries, as now);
- ``exact rank-one``: the first ``e`` columns that belong to the other layers, plus the rank-one layers' exact
  scores (the engine's, per layer: what exact storage of the two vectors gives, in float32);
- ``same bytes``: the same with ``e`` less the two vectors' bytes in float16 (one int8 entry is one byte).

With ``--timing-only`` it instead times what the lookup would add: each rank-one layer's part of the score for
``--shortlist`` rows of one query from the two stored vectors (``sum((A M^T) * G)`` with the query's preconditioned
[out, in] matrix ``M``, in float32), median of 7 calls in one process; no model is needed.

Writes nothing but its output. The outcome, and the run of the built version on the whole training set (dropped):
``benchmarks/INDEX.md``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from benchmarks.index import _agreement, sst2_workload


def rank_one_layers(engine, texts, labels) -> list[str]:
    """The analysed layers whose output gradients are non-zero at one token at most per example, on the first
    batch of ``texts`` (2-D inputs, such as the classifier's, are one token)."""
    from influence_core.engine.batches import batches
    from influence_core.engine.tracking import label_terms

    encoded = engine.encode(texts[:engine.config.batch_size], labels[:engine.config.batch_size])
    batch = next(iter(batches(encoded, engine.config.batch_size, engine.config.device)))
    with engine.session():
        _, captures = engine.tracker.run(batch, label_terms(batch.labels))
    return [name for name, capture in captures.items()
            if int((capture.g[0].abs().sum(-1) > 0).sum(-1).max()) <= 1]


def shortlist_seconds(shapes: dict[str, tuple[int, int]], rows: int, repeats: int = 7) -> float:
    """Median seconds to compute every rank-one layer's exact part of one query's score on ``rows`` rows from
    stored vectors (random float32 data of the layers' shapes)."""
    generator = torch.Generator().manual_seed(0)
    data = {name: (torch.randn(rows, out, generator=generator), torch.randn(rows, width, generator=generator),
                   torch.randn(out, width, generator=generator)) for name, (out, width) in shapes.items()}
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        total = torch.zeros(rows)
        for g, a, m in data.values():
            total += ((a @ m.T) * g).sum(dim=1)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="a fine-tuned classifier folder (the demo model); required unless "
                        "--timing-only")
    parser.add_argument("--n-train", type=int, default=5000)
    parser.add_argument("--n-queries", type=int, default=50)
    parser.add_argument("--entries", type=int, default=131072, help="the index built; its prefixes are measured")
    parser.add_argument("--prefixes", default="16384,32768,65536,98304,131072")
    parser.add_argument("--top", type=int, default=10)
    parser.add_argument("--candidates", type=int, default=100)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--timing-only", action="store_true", help="only time the lookup's added products")
    parser.add_argument("--shortlist", type=int, default=4000, help="rows per query for --timing-only")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.timing_only:  # MiniLM's four rank-one layers with the bias column: [out, in + 1]
        shapes = {"layer.5.intermediate": (1536, 385), "layer.5.output": (384, 1537), "pooler": (384, 385),
                  "classifier": (2, 385)}
        print(f"exact rank-one part of one query on {args.shortlist} rows: "
              f"{1000 * shortlist_seconds(shapes, args.shortlist):.1f} ms")
        return

    if not args.model:
        parser.error("--model is required unless --timing-only")
    from influence_core.engine.index import IndexConfig, fit_and_index

    engine, texts, labels, q_texts, q_labels = sst2_workload(args.model, args.n_train, args.n_queries)
    rank_one = rank_one_layers(engine, texts, labels)
    shapes = {name: (engine.tracker.modules[name].out_features,
                     engine.tracker.modules[name].in_features + (engine.tracker.modules[name].bias is not None))
              for name in rank_one}
    vector_bytes = 2 * sum(out + width for out, width in shapes.values())
    print(f"rank-one layers (one token per example): {rank_one}; their two vectors: {vector_bytes} bytes per row "
          f"in float16", flush=True)
    start = time.perf_counter()
    _, index = fit_and_index(engine, texts, labels, config=IndexConfig(exact=False, dtype="int8",
                                                                       entries=args.entries, basis="eigen"))
    print(f"fit + index {time.perf_counter() - start:.0f} s", flush=True)
    start = time.perf_counter()
    table = engine.score(q_texts, q_labels, texts, labels, self_influence=False)
    print(f"exact scores {time.perf_counter() - start:.0f} s", flush=True)
    exact, by_layer = table.total(0), table.by_layer(0)
    exact_rank_one = sum(by_layer[name] for name in rank_one)

    queries = index.query_rows(q_texts, q_labels)[0].double().numpy()  # [Q, width]
    rows = np.asarray(index.rows, dtype=np.float64) * index.scales[:, None].astype(np.float64)  # [n, width]
    columns = index.projector().layer_columns()
    print("stored columns per layer: " + ", ".join(f"{name} {len(c)}" for name, c in columns.items()))
    others = np.sort(np.concatenate([c for name, c in columns.items() if name not in rank_one]))
    print("entries  plain (cover helpful/harmful, Pearson)   exact rank-one            same bytes")
    for e in (int(p) for p in args.prefixes.split(",")):
        cells = []
        plain = queries[:, :e] @ rows[:, :e].T
        for estimate in (plain, *(queries[:, others[:k]] @ rows[:, others[:k]].T + exact_rank_one
                                  for k in (e, max(e - vector_bytes, 1)))):
            found = _agreement(estimate, exact, args.top, args.candidates)
            cells.append(f"{found['helpful_in_candidates']:.2f}/{found['harmful_in_candidates']:.2f}, "
                         f"{found['median_pearson']:.4f}")
        print(f"{e:<8} " + "   ".join(f"{c:<24}" for c in cells), flush=True)


if __name__ == "__main__":
    main()
