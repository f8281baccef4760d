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
            predictive distribution), ``sampled`` (one label per example drawn with ``seed``, in batch order, so
            the factors depend on the batch order and, under torchrun, on the number of ranks) or
            ``empirical`` (the given labels).
        damping: Absolute damping added to every eigenvalue (used when ``relative_damping`` is None).
        relative_damping: If set, layer ``l`` is damped with ``relative_damping * mean(L_l)``. With neither
            given, ``relative_damping`` is :data:`DEFAULT_RELATIVE_DAMPING`; giving ``damping`` (here or in
            :meth:`replace`) alone selects absolute damping.

    The defaults (``ekfac``, the ``true`` Fisher, relative damping 10) are the variant with the best linear
    datamodeling score on 2,000 SST-2 sentences (``benchmarks/LDS.md``). A relative rule also carries over between
    layers whose eigenvalues differ by orders of magnitude, which an absolute value measured on some layers does
    not; the true Fisher needs no sampling, so results do not depend on batch order or the number of ranks.
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
    damping: float | None = None
    relative_damping: float | None = None
    max_length: int = 128
    batch_size: int = 16
    seed: int = 0
    dtype: str = "float32"
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.damping is None and self.relative_damping is None:
            object.__setattr__(self, "relative_damping", DEFAULT_RELATIVE_DAMPING)
        if self.method not in METHODS:
            raise ConfigError(f"unknown method {self.method!r}: choose one of {', '.join(METHODS)}")
        if self.fisher not in FISHERS:
            raise ConfigError(f"unknown Fisher {self.fisher!r}: choose one of {', '.join(FISHERS)}")
        if self.dtype not in DTYPES:
            raise ConfigError(f"unknown dtype {self.dtype!r}: choose float32 or float64")
        if self.damping is not None:
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
        """A copy with ``changes``; a new ``damping`` without a ``relative_damping`` switches to absolute damping."""
        if changes.get("damping") is not None and "relative_damping" not in changes:
            changes["relative_damping"] = None
        return dataclasses.replace(self, **changes)

    def damping_label(self) -> str:
        if self.relative_damping is not None:
            return f"relative {self.relative_damping:g} x mean eigenvalue"
        return f"absolute {self.damping:g}"


#: The relative damping used when neither ``damping`` nor ``relative_damping`` is given (the LDS-best rule).
DEFAULT_RELATIVE_DAMPING = 10.0


def check_damping(value: float, name: str = "damping") -> float:
    """Return ``value`` as a float if it is a finite, non-negative number; raise ConfigError otherwise."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(number) or number < 0:
        raise ConfigError(f"{name} must be finite and >= 0, got {value!r}")
    return number


__all__ = ["DEFAULT_RELATIVE_DAMPING", "EngineConfig", "METHODS", "FISHERS", "check_damping"]
