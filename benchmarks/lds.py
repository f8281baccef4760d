"""Does influence predict retraining? The linear datamodeling score (LDS) of every scoring variant on real data.

Two tasks, both on the demo model (MiniLM fine-tuned on the demo reviews, cached in ``~/.cache/influence-explorer``)
with the ``head`` recipe (the classifier head retrained on frozen encoder features; see ``influence_core.lds``):

- ``sst2``: ``--n-train`` SST-2 training sentences drawn with ``--seed`` and ``--n-test`` dev sentences.
- ``demo``: the built-in demo reviews (480 training, ``--n-test`` of the 160 test reviews).

For each: ``--subsets`` random halves, ``--seeds`` retrains per subset (the retraining-noise ceiling), every method
(ekfac, kfac, identity) and Fisher (true, sampled, empirical) at the ``--dampings`` grid, raw and relative. Writes
a markdown table per task (LDS with its 95% interval, the ceiling, time spent) to ``benchmarks/results/`` and prints
it. Retrains are cached, so an interrupted run resumes.

    python -m benchmarks.lds --task all --subsets 50 --seeds 2 --n-train 2000 --n-test 200
    python -m benchmarks.lds --task sst2 --subsets 6 --n-train 200 --n-test 20 --fishers true   # smoke
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
SST2 = ROOT.parent / "shared" / "data" / "sst2"
RESULTS = ROOT / "benchmarks" / "results"


def task_data(task: str, n_train: int, n_test: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, test) tables with ``text`` and int ``label``."""
    if task == "sst2":
        train = pd.read_csv(SST2 / "train.tsv", sep="\t").rename(columns={"sentence": "text"})
        test = pd.read_csv(SST2 / "dev.tsv", sep="\t").rename(columns={"sentence": "text"})
        train = train.sample(n=min(n_train, len(train)), random_state=seed).reset_index(drop=True)
    else:
        from influence_core.sources.corpus import demo_corpus

        corpus = demo_corpus()
        train = corpus[corpus["split"] == "train"].reset_index(drop=True)
        test = corpus[corpus["split"] == "test"]
        if n_train < len(train):
            train = train.sample(n=n_train, random_state=seed).reset_index(drop=True)
    test = test.sample(n=min(n_test, len(test)), random_state=seed).reset_index(drop=True)
    return train[["text", "label"]].astype({"label": int}), test[["text", "label"]].astype({"label": int})


def markdown(task: str, result, args, seconds: float) -> str:
    lines = [f"### LDS: {task}", "",
             f"{result.n_train} training, {result.n_test} test examples; {result.subsets} subsets of "
             f"{result.fraction:g}; {result.seeds} seed(s); measure {result.measure}; recipe: {result.recipe}; "
             f"damping: {result.damping_mode}{' (r x each layer mean eigenvalue)' if result.damping_mode == 'relative' else ''}.", ""]
    if result.ceiling is None:
        lines.append("Retraining-noise ceiling: not measured (one seed).")
    else:
        c = result.ceiling
        lines.append(f"Retraining-noise ceiling (two seeds): **{c.lds:.3f}** [{c.ci_low:.3f}, {c.ci_high:.3f}].")
    per = result.seconds.get("per_retrain", float("nan"))
    lines += [f"Time: {seconds:.0f} s in all (features {result.seconds.get('features', 0):.0f} s, retrains "
              f"{result.seconds.get('retrain', 0):.0f} s at {per:.2f} s each, scoring "
              f"{result.seconds.get('scoring', 0):.0f} s).", "",
              "| variant | method | fisher | damping | relative | LDS | 95% interval |", "|---|---|---|---|---|---|---|"]
    for row in result.table.sort_values("lds", ascending=False).itertuples():
        damping = "" if not np.isfinite(row.damping) else f"{row.damping:g}"
        lines.append(f"| {row.variant} | {row.method} | {row.fisher} | {damping} | {bool(row.relative)} | "
                     f"{row.lds:.3f} | [{row.ci_low:.3f}, {row.ci_high:.3f}] |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="all", choices=["all", "sst2", "demo"])
    parser.add_argument("--subsets", type=int, default=50)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--fraction", type=float, default=0.5)
    parser.add_argument("--n-train", type=int, default=2000)
    parser.add_argument("--n-test", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0, help="seed of the data sample and the subsets")
    parser.add_argument("--methods", default="ekfac,kfac,identity")
    parser.add_argument("--fishers", default="true,sampled,empirical")
    parser.add_argument("--dampings", default="1e-5,1e-4,1e-3,1e-2,1e-1,1")
    parser.add_argument("--relative-damping", action="store_true",
                        help="read --dampings as relative factors (r x each layer's mean eigenvalue)")
    parser.add_argument("--index-projections", default="",
                        help="comma-separated projection sizes of the gradient index to score too (needs ekfac)")
    parser.add_argument("--no-relative", action="store_true", help="skip the relative-influence variants")
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--out-dir", default=str(RESULTS))
    args = parser.parse_args(argv)

    import torch

    from influence_core.demo import load_model
    from influence_core.engine.config import EngineConfig
    from influence_core.lds import LDSConfig, run_lds
    from influence_core.sources.models import ModelSource

    loaded = load_model(ModelSource("demo"))
    config = LDSConfig(subsets=args.subsets, fraction=args.fraction, seeds=args.seeds, subset_seed=args.seed,
                       methods=tuple(args.methods.split(",")), fishers=tuple(args.fishers.split(",")),
                       dampings=tuple(float(d) for d in args.dampings.split(",")),
                       relative_damping=args.relative_damping, relative=not args.no_relative,
                       index_projections=tuple(int(k) for k in args.index_projections.split(",") if k.strip()))
    engine = EngineConfig(max_length=args.max_length, batch_size=args.batch_size)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    header = [f"# LDS benchmark ({stamp})", "", f"`python -m benchmarks.lds {shlex.join(sys.argv[1:] if argv is None else argv)}`",
              f"on {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
              f"torch {torch.__version__}; model: the demo model (MiniLM fine-tuned on the demo reviews).", ""]
    blocks = []
    for task in ["sst2", "demo"] if args.task == "all" else [args.task]:
        train, test = task_data(task, args.n_train, args.n_test, args.seed)
        started = time.perf_counter()
        from influence_core.cli.progress import Bar

        result = run_lds(loaded.model, loaded.tokenizer, train["text"].tolist(), train["label"].to_numpy(),
                         test["text"].tolist(), test["label"].to_numpy(), config=config, engine_config=engine,
                         progress=Bar(f"lds {task}", unit="step"))
        blocks.append(markdown(task, result, args, time.perf_counter() - started))
        print(blocks[-1], flush=True)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"lds-{args.task}-{args.subsets}-{stamp}.md"
    path.write_text("\n".join(header) + "\n" + "\n".join(blocks), encoding="utf-8")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
