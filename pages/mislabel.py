"""Mislabel finder: rank training reviews by how suspicious their label is, and review them one by one."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import streamlit as st

from explorer import cost, figures, mislabels, retraining, views
from explorer import marks as review_marks
from explorer import ui as common
from explorer.analysis import ground_truth_columns
from explorer.highlight import text_html
from influence_core.cache import stable_hash
from influence_core.mislabel import signal_percentiles, suspicion_reasons

common.ensure_frame()
st.title("Mislabel finder")
st.caption(
    "A training review whose label is wrong has to be memorised: its own loss depends strongly on its weight "
    "(high self-influence), the model disagrees with it (high loss), and it tends to harm test predictions. Review "
    "the most suspicious first; your marks are saved and survive restarts."
)

out, analysis = common.require_analysis()
train = analysis.train

# ---------------------------------------------------------------- out-of-fold signals (cross-fitting)
with st.expander("Out-of-fold signals: cross-fit the model's recipe", icon=":material/call_split:"):
    st.caption(
        "In-sample loss misses wrong labels the model has memorised. Cross-fitting fine-tunes the model's own recipe "
        "K times, each on all folds but one (stratified, seeded), and scores every review with the model that never "
        "saw it: out-of-fold loss and margin, and cleanlab's label quality and estimate of how many labels are wrong "
        "(confident learning on the out-of-fold probabilities only). Each fine-tune is cached and records its "
        "training dynamics. A model without a recorded recipe (e.g. from the Hub) is fine-tuned further on each "
        "fold with default hyper-parameters."
    )
    folds = st.number_input("Folds (K)", 2, 10, 4, key="mf_folds", bind="query-params")
    crossfit_key = f"crossfit-{analysis.key}-{int(folds)}"
    crossfit_job = common.job_runner().get(crossfit_key)
    if crossfit_job is None or crossfit_job.status != "done":
        estimate = cost.estimate_finetune(out.spec, int(len(train) * (int(folds) - 1) / int(folds)), runs=int(folds))
        st.caption(f"Cost: {estimate.describe()}.")
        if (crossfit_job is None or not crossfit_job.running) and st.button(
            f"Cross-fit ({int(folds)} fine-tunes)", key="mf_crossfit", icon=":material/model_training:"):
            spec, kk = out.spec, int(folds)
            common.job_runner().start(lambda progress: views.cross_fit_analysis(spec, analysis, kk, progress),
                                      key=crossfit_key, name="Cross-fit")
            st.rerun()
        common.job_panel(crossfit_key)
    else:
        st.success(f"Out-of-fold probabilities from {crossfit_job.result.k} fine-tunes "
                   f"({crossfit_job.result.seconds:.0f} s).", icon=":material/check:")
        for note in crossfit_job.result.notes:
            st.caption(note)
crossfit = crossfit_job.result if crossfit_job is not None and crossfit_job.status == "done" else None
dynamics = views.training_dynamics(out.spec, analysis, crossfit)
scores_by_name = views.rankings(analysis, out.k, out.layers, out_of_fold=None if crossfit is None else crossfit.probs,
                                dynamics=dynamics)
for failed, reason in getattr(scores_by_name, "failed", {}).items():
    st.warning(f"The {failed.replace('_', ' ')} ranking could not be computed: {reason}", icon=":material/warning:")
names = list(scores_by_name)
helps = views.ranking_help()
percentiles = signal_percentiles({n: scores_by_name[n] for n in names if n != "combined"})
reasons = [suspicion_reasons(row) for row in percentiles.to_dict("records")]
estimated = getattr(scores_by_name, "estimated_wrong_labels", None)
m1, m2 = st.columns(2)
m1.metric("Estimated wrong labels (cleanlab)", "cross-fit first" if estimated is None else
          f"{estimated} of {len(train)}", help="cleanlab.count.num_label_issues on the out-of-fold probabilities")
m2.metric("Signals", len(names), help=("training dynamics recorded" if dynamics is not None else
                                       "no training dynamics: the model was not fine-tuned by this project"))
store = review_marks.MarkStore.for_data(out.spec.train_data)
try:
    marks = store.load()
except review_marks.MarksFileError as err:  # the unreadable file was kept aside, not overwritten
    st.warning(str(err), icon=":material/warning:")
    marks = store.load()
row_ids = train["row_id"].to_numpy()

c1, c2 = st.columns([2, 1])
rank_by = c1.selectbox("Rank by", names, index=names.index(views.default_ranking(names)), key="mf_rank",
                       bind="query-params", format_func=lambda n: n.replace("_", " "),
                       help="  \n".join(f"**{n.replace('_', ' ')}**: {helps.get(n, '')}" for n in names))
hide_marked = c2.toggle("Hide reviewed", value=True, key="mf_hide", bind="query-params")
order = mislabels.suspicion_order(scores_by_name[rank_by])
ranks = mislabels.signal_ranks(scores_by_name)

# ---------------------------------------------------------------- the queue
st.subheader("Review queue")
reviewed = sum(1 for r in row_ids if int(r) in marks)
st.progress(reviewed / max(len(train), 1), text=f"{reviewed} of {len(train)} training reviews reviewed")
queue = [int(j) for j in order if not (hide_marked and int(row_ids[j]) in marks)]
if not queue:
    st.success("Every training review in this slice has been reviewed. Export the cleaned dataset below.")
else:
    j = queue[0]
    row_id = int(row_ids[j])
    label = int(train["label"].iloc[j])
    pred = int(analysis.train_pred[j])
    with st.container(border=True):
        current = marks.get(row_id)
        st.markdown(
            f"**Rank {ranks[rank_by][j]} by {rank_by}** · training review #{j} (row {row_id}) · label "
            f"**{analysis.name(label)}** · model predicts **{analysis.name(pred)}** "
            f"({analysis.scores.train_probs[j, pred]:.0%})" + (f" · marked *{current['state']}*" if current else "")
        )
        st.html(text_html(train["text"].iloc[j]))
        st.markdown(f"**Why suspected:** {reasons[j]}.")
        bars = pd.DataFrame({"signal": [n.replace("_", " ") for n in percentiles.columns],
                             "percentile": percentiles.iloc[j].to_numpy(),
                             "value": [float(scores_by_name[n][j]) for n in percentiles.columns],
                             "rank": [int(ranks[n][j]) for n in percentiles.columns]})
        st.dataframe(bars, hide_index=True, key="mf_why", column_config={
            "percentile": st.column_config.ProgressColumn("percentile (1 = most suspicious)", min_value=0.0,
                                                          max_value=1.0, format="percent"),
            "value": st.column_config.NumberColumn(format="%.4g")})
        b1, b2, b3, b4 = st.columns([1, 1, 2, 1])
        if b1.button("Mislabeled", key="mf_bad", type="primary", icon=":material/flag:"):
            store.set(row_id, "mislabeled")
            st.rerun()
        if b2.button("Fine", key="mf_ok", icon=":material/check:"):
            store.set(row_id, "fine")
            st.rerun()
        others = [c for c in range(len(analysis.label_names)) if c != label]
        with b3:
            new_label = st.selectbox("Relabel as", others, format_func=analysis.name, key="mf_new",
                                     label_visibility="collapsed") if len(others) > 1 else others[0]
            if st.button(f"Relabel as {analysis.name(new_label)}", key="mf_relabel", icon=":material/edit:"):
                store.set(row_id, "relabel", int(new_label))
                st.rerun()
        if current and b4.button("Clear mark", key="mf_clear"):
            store.clear(row_id)
            st.rerun()

# ---------------------------------------------------------------- rankings side by side
st.subheader("Rankings side by side")
top_n = st.slider("Reviews listed", 10, max(10, len(train)), min(50, len(train)), step=10, key="mf_top",
                  bind="query-params")
listed = order[: int(top_n)]
frame = common.reviews_table(analysis, "train", listed)
for name in names:
    frame[f"{name} rank"] = ranks[name][listed]
    frame[name] = scores_by_name[name][listed]
frame["mark"] = [marks.get(int(r), {}).get("state", "") for r in frame["row_id"]]
frame["why"] = [reasons[int(j)] for j in listed]
bar_columns = [f"{n} %" for n in percentiles.columns]
for name in percentiles.columns:
    frame[f"{name} %"] = percentiles[name].to_numpy()[listed]
frame = frame[["train", "row_id", "mark", "why", *bar_columns, *[f"{n} rank" for n in names], *names, "label",
               "predicted", "confidence", "text"]]
common.table(frame, f"ranking_by_{rank_by.replace(' ', '_')}", key="mf_table",
             column_config={**{n: st.column_config.NumberColumn(format="%.4g") for n in names},
                            **{c: st.column_config.ProgressColumn(c.removesuffix(" %").replace("_", " "), min_value=0.0,
                                                                  max_value=1.0, format="percent") for c in bar_columns}})

# ---------------------------------------------------------------- ground truth
st.subheader("How well does each ranking find known mislabels?")
truth_columns = ground_truth_columns(train)
choices = ["(none)", *truth_columns, "(my marks)"]
truth_col = st.selectbox(
    "Ground truth", choices, index=1 if truth_columns else 0, key="mf_truth", bind="query-params",
    help="A column marking known wrong labels (the demo's planted_error), or your own 'mislabeled' marks.",
)
if truth_col == "(none)":
    st.caption("Choose a column that marks known mislabels (e.g. planted_error) to grade the rankings.")
else:
    truth = mislabels.known_mislabels(train, truth_col, marks)
    if not truth.any():
        st.info("No review is marked as mislabeled in this column (or slice) yet.")
    else:
        curves, summary = mislabels.ranking_quality(scores_by_name, truth)
        n_true = int(truth.sum())
        st.caption(f"{n_true} of {len(truth)} training reviews are known mislabels ({truth_col}).")
        common.table(
            summary, "ranking_quality", key="mf_quality",
            column_config={c: st.column_config.NumberColumn(format="percent") for c in summary.columns[1:3]},
        )
        left, right = st.columns(2)
        with left:
            common.figure(figures.ranking_curve_figure(curves, "precision", n_true=n_true, title="Precision at k"),
                          "precision_at_k", key="mf_prec")
        with right:
            common.figure(figures.ranking_curve_figure(curves, "recall", n_true=n_true, title="Recall at k"),
                          "recall_at_k", key="mf_rec")

# ---------------------------------------------------------------- exports
st.subheader("Export")
flags = review_marks.flag_list(train, marks, analysis.label_names)
cleaned = review_marks.cleaned_dataset(train, marks, analysis.label_names)
n_dropped, n_relabelled = mislabels.mark_counts(train, marks)
st.caption(f"The cleaned dataset drops {n_dropped} reviews marked mislabeled and relabels {n_relabelled}; "
           f"{len(cleaned)} of {len(train)} training reviews remain.")
e1, e2, e3 = st.columns(3)
e1.download_button("Download cleaned dataset (CSV)", cleaned.to_csv(index=False).encode("utf-8"),
                   file_name="cleaned_training_reviews.csv", mime="text/csv", key="mf_dl_clean", on_click="ignore",
                   type="primary", icon=":material/download:")
e2.download_button("Download flag list (CSV)", flags.to_csv(index=False).encode("utf-8"), file_name="flagged_reviews.csv",
                   mime="text/csv", key="mf_dl_flags", on_click="ignore", icon=":material/download:")
st.caption(
    "Also as Hugging Face `datasets` folders (`Dataset.save_to_disk`, zipped; unzip and `datasets.load_from_disk`) "
    "and the review queue for Label Studio: a JSON list of tasks, each `data.text` (with `row_id`, `given_label`), "
    "one prediction pre-selecting the given label (`from_name` label, `to_name` text, type choices; its `score` is "
    "the combined suspicion) and `meta` (rank, every signal, why). Import it into a project whose labelling config "
    "has `<Text name=\"text\" value=\"$text\"/>` and `<Choices name=\"label\" toName=\"text\">` with the model's labels."
)
scored = mislabels.signal_table(train, scores_by_name, reasons)
exported = {"cleaned": cleaned, "flags": flags, "scores": scored}
x1, x2, x3 = st.columns(3)
if x1.button("Prepare Hugging Face datasets (zip)", key="mf_hf_prepare", icon=":material/folder_zip:"):
    st.session_state["mf_hf_zip"] = (mislabels.tables_fingerprint(exported), mislabels.datasets_zip(exported))
prepared = st.session_state.get("mf_hf_zip")
if prepared is not None and prepared[0] == mislabels.tables_fingerprint(exported):
    x1.download_button("Download datasets folders (zip)", prepared[1], file_name="mislabel_datasets.zip",
                       mime="application/zip", key="mf_dl_hf", on_click="ignore", icon=":material/download:")
elif prepared is not None:  # a mark, the analysis or a signal changed since: never offer the old files
    x1.caption("The reviews or marks changed since the zip was prepared: prepare it again.")
queue_tasks = mislabels.label_studio_tasks(train, scores_by_name, analysis.label_names, order, reasons)
x2.download_button("Download queue for Label Studio (JSON)", json.dumps(queue_tasks, indent=1).encode("utf-8"),
                   file_name="mislabel_queue_label_studio.json", mime="application/json", key="mf_dl_ls",
                   on_click="ignore", icon=":material/download:")
x3.download_button("Download every signal (CSV)", scored.to_csv(index=False).encode("utf-8"),
                   file_name="mislabel_signals.csv", mime="text/csv", key="mf_dl_signals", on_click="ignore",
                   icon=":material/download:")
if marks and e3.button("Clear all marks", key="mf_clear_all"):
    store.clear()
    st.rerun()
if len(flags):
    with st.expander(f"Marked reviews ({len(flags)})"):
        st.dataframe(flags, hide_index=True)

# ---------------------------------------------------------------- fix and retrain
st.subheader("Fix and retrain")
st.caption(
    f"Fine-tune the model's own recipe ({'the demo recipe' if out.spec.model.kind == 'demo' else out.spec.model.name}) on the cleaned "
    "reviews and score it on the same layers and damping. Accuracy and loss compare like with like: 'before' is the "
    f"same recipe fine-tuned on the {len(train)} analysed training reviews as they are (uncleaned), 'after' on the "
    "cleaned ones, so the two differ only in your marks. The heatmaps compare the model under study with the "
    f"retrained one. The two fine-tunes take {cost.estimate_finetune(out.spec, len(train), runs=2).describe()} "
    "(the 'before' one is cached)."
)
changed = n_dropped + n_relabelled
retrain_key = f"retrain-{analysis.key}-{out.k}-{stable_hash(cleaned[['row_id', 'label']].to_numpy().tolist())}"
retrain_job = common.job_runner().get(retrain_key)
if not changed:
    st.info("Mark or relabel reviews in the queue above first; the retrain uses your marks.")
elif retrain_job is None or retrain_job.status != "done":
    if (retrain_job is None or not retrain_job.running) and st.button(
        f"Retrain without {n_dropped} and with {n_relabelled} relabelled", type="primary", key="mf_retrain",
        icon=":material/model_training:",
    ):
        spec, damping = out.spec, analysis.dampings[out.k]
        common.job_runner().start(lambda progress: retraining.retrain_cleaned(spec, analysis, cleaned, damping, progress),
                                  key=retrain_key, name="Retrain on the cleaned data")
        st.rerun()
    common.job_panel(retrain_key)
else:
    outcome = retrain_job.result
    result = outcome.result
    m1, m2, m3 = st.columns(3)
    m1.metric("Test accuracy after", f"{result.after_accuracy:.1%}",
              delta=None if result.before_accuracy is None else f"{result.after_accuracy - result.before_accuracy:+.1%}")
    m2.metric("Test loss after", f"{result.after_loss:.3f}",
              delta=None if result.before_loss is None else f"{result.after_loss - result.before_loss:+.3f}",
              delta_color="inverse")
    m3.metric("Training reviews", result.n_train, delta=f"{result.n_train - len(train):+d}")
    for note in result.notes:
        st.caption(note)
    before = analysis.influence(out.k, None)[:, outcome.kept]
    after = outcome.influence_after
    shared = float(np.percentile(np.abs(np.concatenate([before.ravel(), after.ravel()])), 95)) or None
    kept_names = [f"train {int(i)}" for i in outcome.kept]
    left, right = st.columns(2)
    with left:
        common.figure(figures.influence_heatmap(before, col_names=kept_names,
                                                title="Influence before (model under study)", zmax=shared),
                      "influence_before_retrain", key="mf_before")
    with right:
        common.figure(figures.influence_heatmap(after, col_names=kept_names, title="Influence after (retrained)",
                                                zmax=shared), "influence_after_retrain", key="mf_after")
    harmful_before, harmful_after = int((before < 0).sum()), int((after < 0).sum())
    st.caption(f"Harmful pairs: {harmful_before} before, {harmful_after} after, over the same "
               f"{before.shape[0]} test x {before.shape[1]} training reviews (all layers, damping "
               f"{analysis.dampings[out.k]:g}; "
               "colours share one scale).")
    common.table(result.per_example().assign(text=analysis.test["text"].to_numpy()).sort_values("change"),
                 "test_loss_before_after", key="mf_loss_change",
                 column_config={c: st.column_config.NumberColumn(format="%.3f") for c in ("loss_before", "loss_after", "change")})

# ---------------------------------------------------------------- counterfactual check
st.subheader("Does removing the most harmful reviews help?")
st.caption(
    "The honest test of influence: retrain without the k training reviews that influence calls most harmful for "
    "one test review, and without k random reviews, and compare that review's loss. Every retrain is repeated with "
    "each training seed, so the spread that seeds and random draws give is measured, and a verdict is given only "
    "when the difference exceeds it."
)
f1, f2, f3, f4 = st.columns([4, 1, 1, 1])
with f1:
    q = common.url_choice(st.selectbox, "Test review", list(range(len(analysis.test))), key="cf_test",
                          format_func=lambda i: common.review_label(analysis, "test", i))
k_remove = f2.number_input("k", 1, max(1, min(50, len(train) - 1)), min(10, max(1, len(train) - 1)), key="cf_k",
                           bind="query-params", help="Training reviews removed.")
draws = f3.number_input("Random draws", 1, 5, 2, key="cf_draws", bind="query-params",
                        help="Retrains without k random reviews (their spread shows what chance does).")
seeds = f4.number_input("Seeds", 1, 5, 2, key="cf_seeds", bind="query-params",
                        help="Training seeds: every retrain is repeated with each (at least 2 for a verdict).")
if q is not None:
    q = int(q)
    influence_q = analysis.influence(out.k, out.layers)[q]
    cf_key = (f"cf-{analysis.key}-{out.k}-{stable_hash(list(out.layers or []))}-{q}-{int(k_remove)}-{int(draws)}"
              f"-{int(seeds)}")
    cf_job = common.job_runner().get(cf_key)
    if cf_job is None or cf_job.status != "done":
        runs = (2 + int(draws)) * int(seeds)
        estimate = cost.estimate_finetune(out.spec, len(train), runs=runs)
        st.caption(f"{runs} fine-tunes on the {len(train)} analysed training reviews (minus k for all but one per "
                   f"seed): {estimate.describe()}. The ones on every review are cached and shared between test "
                   "reviews.")
        if (cf_job is None or not cf_job.running) and st.button("Run the check", key="cf_run", type="primary",
                                                                 icon=":material/science:"):
            spec, kk, nd, ns = out.spec, int(k_remove), int(draws), int(seeds)
            common.job_runner().start(
                lambda progress: retraining.counterfactual(spec, analysis, q, influence_q, kk, nd, progress,
                                                           seeds=ns),
                key=cf_key, name="Counterfactual check",
            )
            st.rerun()
        common.job_panel(cf_key)
    else:
        check = cf_job.result
        st.markdown(views.counterfactual_sentence(check))
        common.figure(figures.counterfactual_changes(check, title=f"Change in the loss of test review #{q} after "
                                                                  "each retrain (same seed's full model = 0)"),
                      "counterfactual_check", key="cf_fig")
        common.table(check.summary(), "counterfactual_check", key="cf_table",
                     column_config={c: st.column_config.NumberColumn(format="%.4f") for c in ("loss", "change")})
