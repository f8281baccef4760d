"""A real browser against `streamlit run`: fit on the built-in demo data, then every page and the main actions.

The tests run in order and share one server and one analysis (the first test fits it).
"""

from __future__ import annotations

import csv
import io
import os
import time

import pytest

from tests.e2e.conftest import choose_option, no_error_on_page, open_page, screenshot, wait_idle

expect = pytest.importorskip("playwright.sync_api").expect

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

FIT_TIMEOUT_MS = int(os.environ.get("E2E_FIT_TIMEOUT_S", "900")) * 1000
# Small slices keep the fit short with the tiny model; the demo model uses the app's defaults.
REAL_MODEL = os.environ.get("E2E_DEMO_MODEL") == "1" or bool(os.environ.get("E2E_MODEL_DIR"))
QUERY = "" if REAL_MODEL else "train_n=40&test_n=12"


def charts(page, at_least: int) -> None:
    page.locator('[data-testid="stPlotlyChart"]').nth(at_least - 1).wait_for()


def test_first_visit_fits_with_one_click(page, app_server):
    started = time.perf_counter()
    open_page(page, app_server, "", QUERY)
    first = page.get_by_text("Nothing computed yet").or_(page.get_by_text("Accuracy (test)"))
    first.or_(page.get_by_text("then predicting the test reviews")).first.wait_for()
    if os.environ.get("E2E_REUSE_ANALYSES") != "1":
        if page.get_by_text("Nothing computed yet").count():  # other models ask first; the demo starts itself
            page.get_by_text("Estimated time").wait_for()
            screenshot(page, "00_first_visit")
            page.get_by_role("button", name="Fit and score").last.click()
        page.get_by_text("Fit and score:").first.wait_for()  # the progress panel
        assert page.locator('[data-testid="stProgress"]').count() <= 1  # one progress indicator, not two
        screenshot(page, "00_fitting")
    page.get_by_text("Accuracy (test)").wait_for(timeout=FIT_TIMEOUT_MS)  # the predictions come first
    predicted = time.perf_counter() - started
    charts(page, 2)
    if page.get_by_text("being computed").count():  # the influence is still running: one panel, no error
        assert page.locator('[data-testid="stProgress"]').count() == 1
        no_error_on_page(page)
        screenshot(page, "00_predictions_first")
    page.get_by_label("Your review").wait_for(timeout=FIT_TIMEOUT_MS)  # drawn once the influence exists
    wait_idle(page)
    no_error_on_page(page)
    charts(page, 2)
    print(f"first visit: predictions drawn after {predicted:.0f} s, the whole overview (fine-tune or model load, "
          f"fit and score) after {time.perf_counter() - started:.0f} s")
    screenshot(page, "01_overview")


@pytest.mark.parametrize(
    ("path", "title", "shot"),
    [
        ("heatmap", "Influence heatmap", "02_heatmap"),
        ("explain", "Explain a prediction", "03_explain"),
        ("layers", "Layers", "04_layers"),
        ("label_flip", "Label-flip corruption", "05_label_flip"),
        ("regularization", "Regularization", "06_regularization"),
        ("mislabel", "Mislabel finder", "07_mislabel"),
        ("tour", "Tour", "08_tour"),
    ],
)
def test_every_page_loads(page, app_server, path, title, shot):
    open_page(page, app_server, path, QUERY)
    assert page.locator("h1").first.inner_text().strip().startswith(title)
    no_error_on_page(page)
    assert page.get_by_text("Nothing computed yet").count() == 0
    screenshot(page, shot)


def test_heatmap_pair_from_the_url(page, app_server):
    open_page(page, app_server, "heatmap", f"{QUERY}&hm_q=1&hm_m=2&hm_rows=cluster")
    page.get_by_text("Removing training review #2 would change the loss of test review #1 by").wait_for()
    charts(page, 1)
    no_error_on_page(page)


def test_explain_highlights_tokens(page, app_server):
    open_page(page, app_server, "explain", f"{QUERY}&test=2")
    page.get_by_text("Test review #2").first.wait_for()
    page.locator(".ie-tokens span").first.wait_for(timeout=FIT_TIMEOUT_MS if REAL_MODEL else 120_000)
    expect(page.get_by_text("Scoring tokens")).to_have_count(0, timeout=FIT_TIMEOUT_MS)  # every card highlighted
    assert page.locator(".ie-tokens span").count() > 5
    assert page.locator(".ie-legend").count() == 1
    no_error_on_page(page)
    screenshot(page, "03_explain")


