"""Every page renders on a tiny model without exceptions; the sidebar, URL state, uploads and marks work."""

from __future__ import annotations

import pytest

from tests.app.conftest import new_app, no_exceptions

PAGES = [
    "pages/overview.py",
    "pages/heatmap.py",
    "pages/explain.py",
    "pages/layers.py",
    "pages/label_flip.py",
    "pages/regularization.py",
    "pages/mislabel.py",
    "pages/tour.py",
]


def test_empty_state_shows_cost_and_button(app_env):
    at = new_app({"train_n": "23"})  # a slice no other test computes
    at.run()
    no_exceptions(at)
    assert any("Nothing computed yet" in i.value for i in at.info)
    assert any(b.label == "Fit and score" for b in at.button)
    assert any(m.label == "Estimated time" for m in at.metric)


@pytest.mark.parametrize("page", PAGES)
def test_every_page_renders(computed, page):
    at = computed
    at.switch_page(page)
    at.run()
    no_exceptions(at)
    assert not at.error, [e.value for e in at.error]
    assert at.title, page
