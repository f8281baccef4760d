"""Browser tests: `streamlit run app.py` on a free port, driven by Playwright with Debian's Chromium.

Skipped when Chromium or Playwright is missing. By default the app uses a tiny local classifier (fast); set
``E2E_DEMO_MODEL=1`` to use the real built-in demo model (fine-tuned on first use: minutes), or
``E2E_MODEL_DIR=<folder>`` for another local classifier; either is what
``SAVE_SCREENSHOTS=1`` should be combined with to refresh ``assets/screenshots/`` for the README
(``E2E_REUSE_ANALYSES=1`` also reuses factors and scores already in the user cache).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("E2E_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
SCREENSHOTS = ROOT / "assets" / "screenshots"


def pytest_collection_modifyitems(config, items):
    missing = None
    if not Path(CHROMIUM).exists():
        missing = f"no Chromium at {CHROMIUM}"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            missing = "the playwright package is not installed"
    for item in items:
        if "e2e" in item.keywords and missing:
            item.add_marker(pytest.mark.skip(reason=missing))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def app_server(tmp_path_factory):
    """The app served on 127.0.0.1; yields its base URL. The cache is a fresh temporary folder."""
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    cache = tmp_path_factory.mktemp("e2e_cache")
    env["INFLUENCE_EXPLORER_CACHE"] = str(cache)
    if os.environ.get("E2E_DEMO_MODEL") == "1" or os.environ.get("E2E_MODEL_DIR"):
        env.pop("INFLUENCE_EXPLORER_MODEL", None)
        if os.environ.get("E2E_MODEL_DIR"):  # any local classifier folder, analysed with the app's default slices
            env["INFLUENCE_EXPLORER_MODEL"] = os.environ["E2E_MODEL_DIR"]
        source = Path(os.environ.get("E2E_CACHE_FROM", Path.home() / ".cache" / "influence-explorer"))
        # reuse the demo model fine-tuned earlier instead of training it again; with E2E_REUSE_ANALYSES=1 also
        # the factors and scores (the first test then finds the analysis computed and skips the fit)
        parts = ["models", "timings"] + (["factors", "analyses"] if os.environ.get("E2E_REUSE_ANALYSES") == "1" else [])
        for part in parts:
            if (source / part).is_dir():
                shutil.copytree(source / part, cache / part, dirs_exist_ok=True)
    else:
        from tests.app.conftest import build_tiny_classifier

        env["INFLUENCE_EXPLORER_MODEL"] = str(build_tiny_classifier(tmp_path_factory.mktemp("tiny_classifier")))
    with serve_app(cache / "streamlit.log", env, QUIET_SERVER) as (url, _):
        yield url


#: Flags the browser tests and the first-visit benchmark add to ``serve_app``: no file watcher, no usage stats.
QUIET_SERVER = ("--server.fileWatcherType", "none", "--browser.gatherUsageStats", "false")


@contextlib.contextmanager
def serve_app(log_path: Path, env: dict, extra_args: tuple[str, ...] = ()) -> Iterator[tuple[str, subprocess.Popen]]:
    """``streamlit run app.py`` as ``make app`` runs it (plus ``extra_args``) on a free local port with ``env``,
    logging to ``log_path``; yields ``(url, process)`` once the server is healthy and stops it afterwards."""
    port = _free_port()
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true", "--server.address",
             "127.0.0.1", "--server.port", str(port), *extra_args],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        )
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.time() + 120
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"streamlit exited early; see {log_path}")
                if time.time() > deadline:
                    raise RuntimeError("streamlit did not become healthy within 120 s")
                try:
                    with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                        if response.status == 200:
                            break
                except OSError:
                    time.sleep(0.5)
            yield url, process
        finally:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)


@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="session")
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 900}, accept_downloads=True)
    tab = context.new_page()
    tab.set_default_timeout(60_000)
    yield tab
    context.close()


def wait_idle(page, timeout: float = 60_000) -> None:
    """Wait until the app has drawn and its script is no longer running."""
    page.wait_for_selector('[data-testid="stApp"]', timeout=timeout)
    page.wait_for_function(
        "() => !document.querySelector('[data-testid=\"stStatusWidget\"]')"
        " || !document.querySelector('[data-testid=\"stStatusWidget\"]').innerText.includes('Running')",
        timeout=timeout,
    )
    page.wait_for_timeout(500)


def open_page(page, base: str, path: str = "", query: str = "") -> None:
    page.goto(f"{base}/{path}{('?' + query) if query else ''}")
    page.wait_for_selector("h1", timeout=60_000)
    wait_idle(page)


def screenshot(page, name: str) -> None:
    """Save a full-page screenshot for the README when SAVE_SCREENSHOTS=1."""
    if os.environ.get("SAVE_SCREENSHOTS") != "1":
        return
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    # Streamlit scrolls inside its main container, so grow the window to the content instead of full_page.
    size = page.viewport_size
    height = page.evaluate(
        "() => Math.max(...['[data-testid=\"stMain\"]', '[data-testid=\"stSidebarContent\"]']"
        ".map(s => document.querySelector(s)).filter(Boolean).map(e => e.scrollHeight))"
    )
    page.set_viewport_size({"width": size["width"], "height": int(min(max(height + 40, size["height"]), 5000))})
    page.wait_for_timeout(1500)  # let plotly resize and finish its transitions
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"))
    page.set_viewport_size(size)


def choose_option(page, combobox, option: str, attempts: int = 8) -> None:
    """Pick ``option`` from a Streamlit selectbox. A click that lands while the page is redrawing (an expander just
    opened, a background job's progress refreshing the sidebar) may not open the dropdown or may close it before
    the option is clicked, so open and click again until the choice is made."""
    choice = page.get_by_role("option", name=option, exact=True)
    for _ in range(attempts):
        try:
            combobox.click(timeout=5_000)
            choice.click(timeout=3_000)
            return
        except Exception:  # playwright's TimeoutError: the dropdown closed or never opened; try again
            page.keyboard.press("Escape")
            page.wait_for_timeout(500)
    raise AssertionError(f"could not choose {option!r} after {attempts} attempts")


def no_error_on_page(page) -> None:
    assert page.locator('[data-testid="stException"]').count() == 0
    assert page.get_by_text("Something went wrong").count() == 0
