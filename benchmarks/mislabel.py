"""How well each mislabel ranking finds wrong labels, on real sentences (``make bench-mislabel``).

Two tasks:

- ``sst2``: real sentences, synthetic corruption. ``--n-train`` SST-2 training sentences drawn with the seed,
  ``--flip-rate`` of their labels flipped (the same seed), MiniLM fine-tuned on the corrupted set, every
  ranking scored against the flips: ROC-AUC, average precision, precision at k (k = number of flips) and
  recall in the top 10 % and 20 %. Trusted slice: the SST-2 dev sentences (clean).
- ``airline``: real noise. Negative and positive airline tweets with crowd labels and the crowd's
  confidence; ``--n-train`` of them fine-tuned on, each ranking compared with low confidence (Spearman with
  ``1 - confidence``, ROC-AUC for ``confidence < 0.7`` and ``< 1``). Trusted slice: held-out tweets
  whose label had full confidence.

Factors and scores are computed for every layer and several damping values in one pass, so the layer
subsets and dampings listed under "variants" cost no extra gradient pass; the headline numbers use
``--layers`` and ``--damping``, fixed on a development seed (``--dev-seed``) that is not among the
evaluation seeds. Results go to ``--out`` (JSON); each task's block between its markers in ``--md`` is replaced.

Out-of-fold signals (``--cross-fit K``, default 4: the library's :func:`influence_core.training.crossfit.cross_fit`
on the fine-tuned model's recipe), cleanlab's label quality and estimated number of wrong labels, and the training
dynamics recorded by the fine-tunes (AUM, data-map confidence and variability, forgetting; the folds' too) join the
influence rankings; ``--proposed-trusted`` adds relative harm against the slice the library proposes from the
training rows alone (no trusted data). Each signal's time is reported.

    python -m benchmarks.mislabel --task all --seeds 0,1,2 [--cross-fit 4] [--proposed-trusted] [--dev]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy import stats

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from benchmarks.common import jsonable  # noqa: E402
from influence_core import EngineConfig, InfluenceEngine  # noqa: E402
from influence_core.cache import cache_dir, stable_hash  # noqa: E402
from influence_core.engine.layers import layer_groups  # noqa: E402
from influence_core.mislabel import (  # noqa: E402
    FALLBACK_PARTS,
    TrainingSignals,
    combine,
    dynamics_signals,
    evaluate_rankings,
    label_losses,
    mislabel_scores,
    percentile_ranks,
    propose_trusted_slice,
    roc_auc,
    training_signals,
)

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
#: Relative damping factors scored in the one pass (damping_l = factor x mean eigenvalue of layer l).
DAMPINGS = (1e-3, 1e-2, 1e-1, 1.0)
#: Layer subsets evaluated from the same pass.
#: (On a development seed, "all" and "attention" ranked like "ffn,head" and cost half as much again, so the factors
#: are fitted on the groups of ``--layers`` only and the subsets below are evaluated from the same pass.)
LAYER_SETS = ("ffn,head", "ffn", "head")
#: Candidate combinations, each a mean of percentile ranks; the library's is ``combined``.
COMBINATIONS = {
    "combined": FALLBACK_PARTS,
    "self+loss": ("self_influence", "loss"),
    "self+trusted": ("self_influence", "trusted_influence"),
    "trusted+loss": ("trusted_influence", "loss"),
    "relative+loss": ("relative_harm", "loss"),
    "self+relative+loss": ("self_influence", "relative_harm", "loss"),
    "self+relative": ("self_influence", "relative_harm"),
}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(max(1, args.threads))
    started = time.perf_counter()
    command = "python -m benchmarks.mislabel " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    results: dict = {"command": command, "settings": vars(args).copy(), "machine": machine()}
    seeds = [args.dev_seed] if args.dev else [int(s) for s in args.seeds.split(",") if s.strip()]
    if args.task in ("sst2", "all"):
        results["sst2"] = [run_sst2(seed, args) for seed in seeds]
        results["sst2_summary"] = summarise([run["rankings"] for run in results["sst2"]])
    if args.task in ("airline", "all"):
        airline_seeds = [args.dev_seed] if args.dev else [int(s) for s in args.airline_seeds.split(",") if s.strip()]
        results["airline"] = [run_airline(seed, args) for seed in airline_seeds]
        results["airline_summary"] = summarise([run["rankings"] for run in results["airline"]])
    if args.task == "counterfactual":
        results["counterfactual"] = run_counterfactual(args)
    results["seconds"] = round(time.perf_counter() - started, 1)
    out = Path(args.out)
    if args.out == default_out() and (args.dev or args.task == "counterfactual"):
        out = out.with_name("mislabel_dev.json" if args.dev else "counterfactual.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1, default=jsonable))
    print(f"wrote {out} ({results['seconds']:.0f} s)")
    sections = markdown(results)
    print("\n\n".join(sections.values()))
    if args.md and not args.dev:
        write_markdown(Path(args.md), sections)
    return 0


def default_out() -> str:
    return str(ROOT / "benchmarks" / "results" / "mislabel.json")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.mislabel", description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="all", choices=["sst2", "airline", "counterfactual", "all"],
                        help="all = sst2 and airline; counterfactual (demo retrains) runs only when named")
    parser.add_argument("--seeds", default="0,1,2", help="evaluation seeds (sample, flips, fine-tune)")
    parser.add_argument("--airline-seeds", default="0", help="seeds of the airline sample")
    parser.add_argument("--dev", action="store_true", help="run only --dev-seed (to choose settings), write *_dev.json")
    parser.add_argument("--dev-seed", type=int, default=100)
    parser.add_argument("--n-train", type=int, default=2000)
    parser.add_argument("--flip-rate", type=float, default=0.10)
    parser.add_argument("--n-trusted", type=int, default=None, help="trusted slice size (default: SST-2 dev, all 872)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1e-4, help="fine-tune learning rate (the demo model's)")
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--layers", default="ffn,head", help="layer subset of the headline numbers")
    parser.add_argument("--damping", type=float, default=0.1, help="relative damping of the headline numbers")
    parser.add_argument("--oos-folds", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--cross-fit", type=int, default=4,
                        help="folds of the library's cross-fit (out-of-fold loss, cleanlab, the folds' dynamics); 0 = off")
    parser.add_argument("--proposed-trusted", action="store_true",
                        help="also rank by relative harm against the proposed trusted slice (one more signals pass)")
    parser.add_argument("--probe", action="store_true",
                        help="also grade the frozen-encoder probe (probe_loss; tried and dropped, MISLABEL_DEV.md)")
    parser.add_argument("--batch-size", type=int, default=32, help="engine batch size")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1 by default: on a shared CPU, multi-threaded LAPACK is far slower)")
    parser.add_argument("--cf-k", type=int, default=10, help="counterfactual: training reviews removed")
    parser.add_argument("--cf-worst", type=int, default=3, help="counterfactual: test reviews with the highest loss")
    parser.add_argument("--cf-random-reviews", type=int, default=2, help="counterfactual: test reviews at random")
    parser.add_argument("--cf-draws", type=int, default=3, help="counterfactual: random removals (shared by reviews)")
    parser.add_argument("--out", default=default_out())
    parser.add_argument("--md", default=str(ROOT / "benchmarks" / "MISLABEL.md"))
    args = parser.parse_args(argv)
    if args.damping not in DAMPINGS:
        parser.error(f"--damping must be one of the scored values {DAMPINGS}")
    return args


# ----------------------------------------------------------------------------------------------- data
def sst2_sample(seed: int, n: int, flip_rate: float) -> pd.DataFrame:
    """``n`` SST-2 training sentences drawn with ``seed``; ``round(flip_rate * n)`` labels flipped.

    Columns ``text``, ``label`` (possibly flipped), ``clean_label``, ``flipped`` (bool).
    """
    table = pd.read_csv(DATA / "sst2" / "train.tsv", sep="\t", quoting=3, keep_default_na=False)
    rng = np.random.default_rng(seed)
    rows = table.iloc[np.sort(rng.choice(len(table), n, replace=False))].reset_index(drop=True)
    flipped = np.zeros(n, dtype=bool)
    flipped[rng.choice(n, int(round(flip_rate * n)), replace=False)] = True
    clean = rows["label"].astype(int).to_numpy()
    return pd.DataFrame({"text": rows["sentence"].astype(str), "label": np.where(flipped, 1 - clean, clean),
                         "clean_label": clean, "flipped": flipped})


def sst2_dev(limit: int | None) -> pd.DataFrame:
    table = pd.read_csv(DATA / "sst2" / "dev.tsv", sep="\t", quoting=3, keep_default_na=False)
    table = table.rename(columns={"sentence": "text"})
    return table.iloc[:limit] if limit else table


def airline_split(seed: int, n: int, n_trusted: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A sample of ``n`` negative/positive tweets (label 1 = positive) and ``n_trusted`` held-out tweets whose
    crowd label had confidence 1 (the trusted slice)."""
    table = pd.read_csv(DATA / "airline_tweets" / "Tweets.csv")
    table = table[table["airline_sentiment"].isin(["negative", "positive"])].reset_index(drop=True)
    table = pd.DataFrame({"text": table["text"].astype(str),
                          "label": (table["airline_sentiment"] == "positive").astype(int),
                          "confidence": table["airline_sentiment_confidence"].astype(float)})
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(table))
    train = table.iloc[np.sort(order[:n])].reset_index(drop=True)
    rest = table.iloc[order[n:]]
    trusted = rest[rest["confidence"] >= 1.0].iloc[:n_trusted].reset_index(drop=True)
    return train, trusted


