"""``index``: a training-gradient index (with its factors) in a folder, for instant ``query`` answers."""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

from influence_core.cli.distributed import add_options, context, progress_bar
from influence_core.cli.inputs import (
    add_engine_options,
    add_factor_source,
    add_model_options,
    aligned,
    load_model,
    make_engine,
    prepare_factors,
    read_examples,
)
from influence_core.cli.progress import Bar
from influence_core.engine.index import GradientIndex, IndexConfig, fit_and_index
from influence_core.errors import DataError


def add_parser(sub) -> None:
    parser = sub.add_parser("index", help="index every training gradient once, for instant `query` answers")
    add_model_options(parser)
    parser.add_argument("--train", required=True, help="training examples to index")
    add_factor_source(parser)
    add_engine_options(parser)
    parser.add_argument("--projection-size", type=int, default=IndexConfig.projection,
                        help="each layer keeps at most SIZE x SIZE projected entries (default "
                             f"{IndexConfig.projection})")
    parser.add_argument("--basis", default=IndexConfig.basis, choices=["eigen", "random"],
                        help="eigen: keep the entries of the largest eigenvalues, exactly (default); random: an "
                             "unbiased random projection")
    parser.add_argument("--entries", type=int, default=None,
                        help="eigen basis: entries stored per example (default: as many as --projection-size gives)")
    parser.add_argument("--whiten-exponent", type=float, default=IndexConfig.whiten_exponent,
                        help="random basis: whitening of the projections in the factors' eigenbasis, 0 to 1 (default "
                             f"{IndexConfig.whiten_exponent}; 0 = none)")
    kind = parser.add_mutually_exclusive_group()
    kind.add_argument("--exact", action="store_true", help="store exact per-example gradients (no projection)")
    kind.add_argument("--projected", action="store_true", help="always project, even when exact rows would fit")
    parser.add_argument("--memory-mb", type=int, default=512, help="exact rows are kept when they fit (default 512)")
    parser.add_argument("--index-dtype", default=IndexConfig.dtype, choices=["int8", "float16", "float32", "float64"],
                        help=f"storage of the index rows (default {IndexConfig.dtype})")
    parser.add_argument("--out", required=True, help="index folder to write (rows.npy, index.json, factors)")
    add_options(parser)
    parser.set_defaults(func=run)


def model_name(name: str) -> str:
    """``--model`` as the index records it: an absolute folder when it is one, else the name as given."""
    path = Path(name).expanduser()
    return str(path.resolve()) if name != "demo" and path.exists() else name


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.parent and not out.parent.exists():
        raise DataError(f"the output folder {out.parent} does not exist; create it first")
    config = IndexConfig(projection=args.projection_size, exact=True if args.exact else False if args.projected
                         else None, memory_bytes=args.memory_mb * 1024**2, seed=args.seed, dtype=args.index_dtype,
                         whiten_exponent=args.whiten_exponent, basis=args.basis, entries=args.entries)
    train = read_examples(args.train, args)
    loaded = load_model(args)
    engine = make_engine(args, loaded)
    train = aligned(train, loaded)
    texts, labels = train["text"].tolist(), train["label"].tolist()
    info = {"model": model_name(args.model), "train_file": str(Path(args.train).resolve()),
            "text_col": args.text_col, "label_col": args.label_col, "engine": dataclasses.asdict(engine.config)}
    start = time.perf_counter()
    distributed = context(args)
    same_data = not args.factors and (not args.fit or Path(args.fit).resolve() == Path(args.train).resolve())
    if distributed.active:  # torchrun: factors from the sharded fit, then each rank indexes one block of rows
        prepare_factors(engine, args, loaded, args.train)
        index = GradientIndex.build_sharded(engine, texts, labels, distributed, config=config,
                                            progress=progress_bar(args, "index"), info=info)
        if not distributed.is_main:
            return 0
    elif same_data and engine.config.method != "identity":
        _, index = fit_and_index(engine, texts, labels, config=config, progress=Bar("index"), info=info)
        index.meta["world_size"] = 1
    else:
        prepare_factors(engine, args, loaded, args.train)
        index = GradientIndex.build(engine, texts, labels, config=config, progress=Bar("index"), info=info)
        index.meta["world_size"] = 1
    index.save(out)
    print(f"saved a {index.meta['kind']} index of {len(texts)} training examples over {len(engine.layers)} layers "
          f"({index.bytes_per_example} bytes each) to {out} ({time.perf_counter() - start:.1f} s)")
    return 0
