"""Tour: a five-step story of the current analysis for non-specialists, and a one-click offline HTML report."""

from __future__ import annotations

import numpy as np
import streamlit as st

from explorer import figures, views
from explorer import ui as common
from explorer.highlight import text_html
from explorer.report import ReportSection, build_report

common.ensure_frame()
st.title("Tour")
st.caption("Five short steps through this analysis, for anyone: no maths needed. Use Next to follow along.")

out, analysis = common.require_analysis()
scores = analysis.scores
matrix = analysis.influence(out.k, out.layers) * out.scale
train, test = analysis.train, analysis.test
self_influence = scores.self_total(out.k, out.layers)
suspicion = np.argsort(-self_influence, kind="stable")  # the report's table of suspects (by self-influence)
planted = views.planted_errors(train)
# the suspect is what the Mislabel finder ranks first by default; the answer key is only consulted afterwards
story = views.tour_story(analysis, out.k, out.layers)
suspect, victim = story.suspect, story.victim
binary = len(analysis.label_names) == 2

def number(value: float) -> str:
    """A readable number for non-specialists: ``-393,000`` rather than ``-3.93e+05``."""
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


STEPS = ["1 · A prediction", "2 · Why", "3 · A suspicious review", "4 · The harm", "5 · The fix"]


def go(delta: int) -> None:
    current = st.session_state.get("step") or STEPS[0]
    st.session_state["step"] = STEPS[min(max(STEPS.index(current) + delta, 0), len(STEPS) - 1)]


if st.session_state.get("step") not in STEPS:  # a default set through the Session State API, not default=
    st.session_state["step"] = STEPS[0]
step = st.segmented_control("Step", STEPS, key="step", bind="query-params", required=True,
                            label_visibility="collapsed") or STEPS[0]
index = STEPS.index(step)


def review_card(which: str, i: int, title: str) -> None:
    frame = test if which == "test" else train
    preds = analysis.test_pred if which == "test" else analysis.train_pred
    probs = scores.test_probs if which == "test" else scores.train_probs
    with st.container(border=True):
        st.markdown(f"**{title}** · labelled *{analysis.name(frame['label'].iloc[i])}* · the model says "
                    f"*{analysis.name(preds[i])}* ({probs[i].max():.0%} sure)")
        st.html(text_html(frame["text"].iloc[i], max_chars=600))


label_q, pred_q = int(test["label"].iloc[victim]), int(analysis.test_pred[victim])
if index == 0:
    st.subheader("The model reads a review and predicts its sentiment")
    review_card("test", victim, f"Test review #{victim}")
    st.markdown(
        f"The model was trained on **{scores.n_train} labelled reviews**. For this one it predicts "
        f"**{analysis.name(pred_q)}**; the right answer is **{analysis.name(label_q)}**. Which of the training reviews "
        "made it answer this way?"
    )
elif index == 1:
    st.subheader("Some training reviews helped, some pulled the other way")
    st.markdown("**Influence** measures how much each training review pushed the model towards the right label for "
                "this review. Positive (blue) helped; negative (red) hurt.")
    top = story.bars
    hover = analysis.train_hover()
    common.figure(figures.influence_bars(matrix[victim, top], [f"#{j}" for j in top], [hover[j] for j in top],
                                         axis_title=out.unit_label),
                  "tour_why", key="tour_bars")
    left, right = st.columns(2)
    with left:
        review_card("train", story.most_helpful, f"Most helpful: training review #{story.most_helpful}")
    with right:
        review_card("train", story.most_harmful, f"Most harmful: training review #{story.most_harmful}")
elif index == 2:
    st.subheader("The mislabel finder flags a suspicious training review")
    review_card("train", suspect, f"Training review #{suspect}")
    extra = ""
    if story.suspect_planted is True:
        extra = " On the demo data we know the answer: this label was **flipped on purpose** (a planted error)."
    elif story.suspect_planted is False:
        extra = (" On the demo data we know the answer: this one was **not** one of the planted errors. The finder "
                 "is a ranking to review, not a verdict.")
    st.markdown(
        f"The Mislabel finder ranks it **first of {scores.n_train}** by its default ranking, "
        f"*{story.ranking.replace('_', ' ')}*: {views.ranking_help().get(story.ranking, '')} Its label is "
        f"*{analysis.name(train['label'].iloc[suspect])}*; the model may well disagree.{extra}"
    )
elif index == 3:
    st.subheader("A wrong label hurts other predictions")
    row = matrix[:, suspect]
    harmed = int((row < 0).sum())
    st.markdown(
        f"Training review #{suspect} is **harmful for {harmed} of {scores.n_test} test reviews**. The most harmed is "
        f"test review #{victim} from step 1 ({out.unit_label}: {number(row[victim])})."
    )
    worst = np.argsort(row)[:10]
    hover = analysis.test_hover()
    common.figure(figures.influence_bars(row[worst], [f"test #{i}" for i in worst], [hover[i] for i in worst],
                                         title=f"Training review #{suspect} on the test reviews it harms most",
                                         axis_title=out.unit_label),
                  "tour_harm", key="tour_harm")
