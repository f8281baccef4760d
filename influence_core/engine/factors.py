"""EK-FAC factors: covariance sums, their eigendecompositions and the corrected eigenvalues.

For a tracked layer with per-example gradient ``DW_n = sum_t g_t a_t^T`` (bias as the last input
column), the engine keeps, as sums with counts so shards from several processes can be added:

* ``A = sum a a^T`` over the fitting tokens (pads excluded), divided by the number of tokens;
* ``G = sum g g^T`` over the fitting tokens and gradient terms, divided by the number of examples
  (the Fisher of one example sums over its tokens);
* ``L = mean_n sum_s (U_G^T DW_{n,s} U_A)^2``, the EK-FAC corrected eigenvalues, where ``U_A`` and
  ``U_G`` are eigenvectors of ``A`` and ``G`` from a float64, symmetrised eigendecomposition.

K-FAC uses ``lambda_G[i] * lambda_A[j]`` in place of ``L[i, j]``; with one token per example this is
exactly the Kronecker-factored Fisher ``A (x) G``.
"""

from __future__ import annotations

import hashlib
import json
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from influence_core.engine.tracking import LayerCapture
from influence_core.errors import FactorsError

FORMAT_VERSION = 1


@dataclass
class LayerFactors:
    """Statistics of one layer. Sums are float64; ``*_count`` are the divisors."""

    a_sum: torch.Tensor  # [in(+1), in(+1)]
    g_sum: torch.Tensor  # [out, out]
    a_count: int = 0
    g_count: int = 0
    a_eigvals: torch.Tensor | None = None  # [in(+1)], ascending
    a_eigvecs: torch.Tensor | None = None  # [in(+1), in(+1)], columns are eigenvectors
    g_eigvals: torch.Tensor | None = None  # [out]
    g_eigvecs: torch.Tensor | None = None  # [out, out]
    l_sum: torch.Tensor | None = None  # [out, in(+1)] sum over examples of squared rotated gradients
    l_count: int = 0

    @property
    def shape(self) -> tuple[int, int]:
        return self.g_sum.shape[0], self.a_sum.shape[0]

    def add_covariance(self, capture: LayerCapture) -> None:
        """Accumulate ``A`` and ``G`` from one batch (float32 products, float64 sums)."""
        a = capture.a.reshape(-1, capture.a.shape[-1])
        g = capture.g.reshape(-1, capture.g.shape[-1])
        self.a_sum += (a.T @ a).to(torch.float64).cpu()
        self.g_sum += (g.T @ g).to(torch.float64).cpu()
        self.a_count += capture.num_tokens
        self.g_count += capture.a.shape[0]

    def eigendecompose(self, name: str) -> None:
        self.a_eigvals, self.a_eigvecs = _symmetric_eigh(self.a_sum / max(self.a_count, 1), f"{name} activations")
        self.g_eigvals, self.g_eigvecs = _symmetric_eigh(self.g_sum / max(self.g_count, 1), f"{name} gradients")

    def corrected_eigenvalues(self) -> torch.Tensor:
        if self.l_sum is None or self.l_count == 0:
            raise FactorsError("the EK-FAC eigenvalues were not fitted; fit with method 'ekfac'")
        return self.l_sum / self.l_count

    def kfac_eigenvalues(self) -> torch.Tensor:
        return torch.outer(self.g_eigvals.clamp_min(0), self.a_eigvals.clamp_min(0))

    def merge(self, other: LayerFactors) -> None:
        """Add another shard's sums (same layer) into this one."""
        self.a_sum += other.a_sum
        self.g_sum += other.g_sum
        self.a_count += other.a_count
        self.g_count += other.g_count
        if other.l_sum is not None:
            self.l_sum = other.l_sum.clone() if self.l_sum is None else self.l_sum + other.l_sum
            self.l_count += other.l_count


