"""Summaries of a benchmark run: medians, multiples of the floor, memory, agreement, targets, the table."""

from __future__ import annotations

import platform
import statistics
from pathlib import Path

import numpy as np
from scipy import stats

GiB = 1024**3
STAGE_TITLES = {"fit": "fit factors", "pairwise": "pairwise", "self": "self-influence", "sweep": "damping sweep"}


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1])


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    return float(stats.spearmanr(np.ravel(a), np.ravel(b)).statistic)


def top_k_overlap(a: np.ndarray, b: np.ndarray, k: int = 10) -> float:
    """Mean over rows of |top-k(a_row) & top-k(b_row)| / k, top = most helpful (largest score)."""
    a, b = np.atleast_2d(a), np.atleast_2d(b)
    k = min(k, a.shape[1])
    top_a = np.argsort(-a, axis=1, kind="stable")[:, :k]
    top_b = np.argsort(-b, axis=1, kind="stable")[:, :k]
    return float(np.mean([len(set(x) & set(y)) / k for x, y in zip(top_a, top_b)]))


def agreement(scores: np.ndarray, reference: np.ndarray) -> dict:
    return {"pearson": pearson(scores, reference), "spearman": spearman(scores, reference),
            "top10": top_k_overlap(scores, reference) if scores.ndim == 2 else None}


def _scores(runs: list[dict]) -> np.ndarray | None:
    for run in reversed(runs):
        if run.get("scores_file"):
            return np.load(run["scores_file"])
    return None


def summarize(records: dict, meta: dict, contenders: list, stages: list[str], state_root: Path, args) -> dict:
    floor_runs = [r["seconds"] for r in records.get(("floor", "floor"), []) if "seconds" in r]
    floor = statistics.median(floor_runs) if floor_runs else float("nan")
    factors_file = state_root / "ours" / "factors.safetensors"
    factors_bytes = factors_file.stat().st_size if factors_file.is_file() else 0
    budget = meta["parameters_bytes"] + factors_bytes + 2 * GiB
    reference = {stage: _scores(records.get(("ours", stage), [])) for stage in ("pairwise", "self", "sweep")}
    rows = []
    for contender in contenders:
        for stage in contender.stages:
            runs = records.get((contender.name, stage), [])
            if not runs:
                continue
            good = [r for r in runs if "seconds" in r]
            row = {"contender": contender.name, "stage": stage, "runs": len(good), "variant": contender.variant,
                   "errors": [r["error"] for r in runs if "error" in r]}
            if good:
                seconds = [r["seconds"] for r in good]
                peak = max(r["peak_rss"] for r in good)
                start = min(r.get("rss_start", 0) for r in good)
                row.update(seconds=seconds, median=statistics.median(seconds), floor_multiple=statistics.median(seconds) / floor,
                           peak_rss=peak, rss_start=start, rss_growth=peak - start,
                           process_seconds=[r["process_seconds"] for r in good], notes=good[-1].get("notes", {}),
                           environment=good[-1].get("environment", {}))
            scores = _scores(runs)
            if scores is not None and contender.name != "ours":
                ref = reference.get(stage)
                if ref is not None and ref.shape == scores.shape:
                    row["agreement"] = agreement(scores, ref)
                    if stage == "sweep":
                        per_damping = [pearson(s, r) for s, r in zip(scores, ref)]
                        row["agreement"]["pearson_per_damping"] = per_damping
                        row["agreement"]["pearson"] = min(per_damping)
                        row["agreement"]["spearman"] = min(spearman(s, r) for s, r in zip(scores, ref))
                        row["agreement"]["top10"] = min(top_k_overlap(s, r) for s, r in zip(scores, ref))
                partner = {"pydvl-kfac": "ours-kfac-true", "pydvl-ekfac": "ours-true"}.get(contender.name)
                partner_scores = _scores(records.get((partner, stage), [])) if partner else None
                if partner_scores is not None and partner_scores.shape == scores.shape:
                    row["agreement_partner"] = {"with": partner, **agreement(scores, partner_scores)}
            if contender.name == "ours" and stage == "sweep" and scores is not None and reference["pairwise"] is not None:
                k = int(np.argmin(np.abs(np.log(meta["dampings"]) - np.log(meta["damping"]))))
                row["agreement"] = {"note": "sweep at the single damping vs the pairwise run",
                                    "pearson": pearson(scores[k], reference["pairwise"]),
                                    "max_abs_diff": float(np.max(np.abs(scores[k] - reference["pairwise"])))}
            rows.append(row)
        for stage, reason in contender.not_run:
            if stage in stages:
                rows.append({"contender": contender.name, "stage": stage, "runs": 0, "not_run": reason})
    summary = {
        "workload": {k: meta[k] for k in ("key", "n_train", "n_test", "batch_size", "damping", "dampings", "layers",
                                          "tokens", "padded_tokens", "test_accuracy", "parameters_bytes")},
        "floor": {"median": floor, "seconds": floor_runs},
        "factors_bytes": factors_bytes,
        "memory_budget": budget,
        "rows": rows,
        "command": "python -m benchmarks.run " + " ".join(_argv(args)),
        "machine": {"cpus": _cpus(), "platform": platform.platform(), "load_average_at_end": _load(),
                    "omp_wait_policy": args.omp_wait_policy},
    }
    summary["targets"] = targets(summary)
    return summary


