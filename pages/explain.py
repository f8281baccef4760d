"""Explain a prediction: the training reviews that helped and hurt one test review, token by token."""

from __future__ import annotations

import numpy as np
import streamlit as st

from explorer import figures, search
from explorer import ui as common
from explorer.highlight import display_tokens, legend_html, shared_scale, text_html, tokens_html
from influence_core.cache import stable_hash
from influence_core.errors import InfluenceError

common.ensure_frame()
st.title("Explain a prediction")
st.caption("Pick a test review, or type any text, to see which training reviews pushed the model towards or away "
           "from its label. " + common.SIGN_HELP)

out, analysis = common.require_analysis()
n_test = analysis.scores.n_test
wrong = np.flatnonzero(analysis.test_pred != analysis.test["label"].to_numpy())
index_info = analysis.meta.get("index") or {}
ANY = "Any text (from the index)"
source = "A test review"
if index_info:
    source = st.radio("Explain", ["A test review", ANY], key="ex_source", horizontal=True, bind="query-params",
                      help="Any text: a review of your own, or one outside the scored slice. Its helpful and harmful "
                           "training reviews are found among all of them by the training-gradient index and "
                           "re-scored exactly by the engine.")

c1, c2 = st.columns([5, 1])
t1, t2, t3 = st.columns(3)
typed = source == ANY
only_wrong = relative = False
if not typed:
    only_wrong = t1.toggle("Only mistakes", key="ex_wrong", bind="query-params",
                           help=f"{len(wrong)} of {n_test} test reviews are predicted wrongly.")
    relative = t2.toggle("Relative influence", key="ex_rel", bind="query-params",
                         help="Divide by sqrt(self-influence) of both reviews, so unusual, high-gradient training "
                              "reviews do not dominate. Off by default: on the demo, raw influence predicted what "
                              "retraining does far better (LDS 0.71 against 0.23 for relative; see the Trust page).")
highlight = t3.toggle("Highlight tokens", value=True, key="ex_tokens", bind="query-params",
                      help="Each token's share of the influence (computed for the reviews shown, then cached).")
n_show = c2.number_input("Per side", 1, 10, 3, key="ex_n", bind="query-params",
                         help="How many helpful and harmful training reviews to show.")
layers = out.layers

if typed:
    text = c1.text_area("Review to explain", "Too long, but the cast is wonderful.", max_chars=2000, key="ex_text",
                        height=80)
    label_options = ["(predicted)", *analysis.label_names]
    asked = t1.selectbox("For the label", label_options, key="ex_label",
                         help="Influence is always for one label: by default the one the model predicts.")
    if not text.strip():
        st.info("Type or paste a review to explain.")
        st.stop()
    try:
        result = search.search_training(common.model_store(), out.spec, analysis, text, top=int(n_show),
                                        label=None if asked == label_options[0] else label_options.index(asked) - 1,
                                        damping=out.damping)
    except InfluenceError as err:
        st.error(f"{err} Pick a test review from the slice instead.")
        st.stop()
    if result is None:
        st.error("This analysis has no training-gradient index (computed by an older version). Recompute it from "
                 "the sidebar, or pick a test review from the slice.")
        st.stop()
    probs, label, pred = result.proba, result.label, int(np.argmax(result.proba))
    test_text, token_key, layers = text, int(stable_hash([text, label])[:12], 16), None
    with st.container(border=True):
        st.markdown(f"**Your review** · explained for **{analysis.name(label)}** · predicted "
                    f"**{analysis.name(pred)}** ({probs[pred]:.1%})")
        st.html(text_html(text))
    exact = result.rows[result.rows["exact"] == 1]
    row = np.full(analysis.scores.n_train, np.nan)
    row[exact["train"].to_numpy()] = exact["influence"].to_numpy() * out.scale
    helpful = [int(j) for j in exact[exact["direction"] == "helpful"].sort_values("rank")["train"] if row[j] > 0]
    harmful = [int(j) for j in exact[exact["direction"] == "harmful"].sort_values("rank")["train"] if row[j] < 0]
    st.caption(f"Found in {result.seconds:.1f} s among all {analysis.scores.n_train} training reviews by "
               f"{search.index_description(index_info)}; the engine re-scored its best {result.candidates} per side "
               f"exactly, over all analysed layers (the layer filter does not apply here). On this analysis's test "
               f"reviews the index agreed with the exact scores with median Pearson "
               f"{index_info['median_pearson']:.3f}.")
else:
    options = list(wrong) if only_wrong and len(wrong) else list(range(n_test))
    with c1:
        q = common.url_choice(st.selectbox, "Test review", options, key="test",
                              format_func=lambda i: common.review_label(analysis, "test", i))
    if only_wrong and not len(wrong):
        st.success("The model gets every test review in this slice right; showing all of them.")
    if q is None:
        st.stop()
    q = int(q)
    probs = analysis.scores.test_probs[q]
    label, pred = int(analysis.test["label"].iloc[q]), int(analysis.test_pred[q])
    test_text, token_key = analysis.test["text"].iloc[q], q
    with st.container(border=True):
        verdict = "correct" if label == pred else "wrong"
        st.markdown(f"**Test review #{q}** · label **{analysis.name(label)}** · predicted **{analysis.name(pred)}** "
                    f"({probs[pred]:.1%}, {verdict})")
        st.html(text_html(test_text))
    row = analysis.influence(out.k, out.layers, relative=relative)[q] * (1.0 if relative else out.scale)
    order = np.argsort(-row)
    helpful = [int(j) for j in order[:n_show] if row[j] > 0]
    harmful = [int(j) for j in order[::-1][:n_show] if row[j] < 0]
