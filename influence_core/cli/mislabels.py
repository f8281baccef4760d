"""``mislabels``: every training row scored by how suspicious its label is (higher = more suspicious), to CSV."""

from __future__ import annotations

import argparse
import time

from influence_core.cli.distributed import add_options, context, progress_bar
from influence_core.cli.inputs import (
    add_engine_options,
    add_factor_source,
    add_model_options,
    aligned,
    check_out,
    load_model,
    make_engine,
    prepare_factors,
    read_examples,
)
from influence_core.mislabel import mislabel_scores, probabilities_from_table, training_signals
from influence_core.sources.data import read_table


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "mislabels", help="rank training rows by how suspicious their label is (.csv)",
        description="Score every training row with self-influence, influence on a trusted slice, loss and "
        "margin, combine them, and write the rows with one column per ranking (higher = more suspicious).")
    add_model_options(parser)
    parser.add_argument("--train", required=True, help="training rows to rank (.csv, .tsv, .parquet, .jsonl)")
    parser.add_argument("--trusted", default=None,
                        help="held-out rows with trusted labels; adds trusted_influence (recommended)")
    parser.add_argument("--probs", default=None,
                        help="out-of-sample class probabilities, one row per training row and one column per "
                        "class (named by label or in class order); used for loss and margin")
    add_factor_source(parser)
    add_engine_options(parser)
    parser.add_argument("--out", required=True, help="output CSV: the input rows plus the rankings and rank")
    add_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    out = check_out(args.out)
    raw = read_examples(args.train, args)
    trusted = read_examples(args.trusted, args) if args.trusted else None
    loaded = load_model(args)
    engine = make_engine(args, loaded)
    train = aligned(raw, loaded)
    trusted = aligned(trusted, loaded) if trusted is not None else None
    probs = probabilities_from_table(read_table(args.probs), loaded.label_names, len(train), args.probs) if args.probs else None
    start = time.perf_counter()
    prepare_factors(engine, args, loaded, args.train)
    signals = training_signals(engine, train["text"].tolist(), train["label"].to_numpy(),
                               None if trusted is None else trusted["text"].tolist(),
                               None if trusted is None else trusted["label"].to_numpy(),
                               progress=progress_bar(args, "mislabels"), distributed=context(args))
    if not context(args).is_main:
        return 0
    scores = mislabel_scores(signals, probs=probs)
    rows = raw.reset_index(drop=True)
    for name in scores.columns:
        rows[name] = scores[name].to_numpy()
    rows.to_csv(out, index=False)
    parts = ", ".join(scores.attrs["combined_parts"])
    print(f"saved {len(rows)} rows with {len(scores.columns) - 2} rankings to {out} ({time.perf_counter() - start:.1f} s;"
          f" higher = more suspicious; rank 1 = most suspicious by the mean percentile rank of {parts})")
    return 0
