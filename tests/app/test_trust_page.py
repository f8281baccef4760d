"""AppTest of the Trust page: the LDS job runs in the background and the page shows what explorer.trust computes."""

from __future__ import annotations

from tests.app.conftest import _store, no_exceptions


def _metric(at, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


def test_trust_runs_the_lds_job_and_shows_its_value(computed):
    from explorer import trust
    from explorer.ui import job_runner

    at = computed
    at.switch_page("pages/trust.py").run()
    no_exceptions(at)
    at.number_input(key="trust_subsets").set_value(4).run()
    at.button(key="trust_run").click().run()
    spec = at.session_state["_frame"].spec
    job = job_runner().get(f"trust-{spec.key()}")
    assert job is not None and job.wait(240), job and job.message
    assert job.status == "done", job.error
    at.run()
    no_exceptions(at)
    shown = _metric(at, "Best LDS")
    # the value explorer.trust computes directly, from the same (now cached) retrains
    analysis = at.session_state["_frame"].analysis
    direct = trust.run_trust(spec, analysis, _store(), lambda *a: None, 4)
    assert direct.retrained == 0
    assert shown == f"{direct.best()['lds']:.3f}"
    assert trust.cached_result(spec) is not None
    assert any("Recipe used: head" in c.value for c in at.caption)
    # the Regularization page now names the LDS-best damping
    at.switch_page("pages/regularization.py").run()
    no_exceptions(at)
    best = trust.lds_best_damping(spec)
    assert best is not None and any(f"LDS-best damping: {best:g}" in m.value for m in at.markdown)