unit = "relative influence" if relative else out.unit_label

names = [f"+ #{j}" for j in helpful] + [f"− #{j}" for j in harmful]
hover = analysis.train_hover()
common.figure(
    figures.influence_bars(row[helpful + harmful], names, [hover[j] for j in helpful + harmful],
                           title="Most helpful and most harmful training reviews", axis_title=unit),
    f"explain_test_{token_key}", key="ex_bars",
)

if highlight:
    st.html(legend_html())
if relative:
    self_test = analysis.scores.test_self_total(out.k, out.layers or None)[q]
    self_train = analysis.scores.self_total(out.k, out.layers or None)


@st.cache_data(show_spinner=False, max_entries=64)
def token_scores(analysis_key: str, damping: float, q: int, cards: tuple[int, ...], layers: tuple[str, ...], _spec,
                 _test, _train) -> list[tuple[list[str], np.ndarray, float]]:
    """For each training review in ``cards``: its tokens, their scores ``[T]`` over ``layers`` (all when empty)
    and the pooled share. One query gradient and one short pass for all the cards on the page.

    ``q`` names the explained text: a test review's position, or a hash of a typed text and its label."""
    engine = common.model_store().engine(_spec)
    results = engine.token_influences(_test[0], _test[1], _train[0], _train[1], damping=damping,
                                      layers=list(layers) or None)
    return [(list(r.tokens), np.asarray(r.scores), float(r.pooled)) for r in results]


def card(j: int, kind: str):
    """Draw one training review as plain text now; return the slot its highlighted version replaces later."""
    train = analysis.train
    if relative or out.unit == "raw":
        score = f"{unit} **{row[j]:.4g}**"
    else:  # loss = -log p, so a change d in the loss takes p to p * exp(-d) (capped at 1)
        after = min(1.0, float(probs[label] * np.exp(-row[j])))
        score = (f"removing it: loss **{row[j]:+.3g}**, P({analysis.name(label)}) {probs[label]:.0%} → "
                 f"**{after:.0%}**")
    with st.container(border=True):
        st.markdown(
            f"**{kind} · training review #{j}** · {score} · label {analysis.name(train['label'].iloc[j])}"
            f" · predicted {analysis.name(analysis.train_pred[j])} · row {int(train['row_id'].iloc[j])}"
        )
        slot = st.empty()
        slot.html(text_html(train["text"].iloc[j]))
    return slot


if not relative and out.unit == "loss":
    st.caption("Each card's numbers are the first-order prediction of what removing that one training review and "
               "retraining would do. Their ranking is what the Trust page checks against real retraining (LDS); "
               "their size is an extrapolation that can overshoot by orders of magnitude on a fine-tuned network, so "
               "read large values as \"strongly\", and measure one with the counterfactual check (Mislabel finder).")
slots = {}
left, right = st.columns(2)
with left:
    st.subheader("Helpful")
    if not helpful:
        st.caption("No training review has a positive influence on this prediction.")
    for j in helpful:
        slots[j] = card(j, "Helpful")
with right:
    st.subheader("Harmful")
    if not harmful:
        st.caption("No training review has a negative influence on this prediction.")
    for j in harmful:
        slots[j] = card(j, "Harmful")

if highlight and slots:
    # every card is on the page already; the tokens of all of them are scored together, then swapped in on one
    # colour scale (the largest |token score| over every card shown)
    status = st.empty()
    status.caption(f"Scoring tokens of the {len(slots)} reviews shown…")
    cards = tuple(slots)
    scored = token_scores(
        analysis.key, out.damping, token_key, cards, tuple(layers or ()), out.spec, (test_text, label),
        ([analysis.train["text"].iloc[j] for j in cards], [int(analysis.train["label"].iloc[j]) for j in cards]),
    )
    pieces = {}
    for j, (tokens, scores, pooled) in zip(cards, scored, strict=True):
        # relative influence divides the card's score by sqrt(I(q, q) I(m, m)); its tokens are divided alike
        denominator = float(np.sqrt(max(self_test * self_train[j], 0.0))) if relative else 1.0 / out.scale
        pieces[j] = display_tokens(tokens, scores, pooled=pooled, denominator=denominator)
    scale = shared_scale(list(pieces.values()))
    for j, slot in slots.items():
        slot.html(tokens_html(pieces[j], scale=scale))
    status.empty()
if highlight:
    st.caption("Token scores use the layers of this view at the chosen damping and add up to each card's score. "
               "The pooler and classifier layers see one vector per review: their share, with the special tokens', "
               "is the [pooled] chip. Every card shares one colour scale.")
