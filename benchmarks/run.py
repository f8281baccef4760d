"""``make bench``: this engine against kronfluence and pyDVL on the same work, as multiples of a floor.

    python -m benchmarks.run                       # everything (about 40 min on 2 CPU cores)
    python -m benchmarks.run --setup               # only create the contenders' virtual environments
    python -m benchmarks.run --runs 1 --n-train 200 --n-test 20 --contenders ours,kronfluence   # quick

Steps: build (or reuse) the workload (benchmarks/workload.py), create missing contender environments
(benchmarks/setup.sh), then run every (contender, stage) ``--runs`` times, each in a fresh process, rounds
interleaved so a change in machine load hits every contender alike. The floor (benchmarks/contender_floor.py)
runs once per round. Results: ``benchmarks/results/bench-<workload>.json`` (every run) and ``.md`` (the
table), copied to ``latest.json`` / ``latest.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks.common import jsonable
from benchmarks.workload import RESULTS, WorkloadSpec, build

REPO = Path(__file__).resolve().parent.parent
VENVS = REPO / "benchmarks" / ".venvs"
GiB = 1024**3


@dataclass(frozen=True)
class Contender:
    """A contender: the worker module, its environment (None = this one), its variant and stages."""

    name: str
    module: str
    venv: str | None
    variant: str
    stages: tuple[str, ...]
    not_run: tuple[tuple[str, str], ...] = ()

    @property
    def python(self) -> str:
        return sys.executable if self.venv is None else str(VENVS / self.venv / "bin" / "python")


EXTENDED = "run with --extended"
CONTENDERS = {
    "ours": Contender("ours", "benchmarks.contender_ours", None, "ekfac-empirical", ("fit", "pairwise", "self", "sweep")),
    "kronfluence": Contender("kronfluence", "benchmarks.contender_kronfluence", "kronfluence", "empirical",
                             ("fit", "pairwise", "self", "sweep")),
    "pydvl-kfac": Contender("pydvl-kfac", "benchmarks.contender_pydvl", "pydvl", "kfac", ("fit", "pairwise", "self")),
    "pydvl-ekfac": Contender("pydvl-ekfac", "benchmarks.contender_pydvl", "pydvl", "ekfac", ("fit", "pairwise", "self")),
    # Agreement references only: the engine with pyDVL's closest Fisher (and method).
    "ours-true": Contender("ours-true", "benchmarks.contender_ours", None, "ekfac-true", ("fit", "pairwise")),
    "ours-kfac-true": Contender("ours-kfac-true", "benchmarks.contender_ours", None, "kfac-true", ("fit", "pairwise")),
}
#: Stages left out unless --extended, with the reason printed in the table.
NOT_EXTENDED = {
    ("kronfluence", "sweep"): "kronfluence has no multi-damping scoring: a sweep is 8 separate pairwise runs "
                              f"(8 x its pairwise time); {EXTENDED}",
    ("kronfluence", "self"): "kronfluence preconditions every training gradient at matrix level "
                             f"(out x in x (out + in) per example and layer: about an hour here); {EXTENDED}",
    ("pydvl-kfac", "self"): f"pyDVL has no self-influence call (the diagonal of influences(x, y) per batch); {EXTENDED}",
    ("pydvl-ekfac", "self"): f"pyDVL has no self-influence call (the diagonal of influences(x, y) per batch); {EXTENDED}",
}
PYDVL_SWEEP = ("sweep", "no multi-damping pairwise call (explore_hessian_regularization scores a set against itself); "
                        "a sweep is 8 separate pairwise runs")
FLOOR = Contender("floor", "benchmarks.contender_floor", None, "", ("floor",))
DEFAULT_CONTENDERS = "ours,kronfluence,pydvl-kfac,pydvl-ekfac"
DEFAULT_ONCE = "kronfluence,pydvl-kfac,pydvl-ekfac,ours-true,ours-kfac-true"
REFERENCES = {"pydvl-kfac": "ours-kfac-true", "pydvl-ekfac": "ours-true"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n")[0])
    parser.add_argument("--setup", action="store_true", help="create the contenders' environments and stop")
    parser.add_argument("--runs", type=int, default=3, help="fresh-process runs per stage (median reported)")
    parser.add_argument("--contenders", default=DEFAULT_CONTENDERS,
                        help=f"comma-separated, from {', '.join(CONTENDERS)} (default: %(default)s)")
    parser.add_argument("--once", default=DEFAULT_ONCE, help="contenders run once whatever --runs says (slow ones)")
    parser.add_argument("--extended", action="store_true",
                        help="also run kronfluence's sweep (8 pairwise runs), pyDVL's self-influence and the engine "
                             "with pyDVL's closest Fisher/method (agreement references): hours on 2 cores")
    parser.add_argument("--stages", default="fit,pairwise,self,sweep", help="stages to run (default: %(default)s)")
    parser.add_argument("--sweep-runs", type=int, default=None,
                        help="runs of the (long) damping sweep, at most --runs (default: --runs)")
    parser.add_argument("--resume", action="store_true",
                        help="keep the results of an interrupted run of the same workload and run only what is missing")
    parser.add_argument("--n-train", type=int, default=WorkloadSpec.n_train)
    parser.add_argument("--n-test", type=int, default=WorkloadSpec.n_test)
    parser.add_argument("--batch-size", type=int, default=WorkloadSpec.batch_size)
    parser.add_argument("--timeout", type=float, default=3600, help="seconds one worker may take")
    parser.add_argument("--omp-wait-policy", default="PASSIVE", choices=["PASSIVE", "ACTIVE", "default"],
                        help="OMP_WAIT_POLICY of every worker (default %(default)s: on a shared machine the "
                             "spinning OpenMP threads of the default policy made a 2-thread pass 20x slower)")
    return parser.parse_args(argv)


def ensure_venvs(names: set[str]) -> None:
    missing = sorted({c.venv for c in map(CONTENDERS.get, names) if c.venv and not (VENVS / c.venv / ".ready").is_file()})
    if missing:
        print(f"creating environments: {', '.join(missing)} (benchmarks/setup.sh)", flush=True)
        subprocess.run(["bash", str(REPO / "benchmarks" / "setup.sh"), *missing], check=True)


def plan(contender: Contender, extended: bool) -> Contender:
    """The contender with the stages it cannot run, or that only ``--extended`` runs, moved to ``not_run``."""
    not_run = [PYDVL_SWEEP] if contender.name.startswith("pydvl") else []
    stages = []
    for stage in contender.stages:
        reason = NOT_EXTENDED.get((contender.name, stage))
        if reason and not extended:
            not_run.append((stage, reason))
        else:
            stages.append(stage)
    return Contender(contender.name, contender.module, contender.venv, contender.variant, tuple(stages), tuple(not_run))


def worker_env(omp_wait_policy: str = "PASSIVE") -> dict[str, str]:
    env = dict(os.environ)
    if omp_wait_policy != "default":
        env["OMP_WAIT_POLICY"] = omp_wait_policy
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""))
    return env


def run_worker(contender: Contender, stage: str, workload: Path, state: Path, out: Path, timeout: float,
               omp_wait_policy: str) -> dict:
    state.mkdir(parents=True, exist_ok=True)
    command = [contender.python, "-m", contender.module, "--workload", str(workload), "--stage", stage,
               "--state", str(state), "--out", str(out), "--variant", contender.variant]
    start = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=REPO, env=worker_env(omp_wait_policy), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s", "process_seconds": time.perf_counter() - start}
    process_seconds = time.perf_counter() - start
    if done.returncode != 0 or not out.is_file():
        tail = (done.stderr or done.stdout).strip().splitlines()[-8:]
        return {"error": "\n".join(tail) or f"exit {done.returncode}", "process_seconds": process_seconds}
    result = json.loads(out.read_text())
    result["process_seconds"] = process_seconds
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    names = [n.strip() for n in args.contenders.split(",") if n.strip()]
    unknown = [n for n in names if n not in CONTENDERS]
    if unknown:
        print(f"unknown contender(s) {', '.join(unknown)}; choose from {', '.join(CONTENDERS)}", file=sys.stderr)
        return 2
    if args.extended:
        names += [REFERENCES[n] for n in names if n in REFERENCES and REFERENCES[n] not in names]
    if args.setup:
        ensure_venvs(set(CONTENDERS))
        return 0
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    once = {n.strip() for n in args.once.split(",")}
    started = time.perf_counter()
    spec = WorkloadSpec(n_train=args.n_train, n_test=args.n_test, batch_size=args.batch_size)
    workload = build(spec, log=lambda line: print(line, flush=True))
    meta = json.loads((workload / "workload.json").read_text())
    ensure_venvs(set(names))
    runs_dir = RESULTS / "runs" / spec.key()
    if not args.resume:
        shutil.rmtree(runs_dir, ignore_errors=True)
    sweep_runs = args.runs if args.sweep_runs is None else min(args.sweep_runs, args.runs)
    state_root = RESULTS / "state" / spec.key()
    records: dict[tuple[str, str], list[dict]] = {}

    def record(contender: Contender, stage: str, index: int) -> None:
        out = runs_dir / f"{contender.name}-{stage}-{index}.json"
        if args.resume and out.is_file():
            result = json.loads(out.read_text())
            result.setdefault("process_seconds", result.get("seconds", 0.0))
        else:
            result = run_worker(contender, stage, workload, state_root / contender.name, out, args.timeout,
                                args.omp_wait_policy)
        result["scores_file"] = str(out.with_suffix(".npy")) if out.with_suffix(".npy").is_file() else None
        records.setdefault((contender.name, stage), []).append(result)
        shown = f"{result['seconds']:.1f} s" if "seconds" in result else f"FAILED: {result['error']}"
        print(f"[{time.perf_counter() - started:6.0f} s] run {index + 1}: {contender.name:<15} {stage:<9} {shown}",
              flush=True)

    contenders = {name: plan(CONTENDERS[name], args.extended) for name in names}
    for index in range(args.runs):
        record(FLOOR, "floor", index)
        for name in names:
            contender = contenders[name]
            if index > 0 and name in once:
                continue
            for stage in contender.stages:
                if stage == "sweep" and index >= sweep_runs:
                    continue
                if stage in stages or (stage == "fit" and index == 0):
                    failed_fit = any("error" in r for r in records.get((name, "fit"), []))
                    if stage != "fit" and failed_fit:
                        continue
                    record(contender, stage, index)
    from benchmarks.report import summarize

    summary = summarize(records, meta, list(contenders.values()), stages, state_root, args)
    summary["total_seconds"] = time.perf_counter() - started
    stem = RESULTS / f"bench-{spec.key()}"
    stem.with_suffix(".json").write_text(json.dumps(summary, indent=2, default=jsonable) + "\n")
    from benchmarks.report import markdown

    text = markdown(summary)
    stem.with_suffix(".md").write_text(text)
    shutil.copyfile(stem.with_suffix(".json"), RESULTS / "latest.json")
    shutil.copyfile(stem.with_suffix(".md"), RESULTS / "latest.md")
    print(text)
    print(f"total {summary['total_seconds'] / 60:.1f} min; results in {stem}.json / .md", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
