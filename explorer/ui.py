"""The frame's Streamlit glue shared by every page: sidebar, cached stores, the background job, downloads.

Pages stay thin: they call :func:`require_analysis` (which draws the empty state, the cost estimate and the
"Fit and score" button until an analysis exists), then draw with :mod:`explorer.figures`, and offer
downloads with :func:`figure` and :func:`table`. All widget state that defines a view is kept in the URL, so a
link reproduces it: widgets use ``bind="query-params"``, except review pickers, which keep the review's number
there through ``st.query_params`` (:func:`url_choice`) instead of its long label.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import streamlit as st

from explorer import analysis as analyses
from explorer import cost, uploads
from explorer.analysis import Analysis
from explorer.analysis import load_analysis as read_analysis
from explorer.figures import figure_html
from explorer.jobs import CANCELLED, DONE, ERROR, Job, JobRunner
from explorer.spec import (
    AnalysisSpec,
    analysis_dir,
    damping_grid,
    default_model_source,
    demo_model_ready,
    factors_ready,
)
from explorer.store import ModelStore
from explorer.trust import predicted_loss_change
from influence_core.engine.config import DEFAULT_RELATIVE_DAMPING, FISHERS, METHODS, EngineConfig
from influence_core.errors import InfluenceError
from influence_core.sources.data import DataSource
from influence_core.sources.models import ModelSource
from influence_core.sources.slices import SliceSpec

log = logging.getLogger("influence_explorer")

SIGN_HELP = (
    "**Sign convention**: positive influence = *helpful* (up-weighting the training review lowers the test "
    "review's loss); negative = *harmful*. Blue is helpful, red is harmful."
)
LAYER_GROUPS = ("ffn", "attention", "head", "all")
UNITS = {"loss": "Δ loss if removed", "raw": "raw influence"}
DAMPING_CHOICES = {
    "absolute": (1e-9, 1e-8, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0),
    "relative": (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0),
}
# the LDS-best value of each rule (benchmarks/LDS.md); relative is the default rule, as in EngineConfig
DEFAULT_DAMPING = {"absolute": 1e-3, "relative": DEFAULT_RELATIVE_DAMPING}
DEFAULT_TEST_REVIEWS = 40
# Bound select boxes put the *displayed* option in the URL, so the options themselves are short and readable.
MODEL_KINDS = {"built-in demo": "demo", "Hub id": "hub", "local folder": "local"}
DATA_KINDS = {"built-in demo": "demo", "upload": "upload", "Hub dataset": "hub"}


# ------------------------------------------------------------------------------------------- shared state
@st.cache_resource(show_spinner=False)
def job_runner() -> JobRunner:
    """One job runner per server process: a job survives reruns and is visible from every tab."""
    return JobRunner()


@st.cache_resource(show_spinner=False)
def model_store() -> ModelStore:
    """One store of loaded models and engines per server process."""
    return ModelStore()


@st.cache_data(show_spinner=False, max_entries=16)
def _file_columns(path: str) -> list[str]:
    from influence_core.sources.data import read_table

    return [str(c) for c in read_table(path).columns]


@st.cache_data(show_spinner=False, max_entries=32)
def slice_size(source: DataSource, spec: SliceSpec) -> int:
    """Rows a slice selects (labels not aligned yet: cheap, for the sidebar and the cost estimate)."""
    from influence_core.sources.data import load_table

    return len(spec.apply(load_table(source)))


@st.cache_resource(show_spinner="Loading the analysis…", max_entries=4)
def _cached_analysis(key: str, stamp: float, _spec: AnalysisSpec) -> Analysis | None:
    return read_analysis(_spec)


def load_analysis(spec: AnalysisSpec) -> Analysis | None:
    """The computed analysis for ``spec`` (read from disk once per process), or None."""
    meta = analysis_dir(spec) / "meta.json"
    if not meta.is_file():
        return None
    return _cached_analysis(spec.key(), meta.stat().st_mtime, spec)


@dataclass
class Frame:
    """What the sidebar decided, for the page to use."""

    spec: AnalysisSpec | None = None
    problem: str | None = None
    n_train: int = 0
    n_test: int = 0
    analysis: Analysis | None = None
    k: int = 0
    layers: list[str] = field(default_factory=list)
    unit: str = "loss"  # "loss": predicted change in test loss if the training review were removed; "raw"

    @property
    def damping(self) -> float:
        return self.analysis.dampings[self.k] if self.analysis else float("nan")

    @property
    def scale(self) -> float:
        """Multiply a raw influence by this to show it in the chosen unit (see :func:`explorer.trust.predicted_loss_change`)."""
        if self.unit == "raw" or self.analysis is None:
            return 1.0
        return predicted_loss_change(1.0, len(self.analysis.train))

    @property
    def unit_label(self) -> str:
        return "Δ test loss if removed" if self.unit == "loss" else "influence"


def ensure_frame() -> None:
    """Make sure this page runs inside app.py's frame; call it first in every page.

    Streamlit treats a folder named ``pages/`` next to the entry script as a legacy multipage app until the
    first ``st.navigation`` call of the process. A deep link (``/explain``) as the very first request would
    then run the page on its own, without the sidebar. Switch that legacy mode off and rerun through app.py.
    """
    from streamlit.runtime.pages_manager import PagesManager

    if PagesManager.uses_pages_directory:
        PagesManager.uses_pages_directory = False
        st.rerun()


def frame() -> Frame:
    """The frame built by ``app.py``'s sidebar on this run."""
    return st.session_state.get("_frame") or Frame(problem="The sidebar did not run.")


