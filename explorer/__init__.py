"""Influence Explorer, the Streamlit app's own code: what the pages share, on top of ``influence_core``.

Streamlit-free modules (testable without a server): ``spec`` (what names an analysis), ``store`` (models and
engines per process), ``analysis`` (compute and read an analysis), ``cost``, ``views``, ``marks``, ``uploads``,
``retraining``, ``jobs`` (background work), ``figures``, ``highlight``, ``report``. The Streamlit glue: ``ui``
(sidebar, empty states, job panels, downloads). Nothing in ``influence_core`` imports this package.
"""
