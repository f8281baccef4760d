"""The damping grid and the agreement measures of the damping sweep (pure functions)."""

from __future__ import annotations

import numpy as np
import pytest

from explorer import sweep


def test_the_grid_holds_every_computed_value_and_is_log_spaced():
    computed = [0.1, 1.0, 10.0, 100.0, 1000.0]
    grid = sweep.sweep_grid(computed, per_decade=4)
    assert len(grid) == 17 and grid == sorted(grid)
    assert set(computed) <= set(grid)
    ratios = np.diff(np.log10(grid))
    np.testing.assert_allclose(ratios, 0.25, atol=0.01)  # 3 significant digits round the in-between values


def test_a_single_damping_is_its_own_grid():
    assert sweep.sweep_grid([3.0]) == [3.0]


def test_agreement_with_itself_is_perfect_and_with_its_reverse_is_not():
    rng = np.random.default_rng(0)
    reference = rng.normal(size=200)
    matrix = np.stack([reference, -reference, reference + rng.normal(scale=1e-9, size=200)])
    table = sweep.agreement(matrix, reference, [1.0, 2.0, 3.0], top=10)
    assert table["damping"].tolist() == [1.0, 2.0, 3.0]
    assert table.loc[0, "pearson"] == pytest.approx(1.0) and table.loc[0, "top_kept"] == 1.0
    assert table.loc[1, "pearson"] == pytest.approx(-1.0) and table.loc[1, "top_kept"] == 0.0


def test_agreement_counts_the_top_lists_kept():
    reference = np.arange(20, dtype=float)  # helpful top-10: 10..19, harmful top-10: 0..9
    moved = reference.copy()
    moved[19], moved[0] = -5.0, 50.0  # the most helpful becomes the most harmful, and the reverse
    table = sweep.agreement(moved[None], reference, [1.0], top=10)
    assert table.loc[0, "top_kept"] == pytest.approx(0.9)  # 9 of 10 on each side
