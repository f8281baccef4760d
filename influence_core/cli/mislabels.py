"""``mislabels``: every training row scored by how suspicious its label is (higher = more suspicious), to CSV.

Signals: influence (self-influence; influence and relative harm on a trusted slice, ``--trusted`` or, without one,
a *proposed* trusted slice of confidently and consistently predicted training rows), in-sample loss and margin,
out-of-fold loss and margin and cleanlab's label quality (``--cross-fit K`` fine-tunes, or ``--probs``), and
the training dynamics recorded when the project fine-tuned the model (AUM, data-map confidence and variability,
forgetting events), read automatically from the model folder.
"""

from __future__ import annotations

import argparse
import re
import time

import numpy as np
import pandas as pd

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
from influence_core.errors import ConfigError, DataError
from influence_core.mislabel import (
    dynamics_signals,
    mislabel_scores,
    probabilities_from_table,
    propose_trusted_slice,
    training_signals,
)
from influence_core.sources.data import read_table


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "mislabels", help="rank training rows by how suspicious their label is (.csv)",
        description="Score every training row with self-influence, influence on a trusted slice, loss and "
        "margin, out-of-fold loss and cleanlab's label quality (cross-fitting), and the recorded training dynamics "
        "(AUM, confidence, variability, forgetting); combine them, and write the rows with one column per ranking "
        "(higher = more suspicious).")
    add_model_options(parser)
    parser.add_argument("--train", required=True, help="training rows to rank (.csv, .tsv, .parquet, .jsonl)")
    parser.add_argument("--trusted", default=None,
                        help="held-out rows with trusted labels; adds trusted_influence (recommended). Without "
                        "it a trusted slice is proposed from the training rows (column proposed_trusted)")
    parser.add_argument("--probs", default=None,
                        help="your own out-of-fold class probabilities, one row per training row and one column per "
                        "class (named by label or in class order; numbers only without a header, or a .npy array, work "
                        "too); used for oof_loss, oof_margin and cleanlab instead of cross-fitting")
    parser.add_argument("--cross-fit", type=int, default=None, metavar="K",
                        help="fine-tune the model's recipe K times, each scoring its held-out fold (out-of-fold "
                        "probabilities; cached). Default 4 when the model folder carries the project's recipe "
                        "(finetune.json), else 0; 0 turns it off. A model without a recipe is fine-tuned further "
                        "per fold")
    parser.add_argument("--trusted-fraction", type=float, default=0.2,
                        help="share of the training rows in the proposed trusted slice (without --trusted)")
    add_factor_source(parser)
    add_engine_options(parser)
    parser.add_argument("--out", required=True, help="output CSV: the input rows plus the rankings and rank")
    add_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from influence_core.training.finetune import load_dynamics, predict_proba

    out = check_out(args.out)
    raw = read_examples(args.train, args)
    trusted = read_examples(args.trusted, args) if args.trusted else None
    loaded = load_model(args)
    engine = make_engine(args, loaded)
    train = aligned(raw, loaded)
    trusted = aligned(trusted, loaded) if trusted is not None else None
    texts, labels = train["text"].tolist(), train["label"].to_numpy()
    oof = probabilities_from_table(read_probabilities(args.probs, len(train)), loaded.label_names, len(train),
                                   args.probs) if args.probs else None
    start = time.perf_counter()
    folds = cross_fit_folds(args, loaded)
    runs = []
    model_dynamics = load_dynamics(loaded.path) if loaded.path else None
    if model_dynamics is not None:
        runs.append((model_dynamics.rows_for(texts, labels), model_dynamics))
    fit = None
    if oof is None and folds:
        from influence_core.training.crossfit import cross_fit

        fit = cross_fit(loaded.path, texts, labels, k=folds, seed=args.seed, label_names=loaded.label_names,
                        progress=progress_bar(args, f"cross-fit ({folds} folds)"))
        oof = fit.probs
        runs += fit.fold_dynamics()
    dynamics = dynamics_signals(runs, len(train)) if runs and any((r >= 0).any() for r, _ in runs) else None
    proposed = None
    if trusted is None:
        in_sample = predict_proba(loaded.model, loaded.tokenizer, texts, max_length=args.max_length)
        proposed = propose_trusted_slice(labels, in_sample, oof,
                                         None if dynamics is None else dynamics["variability"].to_numpy(),
                                         fraction=args.trusted_fraction)
        trusted = train[proposed]
    prepare_factors(engine, args, loaded, args.train)
    signals = training_signals(engine, texts, labels, trusted["text"].tolist() if len(trusted) else None,
                               trusted["label"].to_numpy() if len(trusted) else None,
                               progress=progress_bar(args, "mislabels"), distributed=context(args))
    if not context(args).is_main:
        return 0
    scores = mislabel_scores(signals, out_of_fold=oof, dynamics=dynamics)
    rows = raw.reset_index(drop=True)
    for name in scores.columns:
        rows[name] = scores[name].to_numpy()
    if proposed is not None:
        rows["proposed_trusted"] = proposed
    rows.to_csv(out, index=False)
    parts = ", ".join(scores.attrs["combined_parts"])
    print(f"saved {len(rows)} rows with {len(scores.columns) - 2} rankings to {out} ({time.perf_counter() - start:.1f} s;"
          f" higher = more suspicious; rank 1 = most suspicious by the mean percentile rank of {parts})")
    if proposed is not None and proposed.any():
        print(f"trusted slice: none given; relative harm is against a proposed trusted slice of {int(proposed.sum())} "
              "training rows predicted confidently and consistently (column proposed_trusted)")
    elif proposed is not None:
        print("trusted slice: none given, and no training row is predicted confidently enough to make a proposed "
              "trusted slice; no relative harm (give --trusted)")
    if fit is not None:
        print(f"out-of-fold probabilities from {fit.k} fine-tunes ({fit.seconds:.0f} s)" +
              "".join(f"; {note}" for note in fit.notes))
    if dynamics is None:
        print("no training dynamics: the model folder has no dynamics.npz (fine-tune it with the finetune command)")
    if "estimated_wrong_labels" in scores.attrs:
        print(f"cleanlab estimates {scores.attrs['estimated_wrong_labels']} of {len(rows)} labels are wrong")
    return 0


