"""The training-gradient index on MiniLM and SST-2: agreement with the exact engine, latency, build cost, size.

    .venv/bin/python -m benchmarks.index                       # small: 2000 training sentences, 20 queries
    .venv/bin/python -m benchmarks.index --n-train 67349       # the issue's target (hours on a CPU)

Without ``--model`` the classifier is the offline MiniLM encoder with a seeded, untrained head (for latency; measure
agreement on a fine-tuned model, e.g. ``--model`` the folder of ``influence_core.demo.demo_model_dir()``, since an
untrained head is not the use case). Layers ``ffn,head``; EK-FAC with the true Fisher. For each projection size:
median per-query Pearson of the index estimates against the engine's scores, the fraction of queries whose exact
top-10 helpful and harmful lie in the index's top-100, and, after the exact re-scoring of 100 candidates, the fraction
whose top-10 equal the engine's. Writes ``benchmarks/results/index-<n>-<stamp>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import pandas as pd
import torch

from benchmarks.common import jsonable, peak_rss_bytes
from benchmarks.contender_floor import floor_pass
from benchmarks.workload import RESULTS, read_sst2, sample_rows


def _model(path: str | None):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from influence_core.sources.models import base_encoder_path

    hf_logging.set_verbosity_error()
    torch.manual_seed(0)
    folder = path or base_encoder_path()
    model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=2, use_safetensors=True).eval()
    return model, AutoTokenizer.from_pretrained(folder)


def sst2_workload(model_path: str | None, n_train: int, n_queries: int, layers: str = "ffn,head",
                  max_length: int = 64, batch_size: int = 32):
    """The benchmark's engine on the classifier in ``model_path`` (see :func:`_model`) and its seeded samples: ``n_train`` SST-2 training sentences (seed 0)
    and ``n_queries`` dev sentences (seed 1), as ``(engine, texts, labels, q_texts, q_labels)``."""
    from influence_core import EngineConfig, InfluenceEngine

    train = sample_rows(read_sst2("train.tsv"), n_train, 0)
    dev = sample_rows(read_sst2("dev.tsv"), n_queries, 1)
    model, tokenizer = _model(model_path)
    engine = InfluenceEngine(model, tokenizer, EngineConfig(layers=layers, max_length=max_length, batch_size=batch_size))
    return (engine, train["sentence"].tolist(), train["label"].to_numpy(), dev["sentence"].tolist(),
            dev["label"].to_numpy())


def _floor_seconds(engine, encoded) -> float:
    from influence_core.engine.batches import batches

    saved = []
    for batch in batches(encoded, engine.config.batch_size):
        item = dict(batch.inputs)
        item.setdefault("token_type_ids", torch.zeros_like(item["input_ids"]))
        item["labels"] = batch.labels
        saved.append(item)
    for param in engine.model.parameters():
        param.requires_grad_(False)
    start = time.perf_counter()
    floor_pass(engine.model, saved)
    return time.perf_counter() - start


def _agreement(estimates: np.ndarray, exact: np.ndarray, top: int, candidates: int) -> dict:
    pearson, covered = [], {1: [], -1: []}
    for est, ex in zip(estimates, exact):
        pearson.append(float(np.corrcoef(est, ex)[0, 1]))
        for sign in (1, -1):
            truth = set(np.argsort(-sign * ex)[:top])
            proposed = set(np.argsort(-sign * est)[:candidates])
            covered[sign].append(truth <= proposed)
    both = np.logical_and(covered[1], covered[-1])
    return {"median_pearson": float(np.median(pearson)), "min_pearson": float(np.min(pearson)),
            "top_in_candidates": float(np.mean(both)), "helpful_in_candidates": float(np.mean(covered[1])),
            "harmful_in_candidates": float(np.mean(covered[-1]))}


def _reranked_equal(answer, exact: np.ndarray, top: int) -> tuple[float, float]:
    ordered, as_set = [], []
    for q, ex in enumerate(exact):
        same_order, same_set = True, True
        for direction, sign in (("helpful", 1), ("harmful", -1)):
            rows = answer[(answer["query"] == q) & (answer["direction"] == direction)].sort_values("rank")
            truth = np.argsort(-sign * ex, kind="stable")[:top].tolist()
            same_order &= rows["train_row"].tolist() == truth
            same_set &= set(rows["train_row"]) == set(truth)
        ordered.append(same_order)
        as_set.append(same_set)
    return float(np.mean(ordered)), float(np.mean(as_set))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="benchmarks.index", description=__doc__.splitlines()[0])
    parser.add_argument("--n-train", type=int, default=2000, help="SST-2 training sentences (target: 67349)")
    parser.add_argument("--n-queries", type=int, default=20, help="SST-2 dev sentences asked about")
    parser.add_argument("--projections", default="8,16,32,64", help="projection sizes to compare")
    parser.add_argument("--model", default=None, help="a fine-tuned classifier folder (default: MiniLM + seeded head)")
    parser.add_argument("--layers", default="ffn,head")
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--top", type=int, default=10)
    parser.add_argument("--candidates", type=int, default=100)
    parser.add_argument("--dtype", default="float16", choices=["int8", "float16", "float32"], help="index storage")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    parser.add_argument("--whiten-exponent", type=float, default=None, help="default: IndexConfig's")
    parser.add_argument("--allocation", default=None, choices=["square", "proportional"],
                        help="default: IndexConfig's")
    parser.add_argument("--basis", default=None, choices=["random", "eigen"], help="default: IndexConfig's")
    parser.add_argument("--entries", default=None,
                        help="eigen basis: entries per example to compare, e.g. 4096,16384,54018 (one build at the "
                             "largest; each smaller index is its first columns); replaces --projections")
    parser.add_argument("--plain-fit", action=argparse.BooleanOptionalAction, default=True,
                        help="also time a fit without the index (off: the index's share of the fit pass is timed "
                             "inside it)")
    parser.add_argument("--floor", action=argparse.BooleanOptionalAction, default=True,
                        help="time the floor pass (forward and backward, no hooks) over the training rows")
    parser.add_argument("--save", default=None, help="folder for the index, the exact scores and the queries")
    parser.add_argument("--reuse", default=None, help="re-measure from a --save folder (no fit, no exact pass)")
    parser.add_argument("--held-out", type=int, default=0,
                        help="with --reuse: also measure on this many other dev sentences (drawn with seed 2 from "
                             "those not asked about), their exact scores computed once and kept in the folder")
    parser.add_argument("--factors", default=None,
                        help="eigen basis: factors saved by an earlier run (its --save folder's index/factors."
                             "safetensors): no fit, the index is built in a pass of its own")
    parser.add_argument("--exact-from", default=None,
                        help="the exact engine scores of an earlier --save folder with the same model, data, "
                             "queries and factors (exact.npy), instead of computing them again")
    parser.add_argument("--coarse-sigmas", type=float, default=None,
                        help="how far the coarse pass widens each row's sketch estimate, in deviations of its "
                             "error (default: the library's COARSE_SIGMAS; 0 ranks by the plain estimate)")
    args = parser.parse_args(argv)
    if args.coarse_sigmas is not None:
        from influence_core.engine import index as index_module

        index_module.COARSE_SIGMAS = args.coarse_sigmas
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.reuse:
        return reuse(args.reuse, args)
    if args.threads:
        torch.set_num_threads(args.threads)

    from influence_core.engine.index import GradientIndex, IndexConfig, fit_and_index

    engine, texts, labels, q_texts, q_labels = sst2_workload(args.model, args.n_train, args.n_queries, args.layers,
                                                             args.max_length, args.batch_size)
    sizes = [int(s) for s in args.projections.split(",")]
    extra = {key: value for key, value in (("whiten_exponent", args.whiten_exponent),
                                           ("allocation", args.allocation), ("basis", args.basis))
             if value is not None}
    result: dict = {"args": vars(args), "layers": engine.layers, "n_train": args.n_train,
                    "threads": torch.get_num_threads(), "projections": {}}
    encoded = engine.encode(texts, labels)
    if args.floor:
        with engine.session(hooks=False):
            result["floor_seconds"] = _floor_seconds(engine, encoded)

    if args.entries:
        return _eigen_curve(args, engine, encoded, texts, labels, q_texts, q_labels, result, extra)
    start = time.perf_counter()
    engine.fit(encoded)
    result["fit_seconds"] = time.perf_counter() - start
    start = time.perf_counter()
    _, riding = fit_and_index(engine, texts, labels,
                              config=IndexConfig(projection=sizes[0], exact=False, dtype=args.dtype, **extra))
    result["fit_and_index_seconds"] = time.perf_counter() - start
    start = time.perf_counter()
    exact = engine.score(q_texts, q_labels, encoded, None, self_influence=False).total(0)
    result["engine_score_seconds"] = time.perf_counter() - start

    for k in sizes:
        start = time.perf_counter()
        index = riding if k == sizes[0] else GradientIndex.build(
            engine, texts, labels, config=IndexConfig(projection=k, exact=False, dtype=args.dtype, **extra))
        build = time.perf_counter() - start
        start = time.perf_counter()
        estimates = index.estimates(q_texts, q_labels)[0]
        estimate_seconds = (time.perf_counter() - start) / len(q_texts)
        entry = {"build_seconds": build if k != sizes[0] else result["fit_and_index_seconds"] - result["fit_seconds"],
                 "build_pass": "fit eigenvalue pass (extra time over fit)" if k == sizes[0] else "own pass",
                 "bytes_per_example": index.bytes_per_example, "width": int(index.rows.shape[1]),
                 "estimate_seconds_per_query": estimate_seconds,
                 **_agreement(estimates, exact, args.top, args.candidates)}
        answer = index.query(q_texts, q_labels, top=args.top, rerank=args.candidates)
        entry["rerank_top_equal"], entry["rerank_top_same_set"] = _reranked_equal(answer, exact, args.top)
        one = time.perf_counter()
        index.query(q_texts[:1], q_labels[:1], top=args.top, rerank=args.candidates)
        entry["latency_one_query_seconds"] = time.perf_counter() - one
        vector = torch.randn(1, index.rows.shape[1])
        rows = torch.from_numpy(np.asarray(index.rows, dtype=np.float32))
        one = time.perf_counter()
        for _ in range(5):
            torch.topk(vector @ rows.T, min(args.candidates, rows.shape[0]))
        entry["lookup_seconds"] = (time.perf_counter() - one) / 5
        result["projections"][k] = entry
        print(f"k={k}: {json.dumps(entry, default=jsonable)}", flush=True)
    result["peak_rss_bytes"] = peak_rss_bytes()
    _write(result)
    return result


def _eigen_curve(args, engine, encoded, texts, labels, q_texts, q_labels, result: dict, extra: dict) -> dict:
    """One eigen index at the largest size; every smaller size is its first columns (entries are stored heaviest
    first), so the whole agreement curve costs one build."""
    from pathlib import Path

    from influence_core.engine import index as index_module
    from influence_core.engine.index import IndexConfig, fit_and_index

    sizes = sorted(int(e) for e in args.entries.split(","))
    extra = {**extra, "basis": "eigen"}
    if args.factors:
        return _eigen_curve_on_factors(args, engine, texts, labels, q_texts, q_labels, result, extra, sizes)
    if args.plain_fit:
        start = time.perf_counter()
        engine.fit(encoded)
        result["fit_seconds"] = time.perf_counter() - start
    hook = index_module._Builder.absorb_fisher
    spent = [0.0]

    def timed(self, *a, **k):
        begin = time.perf_counter()
        hook(self, *a, **k)
        spent[0] += time.perf_counter() - begin

    index_module._Builder.absorb_fisher = timed
    start = time.perf_counter()
    try:
        _, index = fit_and_index(engine, texts, labels, config=IndexConfig(
            exact=False, dtype=args.dtype, entries=sizes[-1], **extra))
    finally:
        index_module._Builder.absorb_fisher = hook
    result["fit_and_index_seconds"] = time.perf_counter() - start
    result["index_share_of_fit_seconds"] = spent[0]
    print(f"fit + index {result['fit_and_index_seconds']:.1f} s (index rows {spent[0]:.1f} s of it)", flush=True)
    folder = Path(args.save) if args.save else None
    if folder:
        index.save(folder / "index")
    start = time.perf_counter()
    exact = engine.score(q_texts, q_labels, encoded, None, self_influence=False).total(0)
    result["engine_score_seconds"] = time.perf_counter() - start
    print(f"exact engine scores {result['engine_score_seconds']:.1f} s", flush=True)
    return _measure(args, index, exact, q_texts, q_labels, sizes, result, folder)


def _eigen_curve_on_factors(args, engine, texts, labels, q_texts, q_labels, result: dict, extra: dict,
                            sizes: list[int]) -> dict:
    """:func:`_eigen_curve` with the factors of an earlier run: the index is built in a pass of its own (timed),
    and the exact scores are that run's when ``--exact-from`` names its folder."""
    from pathlib import Path

    from influence_core.engine.index import GradientIndex, IndexConfig

    engine.load_factors(args.factors)
    start = time.perf_counter()
    index = GradientIndex.build(engine, texts, labels, config=IndexConfig(exact=False, dtype=args.dtype,
                                                                          entries=sizes[-1], **extra))
    result["index_build_seconds"] = time.perf_counter() - start
    result["index_build_pass"] = "own pass (factors of an earlier run)"
    result["build_peak_rss_bytes"] = peak_rss_bytes()
    print(f"index built in {result['index_build_seconds']:.1f} s", flush=True)
    if args.exact_from:
        exact = np.load(Path(args.exact_from) / "exact.npy")
        if exact.shape != (len(q_texts), len(texts)):
            raise SystemExit(f"{args.exact_from}/exact.npy is {exact.shape}, not ({len(q_texts)}, {len(texts)})")
    else:
        start = time.perf_counter()
        exact = engine.score(q_texts, q_labels, texts, labels, self_influence=False).total(0)
        result["engine_score_seconds"] = time.perf_counter() - start
    folder = Path(args.save) if args.save else None
    if folder:
        index.save(folder / "index")
    return _measure(args, index, exact, q_texts, q_labels, sizes, result, folder)