def _symmetric_eigh(matrix: torch.Tensor, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    matrix = matrix.to(torch.float64)
    if not torch.isfinite(matrix).all():
        bad = int((~torch.isfinite(matrix)).sum())
        raise FactorsError(
            f"the {what} covariance has {bad} non-finite entries (NaN or inf); the model produced "
            "non-finite activations or gradients: check the model and inputs, or use dtype float64"
        )
    return torch.linalg.eigh(0.5 * (matrix + matrix.T))


def rotate(capture: LayerCapture, factors: LayerFactors | None, dtype: torch.dtype) -> torch.Tensor:
    """Per-example gradients in the eigenbasis, ``U_G^T DW U_A``, shape [S, B, out, in(+1)].

    With ``factors=None`` (method ``identity``) the plain per-example gradient ``DW`` is returned.
    The contraction order is chosen by cost: rotating every token and then summing over tokens costs
    ``T (out^2 + in^2 + out in)`` per example, forming ``DW`` and rotating it ``T out in + out in (out + in)``.
    """
    a, g = capture.a, capture.g
    if factors is None:
        return torch.matmul(g.transpose(-1, -2), a.unsqueeze(0))
    u_a = factors.a_eigvecs.to(device=a.device, dtype=dtype)
    u_g = factors.g_eigvecs.to(device=a.device, dtype=dtype)
    terms, batch, tokens, out = g.shape
    width = a.shape[-1]
    per_token = tokens * (out * out * terms + width * width + terms * out * width)
    per_matrix = terms * (tokens * out * width + out * width * (out + width))
    if per_token <= per_matrix:
        return torch.matmul((g @ u_g).transpose(-1, -2), (a @ u_a).unsqueeze(0))
    dw = torch.matmul(g.transpose(-1, -2), a.unsqueeze(0))
    return u_g.T @ dw @ u_a


def model_fingerprint(model: nn.Module) -> str:
    """SHA-256 (first 20 hex digits) of the model's class, config and every parameter's values."""
    digest = hashlib.sha256(type(model).__name__.encode())
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "to_json_string"):
        try:
            digest.update(config.to_json_string(use_diff=False).encode())
        except TypeError:
            digest.update(config.to_json_string().encode())
    for name, param in model.named_parameters():
        digest.update(name.encode())
        digest.update(str(tuple(param.shape)).encode())
        digest.update(param.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()[:20]


@dataclass
class Factors:
    """Fitted factors for a set of layers, plus the metadata that says what they were fitted for."""

    layers: dict[str, LayerFactors]
    method: str
    fisher: str
    fingerprint: str
    num_examples: int = 0
    meta: dict = field(default_factory=dict)

    @property
    def layer_names(self) -> list[str]:
        return list(self.layers)

    @property
    def num_tokens(self) -> int:
        return max((f.a_count for f in self.layers.values()), default=0)

    def eigenvalues(self, name: str, method: str | None = None) -> torch.Tensor:
        """Eigenvalues [out, in(+1)] that the damped inverse divides by, for ``method``."""
        method = method or self.method
        layer = self.layers[name]
        return layer.kfac_eigenvalues() if method == "kfac" else layer.corrected_eigenvalues()

    def metadata(self) -> dict:
        versions = {"torch": torch.__version__, "python": platform.python_version()}
        try:
            import transformers

            versions["transformers"] = transformers.__version__
        except ImportError:  # pragma: no cover - transformers is a dependency
            pass
        from influence_core.version import __version__

        versions["influence_core"] = __version__
        return {
            "format_version": FORMAT_VERSION,
            "model_fingerprint": self.fingerprint,
            "layers": self.layer_names,
            "method": self.method,
            "fisher": self.fisher,
            "num_examples": self.num_examples,
            "num_tokens": {name: f.a_count for name, f in self.layers.items()},
            "shapes": {name: list(f.shape) for name, f in self.layers.items()},
            "dtypes": {"sums": "float64", "eigenvectors": "float64"},
            "versions": versions,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **self.meta,
        }

    def save(self, path: str | Path) -> Path:
        """Write ``path`` (safetensors) and ``path`` with suffix ``.json`` (the same metadata, readable)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {}
        for name, layer in self.layers.items():
            for key in ("a_sum", "g_sum", "a_eigvals", "a_eigvecs", "g_eigvals", "g_eigvecs", "l_sum"):
                value = getattr(layer, key)
                if value is not None:
                    tensors[f"{name}::{key}"] = value.contiguous()
        meta = self.metadata()
        meta["counts"] = {n: [f.a_count, f.g_count, f.l_count] for n, f in self.layers.items()}
        text = json.dumps(meta, indent=2)
        tmp = path.with_name(path.name + ".tmp")
        save_file(tensors, str(tmp), metadata={"influence_core": text})
        tmp.replace(path)
        path.with_suffix(".json").write_text(text + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> Factors:
        path = Path(path)
        if not path.is_file():
            raise FactorsError(f"no factors file at {path}; fit factors first (python -m influence_core fit ...)")
        try:
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as handle:
                meta = json.loads((handle.metadata() or {})["influence_core"])
            tensors = load_file(str(path))
        except Exception as err:  # noqa: BLE001 - any parse failure means the same thing to the user
            raise FactorsError(f"{path} is not a factors file written by influence_core ({err})") from None
        if meta.get("format_version") != FORMAT_VERSION:
            raise FactorsError(f"{path} has factors format {meta.get('format_version')}, expected {FORMAT_VERSION}")
        layers = {}
        for name in meta["layers"]:
            a_count, g_count, l_count = meta["counts"][name]
            layers[name] = LayerFactors(
                a_sum=tensors[f"{name}::a_sum"], g_sum=tensors[f"{name}::g_sum"], a_count=a_count,
                g_count=g_count, a_eigvals=tensors.get(f"{name}::a_eigvals"),
                a_eigvecs=tensors.get(f"{name}::a_eigvecs"), g_eigvals=tensors.get(f"{name}::g_eigvals"),
                g_eigvecs=tensors.get(f"{name}::g_eigvecs"), l_sum=tensors.get(f"{name}::l_sum"), l_count=l_count,
            )
        known = {"format_version", "model_fingerprint", "layers", "method", "fisher", "num_examples", "num_tokens",
                 "shapes", "dtypes", "versions", "created", "counts"}
        extra = {k: v for k, v in meta.items() if k not in known}
        return cls(layers, meta["method"], meta["fisher"], meta["model_fingerprint"], meta["num_examples"], extra)

    def check_compatible(self, fingerprint: str, layer_names: list[str], method: str) -> None:
        """Raise FactorsError unless these factors fit this model, these layers and this method."""
        if fingerprint != self.fingerprint:
            raise FactorsError(
                "these factors were fitted for another model (fingerprint "
                f"{self.fingerprint}, this model is {fingerprint}); fit factors for this model"
            )
        missing = [n for n in layer_names if n not in self.layers]
        if missing:
            raise FactorsError(
                f"these factors do not cover layer(s) {', '.join(missing[:3])}; they were fitted for "
                f"{', '.join(self.layer_names[:4])}{'...' if len(self.layers) > 4 else ''}; refit with these layers"
            )
        if method == "ekfac" and any(self.layers[n].l_sum is None for n in layer_names):
            raise FactorsError("these factors have no EK-FAC eigenvalue correction (fitted with kfac); refit with ekfac")


def to_numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().to("cpu").numpy()


__all__ = ["Factors", "LayerFactors", "model_fingerprint", "rotate"]
