"""The one exception hierarchy raised by influence_core.

Every error a user can cause (bad data, a model that cannot be analysed, factors fitted for something
else, an invalid option) is an :class:`InfluenceError`. The app turns it into ``st.error`` and the CLI
into one line on stderr with exit code 2; anything else is a bug.
"""

from __future__ import annotations


class InfluenceError(Exception):
    """Base class: a problem the user can fix. ``str(err)`` says what happened and what to do."""


class ConfigError(InfluenceError, ValueError):
    """An option is out of range or unknown (damping, method, layer names, ...)."""


class DataError(InfluenceError, ValueError):
    """Input data is missing, empty, malformed or does not fit the model (labels, columns)."""


class ModelError(InfluenceError):
    """A model cannot be loaded or analysed (not a classifier, no Linear layer, offline Hub id)."""


class FactorsError(InfluenceError):
    """Saved factors are unreadable or were fitted for another model, layer set or method."""


__all__ = ["InfluenceError", "ConfigError", "DataError", "ModelError", "FactorsError"]