else:
    st.subheader("Fixing the label changes which predictions it helps")
    if binary:
        flip = np.zeros(scores.n_train, dtype=bool)
        flip[suspect] = True
        after = scores.flipped(flip).total(out.k, out.layers)[:, suspect] * out.scale
        before = matrix[:, suspect]
        turned = int(((before < 0) & (after > 0)).sum())
        soured = int(((before > 0) & (after < 0)).sum())
        st.markdown(
            f"With its label changed to *{analysis.name(1 - int(train['label'].iloc[suspect]))}*, review #{suspect} "
            f"turns from harmful to **helpful for {turned} test reviews** and from helpful to harmful for "
            f"**{soured}**. On test review #{victim} its {out.unit_label} goes from {number(before[victim])} to "
            f"**{number(after[victim])}**."
        )
        shown = np.argsort(-np.abs(before))[:15]
        shown = shown[np.argsort(before[shown])]
        hover = analysis.test_hover()
        common.figure(
            figures.before_after_bars(before[shown], after[shown], [f"test #{i}" for i in shown],
                                      [hover[i] for i in shown],
                                      title=f"Review #{suspect} on the test reviews it affects most, before and after"),
            "tour_fix", key="tour_fix",
        )
    else:
        st.markdown("Relabel it in the **Mislabel finder** and compare on the **Label-flip** page.")
    st.markdown("**Next**: review the rest of the queue in the **Mislabel finder**, and export the cleaned data.")

b1, _, b2 = st.columns([1, 4, 1])
b1.button("← Back", on_click=go, args=(-1,), disabled=index == 0, key="tour_back")
b2.button("Next →", on_click=go, args=(1,), disabled=index == len(STEPS) - 1, type="primary", key="tour_next")

st.divider()
st.subheader("Share this analysis")
st.caption("One HTML file with the figures and tables of this analysis; it opens offline in any browser.")


def report_html() -> bytes:
    accuracy = float(np.mean(analysis.test_pred == test["label"].to_numpy()))
    n = len(analysis.label_names)
    confusion = np.zeros((n, n), dtype=int)
    np.add.at(confusion, (test["label"].to_numpy(), analysis.test_pred), 1)
    keep = np.sort(np.argsort(-np.abs(matrix).sum(axis=0))[:150])
    pairs = views.top_pairs(matrix, 10).rename(columns={"influence": out.unit_label})
    pairs["test review"] = [test["text"].iloc[q][:200] for q in pairs["test"]]
    pairs["training review"] = [train["text"].iloc[m][:200] for m in pairs["train"]]
    suspects = common.reviews_table(analysis, "train", suspicion[:20], self_influence, "self-influence")
    if planted is not None:
        suspects["planted error"] = planted[suspicion[:20]]
    summary = {**out.spec.summary(), "damping shown": f"{out.damping:g}", "test accuracy": f"{accuracy:.1%}",
               "computed": analysis.meta.get("created", "")}
    sections = [
        ReportSection("Model quality on the test reviews", figure=figures.confusion_matrix_figure(confusion, analysis.label_names)),
        ReportSection("Test × training influence", text="Columns: the 150 most influential training reviews.",
                      figure=figures.influence_heatmap(matrix[:, keep], row_hover=analysis.test_hover(),
                                                       col_hover=[analysis.train_hover()[j] for j in keep],
                                                       col_names=[f"train {j}" for j in keep],
                                                       colorbar_title=out.unit_label)),
        ReportSection("Most extreme pairs", table=pairs),
        ReportSection("Layers' shares of |influence|", figure=figures.layer_share_figure(
            views.layer_shares(scores, out.k, out.layers))),
        ReportSection("Most suspicious training labels (by self-influence)", table=suspects),
    ]
    if len(analysis.dampings) > 1:
        stability = scores.stability()
        reason = views.suggest_damping(stability).reason
        sections.append(ReportSection("Damping stability (Spearman)", text=reason,
                                      figure=figures.stability_heatmap(stability, "spearman")))
    if planted is not None and planted.any():
        curves = figures.ranking_curves(views.rankings(analysis, out.k, out.layers), planted)
        sections.append(ReportSection("Finding the planted errors", text="Recall at k of each ranking.",
                                      figure=figures.ranking_curve_figure(curves, "recall", n_true=int(planted.sum()))))
    return build_report("Influence Explorer report", summary, sections).encode("utf-8")


st.download_button("Download the HTML report", data=report_html, file_name="influence_report.html", mime="text/html",
                   key="tour_report", on_click="ignore", type="primary", icon=":material/description:")