def _measure(args, index, exact: np.ndarray, q_texts, q_labels, sizes: list[int], result: dict, folder) -> dict:
    """Save the exact scores next to the index (``folder``, when saving), then measure the agreement curve and the
    query path and write the result."""
    if folder:
        np.save(folder / "exact.npy", exact)
        (folder / "result.json").write_text(json.dumps(result, indent=2, default=jsonable) + "\n")
    result["curve"] = _curve(index, q_texts, q_labels, exact, sizes, args.top, args.candidates)
    result["latency"] = _latency(index, q_texts, q_labels, exact, args.top, args.candidates)
    result["peak_rss_bytes"] = peak_rss_bytes()
    _write(result)
    return result


def _curve(index, q_texts, q_labels, exact: np.ndarray, sizes: list[int], top: int, candidates: int) -> dict:
    """Agreement with the engine for the first ``e`` columns of the index, for each size ``e``."""
    projected = index.query_rows(q_texts, q_labels)[0]
    curve = {}
    for e in sizes:
        estimates = index.lookup(projected, entries=e)
        curve[e] = {"bytes_per_example": e * index.rows.dtype.itemsize, **_agreement(estimates, exact, top, candidates)}
        print(f"entries={e}: {json.dumps(curve[e])}", flush=True)
    return curve