# ------------------------------------------------------------------------------------------- sidebar
def sidebar() -> Frame:
    """Draw the shared sidebar and return the analysis it describes (model, data, layers, method, damping)."""
    out = Frame()
    with st.sidebar:
        st.markdown("### Analysis")
        summary_box = st.container(border=True)  # filled once the controls below are read
        try:
            spec, n_train, n_test = _analysis_controls()
            out.spec, out.n_train, out.n_test = spec, n_train, n_test
        except InfluenceError as err:
            out.problem = str(err)
            st.error(str(err))
        if out.spec is not None:
            out.analysis = load_analysis(out.spec)
            with summary_box:
                _summary(out)
            if out.analysis is not None:
                _view_controls(out)
        else:
            summary_box.caption("Fix the settings below to see the analysis.")
    st.session_state["_frame"] = out
    return out


def _analysis_controls() -> tuple[AnalysisSpec, int, int]:
    default_model = default_model_source()
    kinds = list(MODEL_KINDS.values())
    kind = MODEL_KINDS[st.selectbox(
        "Model",
        list(MODEL_KINDS),
        index=kinds.index(default_model.kind),
        key="model",
        bind="query-params",
        help="The classifier to explain. The demo model is MiniLM fine-tuned on the demo reviews (trained on first use).",
    )]
    if kind == "demo":
        model = ModelSource("demo")
    else:
        placeholder = "distilbert-base-uncased-finetuned-sst-2-english" if kind == "hub" else "/path/to/model_folder"
        name = st.text_input(
            "Hub id" if kind == "hub" else "Model folder",
            value=default_model.name if kind == default_model.kind else "",
            key="model_name",
            bind="query-params",
            placeholder=placeholder,
            help="A sequence classifier saved with safetensors weights (no remote code is run).",
        ).strip()
        if not name:
            raise InfluenceError(f"Enter a {'Hub id' if kind == 'hub' else 'model folder'} or choose the built-in demo model.")
        model = ModelSource(kind, name)

    train_data, test_data = _data_controls()
    with st.expander("Slices", expanded=False):
        train_n = st.number_input(
            "Training reviews (0 = all)", 0, 100_000, 0, step=50, key="train_n", bind="query-params",
            help="A seeded random sample of the training slice; scoring time grows with it.",
        )
        test_n = st.number_input(
            "Test reviews (0 = all)", 0, 10_000, DEFAULT_TEST_REVIEWS, step=10, key="test_n", bind="query-params",
            help="A seeded, label-balanced sample of the test slice.",
        )
        seed = st.number_input("Sampling seed", 0, 10_000, 0, key="seed", bind="query-params")
        keyword = st.text_input("Test reviews containing", "", key="test_kw", bind="query-params",
                                help="Keep only test reviews containing this text (case-insensitive).")
    train_slice = SliceSpec(sample=int(train_n) or None, seed=int(seed), balanced=False)
    test_slice = SliceSpec(sample=int(test_n) or None, seed=int(seed), balanced=bool(test_n), keyword=keyword)

    with st.expander("Method", expanded=False):
        groups = st.multiselect(
            "Layer groups", list(LAYER_GROUPS), default=["ffn", "head"], key="layers", bind="query-params",
            help="ffn: feed-forward blocks; attention: attention projections; head: pooler and classifier.",
        )
        names = st.text_input("More layers (module names, comma-separated)", "", key="layer_names", bind="query-params",
                              placeholder="bert.encoder.layer.5.output.dense")
        method = st.selectbox("Method", list(METHODS), index=list(METHODS).index(EngineConfig.method), key="method",
                              bind="query-params",
                              help="ekfac: eigenvalue-corrected K-FAC (most accurate); kfac: plain K-FAC; identity: gradient dot products.")
        fisher = st.selectbox("Fisher", list(FISHERS), index=list(FISHERS).index(EngineConfig.fisher), key="fisher",
                              bind="query-params",
                              help="true (the default): expectation under the model's predictions; sampled: one "
                                   "sampled label; empirical: the given labels.")
        mode = st.radio("Damping", ["absolute", "relative"], index=1, horizontal=True, key="dmode",
                        bind="query-params",
                        help="Relative damping (the default) is a multiple of each layer's mean eigenvalue, so one "
                             "value suits layers of any scale; 10 predicted retraining best on SST-2 (LDS).")
        choices = DAMPING_CHOICES[mode]
        damping = st.select_slider(
            "Damping value", choices, value=DEFAULT_DAMPING[mode], format_func=lambda v: f"{v:g}",
            key=f"damping_{mode}", bind="query-params",
            help="Scored together with 4 neighbouring values (x0.01 … x100), so the view can switch instantly.",
        )
        max_length = st.number_input("Max tokens per review", 16, 512, 128, step=16, key="max_len", bind="query-params")
    layer_spec = ",".join([*groups, *[n.strip() for n in names.split(",") if n.strip()]])
    if not layer_spec:
        raise InfluenceError("Choose at least one layer group (ffn, attention, head or all) in the Method section.")
    config = EngineConfig(
        layers=layer_spec,
        method=method,
        fisher=fisher,
        damping=float(damping) if mode == "absolute" else None,
        relative_damping=float(damping) if mode == "relative" else None,
        max_length=int(max_length),
    )
    spec = AnalysisSpec(
        model=model,
        train_data=train_data,
        test_data=test_data,
        train_slice=train_slice,
        test_slice=test_slice,
        config=config,
        dampings=damping_grid(float(damping)),
    )
    n_train = slice_size(train_data, train_slice)
    n_test = slice_size(test_data, test_slice)
    return spec, n_train, n_test