def cross_fit_folds(args: argparse.Namespace, loaded) -> int:
    """How many folds to cross-fit: ``--cross-fit``, else 4 when the model carries the project's recipe, else 0."""
    from pathlib import Path

    folds = args.cross_fit
    if folds is None:
        recorded = bool(loaded.path) and (Path(loaded.path) / "finetune.json").is_file()
        folds = 4 if recorded and not context(args).active and not args.probs else 0
    if folds == 1 or folds < 0:
        raise ConfigError(f"--cross-fit must be 0 (off) or at least 2 folds, not {folds}")
    if folds and context(args).active:
        raise ConfigError("--cross-fit does not run under a distributed launch; cross-fit first, then pass --probs")
    return int(folds)


_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def read_probabilities(path: str, n: int) -> pd.DataFrame:
    """``--probs`` for ``n`` training rows: a table with a header, numbers only (``numpy.savetxt``), or a ``.npy``
    array ``[n, C]`` (``numpy.save``).

    pandas takes a headerless file's first row for names and renames repeats (``0.5``, ``0.5.1``). A file whose
    names are all numbers (once that suffix is dropped) and that holds one row too few is read again without a
    header; names that are class ids (``0``, ``1``) over ``n`` rows stay names.
    """
    if str(path).lower().endswith(".npy"):
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as err:
            raise DataError(f"cannot read {path} as a NumPy array: {err}") from err
        if array.ndim != 2:
            raise DataError(f"{path}: expected a 2-D array [rows, classes] of probabilities, got shape {array.shape}")
        return pd.DataFrame(array)
    table = read_table(path)
    names = [str(c) for c in table.columns]
    numeric = names and all(_NUMBER.fullmatch(re.sub(r"\.\d+$", "", name)) or _NUMBER.fullmatch(name)
                            for name in names)
    if numeric and len(table) == n - 1:
        table = read_table(path, header=False)
    return table
