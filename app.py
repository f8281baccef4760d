"""Influence Explorer: which training reviews drive a text classifier's predictions.

The frame: page setup, the shared sidebar (model, data, layers, method, damping; bound to the URL) and the
page router. Each screen lives in ``pages/``; what the screens share (the analysis, the model store, jobs,
figures) in the ``explorer`` package; the computation in the ``influence_core`` library. Run with ``make app`` (binds to 127.0.0.1; ``make app HOST=0.0.0.0`` to expose it).
"""

from __future__ import annotations

import os
from pathlib import Path

import streamlit as st

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from explorer import ui  # noqa: E402 - after the environment is set

ICON = Path(__file__).resolve().parent / "assets" / "app_icon.png"  # local file: no request leaves the machine
st.set_page_config(page_title="Influence Explorer", page_icon=str(ICON), layout="wide")

# URL paths are the file names: until the first st.navigation call of a process Streamlit also knows the pages
# by file name (legacy pages/ folder, see ui.ensure_frame), so a deep link as the first request finds its page.
PAGES = [
    st.Page("pages/overview.py", title="Overview", icon=":material/dashboard:", default=True),
    st.Page("pages/heatmap.py", title="Influence heatmap", icon=":material/grid_on:"),
    st.Page("pages/explain.py", title="Explain a prediction", icon=":material/manage_search:"),
    st.Page("pages/layers.py", title="Layers", icon=":material/layers:"),
    st.Page("pages/label_flip.py", title="Label-flip corruption", icon=":material/swap_horiz:"),
    st.Page("pages/regularization.py", title="Regularization", icon=":material/tune:"),
    st.Page("pages/mislabel.py", title="Mislabel finder", icon=":material/flag:"),
    st.Page("pages/tour.py", title="Tour", icon=":material/slideshow:"),
    st.Page("pages/trust.py", title="Trust", icon=":material/verified:"),
]

page = st.navigation(PAGES)
ui.guarded(ui.sidebar)
ui.guarded(page.run)
