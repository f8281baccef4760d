"""Where examples and classifiers come from: tables, Hub datasets, slices, the demo corpus, model folders and Hub ids.

- ``corpus``: the built-in demo reviews (with planted label errors).
- ``data``: :class:`DataSource`, reading tables and Hub datasets, aligning labels to a model.
- ``slices``: :class:`SliceSpec`, which rows of a table (seeded samples, label filters, keywords).
- ``models``: :class:`ModelSource` and :func:`load_classifier` for folders and Hub ids (fails fast offline).
"""

from influence_core.sources.corpus import DEMO_LABELS, demo_corpus
from influence_core.sources.data import DataSource, align_labels, load_table, read_table
from influence_core.sources.models import LoadedModel, ModelSource, hub_offline_reason, load_classifier
from influence_core.sources.slices import SliceSpec

__all__ = [
    "DEMO_LABELS", "DataSource", "LoadedModel", "ModelSource", "SliceSpec", "align_labels", "demo_corpus",
    "hub_offline_reason", "load_classifier", "load_table", "read_table",
]
