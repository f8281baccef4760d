"""CPU/GPU parity (skipped without CUDA)."""

from __future__ import annotations

import numpy as np
import pytest

from influence_core import EngineConfig, InfluenceEngine
from tests.conftest import tiny_bert

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("dtype,rtol", [("float64", 1e-8), ("float32", 1e-3)])
def test_cuda_matches_cpu(tokenizer, texts, labels, dtype, rtol):
    model = tiny_bert()
    results = {}
    for device in ("cpu", "cuda"):
        engine = InfluenceEngine(model, tokenizer, EngineConfig(dtype=dtype, device=device, damping=1e-3))
        engine.fit(texts)
        table = engine.score(texts[:3], labels[:3], texts, labels, dampings=[1e-3, 1e-1])
        results[device] = (table.pairwise, table.self_influence)
    for cpu, gpu in zip(results["cpu"], results["cuda"]):
        np.testing.assert_allclose(gpu, cpu, rtol=rtol, atol=rtol * np.abs(cpu).max())
    assert next(model.parameters()).device.type == "cpu"