def _argv(args) -> list[str]:
    defaults = {"runs": 3, "n_train": 2000, "n_test": 100, "batch_size": 32}
    out = []
    for key, default in defaults.items():
        if getattr(args, key) != default:
            out.append(f"--{key.replace('_', '-')} {getattr(args, key)}")
    from benchmarks.run import DEFAULT_CONTENDERS

    if args.contenders != DEFAULT_CONTENDERS:
        out.append(f"--contenders {args.contenders}")
    if args.stages != "fit,pairwise,self,sweep":
        out.append(f"--stages {args.stages}")
    if args.extended:
        out.append("--extended")
    if args.omp_wait_policy != "PASSIVE":
        out.append(f"--omp-wait-policy {args.omp_wait_policy}")
    return out


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0))


def _load() -> list[float]:
    import os

    return [round(x, 2) for x in os.getloadavg()]


def _row(summary: dict, contender: str, stage: str) -> dict | None:
    for row in summary["rows"]:
        if row["contender"] == contender and row["stage"] == stage and "median" in row:
            return row
    return None


def targets(summary: dict) -> list[dict]:
    """Each target of issue 6 with the measured value and whether it is met (None = not measured)."""
    out = []

    def add(name: str, value, limit, ok):
        out.append({"target": name, "measured": value, "limit": limit, "met": ok})

    ours = {stage: _row(summary, "ours", stage) for stage in ("fit", "pairwise", "self", "sweep")}
    kron = {stage: _row(summary, "kronfluence", stage) for stage in ("fit", "pairwise")}
    if ours["pairwise"]:
        multiple = ours["pairwise"]["floor_multiple"]
        add("pairwise <= 2x floor", f"{multiple:.2f}x", "2x", multiple <= 2)
        if kron["pairwise"]:
            ratio = kron["pairwise"]["median"] / ours["pairwise"]["median"]
            add("pairwise faster than kronfluence", f"kronfluence / ours = {ratio:.2f}", "> 1", ratio > 1)
        for name in ("pydvl-kfac", "pydvl-ekfac"):
            row = _row(summary, name, "pairwise")
            if row:
                ratio = row["median"] / ours["pairwise"]["median"]
                add(f"pairwise >= 10x faster than {name}", f"{ratio:.1f}x", ">= 10x", ratio >= 10)
    if ours["fit"]:
        multiple = ours["fit"]["floor_multiple"]
        add("fit <= 3x floor", f"{multiple:.2f}x", "3x", multiple <= 3)
        if kron["fit"]:
            ratio = kron["fit"]["median"] / ours["fit"]["median"]
            add("fit faster than kronfluence", f"kronfluence / ours = {ratio:.2f}", "> 1", ratio > 1)
    if ours["self"]:
        multiple = ours["self"]["floor_multiple"]
        add("self-influence <= 1.5x floor", f"{multiple:.2f}x", "1.5x", multiple <= 1.5)
    if ours["sweep"] and ours["pairwise"]:
        ratio = ours["sweep"]["median"] / ours["pairwise"]["median"]
        add("sweep of 8 <= 1.3x single pairwise", f"{ratio:.2f}x", "1.3x", ratio <= 1.3)
    peaks = [row["rss_growth"] for row in ours.values() if row]
    if peaks:
        worst = max(peaks)
        add("peak memory <= model + factors + 2 GiB", f"{worst / GiB:.2f} GiB", f"{summary['memory_budget'] / GiB:.2f} GiB",
            worst <= summary["memory_budget"])
    row = _row(summary, "kronfluence", "pairwise")
    if row and "agreement" in row:
        value = row["agreement"]["pearson"]
        add("Pearson with kronfluence (same Fisher, damping) >= 0.99", f"{value:.4f}", "0.99", value >= 0.99)
    return out