def test_explain_any_text_from_the_index(page, app_server):
    open_page(page, app_server, "explain", f"{QUERY}&ex_source=Any+text+%28from+the+index%29")
    page.get_by_text("Your review").first.wait_for()
    box = page.get_by_label("Review to explain")
    box.fill("A slow start, but the ending is wonderful.")
    box.press("Control+Enter")
    page.get_by_text("A slow start, but the ending is wonderful.").first.wait_for()
    page.get_by_text("re-scored its best").first.wait_for()
    expect(page.get_by_text("Helpful · training review #").first).to_be_visible()
    page.locator(".ie-tokens span").first.wait_for(timeout=FIT_TIMEOUT_MS if REAL_MODEL else 120_000)
    expect(page.get_by_text("Scoring tokens")).to_have_count(0, timeout=FIT_TIMEOUT_MS)
    no_error_on_page(page)
    screenshot(page, "03b_explain_any_text")


def test_any_damping_from_the_index(page, app_server):
    open_page(page, app_server, "regularization", f"{QUERY}&test=1")
    page.get_by_text("Any damping value, from the index").first.wait_for()
    page.get_by_text("re-scored them exactly").first.wait_for(timeout=FIT_TIMEOUT_MS if REAL_MODEL else 120_000)
    page.get_by_text("Exact at 17 damping values").first.wait_for()
    expect(page.get_by_text("Test review #1 at damping").first).to_be_visible()
    assert page.get_by_text("The lines compare its influence").count() == 1
    no_error_on_page(page)


def test_sidebar_choice_is_written_to_the_url(page, app_server):
    open_page(page, app_server, "", QUERY)
    sidebar = page.locator('[data-testid="stSidebar"]')
    sidebar.locator('[data-testid="stExpander"] summary').filter(has_text="Method").click()
    choose_option(page, sidebar.get_by_role("combobox", name="Method"), "kfac")
    page.wait_for_function("() => window.location.search.includes('method=kfac')")
    # a new method is a new analysis: other models ask first, the built-in demo starts it by itself
    started = page.get_by_text("then predicting the test reviews").or_(page.get_by_text("being computed"))
    page.get_by_text("Nothing computed yet").or_(started).first.wait_for()
    # the link reproduces the view in a fresh tab
    url = page.url
    other = page.context.new_page()
    other.goto(url)
    wait_idle(other)
    other.get_by_text("kfac, true Fisher").first.wait_for()
    other.close()


def test_flip_labels(page, app_server):
    open_page(page, app_server, "label_flip", QUERY)
    page.get_by_text("Explanations that change").wait_for()
    page.get_by_text("all", exact=True).click()
    wait_idle(page)
    metric = page.locator('[data-testid="stMetric"]').filter(has_text="Flipped training reviews")
    n_train = 40 if QUERY else 480
    expect(metric.locator('[data-testid="stMetricValue"]')).to_have_text(str(n_train), timeout=60_000)
    charts(page, 4)
    no_error_on_page(page)


def test_mark_a_review_and_download_the_cleaned_csv(page, app_server):
    n_train = 40 if QUERY else 480
    open_page(page, app_server, "mislabel", QUERY)
    page.get_by_text(f"0 of {n_train} training reviews reviewed").wait_for()
    page.get_by_role("button", name="Mislabeled").click()
    page.get_by_text(f"1 of {n_train} training reviews reviewed").wait_for()
    page.get_by_text("drops 1 reviews marked mislabeled").wait_for()  # the export below is rebuilt too
    wait_idle(page)
    with page.expect_download() as download_info:
        page.get_by_role("button", name="Download cleaned dataset (CSV)").click()
    data = open(download_info.value.path(), encoding="utf-8").read()
    rows = list(csv.DictReader(io.StringIO(data)))
    assert len(rows) == n_train - 1
    assert {"row_id", "text", "label", "label_name"} <= set(rows[0])
    # the mark survives a reload
    page.reload()
    page.get_by_text(f"1 of {n_train} training reviews reviewed").wait_for()
    page.get_by_role("button", name="Clear all marks").click()
    wait_idle(page)


def test_tour_report_downloads(page, app_server):
    open_page(page, app_server, "tour", QUERY)
    for _ in range(4):
        page.get_by_role("button", name="Next →").click()
        wait_idle(page)
    page.get_by_text("Fixing the label changes which predictions it helps").wait_for()
    wait_idle(page)
    with page.expect_download(timeout=180_000) as download_info:  # the report is built on click
        page.get_by_role("button", name="Download the HTML report").click()
    report = open(download_info.value.path(), encoding="utf-8").read()
    assert report.startswith("<!doctype html>") and "Plotly.newPlot" in report
    screenshot(page, "09_tour_fix")
