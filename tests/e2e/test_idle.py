"""An idle server with a tab open does no work: the settings in .streamlit/config.toml, as `make app` serves them.

Unlike the shared ``app_server`` fixture, this server is started WITHOUT ``--server.fileWatcherType`` on the
command line, so what is tested is the config file a user's ``make app`` reads.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import ROOT, no_error_on_page, open_page, serve_app, wait_idle

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

QUIET_S = float(os.environ.get("E2E_IDLE_SECONDS", "10"))
#: CPU seconds the server may use over the quiet interval (websocket keep-alives, the GC: a few ms).
MAX_CPU_S = 0.5


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` (all its threads), from /proc (psutil when installed)."""
    try:
        import psutil

        times = psutil.Process(pid).cpu_times()
        return times.user + times.system
    except ImportError:
        pass
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # after "pid (comm)": state is field 3, utime 14 and stime 15 (1-based) -> indices 11 and 12 here
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def serve(folder: Path, extra_args: tuple[str, ...] = ()):
    """``streamlit run app.py`` as ``make app`` runs it (plus ``extra_args``); yields ``(url, process)``."""
    from tests.app.conftest import build_tiny_classifier

    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env["INFLUENCE_EXPLORER_CACHE"] = str(folder / "cache")
    env["INFLUENCE_EXPLORER_MODEL"] = str(build_tiny_classifier(folder / "tiny_classifier"))
    with serve_app(folder / "streamlit.log", env, extra_args) as served:
        yield served


def idle_cpu(browser, folder: Path, extra_args: tuple[str, ...] = (), seconds: float = QUIET_S) -> float:
    """CPU seconds the server uses over ``seconds`` with one tab open and drawn, doing nothing."""
    with serve(folder, extra_args) as (url, process):
        context = browser.new_context(viewport={"width": 1400, "height": 900})
        try:
            tab = context.new_page()
            tab.set_default_timeout(60_000)
            open_page(tab, url, "", "train_n=12&test_n=4")
            tab.get_by_text("Nothing computed yet").or_(tab.get_by_text("Accuracy (test)")).first.wait_for()
            wait_idle(tab)
            no_error_on_page(tab)
            time.sleep(3)  # let the first run's after-effects (GC, the page's last messages) settle
            before = cpu_seconds(process.pid)
            time.sleep(seconds)
            used = cpu_seconds(process.pid) - before
            no_error_on_page(tab)
        finally:
            context.close()
    return used


def test_idle_server_with_a_tab_open_does_no_work(browser, tmp_path):
    used = idle_cpu(browser, tmp_path)
    print(f"idle server, one tab open: {used:.3f} s of CPU over {QUIET_S:g} s")
    assert used < MAX_CPU_S, f"the idle server used {used:.2f} s of CPU in {QUIET_S:g} s (file watcher?)"


def test_config_keeps_watching_off_and_the_venv_out():
    """The settings the measurement above depends on, readable without a browser."""
    import tomllib

    server = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text(encoding="utf-8"))["server"]
    assert server["fileWatcherType"] == "none"
    assert ".venv" in server["folderWatchBlacklist"]