def _data_controls() -> tuple[DataSource, DataSource]:
    kind = DATA_KINDS[st.selectbox("Data", list(DATA_KINDS), key="data", bind="query-params",
                                   help="Where the training and test reviews come from.")]
    if kind == "demo":
        return DataSource("demo", split="train"), DataSource("demo", split="test")
    if kind == "hub":
        name = st.text_input("Dataset id", "", key="hub_data", bind="query-params", placeholder="imdb").strip()
        config = st.text_input("Configuration", "", key="hub_config", bind="query-params", placeholder="(none)").strip()
        cols = st.columns(2)
        train_split = cols[0].text_input("Train split", "train", key="hub_train", bind="query-params")
        test_split = cols[1].text_input("Test split", "test", key="hub_test", bind="query-params")
        if not name:
            raise InfluenceError("Enter a Hugging Face dataset id (e.g. imdb), or choose the built-in demo reviews.")
        text_col = st.text_input("Text column", "text", key="hub_text", bind="query-params")
        label_col = st.text_input("Label column", "label", key="hub_label", bind="query-params")
        common = {"config": config or None, "text_col": text_col, "label_col": label_col}
        return DataSource("hub", name, split=train_split, **common), DataSource("hub", name, split=test_split, **common)
    return _upload_controls()


def _upload_controls() -> tuple[DataSource, DataSource]:
    """Uploaded tables are validated, then kept in the cache by content hash; the URL carries that name."""
    limit = cost.format_bytes(uploads.MAX_UPLOAD_BYTES)
    for role in ("train", "test"):
        upload = st.file_uploader(
            f"{role.capitalize()} table (CSV, TSV, Parquet, JSONL; up to {limit})"
            + (" - optional, else the training table is reused" if role == "test" else ""),
            type=["csv", "tsv", "parquet", "jsonl", "json", "gz"],
            key=f"upload_{role}",
            max_upload_size=50,
        )
        if upload is not None:
            try:
                path = uploads.save_upload(upload.getvalue(), upload.name)
            except InfluenceError as err:
                raise InfluenceError(f"The {role} upload cannot be used: {err}") from None
            st.query_params[f"{role}_file"] = path.name
    train_path = uploads.upload_path(st.query_params.get("train_file", ""))
    if train_path is None:
        raise InfluenceError("Upload a training table with a text column and a label column to start.")
    test_path = uploads.upload_path(st.query_params.get("test_file", "")) or train_path
    columns = _file_columns(str(train_path))
    text_col = st.selectbox("Text column", columns, index=_guess(columns, ("text", "sentence", "review", "content")),
                            key="text_col", bind="query-params")
    label_col = st.selectbox("Label column", columns, index=_guess(columns, ("label", "labels", "sentiment", "target")),
                             key="label_col", bind="query-params")
    if text_col == label_col:
        raise InfluenceError("The text and label columns must differ: pick the column that holds the class.")
    train = DataSource("file", str(train_path), text_col=text_col, label_col=label_col)
    test = DataSource("file", str(test_path), text_col=text_col, label_col=label_col)
    return train, test


