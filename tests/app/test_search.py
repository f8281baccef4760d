"""Try a sentence / search the training set: answered from the training-gradient index, numbers exact."""

from __future__ import annotations

import numpy as np

from tests.app.conftest import no_exceptions


def test_sentence_is_answered_from_the_index_with_the_engines_numbers(computed):
    from explorer.ui import model_store

    at = computed
    at.text_area(key="sentence").set_value("a dull and far too long film").run()
    no_exceptions(at)
    frame = at.session_state["_frame"]
    analysis, spec = frame.analysis, frame.spec
    table = next(d.value for d in at.dataframe if "effect" in d.value.columns)
    assert len(table) >= 2 and set(table["effect"]) <= {"helpful", "harmful"}
    assert analysis.meta["index"]["queries"] == analysis.scores.n_test  # agreement measured on every test review
    engine = model_store().engine(spec)
    label = int(np.argmax(engine.predict_proba(["a dull and far too long film"])[0]))
    exact = engine.score(["a dull and far too long film"], [label], analysis.train["text"].tolist(),
                         analysis.train["label"].to_numpy(), dampings=[frame.damping], self_influence=False).total(0)[0]
    np.testing.assert_allclose(table["influence"].to_numpy(), exact[table["train"].to_numpy()], rtol=1e-4, atol=1e-9)
    helpful = table[table["effect"] == "helpful"]
    assert helpful["influence"].iloc[0] == np.max(exact)  # the most helpful of all training reviews comes first
    caption = "\n".join(c.value for c in at.caption)
    assert " index (" in caption and "proposed" in caption and "median Pearson" in caption


def test_search_for_another_label(computed):
    at = computed
    at.text_area(key="sentence").set_value("a wonderful cast").run()
    at.selectbox(key="sentence_label").set_value("negative").run()
    no_exceptions(at)
    assert any("for the label **negative**" in m.value for m in at.markdown)


def test_explain_any_text_from_the_index_shows_the_engines_numbers(computed):
    from explorer.ui import model_store

    at = computed
    at.switch_page("pages/explain.py").run()
    at.radio(key="ex_source").set_value("Any text (from the index)").run()
    text = "a dull and far too long film"
    at.text_area(key="ex_text").set_value(text).run()
    no_exceptions(at)
    assert not at.error, [e.value for e in at.error]
    frame = at.session_state["_frame"]
    analysis, spec = frame.analysis, frame.spec
    engine = model_store().engine(spec)
    label = int(np.argmax(engine.predict_proba([text])[0]))
    exact = engine.score([text], [label], analysis.train["text"].tolist(), analysis.train["label"].to_numpy(),
                         dampings=[frame.damping], self_influence=False).total(0)[0] * frame.scale
    best = int(np.argmax(exact))
    cards = [m.value for m in at.markdown if "training review #" in m.value]
    assert cards and f"**Helpful · training review #{best}** · removing it: loss **{exact[best]:+.3g}**" in cards[0]
    assert any("re-scored its best" in c.value and "median Pearson" in c.value for c in at.caption)
