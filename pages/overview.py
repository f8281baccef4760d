"""Overview: the model and the data at a glance, and a "try a sentence" box."""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from explorer import cost, figures, search
from explorer import ui as common
from influence_core.cache import stable_hash
from influence_core.errors import InfluenceError

common.ensure_frame()
st.title("Overview")
st.caption(
    "Which training reviews drive this classifier's predictions? Start here: how good is the model on the test "
    "reviews, and which training reviews does it lean on for a sentence of your own."
)

out, predictions, analysis = common.require_predictions()  # predictions come first; influence may still be running
test = predictions.test
labels = test["label"].to_numpy()
pred = predictions.test_pred
probs = predictions.test_probs
n_classes = len(predictions.label_names)

accuracy = float(np.mean(pred == labels)) if len(labels) else float("nan")
f1_per_class = []
for c in range(n_classes):
    tp = np.sum((pred == c) & (labels == c))
    precision = tp / max(np.sum(pred == c), 1)
    recall = tp / max(np.sum(labels == c), 1)
    f1_per_class.append(0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall))
macro_f1 = float(np.mean(f1_per_class)) if f1_per_class else float("nan")

cols = st.columns(4)
cols[0].metric("Accuracy (test)", f"{accuracy:.1%}")
cols[1].metric("Macro F1 (test)", f"{macro_f1:.3f}")
cols[2].metric("Training reviews", predictions.n_train)
cols[3].metric("Test reviews", len(test))
for note in predictions.notes:
    st.caption(f"Note: {note}")

left, right = st.columns(2)
with left:
    st.subheader("Confusion matrix")
    matrix = np.zeros((n_classes, n_classes), dtype=int)
    np.add.at(matrix, (labels, pred), 1)
    common.figure(figures.confusion_matrix_figure(matrix, predictions.label_names), "confusion_matrix", key="cm")
with right:
    st.subheader("Prediction confidence")
    common.figure(figures.confidence_histogram(probs.max(axis=1), pred == labels), "confidence", key="conf")


def predictions_table() -> None:
    with st.expander("Test reviews and predictions"):
        frame = common.reviews_table(predictions, "test", np.arange(len(test)))
        frame["correct"] = frame["label"] == frame["predicted"]
        common.table(pd.DataFrame(frame), "test_predictions", key="test_preds")


st.subheader("Try a sentence, or search the training set")
if analysis is None:  # the first visit: the predictions are drawn, the influence is still being computed
    st.info("Next: which training reviews are responsible for these predictions. The influence of every training "
            "review is being computed (progress below); this box and the other pages fill in when it is done (the "
            "heatmap shows the training-gradient index's estimate sooner).")
    common.job_panel(out.spec.key())
    predictions_table()
    st.stop()
st.caption(
    "Type a review: the model predicts it and the training reviews most responsible for that prediction are found "
    "among all of them (training-gradient index), then re-scored exactly by the engine. Choose a label to ask "
    "which training reviews push the model towards that label instead. " + common.SIGN_HELP
)
c1, c2 = st.columns([4, 1])
sentence = c1.text_area(
    "Your review", "A warm, funny film with a wonderful cast.", max_chars=2000, key="sentence", height=80,
)
label_options = ["(predicted)", *analysis.label_names]
asked = c2.selectbox("For the label", label_options, key="sentence_label",
                     help="Influence is always for one label: by default the one the model predicts.")
wanted = None if asked == label_options[0] else analysis.label_names.index(asked)
index_info = analysis.meta.get("index") or {}


def show_result(label: int, proba: np.ndarray, scores_by_train: pd.Series, note: str) -> None:
    """The prediction and a table of the responsible training reviews (each once, helpful first)."""
    st.markdown(f"**Prediction: {analysis.name(int(np.argmax(proba)))}** ({proba.max():.1%} confident). Training "
                f"reviews most responsible for the label **{analysis.name(label)}**:")
    helpful = [int(j) for j, v in scores_by_train.sort_values(ascending=False).items() if v > 0][:5]
    harmful = [int(j) for j, v in scores_by_train.sort_values().items() if v < 0 and int(j) not in helpful][:5]
    top = np.array(helpful + harmful, dtype=int)
    values = scores_by_train.reindex(top).to_numpy()
    frame = common.reviews_table(analysis, "train", top, values)
    frame.insert(0, "effect", ["helpful"] * len(helpful) + ["harmful"] * len(harmful))
    common.table(
        frame, "sentence_influence", key="try_table",
        column_config={"train": st.column_config.NumberColumn("train", width="small"),
                       "row_id": st.column_config.NumberColumn("row_id", width="small"),
                       "influence": st.column_config.NumberColumn(format="%.4g"),
                       "confidence": st.column_config.ProgressColumn(min_value=0, max_value=1, format="%.2f"),
                       "text": st.column_config.TextColumn("text", width="large")},
    )
    st.caption(note)


result = None
if sentence.strip() and index_info:
    try:
        result = search.search_training(common.model_store(), out.spec, analysis, sentence, label=wanted,
                                        damping=out.damping)
    except InfluenceError as err:  # e.g. an index from an older version: say so, then score the plain way
        st.caption(f"The training-gradient index cannot be used ({err}); scoring the sentence directly instead.")
    if result is not None:
        exact = result.rows[result.rows["exact"] == 1]
        scores_by_train = exact.groupby("train")["influence"].first()
        agreement = (f"On this analysis's test reviews the index agreed with the exact scores with median Pearson "
                     f"{index_info['median_pearson']:.3f} and found {index_info['recall']:.0%} of the exact top "
                     f"{index_info['top']} among its {index_info['candidates']} candidates")
        show_result(result.label, result.proba, scores_by_train,
                    f"Answered in {result.seconds:.1f} s over all {analysis.scores.n_train} training reviews: the "
                    f"{search.index_description(index_info)} proposed {result.candidates} per direction and the engine re-scored "
                    f"them exactly (all analysed layers, damping {out.damping:g}). {agreement}.")
if sentence.strip() and result is None:
    estimate = cost.estimate_cost(out.spec, analysis.scores.n_train, 1)
    st.caption(f"Scoring the sentence against {analysis.scores.n_train} training reviews without the index takes "
               f"{estimate.describe()}.")
    key = f"try-{analysis.key}-{out.k}-{stable_hash([sentence, wanted])}"
    job = common.job_runner().get(key)
    if st.button("Predict and find the responsible training reviews", type="primary", key="try_go"):
        spec, store, damping = out.spec, common.model_store(), out.damping

        def run(progress):
            engine = store.engine(spec)
            proba = engine.predict_proba([sentence])[0]
            label = int(np.argmax(proba)) if wanted is None else int(wanted)
            table = engine.score([sentence], [label], analysis.train["text"].tolist(),
                                 analysis.train["label"].to_numpy(), dampings=[damping], self_influence=False,
                                 progress=progress)
            return {"proba": proba, "label": label, "by_layer": table.pairwise[0, :, 0, :], "layers": table.layers}

        job = common.job_runner().start(run, key=key, name="Score your sentence")
        st.rerun()
    common.job_panel(key)
    if job is not None and job.status == "done":
        result = job.result
        chosen = [result["layers"].index(name) for name in out.layers if name in result["layers"]]
        scores = result["by_layer"][chosen or slice(None)].sum(axis=0)
        show_result(result["label"], result["proba"], pd.Series(scores),
                    "Scored exactly against every training review over the layers shown.")

predictions_table()