def _latency(index, q_texts, q_labels, exact: np.ndarray, top: int, candidates: int) -> dict:
    """The shipped query path at the index's full width, one query at a time: the lookup alone (coarse pass and
    shortlist) and end to end (tokenize, gradient, precondition, lookup, exact re-score of ``candidates`` per
    direction, adaptive or all of them), and whether the re-ranked top equals the engine's."""
    from influence_core.engine import index as index_module

    projected = index.query_rows(q_texts, q_labels)[0]
    start = time.perf_counter()
    index.coarse_sketch()  # computed once per index (and kept next to its rows), before the timed lookups
    sketch_seconds = time.perf_counter() - start
    lookups, covered = [], {1: [], -1: []}
    for q in range(len(q_texts)):
        start = time.perf_counter()
        shortlist = index.shortlist(projected[q:q + 1], candidates)[0]
        lookups.append(time.perf_counter() - start)
        for sign in (1, -1):
            covered[sign].append(set(np.argsort(-sign * exact[q])[:top]) <= set(shortlist))
    prefix = _prefix_shortlist_coverage(index, projected, exact, top, candidates)
    out = {"lookup_seconds_median": float(np.median(lookups)), "shortlist_factor": index_module.SHORTLIST_FACTOR,
           "coarse_sigmas": index_module.COARSE_SIGMAS,
           "coarse_sketch_seconds": sketch_seconds, "exact_top_in_prefix_shortlist_helpful": prefix[1],
           "exact_top_in_prefix_shortlist_harmful": prefix[-1],
           "exact_top_in_shortlist_helpful": float(np.mean(covered[1])),
           "exact_top_in_shortlist_harmful": float(np.mean(covered[-1])), "rerank": {}}
    for adaptive in (True, False):
        ends, answers = [], []
        for q in range(len(q_texts)):
            start = time.perf_counter()
            answer = index.query(q_texts[q:q + 1], q_labels[q:q + 1], top=top, rerank=candidates, adaptive=adaptive)
            ends.append(time.perf_counter() - start)
            answers.append(answer.assign(query=q))
        equal, same_set = _reranked_equal(pd.concat(answers), exact, top)
        out["rerank"]["adaptive" if adaptive else "all"] = {"end_to_end_seconds_median": float(np.median(ends)),
                                 "end_to_end_seconds_max": float(np.max(ends)), "rerank_top_equal": equal,
                                 "rerank_top_same_set": same_set}
    print(f"latency: {json.dumps(out)}", flush=True)
    return out