def _guess(columns: list[str], preferred: tuple[str, ...]) -> int:
    lowered = [c.lower() for c in columns]
    for name in preferred:
        if name in lowered:
            return lowered.index(name)
    return 0


def _summary(out: Frame) -> None:
    spec = out.spec
    job = job_runner().get(spec.key())
    if (out.analysis is None and job is None and starts_by_itself(spec)
            and not st.session_state.get(f"_declined_{spec.key()}")):
        job = start_analysis(out)  # the built-in demo needs no decision: its work starts on the first visit
    if out.analysis is not None:
        status = "scored ✓"
    elif job is not None and job.running:
        status = "running (progress below)"
    elif factors_ready(spec):
        status = "factors fitted, not scored"
    else:
        status = "not computed"
    layers = out.analysis.meta.get("layers") if out.analysis else None
    lines = [
        f"**Model** {spec.model.describe()}",
        f"**Reviews** {out.n_train} training × {out.n_test} test",
        f"**Layers** {spec.config.layers}" + (f" ({len(layers)} modules)" if layers else ""),
        f"**Method** {spec.config.method}, {spec.config.fisher} Fisher, damping {spec.chosen_damping:g} ({spec.damping_mode})",
        f"**Status** {status}",
    ]
    st.caption("  \n".join(lines))
    # no second progress bar here: every page shows the running job's one panel (require_analysis)
    if out.analysis is None and not (job is not None and job.running):
        if st.button("Fit and score", type="primary", key="fit_sidebar", width="stretch", help="Starts in the background."):
            start_analysis(out)


def _view_controls(out: Frame) -> None:
    analysis = out.analysis
    st.markdown("### View")
    st.caption("Instant: these re-render from the computed scores.")
    values = analysis.dampings
    chosen = values[analysis.damping_index(None)]
    damping = st.select_slider(
        "Damping (computed values)", values, value=chosen, format_func=lambda v: f"{v:g}", key="view_damping",
        bind="query-params",
    )
    out.k = values.index(damping) if damping in values else analysis.damping_index(damping)
    layers = list(analysis.scores.layers)
    short = {name: short_layer(name) for name in layers}
    picked = st.multiselect(
        "Layers shown", layers, default=[], format_func=short.get, key="view_layers", bind="query-params",
        placeholder=f"all {len(layers)} layers", help="Influence is summed over these layers (all when empty).",
    )
    out.layers = picked or layers
    unit = st.radio(
        "Scores shown as", list(UNITS), format_func=UNITS.get, key="view_unit", bind="query-params",
        help=f"{UNITS['loss']}: the first-order change in the test review's loss if that training review were removed "
             f"and the model retrained, i.e. the influence divided by the {len(analysis.train)} analysed training "
             "reviews (positive: the loss would rise, so the review helped). The Trust page measures how well their "
             "ranking holds up when retraining for real; their size is an extrapolation that can overshoot by orders "
             "of magnitude on a fine-tuned network. Raw: the influence itself.",
    )
    out.unit = unit or "loss"


def short_layer(name: str) -> str:
    from explorer.figures import short_layer_name

    return short_layer_name(name)