# ----------------------------------------------------------------------------------------------- models
def finetuned(name: str, texts: list[str], labels: np.ndarray, args: argparse.Namespace, seed: int) -> Path:
    """A MiniLM classifier fine-tuned on (texts, labels), cached by content and recipe."""
    from influence_core.sources.models import base_encoder_path
    from influence_core.training.finetune import finetune, library_versions

    recipe = {"epochs": args.epochs, "lr": args.lr, "batch_size": 16, "max_length": args.max_length, "seed": seed}
    key = stable_hash({"texts": stable_hash(texts), "labels": [int(x) for x in labels], "recipe": recipe,
                       "versions": library_versions(), "dynamics": 1})
    folder = cache_dir("bench-mislabel", f"{name}-{key}")
    if (folder / "finetune.json").is_file():
        return folder
    result = finetune(base_encoder_path(), texts, [int(x) for x in labels], label_names=["negative", "positive"],
                      out_dir=folder, **recipe)
    print(f"  fine-tuned {name} on {len(texts)} examples in {result.seconds:.0f} s", flush=True)
    return folder


def development_parser(prog: str, doc: str) -> argparse.ArgumentParser:
    """The arguments every follow-up study of the development seed takes (``--frame``, ``--seed``, ``--threads``)."""
    parser = argparse.ArgumentParser(prog=f"python -m {prog}", description=doc.splitlines()[0])
    parser.add_argument("--frame", default="/tmp/frame-sst2-s100.csv", help="per-row signals of benchmarks.mislabel")
    parser.add_argument("--seed", type=int, default=100, help="the sample seed the frame was made with")
    parser.add_argument("--threads", type=int, default=2)
    return parser


