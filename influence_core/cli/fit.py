"""``fit``: EK-FAC factors fitted on a file of examples, saved as safetensors with JSON metadata."""

from __future__ import annotations

import argparse
import time

from influence_core.cli.distributed import add_options, context, progress_bar
from influence_core.cli.inputs import (
    add_engine_options,
    add_model_options,
    aligned,
    check_out,
    load_model,
    make_engine,
    read_examples,
)


def add_parser(sub) -> None:
    parser = sub.add_parser("fit", help="fit EK-FAC factors and save them (safetensors + JSON metadata)")
    add_model_options(parser)
    parser.add_argument("--data", required=True, help="examples to fit on (.csv, .tsv, .parquet, .jsonl)")
    add_engine_options(parser)
    parser.add_argument("--out", required=True, help="factors file to write, e.g. factors.safetensors")
    add_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    out = check_out(args.out)
    data = read_examples(args.data, args)
    loaded = load_model(args)
    engine = make_engine(args, loaded)
    data = aligned(data, loaded)
    start = time.perf_counter()
    distributed = context(args)
    factors = engine.fit(data["text"].tolist(), data["label"].tolist(), progress=progress_bar(args, "fit"),
                         distributed=distributed)
    if not distributed.is_main:
        return 0
    factors.save(out)
    print(f"saved factors for {len(engine.layers)} layers fitted on {len(data)} examples to {out} "
          f"({time.perf_counter() - start:.1f} s)")
    return 0