def url_choice(widget, label: str, options, *, key: str, default=None, **kwargs):
    """``st.selectbox`` or ``st.multiselect`` whose value is kept in the URL as the option's own text.

    Bound widgets (``bind="query-params"``) write the *displayed* label into the URL; for reviews that label is a
    long snippet, so these keep ``?test=12`` through ``st.query_params`` instead.

    The choice also lives in a plain session key (``_choice_<key>``): Streamlit drops the state of a widget that
    a run does not draw, and a page switch clears the URL, so two pages that share a key (Explain and Layers
    both use ``test``) would otherwise forget the test review chosen on the other.
    """
    options = list(options)
    by_text = {str(option): option for option in options}
    multi = widget is st.multiselect
    remembered = f"_choice_{key}"
    if key not in st.session_state:
        if multi and key in st.query_params:
            picked = [by_text[t] for t in st.query_params.get_all(key) if t in by_text]
            st.session_state[key] = picked
        elif not multi and st.query_params.get(key) in by_text:
            st.session_state[key] = by_text[st.query_params.get(key)]
    if key not in st.session_state and remembered in st.session_state:
        saved = st.session_state[remembered]
        if multi:
            picked = [by_text[t] for t in saved if t in by_text]
            if picked or not saved:
                st.session_state[key] = picked
        elif saved in by_text:
            st.session_state[key] = by_text[saved]
    if key not in st.session_state and default is not None:
        if multi:
            kwargs["default"] = default
        elif default in options:
            kwargs["index"] = options.index(default)
    value = widget(label, options, key=key, **kwargs)
    text = [str(v) for v in value] if multi else ("" if value is None else str(value))
    st.session_state[remembered] = text
    current = st.query_params.get_all(key) if multi else st.query_params.get(key)
    if current != text:
        st.query_params[key] = text
    return value


# ------------------------------------------------------------------------------------------- jobs
#: Seconds between redraws of a running job's progress. Each redraw costs the job far more than its own few ms
#: when the browser shares the machine's cores: on 2 cores the demo's analysis took 81 s with no browser
#: watching, 144 s redrawn every second (st.status), 133 s every second without the spinning icon, 114 s every
#: 2 s (development runs of ``benchmarks/first_visit.py --cache model`` on intermediate versions, one run each;
#: ``benchmarks/FIRST_VISIT.md``).
REFRESH_S = 2.0

def start_analysis(out: Frame) -> Job:
    spec = out.spec
    store = model_store()
    return job_runner().start(lambda progress: analyses.compute_analysis(spec, store, progress), key=spec.key(), name="Fit and score")


def job_panel(key: str, *, on_done: str = "rerun", rerun_when=None) -> Job | None:
    """Progress of the job ``key`` with a Cancel button; redraws itself every :data:`REFRESH_S` s while it runs.

    ``rerun_when()`` returning True while the job runs reruns the whole page once (e.g. when the job has saved a
    first result the page can draw).
    """
    job = job_runner().get(key)
    if job is None:
        return None

    def draw() -> None:
        current = job_runner().get(key)
        if current is None:
            return
        if current.running and rerun_when is not None and st.session_state.get(f"_early_{key}") != id(current):
            if rerun_when():
                st.session_state[f"_early_{key}"] = id(current)
                st.rerun()
        if current.running:
            # a plain bordered box, not st.status: its spinning icon keeps the browser drawing (see REFRESH_S)
            box = st.container(border=True)
            box.markdown(f"**{current.name}: {current.fraction:.0%}**")
            box.progress(current.fraction, text=current.message or "starting…")
            box.caption(f"Running for {cost.format_seconds(current.elapsed)}{remaining_text(current)}. You can keep "
                        "browsing; it runs in the background.")
            if box.button("Cancel", key=f"cancel_{key}"):
                current.cancel()
        elif current.status == ERROR:
            st.error(current.error or "The job failed.")
        elif current.status == CANCELLED:
            st.warning(f"{current.name} was cancelled. Start it again when you are ready.")
        elif current.status == DONE and st.session_state.get(f"_seen_{key}") != id(current):
            st.session_state[f"_seen_{key}"] = id(current)
            if on_done == "rerun":
                st.rerun()

    if job.running:
        st.fragment(run_every=REFRESH_S)(draw)()
    else:
        draw()
    return job


