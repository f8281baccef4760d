"""``self-influence``: training rows ranked by self-influence, to CSV."""

from __future__ import annotations

import argparse

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


def add_parser(sub) -> None:
    parser = sub.add_parser("self-influence", help="rank training examples by self-influence (.csv)")
    add_model_options(parser)
    parser.add_argument("--train", required=True, help="training examples to score")
    add_factor_source(parser)
    add_engine_options(parser)
    parser.add_argument("--out", required=True, help="output CSV: the input rows plus self_influence and rank")
    add_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    out = check_out(args.out)
    train = read_examples(args.train, args)
    loaded = load_model(args)
    engine = make_engine(args, loaded)
    train = aligned(train, loaded)
    prepare_factors(engine, args, loaded, args.train)
    scores = engine.self_influence(train["text"].tolist(), train["label"].tolist(),
                                   progress=progress_bar(args, "self-influence"), distributed=context(args))
    if not context(args).is_main:
        return 0
    rows = train.copy()
    rows["self_influence"] = scores
    rows["rank"] = rows["self_influence"].rank(ascending=False, method="first").astype(int)
    rows.to_csv(out, index=False)
    print(f"saved {len(rows)} rows ranked by self-influence to {out} (rank 1 = most self-influential)")
    return 0
