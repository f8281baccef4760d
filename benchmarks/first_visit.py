"""The first visit as a newcomer sees it: `streamlit run app.py` on a fresh cache, driven by Chromium.

Each run starts a new server on an empty cache folder and opens the Overview of the built-in demo, then records
the seconds from the first page load until

- ``page``: the Overview's title is drawn;
- ``predictions``: the model's accuracy on the test reviews is drawn (the demo model is fine-tuned first on a
  clean cache);
- ``heatmap``: the Influence heatmap page, opened next, has drawn a heatmap (the training-gradient index's
  estimate while the exact scores are computed, or the exact one);
- ``exact``: that page shows the exact scores (the analysis is done).

``--cache model`` copies the fine-tuned demo model from the user cache first (a returning user who cleared the
analyses); ``--cache clean`` (the default) starts from nothing. Results: a JSON file in ``benchmarks/results`` and
a Markdown table on stdout (medians over the runs, every run listed). Run it alone on the machine::

    python -m benchmarks.first_visit --runs 3 --cache clean
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from tests.e2e.conftest import CHROMIUM, CHROMIUM_ARGS, QUIET_SERVER, serve_app  # as the browser tests

ROOT = Path(__file__).resolve().parents[1]
MILESTONES = ("page", "predictions", "heatmap", "exact")


def _env(cache: Path) -> dict:
    env = dict(os.environ, INFLUENCE_EXPLORER_CACHE=str(cache), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env.pop("INFLUENCE_EXPLORER_MODEL", None)  # the built-in demo, as a newcomer gets it
    return env


def one_run(cache_mode: str, timeout_s: float, shots: Path | None = None) -> dict:
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="first_visit_") as folder:
        cache = Path(folder)
        if cache_mode == "model":
            source = Path.home() / ".cache" / "influence-explorer" / "models"
            shutil.copytree(source, cache / "models")
        seconds: dict[str, float] = {}
        with serve_app(cache / "streamlit.log", _env(cache), QUIET_SERVER) as (url, _), sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_context(viewport={"width": 1400, "height": 900}).new_page()
            page.set_default_timeout(timeout_s * 1000)
            started = time.perf_counter()
            page.goto(url)
            page.locator("h1").first.wait_for()
            seconds["page"] = time.perf_counter() - started
            page.get_by_text("Accuracy (test)").first.wait_for()
            seconds["predictions"] = time.perf_counter() - started
            page.goto(f"{url}/heatmap")  # the next page a newcomer opens
            page.locator('[data-testid="stPlotlyChart"]').first.wait_for()  # the index estimate, or exact
            seconds["heatmap"] = time.perf_counter() - started
            if shots is not None and page.get_by_text("Index estimate").count():
                page.wait_for_timeout(1500)
                page.screenshot(path=str(shots / "heatmap_estimate.png"), full_page=True)
            page.get_by_text("Most extreme pairs").wait_for()  # drawn from the exact scores only
            seconds["exact"] = time.perf_counter() - started
            browser.close()
        record = {name: round(value, 1) for name, value in seconds.items()}
        record.update(_stage_seconds(cache))
        return record


def _stage_seconds(cache: Path) -> dict:
    """What the app itself recorded: the demo fine-tune's time and test accuracy, the analysis's own time."""
    out: dict = {}
    for path in (cache / "models").glob("demo-*/finetune.json"):
        record = json.loads(path.read_text())
        out["finetune_s"] = record.get("seconds")
        out["demo_test_accuracy"] = record.get("eval_accuracy")
    for path in (cache / "analyses").glob("*/meta.json"):
        meta = json.loads(path.read_text())
        out["analysis_s"] = meta.get("seconds")
        out["index_median_pearson"] = round((meta.get("index") or {}).get("median_pearson", float("nan")), 3)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--cache", choices=("clean", "model"), default="clean")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for each milestone")
    parser.add_argument("--screenshots", type=Path, default=None, help="save the heatmap's index estimate here")
    args = parser.parse_args(argv)
    runs = []
    for i in range(args.runs):
        runs.append(one_run(args.cache, args.timeout, args.screenshots))
        print(f"run {i + 1}: {runs[-1]}", flush=True)
    medians = {name: statistics.median(r[name] for r in runs) for name in MILESTONES}
    result = {"cache": args.cache, "runs": runs, "median": medians, "cpus": os.cpu_count(),
              "command": f"python -m benchmarks.first_visit --runs {args.runs} --cache {args.cache}",
              "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    out = ROOT / "benchmarks" / "results" / f"first_visit-{args.cache}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)  # git-ignored: absent on a fresh clone
    out.write_text(json.dumps(result, indent=2))
    print(f"\n`{result['command']}` ({args.runs} fresh servers, medians; {out.name})\n")
    print("| cache | page drawn | predictions drawn | heatmap drawn (index estimate) | exact scores drawn |")
    print("|---|---|---|---|---|")
    print(f"| {args.cache} | " + " | ".join(f"{medians[m]:.0f} s" for m in MILESTONES) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