def _fmt(value, spec: str, missing: str = "") -> str:
    return missing if value is None or (isinstance(value, float) and np.isnan(value)) else format(value, spec)


def markdown(summary: dict) -> str:
    work = summary["workload"]
    floor = summary["floor"]
    lines = [
        f"Workload `{work['key']}`: MiniLM fine-tuned on {work['n_train']} SST-2 training sentences "
        f"(dev accuracy on the {work['n_test']} test sentences: {work['test_accuracy']:.2f}); {len(work['layers'])} "
        f"tracked layers (FFN + pooler + classifier); max length 64; batches of {work['batch_size']} "
        f"({work['tokens']['train']} training tokens, {work['padded_tokens']['train']} with padding); "
        f"damping {work['damping']:g} (absolute); sweep {', '.join(f'{d:g}' for d in work['dampings'])}.",
        "",
        f"Floor (forward + backward over the {work['n_train']} training sentences, no parameter gradients, no hooks): "
        f"**{floor['median']:.1f} s** (median of {len(floor['seconds'])}: "
        f"{', '.join(f'{s:.1f}' for s in floor['seconds'])}).",
        "",
        "| contender | stage | median s | x floor | runs | peak RSS GiB | RSS growth GiB | Pearson | Spearman | top-10 |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in summary["rows"]:
        name, stage = row["contender"], STAGE_TITLES.get(row["stage"], row["stage"])
        if row.get("not_run"):
            lines.append(f"| {name} | {stage} | n/a | | | | | | | |")
            continue
        if "median" not in row:
            error = (row["errors"] or ["failed"])[-1].splitlines()[-1][:80]
            lines.append(f"| {name} | {stage} | failed: {error} | | | | | | | |")
            continue
        agree = row.get("agreement") or {}
        runs = str(row["runs"]) + ("" if row["runs"] > 1 else " (once)")
        lines.append(
            f"| {name} | {stage} | {row['median']:.1f} | {row['floor_multiple']:.2f} | {runs} | "
            f"{row['peak_rss'] / GiB:.2f} | {row['rss_growth'] / GiB:.2f} | {_fmt(agree.get('pearson'), '.4f')} | "
            f"{_fmt(agree.get('spearman'), '.4f')} | {_fmt(agree.get('top10'), '.2f')} |"
        )
    notes = [f"- {row['contender']} {STAGE_TITLES[row['stage']]}: n/a, {row['not_run']}."
             for row in summary["rows"] if row.get("not_run")]
    partners = [f"- {row['contender']} {STAGE_TITLES[row['stage']]} vs the engine with its closest settings "
                f"({row['agreement_partner']['with']}): Pearson {row['agreement_partner']['pearson']:.4f}, Spearman "
                f"{row['agreement_partner']['spearman']:.4f}"
                + (f", top-10 {row['agreement_partner']['top10']:.2f}" if row['agreement_partner']['top10'] is not None else "")
                for row in summary["rows"] if row.get("agreement_partner")]
    lines += ["", "Agreement is with the engine's `ekfac-empirical` scores of the same stage (sweep: the worst of the 8 "
              "dampings; the engine's own sweep row compares its single-damping slice with its pairwise run)."]
    lines += notes + partners
    lines += ["", "| target | measured | limit | met |", "|---|---|---|---|"]
    for target in summary["targets"]:
        lines.append(f"| {target['target']} | {target['measured']} | {target['limit']} | "
                     f"{'yes' if target['met'] else 'no'} |")
    lines += ["", f"Memory: RSS growth = peak RSS minus the RSS after imports, before the model is loaded; budget = "
              f"parameters ({work['parameters_bytes'] / GiB:.3f} GiB) + factors file "
              f"({summary['factors_bytes'] / GiB:.3f} GiB) + 2 GiB.",
              f"Command: `{summary['command']}`; machine: {summary['machine']['cpus']} CPUs, load average at the end "
              f"{summary['machine']['load_average_at_end']}.", ""]
    return "\n".join(lines)


__all__ = ["agreement", "markdown", "pearson", "spearman", "summarize", "targets", "top_k_overlap"]
