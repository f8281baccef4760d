"""Engine configuration: one frozen, hashable, printable value object."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

from influence_core.cache import stable_hash
from influence_core.errors import ConfigError

METHODS = ("ekfac", "kfac", "identity")
FISHERS = ("true", "sampled", "empirical")
DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass(frozen=True)
class EngineConfig:
    """How influences are computed. Every field is validated on construction.

    Attributes:
        layers: Comma-separated layer groups (``ffn``, ``attention``, ``head``, ``all``) and/or full
            module names of ``torch.nn.Linear`` layers, e.g. ``"ffn,head"`` or ``"classifier"``.
        method: ``ekfac`` (eigenvalue-corrected K-FAC, default), ``kfac`` (eigenvalues replaced by the
            Kronecker product of the factor eigenvalues) or ``identity`` (plain gradient dot product,
            TracIn-style; damping is ignored).
        fisher: Labels used to fit the factors: ``true`` (exact expectation under the model's own
            predictive distribution), ``sampled`` (one label per example drawn with ``seed``) or
            ``empirical`` (the given labels).
        damping: Absolute damping added to every eigenvalue (used when ``relative_damping`` is None).
        relative_damping: If set, layer ``l`` is damped with ``relative_damping * mean(L_l)``.
        max_length: Texts are truncated to this many tokens.
        batch_size: Examples per forward/backward pass (results do not depend on it).
        seed: Seed for the ``sampled`` Fisher.
        dtype: ``float32`` (default; eigendecompositions and accumulators stay in float64) or
            ``float64`` end to end.
        device: ``cpu`` or ``cuda`` (or ``cuda:N``).
    """

    layers: str = "ffn,head"
    method: str = "ekfac"
    fisher: str = "true"
    damping: float = 1e-5
    relative_damping: float | None = None
    max_length: int = 128
    batch_size: int = 16
    seed: int = 0
    dtype: str = "float32"
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"unknown method {self.method!r}: choose one of {', '.join(METHODS)}")
        if self.fisher not in FISHERS:
            raise ConfigError(f"unknown Fisher {self.fisher!r}: choose one of {', '.join(FISHERS)}")
        if self.dtype not in DTYPES:
            raise ConfigError(f"unknown dtype {self.dtype!r}: choose float32 or float64")
        check_damping(self.damping, "damping")
        if self.relative_damping is not None:
            check_damping(self.relative_damping, "relative damping")
        if self.max_length < 2:
            raise ConfigError(f"max_length must be at least 2 tokens, got {self.max_length}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {self.batch_size}")
        if not str(self.layers).strip():
            raise ConfigError("no layers chosen: name a group (ffn, attention, head, all) or module names")
        if not (self.device == "cpu" or self.device.startswith("cuda")):
            raise ConfigError(f"unknown device {self.device!r}: use cpu or cuda")

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    def key(self) -> str:
        """A short stable hash of every field (a cache key)."""
        return stable_hash(self)

    def replace(self, **changes: object) -> EngineConfig:
        return dataclasses.replace(self, **changes)

    def damping_label(self) -> str:
        if self.relative_damping is not None:
            return f"relative {self.relative_damping:g} x mean eigenvalue"
        return f"absolute {self.damping:g}"


def check_damping(value: float, name: str = "damping") -> float:
    """Return ``value`` as a float if it is a finite, non-negative number; raise ConfigError otherwise."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(number) or number < 0:
        raise ConfigError(f"{name} must be finite and >= 0, got {value!r}")
    return number


__all__ = ["EngineConfig", "METHODS", "FISHERS", "check_damping"]