def require_analysis(*, predictions_first: bool = False, rerun_when=None) -> tuple[Frame, Analysis]:
    """The frame and its computed analysis; otherwise draw the empty state (cost, button, progress) and stop.

    ``predictions_first``: the page can draw the test predictions before the analysis is done (the Overview); the
    progress panel then reruns the page as soon as they are saved. ``rerun_when(spec)``: likewise for another
    early result (the heatmap's index estimate, :func:`estimate_ready`).
    """
    out = frame()
    if out.spec is None:
        st.info(out.problem or "Choose a model and data in the sidebar.")
        st.stop()
    if out.analysis is not None:
        return out, out.analysis
    job = job_runner().get(out.spec.key())
    if job is None and starts_by_itself(out.spec) and not st.session_state.get(f"_declined_{out.spec.key()}"):
        job = start_analysis(out)  # the built-in demo needs no decision: its work starts on the first visit
    running = job is not None and job.running
    if running:
        spec = out.spec
        if predictions_first:
            first = ("Fine-tuning the demo model on its training reviews (first use only, under a minute)"
                     if spec.model.kind == "demo" and not demo_model_ready() else "Loading the model")
            st.info(f"{first}, then predicting the test reviews; the influence of the training reviews follows "
                    "(every page fills in as soon as it is done).")
        else:
            st.info("Computing this analysis in the background: every page fills in as soon as it is done. "
                    + ("The model's predictions are on the Overview already." if predictions_ready(spec) else ""))
        ready = predictions_ready if predictions_first else rerun_when
        job_panel(spec.key(), rerun_when=(lambda: ready(spec)) if ready is not None else None)
        st.stop()
    st.info(
        "Nothing computed yet for this model, data and method. **Fit and score** fits the curvature factors on the "
        "training reviews and scores every test review against them, once; afterwards every page is instant."
    )
    estimate = cost.estimate_cost(out.spec, out.n_train, out.n_test)
    cols = st.columns(3)
    cols[0].metric("Training reviews", out.n_train)
    cols[1].metric("Test reviews", out.n_test)
    cols[2].metric("Estimated time", cost.format_seconds(estimate.seconds))
    st.caption("Will " + "; then ".join(estimate.steps) + f". Peak memory about {cost.format_bytes(estimate.memory_bytes)}.")
    if job is not None and job.status == CANCELLED:
        st.session_state[f"_declined_{out.spec.key()}"] = True  # a cancelled demo run is not restarted behind the user
    if st.button("Fit and score", type="primary", key="fit_main"):
        start_analysis(out)
        st.rerun()
    job_panel(out.spec.key())
    st.stop()


def predictions_ready(spec: AnalysisSpec) -> bool:
    """Whether the running analysis of ``spec`` has saved its test predictions yet."""
    return (analysis_dir(spec) / analyses.PREDICTIONS_FILE).is_file()


def require_predictions() -> tuple[Frame, analyses.Predictions, Analysis | None]:
    """The frame, the test predictions and the analysis (None while influence is still being computed).

    Without predictions yet this draws what :func:`require_analysis` draws (empty state or progress) and stops.
    """
    out = frame()
    if out.spec is not None and out.analysis is None and predictions_ready(out.spec):
        job = job_runner().get(out.spec.key())
        if job is not None and job.running:
            return out, _cached_predictions(out.spec.key(), out.spec), None
    out, analysis = require_analysis(predictions_first=True)
    return out, analysis.predictions, analysis


@st.cache_resource(show_spinner=False, max_entries=4)
def _cached_predictions(key: str, _spec: AnalysisSpec) -> analyses.Predictions | None:
    return analyses.load_predictions(_spec)


def estimate_ready(spec: AnalysisSpec) -> bool:
    """Whether the running analysis of ``spec`` has saved its predictions and its index estimate yet."""
    return predictions_ready(spec) and (analysis_dir(spec) / analyses.ESTIMATE_FILE).is_file()


def early_estimate() -> tuple[analyses.Estimate, analyses.Predictions] | None:
    """While this frame's analysis runs: the index's estimate and the test predictions, once both are saved."""
    out = frame()
    if out.spec is None or out.analysis is not None or not estimate_ready(out.spec):
        return None
    job = job_runner().get(out.spec.key())
    if job is None or not job.running:
        return None
    return _cached_estimate(out.spec.key(), out.spec), _cached_predictions(out.spec.key(), out.spec)


