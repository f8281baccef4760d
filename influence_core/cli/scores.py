"""``scores``: pairwise influences of training on test examples, per layer, to .npz."""

from __future__ import annotations

import argparse
import time

import numpy as np

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
    parser = sub.add_parser("scores", help="pairwise influences of training on test examples (.npz)")
    add_model_options(parser)
    parser.add_argument("--train", required=True, help="training examples to score")
    parser.add_argument("--test", required=True, help="test examples whose predictions are explained")
    add_factor_source(parser)
    add_engine_options(parser)
    parser.add_argument("--out", required=True,
                        help="output .npz: influences, layer:<name>, self_influence, layers, world_size")
    add_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    out = check_out(args.out)
    train, test = read_examples(args.train, args), read_examples(args.test, args)
    loaded = load_model(args)
    engine = make_engine(args, loaded)
    train, test = aligned(train, loaded), aligned(test, loaded)
    start = time.perf_counter()
    prepare_factors(engine, args, loaded, args.train)
    table = engine.score(test["text"].tolist(), test["label"].tolist(), train["text"].tolist(),
                         train["label"].tolist(), progress=progress_bar(args, "scores"), distributed=context(args))
    if not context(args).is_main:
        return 0
    arrays = {"influences": table.total(0), "self_influence": table.self_total(0), "layers": np.array(table.layers),
              "world_size": np.array(context(args).world_size)}
    arrays.update({f"layer:{name}": values for name, values in table.by_layer(0).items()})
    np.savez(out, **arrays)
    print(f"saved influences of {len(train)} training on {len(test)} test examples to {out} "
          f"({time.perf_counter() - start:.1f} s; positive = helpful)")
    return 0
