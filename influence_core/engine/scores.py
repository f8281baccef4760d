"""ScoreTable: every score one scoring pass produced, per damping value and per layer.

Influence sign: ``pairwise[k, l, q, m] > 0`` means training example ``m`` is *helpful* for test example
``q`` through layer ``l``: up-weighting ``m`` lowers the loss on ``q`` (``-I_up,loss`` in Koh & Liang's
notation). Negative means harmful. Self-influence ``I(m, m)`` is non-negative.

Because layers add up and the per-damping scores are all kept, the app can change the damping (among
computed values), the layer selection or the displayed example without recomputing any gradient.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats


@dataclass
class ScoreTable:
    """Scores for ``K`` damping values and ``L`` layers.

    Attributes:
        dampings: Damping values, shape [K] (absolute, or relative factors if ``damping_mode`` is relative).
        layers: Layer names, length L.
        pairwise: Influence of training on test examples, shape [K, L, n_test, n_train]; positive = helpful.
        self_influence: ``I(m, m)`` of training examples, shape [K, L, n_train] (or None if not computed).
        test_self_influence: ``I(q, q)`` of test examples, shape [K, L, n_test].
        test_probs: Predicted class probabilities of the test examples, shape [n_test, C].
        train_probs: Same for the training examples, shape [n_train, C].
        test_labels: Given test labels, shape [n_test]. train_labels: shape [n_train].
    """

    dampings: np.ndarray
    layers: list[str]
    pairwise: np.ndarray
    self_influence: np.ndarray | None
    test_self_influence: np.ndarray
    test_probs: np.ndarray
    train_probs: np.ndarray
    test_labels: np.ndarray
    train_labels: np.ndarray
    damping_mode: str = "absolute"
    method: str = "ekfac"
    meta: dict = field(default_factory=dict)

    @property
    def n_test(self) -> int:
        return self.pairwise.shape[2]

    @property
    def n_train(self) -> int:
        return self.pairwise.shape[3]

    def _layer_index(self, layers: list[str] | None) -> list[int]:
        if layers is None:
            return list(range(len(self.layers)))
        unknown = [name for name in layers if name not in self.layers]
        if unknown:
            raise KeyError(f"layers not in this table: {unknown}")
        return [self.layers.index(name) for name in layers]

    def damping_index(self, damping: float) -> int:
        """Index of the computed damping value closest to ``damping``."""
        return int(np.argmin(np.abs(np.log(np.maximum(self.dampings, 1e-300)) - np.log(max(damping, 1e-300)))))

    def total(self, k: int = 0, layers: list[str] | None = None) -> np.ndarray:
        """Influence summed over ``layers`` (all by default), shape [n_test, n_train]; positive = helpful."""
        return self.pairwise[k, self._layer_index(layers)].sum(axis=0)

    def by_layer(self, k: int = 0) -> dict[str, np.ndarray]:
        """Per-layer influence, each [n_test, n_train]; the values add up to ``total(k)``."""
        return {name: self.pairwise[k, i] for i, name in enumerate(self.layers)}

    def self_total(self, k: int = 0, layers: list[str] | None = None) -> np.ndarray:
        """Self-influence of training examples summed over layers, shape [n_train]."""
        if self.self_influence is None:
            raise ValueError("self-influence was not computed for this table")
        return self.self_influence[k, self._layer_index(layers)].sum(axis=0)

    def test_self_total(self, k: int = 0, layers: list[str] | None = None) -> np.ndarray:
        return self.test_self_influence[k, self._layer_index(layers)].sum(axis=0)

    def relative(self, k: int = 0, layers: list[str] | None = None) -> np.ndarray:
        """``I(q, m) / sqrt(I(q, q) I(m, m))``: cosine in the damped Fisher metric, [n_test, n_train], in [-1, 1]."""
        denominator = np.sqrt(np.outer(self.test_self_total(k, layers), self.self_total(k, layers)))
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(denominator > 0, self.total(k, layers) / denominator, 0.0)

    def train_losses(self) -> np.ndarray:
        """Cross-entropy of the given training labels under the model, shape [n_train]."""
        return -np.log(np.clip(self.train_probs[np.arange(self.n_train), self.train_labels], 1e-12, None))

    def test_losses(self) -> np.ndarray:
        return -np.log(np.clip(self.test_probs[np.arange(self.n_test), self.test_labels], 1e-12, None))

    def flip_scale(self) -> np.ndarray:
        """Factor by which flipping each training label multiplies its gradient (binary models), [n_train].

        For two classes the cross-entropy gradient of label ``y`` in logit space is ``p - e_y`` and that
        of the other label is ``-(p_y / (1 - p_y))`` times it; gradients at every layer scale alike.
        """
        if self.train_probs.shape[1] != 2:
            raise ValueError("closed-form label flips need a binary model; recompute with new labels instead")
        p_y = self.train_probs[np.arange(self.n_train), self.train_labels]
        return -p_y / np.clip(1.0 - p_y, 1e-12, None)

    def flipped(self, flip: np.ndarray) -> ScoreTable:
        """The table with the labels of training examples ``flip`` (bool [n_train]) flipped, in closed form."""
        flip = np.asarray(flip, dtype=bool)
        scale = np.where(flip, self.flip_scale(), 1.0)
        self_scale = scale**2
        train_labels = np.where(flip, 1 - self.train_labels, self.train_labels)
        return ScoreTable(
            dampings=self.dampings, layers=self.layers, pairwise=self.pairwise * scale,
            self_influence=None if self.self_influence is None else self.self_influence * self_scale,
            test_self_influence=self.test_self_influence, test_probs=self.test_probs, train_probs=self.train_probs,
            test_labels=self.test_labels, train_labels=train_labels, damping_mode=self.damping_mode,
            method=self.method, meta={**self.meta, "flipped": int(flip.sum())},
        )

    def stability(self) -> pd.DataFrame:
        """Agreement between neighbouring damping values, per layer and for the total.

        Columns: layer, damping_from, damping_to, pearson, spearman (of the test x train scores), and
        self_pearson, self_spearman (of the training self-influences, when computed).
        """
        rows = []
        names = [*self.layers, "total"]
        for k in range(len(self.dampings) - 1):
            for i, name in enumerate(names):
                layer_sel = None if name == "total" else [self.layers[i]]
                a = self.total(k, layer_sel).ravel()
                b = self.total(k + 1, layer_sel).ravel()
                row = {"layer": name, "damping_from": float(self.dampings[k]), "damping_to": float(self.dampings[k + 1]),
                       "pearson": _pearson(a, b), "spearman": _spearman(a, b)}
                if self.self_influence is not None:
                    sa, sb = self.self_total(k, layer_sel), self.self_total(k + 1, layer_sel)
                    row.update(self_pearson=_pearson(sa, sb), self_spearman=_spearman(sa, sb))
                rows.append(row)
        return pd.DataFrame(rows)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {name: getattr(self, name) for name in
                  ("dampings", "pairwise", "test_self_influence", "test_probs", "train_probs", "test_labels",
                   "train_labels")}
        if self.self_influence is not None:
            arrays["self_influence"] = self.self_influence
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, layers=np.array(self.layers), damping_mode=self.damping_mode, method=self.method, **arrays)
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> ScoreTable:
        with np.load(path, allow_pickle=False) as data:
            return cls(
                dampings=data["dampings"], layers=[str(x) for x in data["layers"]], pairwise=data["pairwise"],
                self_influence=data["self_influence"] if "self_influence" in data else None,
                test_self_influence=data["test_self_influence"], test_probs=data["test_probs"],
                train_probs=data["train_probs"], test_labels=data["test_labels"], train_labels=data["train_labels"],
                damping_mode=str(data["damping_mode"]), method=str(data["method"]),
            )


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    if a.size < 2 or np.std(a) == 0 or np.std(b) == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    if a.size < 2 or np.std(a) == 0 or np.std(b) == 0:
        return float("nan")
    return float(stats.spearmanr(a, b).statistic)


__all__ = ["ScoreTable"]
