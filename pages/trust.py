"""Trust: do the influence numbers predict what retraining does? A small linear datamodeling score (LDS)."""

from __future__ import annotations

import streamlit as st

from explorer import cost, figures, trust
from explorer import ui as common

common.ensure_frame()
st.title("How much can I trust this?")
st.caption(
    "Influence claims that some training reviews lower a test review's loss and others raise it. The honest check is "
    "to retrain: on random halves of the training reviews, and see whether the subsets that influence calls most "
    "helpful really give the lowest losses. The linear datamodeling score (LDS) is the rank correlation between the "
    "two, averaged over test reviews: 1 = influence predicts retraining perfectly, 0 = no better than chance. "
    + common.SIGN_HELP
)

out, analysis = common.require_analysis()
spec = out.spec
key = f"trust-{analysis.key}"
n_train, n_test = analysis.scores.n_train, analysis.scores.n_test
result = trust.cached_result(spec)
job = common.job_runner().get(key)
if job is not None and job.status == "done" and job.result is not None:
    result = job.result

with st.container(border=True):
    subsets = st.number_input("Retrainings (random halves)", min_value=4, max_value=200, value=trust.DEFAULT_SUBSETS,
                              step=4, key="trust_subsets")
    seconds = trust.estimate_seconds(n_train, n_test, int(subsets))
    st.caption(
        f"Recipe: **head**. Only the classifier head (pooler and classifier) is retrained, on the encoder's frozen "
        f"features, so each retraining takes seconds; the scores checked are those of a head-trained twin of the "
        f"model on its head layers, for ekfac, kfac, identity and the app's gradient index (index k=…, its projected "
        f"estimates of ekfac) at the analysis's damping values. "
        f"{int(subsets)} retrainings on {n_train} training and {n_test} test reviews: about "
        f"{cost.format_seconds(seconds)}. Finished retrainings are kept, so a cancelled run resumes."
    )
    running = job is not None and job.running
    if not running and st.button("Measure trust (LDS)", type="primary", key="trust_run"):
        store, count = common.model_store(), int(subsets)
        common.job_runner().start(lambda progress: trust.run_trust(spec, analysis, store, progress, count), key=key,
                                  name="Measure trust (LDS)")
        st.rerun()
    common.job_panel(key)

if result is None:
    st.info("No LDS yet for this analysis: press **Measure trust (LDS)**.")
    st.stop()

st.markdown(trust.summary_sentence(result))
best = result.best()
cols = st.columns(3)
cols[0].metric("Best LDS", f"{best['lds']:.3f}", help=f"{best['variant']}, 95% interval over test reviews "
               f"[{best['ci_low']:.3f}, {best['ci_high']:.3f}]")
random_lds = float(result.table.loc[result.table["method"] == "random", "lds"].iloc[0])
cols[1].metric("Random scores", f"{random_lds:.3f}")
cols[2].metric("Retrainings", result.subsets)
st.caption(f"Recipe used: {result.recipe}. Measure: test {result.measure}.")
common.figure(figures.lds_bars(result.table, ceiling=None if result.ceiling is None else result.ceiling.lds),
              "lds", key="trust_bars")
index_rows = result.table[result.table["method"] == "index"]
if len(index_rows):
    exact_rows = result.table[(result.table["method"] == "ekfac") & ~result.table["relative"].astype(bool)]
    pair = index_rows.merge(exact_rows, on=["fisher", "damping"], suffixes=("_index", "_exact"))
    if len(pair):
        top = pair.loc[pair["lds_exact"].idxmax()]
        st.caption(f"The gradient index behind instant questions ({top['variant_index']}): LDS "
                   f"{top['lds_index']:.3f} against {top['lds_exact']:.3f} for the exact EK-FAC scores at the same "
                   f"damping: what the compression costs in trust.")
common.table(result.table, "lds", key="trust_table")