def development_run(args: argparse.Namespace) -> tuple[list[str], np.ndarray, np.ndarray, Path, pd.DataFrame, object]:
    """What a follow-up study of the development seed starts from (``args`` of :func:`development_parser`), after
    ``python -m benchmarks.mislabel --task sst2 --dev`` has cached its model and cross-fit and written the per-row
    signals to ``args.frame``: ``(texts, labels, truth, model_dir, frame, cross_fit)``, with ``truth`` the flips.
    Sets the torch threads; refuses a frame that does not match the cached cross-fit."""
    from influence_core.training.crossfit import cross_fit

    if not Path(args.frame).is_file():
        raise SystemExit(f"no {args.frame}: run python -m benchmarks.mislabel --task sst2 --dev --cross-fit 4 "
                         "--proposed-trusted --out /tmp/mdev.json first (it writes the frame next to --out)")
    torch.set_num_threads(args.threads)
    seed = args.seed
    harness = parse_args([])  # the recipe and sample of the harness's defaults, so its cached model is found
    data = sst2_sample(seed, harness.n_train, harness.flip_rate)
    texts, labels = data["text"].tolist(), data["label"].to_numpy()
    model_dir = finetuned(f"sst2-s{seed}", texts, labels, harness, seed)
    frame = pd.read_csv(args.frame)
    first = cross_fit(model_dir, texts, labels, k=4, seed=seed)  # cached by the harness
    if not np.allclose(label_losses(first.probs, labels), frame["oof_loss"].to_numpy(), atol=1e-5):
        raise SystemExit("the cached cross-fit does not give the frame's oof_loss; run benchmarks.mislabel first")
    return texts, labels, data["flipped"].to_numpy(), model_dir, frame, first


def predict(model_dir: Path, texts: list[str], max_length: int) -> np.ndarray:
    from influence_core.sources.models import ModelSource, load_classifier
    from influence_core.training.finetune import predict_proba

    loaded = load_classifier(ModelSource("local", str(model_dir)))
    return predict_proba(loaded.model, loaded.tokenizer, texts, max_length=max_length)