@st.cache_resource(show_spinner=False, max_entries=2)
def _cached_estimate(key: str, _spec: AnalysisSpec) -> analyses.Estimate | None:
    return analyses.load_estimate(_spec)


def starts_by_itself(spec: AnalysisSpec) -> bool:
    """Whether the analysis starts without a click: the built-in demo model on the built-in demo reviews.

    Other models and data ask first (they may be large, and the cost estimate is shown before anything runs).
    """
    return spec.model.kind == "demo" and spec.train_data.kind == "demo" and spec.test_data.kind == "demo"


def remaining_text(job: Job) -> str:
    """``, about 2 min left`` from the elapsed time and the fraction done (empty until there is enough to go on)."""
    if job.fraction < 0.05 or job.elapsed < 5:
        return ""
    left = job.elapsed * (1.0 - job.fraction) / job.fraction
    return f", about {cost.format_seconds(left)} left"


# ------------------------------------------------------------------------------------------- output helpers
def figure(fig, name: str, *, key: str | None = None) -> None:
    """Draw a plotly figure (Streamlit theme, so light and dark both work) with an HTML download button."""
    st.plotly_chart(fig, theme="streamlit", key=key, config={"displaylogo": False, "toImageButtonOptions": {"filename": name}})
    st.download_button(
        "Download figure (HTML)",
        data=lambda: figure_html(fig, title=name),
        file_name=f"{name}.html",
        mime="text/html",
        key=f"dl_fig_{key or name}",
        on_click="ignore",
        type="tertiary",
        icon=":material/download:",
    )


def table(frame_: pd.DataFrame, name: str, *, key: str | None = None, **kwargs) -> object:
    """Show a table with a CSV download button; extra arguments go to ``st.dataframe``."""
    result = st.dataframe(frame_, hide_index=True, key=key, **kwargs)
    st.download_button(
        "Download table (CSV)",
        data=frame_.to_csv(index=False).encode("utf-8"),
        file_name=f"{name}.csv",
        mime="text/csv",
        key=f"dl_tab_{key or name}",
        on_click="ignore",
        type="tertiary",
        icon=":material/download:",
    )
    return result


def review_label(analysis: Analysis | analyses.Predictions, which: str, index: int, *, width: int = 70) -> str:
    """``#12 · positive → predicted negative · "It was…"`` for select boxes (plain text, Streamlit escapes it).

    ``analysis`` may be the :class:`~explorer.analysis.Predictions` alone for ``which="test"``."""
    from explorer.highlight import snippet

    frame_ = analysis.test if which == "test" else analysis.train
    preds = analysis.test_pred if which == "test" else analysis.train_pred
    label = analysis.name(frame_["label"].iloc[index])
    pred = analysis.name(preds[index])
    mark = "" if label == pred else " ✗"
    return f"#{index} · {label} → {pred}{mark} · {snippet(frame_['text'].iloc[index], width)}"


def reviews_table(analysis: Analysis | analyses.Predictions, which: str, indices, scores=None,
                  score_name: str = "influence") -> pd.DataFrame:
    """A readable table of reviews: position, row id, label, prediction, confidence, (score), text.

    ``analysis`` may be the :class:`~explorer.analysis.Predictions` alone for ``which="test"``.
    """
    frame_ = analysis.test if which == "test" else analysis.train
    probs = analysis.test_probs if which == "test" else analysis.scores.train_probs
    indices = np.asarray(indices, dtype=int)
    data = {
        which: indices,
        "row_id": frame_["row_id"].to_numpy()[indices],
        "label": [analysis.name(v) for v in frame_["label"].to_numpy()[indices]],
        "predicted": [analysis.name(v) for v in probs[indices].argmax(axis=1)],
        "confidence": probs[indices].max(axis=1),
    }
    if scores is not None:
        data[score_name] = np.asarray(scores)[indices] if len(scores) == len(frame_) else np.asarray(scores)
    data["text"] = frame_["text"].to_numpy()[indices]
    return pd.DataFrame(data)


def guarded(body) -> None:
    """Run a page body; user errors become ``st.error``, anything else a short message (never a traceback)."""
    try:
        body()
    except InfluenceError as err:
        st.error(str(err))
    except Exception:  # noqa: BLE001 - a page must never show a traceback
        log.exception("page failed")
        st.error(
            "Something went wrong while drawing this page. Try another view or reload; if it persists, the server "
            "log has the details."
        )