def _prefix_shortlist_coverage(index, projected, exact: np.ndarray, top: int, candidates: int) -> dict[int, float]:
    """How often the exact top lies in the shortlist of the coarse pass this wave replaced: the heaviest
    ``COARSE_BYTES`` of every row instead of its count sketch, then the same full-width re-rank of the kept rows."""
    from influence_core.engine.index import COARSE_BYTES, SHORTLIST_FACTOR

    coarse = index.lookup(projected, entries=COARSE_BYTES // index.rows.dtype.itemsize)
    keep = SHORTLIST_FACTOR * candidates
    covered = {1: [], -1: []}
    for q in range(len(exact)):
        for sign in (1, -1):
            near = np.argsort(-sign * coarse[q])[:keep]
            fine = index.lookup(projected[q:q + 1], rows=near)[0]  # the whole width of the kept rows only
            best = near[np.argsort(-sign * fine)[:candidates]]
            covered[sign].append(set(np.argsort(-sign * exact[q])[:top]) <= set(best))
    return {sign: float(np.mean(v)) for sign, v in covered.items()}


def reuse(folder: str, args) -> dict:
    """Re-measure the curve and the query path from an index and exact scores saved by ``--save`` (on an idle
    machine, after the long fit)."""
    from pathlib import Path

    from influence_core import EngineConfig, InfluenceEngine
    from influence_core.engine.index import GradientIndex

    train = sample_rows(read_sst2("train.tsv"), args.n_train, 0)
    dev = sample_rows(read_sst2("dev.tsv"), args.n_queries, 1)
    model, tokenizer = _model(args.model)
    engine = InfluenceEngine(model, tokenizer, EngineConfig(layers=args.layers, max_length=args.max_length,
                                                            batch_size=args.batch_size))
    index = GradientIndex.load(Path(folder) / "index", engine, train["sentence"].tolist(), train["label"].to_numpy())
    index.rows = np.array(index.rows)  # into memory, as the app holds it
    exact = np.load(Path(folder) / "exact.npy")
    q_texts, q_labels = dev["sentence"].tolist(), dev["label"].to_numpy()
    previous = json.loads((Path(folder) / "result.json").read_text()) if (Path(folder) / "result.json").is_file() \
        else {}
    result = {**previous, "args_reuse": vars(args), "threads": torch.get_num_threads(), "layers": engine.layers,
              "n_train": args.n_train}
    sizes = sorted(int(e) for e in args.entries.split(","))
    result["curve"] = _curve(index, q_texts, q_labels, exact, sizes, args.top, args.candidates)
    result["latency"] = _latency(index, q_texts, q_labels, exact, args.top, args.candidates)
    if args.held_out:
        result["held_out"] = _held_out(index, engine, dev, train, Path(folder), args, sizes)
    result["peak_rss_bytes"] = peak_rss_bytes()
    _write(result)
    return result


def _held_out(index, engine, asked: pd.DataFrame, train: pd.DataFrame, folder, args, sizes: list[int]) -> dict:
    """The curve and the query path on ``--held-out`` dev sentences never used to choose the query path's
    settings (the coarse sketch was chosen on the first queries)."""
    every = read_sst2("dev.tsv").reset_index(drop=False).rename(columns={"index": "row"})
    rest = every[~every["row"].isin(asked["row"])].reset_index(drop=True)
    held = sample_rows(rest.drop(columns="row"), args.held_out, 2)
    texts, labels = held["sentence"].tolist(), held["label"].to_numpy()
    path = folder / f"exact-held-out-{args.held_out}.npy"
    if path.is_file():
        exact = np.load(path)
    else:
        start = time.perf_counter()
        exact = engine.score(texts, labels, train["sentence"].tolist(), train["label"].to_numpy(),
                             self_influence=False).total(0)
        print(f"held-out exact scores: {time.perf_counter() - start:.0f} s", flush=True)
        np.save(path, exact)
    return {"n_queries": len(texts), "curve": _curve(index, texts, labels, exact, sizes, args.top, args.candidates),
            "latency": _latency(index, texts, labels, exact, args.top, args.candidates)}


def _write(result: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = RESULTS / f"index-{result['n_train']}-{time.strftime('%Y%m%d-%H%M%S')}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2, default=jsonable) + "\n")
    if "curve" in result:
        _write_curve(stem, result)
        return
    lines = [f"# Gradient index: {result['n_train']} SST-2 training sentences, {len(result['layers'])} layers",
             "", f"floor pass {result['floor_seconds']:.1f} s, fit {result['fit_seconds']:.1f} s, fit + index "
             f"{result['fit_and_index_seconds']:.1f} s, exact engine scores {result['engine_score_seconds']:.1f} s; "
             f"peak RSS {result['peak_rss_bytes'] / 2**20:.0f} MiB; {result['threads']} threads", "",
             "| k | bytes/example | build s | median Pearson | exact top-10 in top-100 (both / helpful / harmful) "
             "| rerank top-10 equal (order / set) | one query s | lookup ms |", "|---|---|---|---|---|---|---|---|"]
    for k, e in result["projections"].items():
        lines.append(f"| {k} | {e['bytes_per_example']} | {e['build_seconds']:.1f} | {e['median_pearson']:.3f} | "
                     f"{e['top_in_candidates']:.2f} / {e['helpful_in_candidates']:.2f} / "
                     f"{e['harmful_in_candidates']:.2f} | {e['rerank_top_equal']:.2f} / {e['rerank_top_same_set']:.2f} | "
                     f"{e['latency_one_query_seconds']:.2f} | {1000 * e['lookup_seconds']:.2f} |")
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {stem}.json and .md")


def _write_curve(stem, result: dict) -> None:
    timing = [f"{name} {result[key]:.1f} s" for name, key in (
        ("floor pass", "floor_seconds"), ("fit", "fit_seconds"), ("fit + index", "fit_and_index_seconds"),
        ("index rows inside the fit pass", "index_share_of_fit_seconds"),
        ("exact engine scores", "engine_score_seconds")) if key in result]
    lat = result["latency"]
    reranks = " ".join(f"Re-scoring ({k}) of 100 per direction: end to end {v['end_to_end_seconds_median']:.2f} s median "
                       f"({v['end_to_end_seconds_max']:.2f} s max); top-10 equal to the engine's for "
                       f"{v['rerank_top_equal']:.2f} of queries (as sets {v['rerank_top_same_set']:.2f})."
                       for k, v in lat["rerank"].items())
    lines = [f"# Eigen gradient index: {result['n_train']} SST-2 training sentences, {len(result['layers'])} layers",
             "", ", ".join(timing) + f"; peak RSS {result['peak_rss_bytes'] / 2**20:.0f} MiB; "
             f"{result['threads']} threads", "",
             "| entries | bytes/example | median Pearson (min) | exact top-10 in top-100 (both / helpful / harmful) |",
             "|---|---|---|---|"]
    for e, c in result["curve"].items():
        lines.append(f"| {e} | {c['bytes_per_example']} | {c['median_pearson']:.3f} ({c['min_pearson']:.3f}) | "
                     f"{c['top_in_candidates']:.2f} / {c['helpful_in_candidates']:.2f} / "
                     f"{c['harmful_in_candidates']:.2f} |")
    lines += ["", f"Query path at the full width, one query at a time: the coarse sketch computed once in "
              f"{lat.get('coarse_sketch_seconds', float('nan')):.1f} s; lookup {1000 * lat['lookup_seconds_median']:.0f} "
              f"ms (median; coarse pass, its estimates widened by {lat.get('coarse_sigmas', 0):g} deviations of their error, "
              f"and shortlist); the exact top-10 inside the shortlist of 100 for "
              f"{lat['exact_top_in_shortlist_helpful']:.2f} (helpful) / {lat['exact_top_in_shortlist_harmful']:.2f} "
              f"(harmful) of queries (with the heaviest-entries prefix as the coarse pass: "
              f"{lat.get('exact_top_in_prefix_shortlist_helpful', float('nan')):.2f} / "
              f"{lat.get('exact_top_in_prefix_shortlist_harmful', float('nan')):.2f}). {reranks}"]
    if "held_out" in result:
        held = result["held_out"]
        lines += ["", f"Held-out queries ({held['n_queries']} other dev sentences):", "",
                  "| entries | median Pearson (min) | exact top-10 in top-100 (both / helpful / harmful) |",
                  "|---|---|---|"]
        lines += [f"| {e} | {c['median_pearson']:.3f} ({c['min_pearson']:.3f}) | {c['top_in_candidates']:.2f} / "
                  f"{c['helpful_in_candidates']:.2f} / {c['harmful_in_candidates']:.2f} |"
                  for e, c in held["curve"].items()]
        h = held["latency"]
        lines += ["", f"Lookup {1000 * h['lookup_seconds_median']:.0f} ms median; exact top-10 in the shortlist of 100 "
                  f"{h['exact_top_in_shortlist_helpful']:.2f} / {h['exact_top_in_shortlist_harmful']:.2f} (prefix "
                  f"coarse pass: {h['exact_top_in_prefix_shortlist_helpful']:.2f} / "
                  f"{h['exact_top_in_prefix_shortlist_harmful']:.2f}); " + " ".join(
                      f"re-score ({k}): {v['end_to_end_seconds_median']:.2f} s median, top-10 equal "
                      f"{v['rerank_top_equal']:.2f}." for k, v in h["rerank"].items())]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {stem}.json and .md")


if __name__ == "__main__":
    main()
