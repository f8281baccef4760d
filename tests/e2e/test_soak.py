"""Three tabs on one server at once, for a bounded time: one fits, one explains with token highlighting, one marks.

No page shows an exception, every mark is kept, and the numbers equal those of a single tab (and of the files the
explorer code reads). Tabs are separate browser contexts (separate sessions); their actions are started one after
the other without waiting, so the server runs them at the same time.
"""

from __future__ import annotations

import json
import os
import re
import time

import numpy as np
import pytest

from influence_core.engine.scores import ScoreTable
from tests.e2e.conftest import no_error_on_page, open_page, wait_idle

expect = pytest.importorskip("playwright.sync_api").expect

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

REAL_MODEL = os.environ.get("E2E_DEMO_MODEL") == "1" or bool(os.environ.get("E2E_MODEL_DIR"))
N_TRAIN, N_TEST = 36, 10  # a slice no other browser test computes
QUERY = f"train_n={N_TRAIN}&test_n={N_TEST}"
REFIT = f"train_n=30&test_n={N_TEST}"
SOAK_S = float(os.environ.get("E2E_SOAK_SECONDS", "60"))
FIT_MS = int(os.environ.get("E2E_FIT_TIMEOUT_S", "900")) * 1000


@pytest.fixture
def tabs(browser):
    contexts = [browser.new_context(viewport={"width": 1400, "height": 900}) for _ in range(3)]
    pages = [context.new_page() for context in contexts]
    for page in pages:
        page.set_default_timeout(120_000)
    yield pages
    for context in contexts:
        context.close()


def _cache(tmp_path_factory):
    found = sorted(tmp_path_factory.getbasetemp().glob("e2e_cache*"))
    assert found, "the app_server fixture's cache folder"
    return found[0]


def _analysis_folder(cache, n_train: int, n_test: int):
    for meta_path in (cache / "analyses").glob("*/meta.json"):
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta["n_train"] == n_train and meta["n_test"] == n_test:
            return meta_path.parent, meta
    raise AssertionError(f"no analysis of {n_train} x {n_test} reviews in {cache}")


def _top_score_text(page) -> str:
    """The score on the first Helpful card of the Explain page (the predicted change in loss if removed)."""
    card = page.locator("p").filter(has_text=re.compile(r"Helpful · training review #\d+ · removing it: loss")).first
    card.wait_for()
    return re.search(r"removing it: loss ([-+0-9.e]+)", card.inner_text()).group(1)


def _explain_done(page, q: int) -> None:
    page.get_by_text(f"Test review #{q}").first.wait_for()
    page.locator(".ie-tokens span").first.wait_for(timeout=FIT_MS if REAL_MODEL else 180_000)
    expect(page.get_by_text("Scoring tokens")).to_have_count(0, timeout=FIT_MS)
    wait_idle(page)


def _reviewed(page) -> int:
    text = page.get_by_text(re.compile(r"\d+ of \d+ training reviews reviewed")).first.inner_text()
    return int(text.split(" of ")[0])


def test_three_tabs_at_once(app_server, tabs, tmp_path_factory):
    fit, explain, marker = tabs
    # the analysis every tab reads: computed first, in the fit tab
    open_page(fit, app_server, "", QUERY)
    fit.get_by_text("Nothing computed yet").or_(fit.get_by_text("Accuracy (test)")).first.wait_for()
    if fit.get_by_role("button", name="Fit and score").count():
        fit.get_by_role("button", name="Fit and score").last.click()
    fit.get_by_text("Accuracy (test)").wait_for(timeout=FIT_MS)
    wait_idle(fit)

    # single-tab reference numbers: the Explain page's top score for a few test reviews
    reviews = [0, 1, 2, 3]
    alone = {}
    for q in reviews:
        open_page(explain, app_server, "explain", f"{QUERY}&test={q}&ex_tokens=true")
        _explain_done(explain, q)
        alone[q] = _top_score_text(explain)
    open_page(marker, app_server, "mislabel", QUERY)
    marker.get_by_text("training reviews reviewed").first.wait_for()
    start_count = _reviewed(marker)

    # at once: refit another slice, explain with tokens, mark reviews
    fit.goto(f"{app_server}/?{REFIT}")
    fit.get_by_role("button", name="Fit and score").last.click(timeout=120_000)
    marked: dict[int, str] = {}
    together: dict[int, list[str]] = {q: [] for q in reviews}
    started, rounds = time.time(), 0
    while time.time() - started < SOAK_S or rounds < 2:
        q = reviews[rounds % len(reviews)]
        explain.goto(f"{app_server}/explain?{QUERY}&test={q}&ex_tokens=true")  # starts scoring tokens
        card = marker.locator("p").filter(has_text=re.compile(r"training review #\d+ \(row \d+\)")).first
        row_id = int(re.search(r"\(row (\d+)\)", card.inner_text()).group(1))
        state = "mislabeled" if rounds % 2 == 0 else "fine"
        marker.get_by_role("button", name="Mislabeled" if state == "mislabeled" else "Fine").click()
        marked[row_id] = state
        marker.get_by_text(f"{start_count + len(marked)} of {N_TRAIN} training reviews reviewed").wait_for()
        wait_idle(marker)
        _explain_done(explain, q)
        together[q].append(_top_score_text(explain))
        for page in tabs:
            no_error_on_page(page)
        rounds += 1
    fit.get_by_text("Accuracy (test)").wait_for(timeout=FIT_MS)  # the refit finished
    wait_idle(fit)
    for page in tabs:
        no_error_on_page(page)
    print(f"soak: {rounds} rounds in {time.time() - started:.0f} s, {len(marked)} marks")

    # every mark kept: on the page and in the file
    assert _reviewed(marker) == start_count + len(marked)
    marker.reload()
    marker.get_by_text(f"{start_count + len(marked)} of {N_TRAIN} training reviews reviewed").wait_for()
    cache = _cache(tmp_path_factory)
    files = list((cache / "marks").glob("*/marks.json"))
    assert len(files) == 1
    saved = json.loads(files[0].read_text(encoding="utf-8"))
    assert {int(k): v["state"] for k, v in saved.items() if int(k) in marked} == marked
    assert not list((cache / "marks").glob("*/marks.json.corrupt-*"))

    # the numbers: as in a single tab, and as the explorer's files give them
    for q, values in together.items():
        assert all(value == alone[q] for value in values), (q, alone[q], values)
    folder, meta = _analysis_folder(cache, N_TRAIN, N_TEST)
    scores = ScoreTable.load(folder / "scores.npz")
    chosen = float(re.search(r"chosen ([-+0-9.e]+)", meta["summary"]["damping"]).group(1))
    matrix = scores.total(scores.damping_index(chosen))
    for q in reviews:
        # the card shows the predicted change in loss if removed: the raw score over the analysed training reviews
        assert alone[q] == f"{np.max(matrix[q]) / scores.n_train:+.3g}", (q, alone[q])
    _analysis_folder(cache, 30, N_TEST)  # the refit was saved too

    # clean up for the other browser tests, which start from no marks
    marker.get_by_role("button", name="Clear all marks").click()
    wait_idle(marker)