def out_of_sample_probs(name: str, train: pd.DataFrame, folds: int, args: argparse.Namespace, seed: int) -> np.ndarray:
    """Class probabilities of every training row from a model fine-tuned without it (K-fold), [n, 2]."""
    fold = np.random.default_rng(seed + 7919).permutation(len(train)) % folds
    probs = np.zeros((len(train), 2))
    for f in range(folds):
        inside = train[fold != f]
        model_dir = finetuned(f"{name}-fold{f}of{folds}", inside["text"].tolist(), inside["label"].to_numpy(), args,
                              seed)
        probs[fold == f] = predict(model_dir, train.loc[fold == f, "text"].tolist(), args.max_length)
    return probs


#: Inverse regularization of the frozen-encoder probe, chosen on the development seed among 0.1, 0.3, 1 and 3.
PROBE_C = 0.3


def probe_probs(texts: list[str], labels: np.ndarray, folds: int, seed: int, max_length: int) -> np.ndarray:
    """Out-of-fold class probabilities [n, 2] of a logistic regression on the frozen base encoder's mean-pooled,
    normalised sentence embeddings: a detector that never fits the flips the way a fine-tune memorises them."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from transformers import AutoModel, AutoTokenizer

    from influence_core.sources.models import base_encoder_path

    folder = base_encoder_path()
    tokenizer, encoder = AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder).eval()
    parts = []
    with torch.no_grad():
        for start in range(0, len(texts), 64):
            batch = tokenizer(texts[start:start + 64], padding=True, truncation=True, max_length=max_length,
                              return_tensors="pt")
            hidden = encoder(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            parts.append(torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1))
    features = torch.cat(parts).numpy()
    return cross_val_predict(LogisticRegression(C=PROBE_C, max_iter=2000), features, labels,
                             cv=StratifiedKFold(folds, shuffle=True, random_state=seed), method="predict_proba")


def signals_for(model_dir: Path, train: pd.DataFrame, trusted: pd.DataFrame, args: argparse.Namespace,
                timings: dict, oos: np.ndarray | None = None, dynamics: pd.DataFrame | None = None):
    """Fit EK-FAC factors on the training texts (true Fisher: the labels are not used) on the ``--layers`` groups
    and compute every signal per layer for every damping in :data:`DAMPINGS`."""
    from influence_core.sources.models import ModelSource, load_classifier

    loaded = load_classifier(ModelSource("local", str(model_dir)))
    config = EngineConfig(layers=args.layers, relative_damping=DAMPINGS[0], max_length=args.max_length,
                          batch_size=args.batch_size)
    engine = InfluenceEngine(loaded.model, loaded.tokenizer, config)
    start = time.perf_counter()
    engine.fit(train["text"].tolist())
    timings["fit_factors_s"] = round(time.perf_counter() - start, 1)
    start = time.perf_counter()
    signals = training_signals(engine, train["text"].tolist(), train["label"].to_numpy(), trusted["text"].tolist(),
                               trusted["label"].to_numpy(), dampings=DAMPINGS)
    timings["signals_s"] = round(time.perf_counter() - start, 1)
    proposed = None
    if args.proposed_trusted:
        start = time.perf_counter()
        chosen = propose_trusted_slice(train["label"].to_numpy(), signals.train_probs, oos,
                                       None if dynamics is None else dynamics["variability"].to_numpy())
        proposed = training_signals(engine, train["text"].tolist(), train["label"].to_numpy(),
                                    train["text"][chosen].tolist(), train["label"].to_numpy()[chosen], dampings=DAMPINGS)
        timings["proposed_trusted_signals_s"] = round(time.perf_counter() - start, 1)
        timings["proposed_trusted_size"] = int(chosen.sum())
    groups = layer_groups(loaded.model)
    return signals, {spec: [name for name in engine.layers if any(name in groups[g] for g in spec.split(","))]
                     for spec in LAYER_SETS}, proposed


def ranking_frame(signals: TrainingSignals, layer_names: list[str], k: int, oos: np.ndarray | None,
                  seed: int, dynamics: pd.DataFrame | None = None, proposed: TrainingSignals | None = None,
                  timings: dict | None = None, extra: dict[str, np.ndarray] | None = None) -> pd.DataFrame:
    """Every ranking of the headline setting (the library's ``combined`` of what is available), a seeded random one,
    the in-sample-only combination (``combined_in_sample``) and, with ``proposed``, relative harm against the
    proposed trusted slice and ``combined`` with it instead of the given trusted slice (``combined_untrusted``)."""
    start = time.perf_counter()
    frame = mislabel_scores(signals, k=k, layers=layer_names, out_of_fold=oos, dynamics=dynamics)
    if timings is not None:
        timings["rankings_s"] = round(time.perf_counter() - start, 2)
    for name, column in (extra or {}).items():
        frame[name] = column
    frame["random"] = np.random.default_rng(seed + 104729).random(len(frame))
    frame["combined_in_sample"] = combine({p: frame[p].to_numpy() for p in FALLBACK_PARTS if p in frame})
    if proposed is not None:
        frame["relative_harm_proposed"] = mislabel_scores(proposed, k=k, layers=layer_names)["relative_harm"].to_numpy()
        parts = {p: frame["relative_harm_proposed" if p == "relative_harm" else p].to_numpy()
                 for p in frame.attrs["combined_parts"]}
        frame["combined_untrusted"] = combine(parts)
    for name, parts in NEW_COMBINATIONS.items():
        if all(p in frame for p in parts):
            frame[name] = combine({p: frame[p].to_numpy() for p in parts})
    return frame


#: Candidate combinations of the new signals, graded side by side (development seed only chooses among them).
NEW_COMBINATIONS = {
    "oof+aum": ("oof_loss", "low_aum"),
    "oof+cleanlab+aum": ("oof_loss", "cleanlab", "low_aum"),
    "oof+relative": ("oof_loss", "relative_harm"),
    "oof+aum+relative": ("oof_loss", "low_aum", "relative_harm"),
    "probe+oof": ("probe_loss", "oof_loss"),
    "probe+oof+aum": ("probe_loss", "oof_loss", "low_aum"),
    "probe+oof+aum+relative": ("probe_loss", "oof_loss", "low_aum", "relative_harm"),
    "combined+probe": ("probe_loss", "oof_loss", "cleanlab", "low_aum", "relative_harm"),
}
HEADLINE = ["self_influence", "trusted_influence", "relative_harm", "relative_harm_proposed", "loss", "margin",
            "oof_loss", "oof_margin", "cleanlab", "low_aum", "probe_loss", "low_confidence", "variability", "forgetting",
            "combined_in_sample", "combined", "combined_untrusted", *NEW_COMBINATIONS, "random"]


def variants(signals: TrainingSignals, layer_sets: dict[str, list[str]], truth: np.ndarray) -> list[dict]:
    """Self-influence, trusted influence and every combination for each layer subset and damping."""
    rows = []
    for spec, names in layer_sets.items():
        if not names:
            continue
        for k, damping in enumerate(signals.dampings):
            frame = mislabel_scores(signals, k=k, layers=names)
            columns = {name: frame[name].to_numpy() for name in ("self_influence", "trusted_influence",
                                                                  "relative_harm", "loss")}
            for combo, parts in COMBINATIONS.items():
                columns[combo] = np.mean([percentile_ranks(columns[p]) for p in parts], axis=0)
            graded = evaluate_rankings(columns, truth, columns=list(columns))
            for row in graded.to_dict("records"):
                rows.append({"layers": spec, "damping": float(damping), **row})
    return rows


# ----------------------------------------------------------------------------------------------- tasks
def model_and_signals(name: str, train: pd.DataFrame, trusted: pd.DataFrame, args: argparse.Namespace, seed: int,
                      timings: dict):
    """Fine-tune on ``train`` (cached), out-of-sample probabilities when ``--oos-folds``, then every signal.

    Returns ``(model_dir, oos, signals, layer_sets)``; the stages' seconds go into ``timings``.
    """
    start = time.perf_counter()
    model_dir = finetuned(name, train["text"].tolist(), train["label"].to_numpy(), args, seed)
    timings["finetune_s"] = round(time.perf_counter() - start, 1)
    from influence_core.training.crossfit import cross_fit
    from influence_core.training.finetune import load_dynamics

    oos, runs = None, []
    recorded = load_dynamics(model_dir)
    if recorded is not None:
        runs.append((np.arange(len(train)), recorded))
    folds = args.cross_fit or args.oos_folds
    if folds:
        start = time.perf_counter()
        fit = cross_fit(model_dir, train["text"].tolist(), train["label"].to_numpy(), k=folds, seed=seed)
        oos = fit.probs
        runs += fit.fold_dynamics()
        timings["cross_fit_s"] = round(time.perf_counter() - start, 1)
    start = time.perf_counter()
    dynamics = dynamics_signals(runs, len(train)) if runs else None
    timings["dynamics_s"] = round(time.perf_counter() - start, 2)
    if oos is not None:
        from influence_core.mislabel import confident_learning

        start = time.perf_counter()
        _, timings["cleanlab_estimated_wrong"] = confident_learning(train["label"].to_numpy(), oos)
        timings["cleanlab_s"] = round(time.perf_counter() - start, 2)
    signals, layer_sets, proposed = signals_for(model_dir, train, trusted, args, timings, oos, dynamics)
    return model_dir, oos, signals, layer_sets, dynamics, proposed


def run_sst2(seed: int, args: argparse.Namespace) -> dict:
    print(f"sst2 seed {seed}", flush=True)
    timings: dict = {}
    train = sst2_sample(seed, args.n_train, args.flip_rate)
    trusted = sst2_dev(args.n_trusted)
    model_dir, oos, signals, layer_sets, dynamics, proposed = model_and_signals(f"sst2-s{seed}", train, trusted, args,
                                                                                seed, timings)
    dev_probs = predict(model_dir, trusted["text"].tolist(), args.max_length)
    truth = train["flipped"].to_numpy()
    k = DAMPINGS.index(args.damping)
    extra = {}
    if args.probe:
        start = time.perf_counter()
        probe = probe_probs(train["text"].tolist(), train["label"].to_numpy(), args.cross_fit or 4, seed,
                            args.max_length)
        timings["probe_s"] = round(time.perf_counter() - start, 1)
        extra["probe_loss"] = label_losses(probe, train["label"].to_numpy())
    start = time.perf_counter()
    frame = ranking_frame(signals, layer_sets[args.layers], k, oos, seed, dynamics, proposed, timings, extra=extra)
    timings["whole_ranking_s"] = round(sum(v for key, v in timings.items() if key.endswith("_s") and key not in
                                           ("finetune_s", "probe_s")) + time.perf_counter() - start, 1)
    rows_file = Path(args.out).with_name(f"frame-sst2-s{seed}.csv")
    rows_file.parent.mkdir(parents=True, exist_ok=True)
    frame.assign(flipped=truth).to_csv(rows_file, index=False)
    graded = evaluate_rankings(frame, truth, columns=[c for c in HEADLINE if c in frame.columns])
    print(graded.to_string(index=False, float_format="%.3f"), flush=True)
    return {"seed": seed, "n_train": len(train), "n_flipped": int(truth.sum()), "n_trusted": len(trusted),
            "dev_accuracy": float((dev_probs.argmax(1) == trusted["label"].to_numpy()).mean()),
            "train_accuracy_given_labels": float((signals.train_probs.argmax(1) == train["label"]).mean()),
            "flipped_fit": float((signals.train_probs.argmax(1)[truth] == train["label"].to_numpy()[truth]).mean()),
            "timings": timings, "rankings": graded.to_dict("records"),
            "variants": variants(signals, layer_sets, truth)}


def run_airline(seed: int, args: argparse.Namespace) -> dict:
    print(f"airline seed {seed}", flush=True)
    timings: dict = {}
    train, trusted = airline_split(seed, args.n_train, 500)
    _, oos, signals, layer_sets, dynamics, proposed = model_and_signals(f"airline-s{seed}", train, trusted, args, seed,
                                                                        timings)
    frame = ranking_frame(signals, layer_sets[args.layers], DAMPINGS.index(args.damping), oos, seed, dynamics,
                          proposed, timings)
    doubt = 1.0 - train["confidence"].to_numpy()
    rows = []
    for name in [c for c in HEADLINE if c in frame.columns]:
        scores = frame[name].to_numpy()
        rows.append({"ranking": name, "spearman_with_doubt": float(stats.spearmanr(scores, doubt).statistic),
                     "roc_auc_conf_below_0.7": roc_auc(scores, doubt > 0.3),
                     "roc_auc_conf_below_1": roc_auc(scores, doubt > 0)})
    table = pd.DataFrame(rows)
    print(table.to_string(index=False, float_format="%.3f"), flush=True)
    return {"seed": seed, "n_train": len(train), "n_trusted": len(trusted),
            "share_conf_below_0.7": float((doubt > 0.3).mean()), "share_conf_below_1": float((doubt > 0).mean()),
            "timings": timings, "rankings": rows}


def run_counterfactual(args: argparse.Namespace) -> dict:
    """Retrain the demo model without the k most harmful training reviews of a test review, and without k random
    ones; the test reviews are chosen before any retrain: the ``--cf-worst`` with the highest loss under the
    demo model and ``--cf-random-reviews`` drawn at random. Influence: ``--layers``, relative ``--damping``."""
    from influence_core.demo import DEMO_HYPERPARAMETERS, demo_corpus, demo_model_dir
    from influence_core.sources.models import ModelSource, load_classifier
    from influence_core.training.retrain import counterfactual_check

    print("counterfactual check on the demo", flush=True)
    corpus = demo_corpus()
    train = corpus[corpus["split"] == "train"].reset_index(drop=True)
    test = corpus[corpus["split"] == "test"].reset_index(drop=True)
    start = time.perf_counter()
    model_dir = demo_model_dir()
    loaded = load_classifier(ModelSource("local", str(model_dir)))
    config = EngineConfig(layers=args.layers, relative_damping=args.damping,
                          max_length=DEMO_HYPERPARAMETERS["max_length"], batch_size=args.batch_size)
    engine = InfluenceEngine(loaded.model, loaded.tokenizer, config)
    engine.fit(train["text"].tolist())
    table = engine.score(test["text"].tolist(), test["label"].to_numpy(), train["text"].tolist(),
                         train["label"].to_numpy(), self_influence=False)
    influence_s = time.perf_counter() - start
    losses = table.test_losses()
    worst = list(np.argsort(-losses, kind="stable")[: args.cf_worst])
    others = [i for i in range(len(test)) if i not in worst]
    chosen = worst + sorted(np.random.default_rng(0).choice(others, args.cf_random_reviews, replace=False).tolist())
    rows = []
    for q in chosen:
        started = time.perf_counter()
        result = counterfactual_check(model_dir, train, test["text"].iloc[q], int(test["label"].iloc[q]),
                                      table.total(0)[q], k=args.cf_k, n_random=args.cf_draws, random_seed=0)
        planted = int(train["planted_error"].to_numpy()[np.isin(np.arange(len(train)), result.harmful)].sum())
        row = {"test_index": int(q), "test_id": int(test["id"].iloc[q]), "chosen_as": "highest loss" if q in worst else "random",
               "demo_model_loss": float(losses[q]), "planted_errors_removed": planted, **result.to_dict(),
               "wall_s": round(time.perf_counter() - started, 1)}
        rows.append(row)
        print(f"  test review {q} ({row['chosen_as']}): full {result.loss_full:.3f}, minus harmful "
              f"{result.loss_minus_harmful:.3f}, minus random {np.round(result.loss_minus_random, 3).tolist()} "
              f"({row['wall_s']:.0f} s)", flush=True)
    return {"k": args.cf_k, "draws": args.cf_draws, "layers": args.layers, "relative_damping": args.damping,
            "influence_s": round(influence_s, 1), "reviews": rows}


# ----------------------------------------------------------------------------------------------- reporting
def summarise(runs: list[list[dict]]) -> list[dict]:
    """Mean and standard deviation over runs of every metric, per ranking."""
    frame = pd.DataFrame([row for run in runs for row in run])
    metrics = [c for c in frame.columns if c != "ranking"]
    out = []
    for name, group in frame.groupby("ranking", sort=False):
        row = {"ranking": name, "runs": len(group)}
        for metric in metrics:
            row[metric] = float(group[metric].mean())
            row[f"{metric}_sd"] = float(group[metric].std(ddof=1)) if len(group) > 1 else 0.0
        out.append(row)
    return out


def markdown(results: dict) -> dict[str, str]:
    """One Markdown block per task that ran (``sst2``, ``airline``, ``counterfactual``), each naming its command."""
    header = (f"Command: `{results['command']}` ({results['seconds'] / 60:.1f} min wall for the whole command on "
              f"{results['machine']['cpus']} shared CPU cores, torch {results['machine']['torch']}, "
              f"{results['machine']['threads']} torch thread{'s' if results['machine']['threads'] != 1 else ''})")
    sections = {}
    if "sst2_summary" in results:
        runs = results["sst2"]
        seeds = ", ".join(str(r["seed"]) for r in runs)
        lines = [header, "", f"**SST-2, {runs[0]['n_train']} sentences, {runs[0]['n_flipped']} labels flipped "
                 f"(seeds {seeds}; mean ± sd over seeds; k = {runs[0]['n_flipped']})**", "",
                 "| ranking | ROC-AUC | average precision | precision at k | recall in top 10% | recall in top 20% |",
                 "|---|---|---|---|---|---|"]
        for row in results["sst2_summary"]:
            cells = [_pm(row, m) for m in ("roc_auc", "average_precision", "precision_at_k", "recall_at_10pct",
                                           "recall_at_20pct")]
            lines.append(f"| {row['ranking']} | " + " | ".join(cells) + " |")
        lines += ["", "| seed | dev accuracy | fine-tune s | cross-fit s | dynamics s | cleanlab s | fit factors s | "
                  "signals s | proposed-trusted signals s | whole ranking s | probe s | cleanlab's estimate of wrong "
                  "labels | flipped labels fitted |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in runs:
            t = r["timings"]
            lines.append(f"| {r['seed']} | {r['dev_accuracy']:.3f} | {t.get('finetune_s', 0):.0f} | "
                         f"{t.get('cross_fit_s', t.get('out_of_sample_s', 0)):.0f} | {t.get('dynamics_s', 0):.2f} | "
                         f"{t.get('cleanlab_s', 0):.2f} | {t.get('fit_factors_s', 0):.0f} | "
                         f"{t.get('signals_s', 0):.0f} | {t.get('proposed_trusted_signals_s', 0):.0f} | "
                         f"{t.get('whole_ranking_s', 0):.0f} | {format(t['probe_s'], '.0f') if 'probe_s' in t else ''} | "
                         f"{t.get('cleanlab_estimated_wrong', '')} | "
                         f"{r['flipped_fit']:.2f} |")
        sections["sst2"] = "\n".join(lines)
    if "airline_summary" in results:
        runs = results["airline"]
        lines = [header, "", f"**Airline tweets, {runs[0]['n_train']} crowd-labelled tweets (seeds "
                 f"{', '.join(str(r['seed']) for r in runs)}); {runs[0]['share_conf_below_0.7']:.0%} have "
                 f"confidence < 0.7, {runs[0]['share_conf_below_1']:.0%} < 1**", "",
                 "| ranking | Spearman with 1 - confidence | ROC-AUC, confidence < 0.7 | ROC-AUC, confidence < 1 |",
                 "|---|---|---|---|"]
        for row in results["airline_summary"]:
            cells = [_pm(row, m) for m in ("spearman_with_doubt", "roc_auc_conf_below_0.7", "roc_auc_conf_below_1")]
            lines.append(f"| {row['ranking']} | " + " | ".join(cells) + " |")
        t = runs[0]["timings"]
        lines += ["", "Times (first seed): " + ", ".join(f"{k.removesuffix('_s').replace('_', ' ')} {v:.0f} s"
                                                          for k, v in t.items() if k.endswith("_s"))
                  + (f"; cleanlab's estimate of wrong labels {t['cleanlab_estimated_wrong']}"
                     if "cleanlab_estimated_wrong" in t else "")]
        sections["airline"] = "\n".join(lines)
    if "counterfactual" in results:
        cf = results["counterfactual"]
        lines = [header, "", f"**Counterfactual check on the demo: remove k = {cf['k']} training reviews and retrain "
                 f"(same base, seed and hyper-parameters); loss of the test review**", "",
                 f"| test review (id) | chosen as | full | minus k most harmful | minus k random (mean of {cf['draws']};"
                 " range) | planted errors among the harmful | harmful < every random |", "|---|---|---|---|---|---|---|"]
        for r in cf["reviews"]:
            spread = f"{min(r['loss_minus_random']):.3f} to {max(r['loss_minus_random']):.3f}"
            below = r["loss_minus_harmful"] < min(r["loss_minus_random"])
            lines.append(f"| {r['test_index']} ({r.get('test_id', '')}) | {r['chosen_as']} | {r['loss_full']:.3f} | "
                         f"{r['loss_minus_harmful']:.3f} | {r['loss_minus_random_mean']:.3f} ({spread}) | "
                         f"{r['planted_errors_removed']} | {'yes' if below else 'no'} |")
        sections["counterfactual"] = "\n".join(lines)
    return sections


def _pm(row: dict, metric: str) -> str:
    sd = row.get(f"{metric}_sd", 0.0)
    return f"{row[metric]:.3f}" + (f" ± {sd:.3f}" if row.get("runs", 1) > 1 else "")


def write_markdown(path: Path, sections: dict[str, str]) -> None:
    """Replace the text between each section's markers in ``path`` (append the section if it has none)."""
    text = path.read_text() if path.is_file() else "# Mislabel rankings: benchmark\n\n"
    for name, body in sections.items():
        start, end = f"<!-- mislabel:{name}:start -->", f"<!-- mislabel:{name}:end -->"
        block = f"{start}\n{body}\n{end}"
        if start in text and end in text:
            head, rest = text.split(start, 1)
            text = head + block + rest.split(end, 1)[1]
        else:
            text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)
    print(f"updated {path}")


def machine() -> dict:
    import torch

    return {"cpus": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
            "threads": torch.get_num_threads()}


if __name__ == "__main__":
    raise SystemExit(main())
