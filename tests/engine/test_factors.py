"""EK-FAC factors checked against explicit sums, loops and autograd on tiny inputs."""

from __future__ import annotations

import copy
import json
import re

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from influence_core import EngineConfig, InfluenceEngine
from influence_core.engine.factors import FORMAT_VERSION, Factors, LayerFactors, model_fingerprint, rotate
from influence_core.engine.tracking import LayerCapture
from influence_core.errors import FactorsError
from tests.conftest import LABELS, TEXTS, TinyMLP, tiny_bert

F64 = torch.float64


def _capture(seed: int, batch: int = 3, tokens: int = 4, width: int = 5, out: int = 3, terms: int = 2,
             pads: int = 1) -> LayerCapture:
    """Random a [B, T, W] and g [S, B, T, O]; the last ``pads`` tokens of example 0 are zeroed like pads."""
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(batch, tokens, width, generator=gen, dtype=F64)
    g = torch.randn(terms, batch, tokens, out, generator=gen, dtype=F64)
    if pads:
        a[0, tokens - pads :] = 0
        g[:, 0, tokens - pads :] = 0
    return LayerCapture(a=a, g=g, num_tokens=batch * tokens - pads)


def _empty(width: int = 5, out: int = 3) -> LayerFactors:
    return LayerFactors(torch.zeros(width, width, dtype=F64), torch.zeros(out, out, dtype=F64))


def _explicit_sums(captures):
    a_sum, g_sum = torch.zeros(5, 5, dtype=F64), torch.zeros(3, 3, dtype=F64)
    for cap in captures:
        for b in range(cap.a.shape[0]):
            for t in range(cap.a.shape[1]):
                a_sum += torch.outer(cap.a[b, t], cap.a[b, t])
                for s in range(cap.g.shape[0]):
                    g_sum += torch.outer(cap.g[s, b, t], cap.g[s, b, t])
    return a_sum, g_sum


def _fitted(captures) -> LayerFactors:
    """Covariances, eigendecomposition and corrected-eigenvalue sums, the way the engine fits them."""
    layer = _empty()
    for cap in captures:
        layer.add_covariance(cap)
    layer.eigendecompose("layer")
    layer.l_sum = torch.zeros(layer.shape, dtype=F64)
    for cap in captures:
        layer.l_sum += rotate(cap, layer, F64).square().sum(dim=(0, 1))
        layer.l_count += cap.a.shape[0]
    return layer


def test_add_covariance_equals_explicit_sums_of_outer_products():
    captures = [_capture(0), _capture(1, batch=2, pads=0)]
    layer = _empty()
    for cap in captures:
        layer.add_covariance(cap)
    a_sum, g_sum = _explicit_sums(captures)
    torch.testing.assert_close(layer.a_sum, a_sum, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(layer.g_sum, g_sum, rtol=1e-12, atol=1e-12)
    assert layer.a_count == (3 * 4 - 1) + 2 * 4  # real tokens
    assert layer.g_count == 3 + 2  # examples
    assert layer.shape == (3, 5)
    assert layer.a_sum.dtype == layer.g_sum.dtype == F64


def test_add_covariance_accumulates_float32_batches_in_float64():
    cap = _capture(2)
    cap32 = LayerCapture(cap.a.float(), cap.g.float(), cap.num_tokens)
    layer = _empty()
    layer.add_covariance(cap32)
    a_sum, g_sum = _explicit_sums([cap32])  # explicit sums of the float32 values, in float64
    assert layer.a_sum.dtype == F64
    torch.testing.assert_close(layer.a_sum, a_sum, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(layer.g_sum, g_sum, rtol=1e-6, atol=1e-5)


def test_merge_of_two_shards_equals_one_pass():
    captures = [_capture(seed) for seed in range(4)]
    whole = _fitted(captures)
    first, second = _empty(), _empty()
    for cap in captures[:2]:
        first.add_covariance(cap)
    for cap in captures[2:]:
        second.add_covariance(cap)
    first.merge(second)
    torch.testing.assert_close(first.a_sum, whole.a_sum, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(first.g_sum, whole.g_sum, rtol=1e-12, atol=1e-12)
    assert (first.a_count, first.g_count) == (whole.a_count, whole.g_count) == (4 * 11, 4 * 3)
    # The corrected eigenvalue sums merge the same way (in the eigenbasis of the whole data).
    first.eigendecompose("layer")
    halves = []
    for part in (captures[:2], captures[2:]):
        shard = _empty()
        shard.a_eigvecs, shard.g_eigvecs = whole.a_eigvecs, whole.g_eigvecs
        shard.l_sum = sum(rotate(c, whole, F64).square().sum(dim=(0, 1)) for c in part)
        shard.l_count = sum(c.a.shape[0] for c in part)
        halves.append(shard)
    merged = _empty()
    merged.merge(halves[0])  # l_sum None + shard: a copy, not the same tensor
    assert merged.l_sum is not halves[0].l_sum
    merged.merge(halves[1])
    torch.testing.assert_close(merged.corrected_eigenvalues(), whole.corrected_eigenvalues(), rtol=1e-12, atol=0)
    assert merged.l_count == whole.l_count == 12


def test_eigendecompose_is_orthonormal_and_reconstructs_the_covariances():
    captures = [_capture(seed) for seed in range(3)]
    layer = _fitted(captures)
    a_sum, g_sum = _explicit_sums(captures)
    for vals, vecs, cov in ((layer.a_eigvals, layer.a_eigvecs, a_sum / 33), (layer.g_eigvals, layer.g_eigvecs, g_sum / 9)):
        n = cov.shape[0]
        torch.testing.assert_close(vecs.T @ vecs, torch.eye(n, dtype=F64), rtol=0, atol=1e-12)
        torch.testing.assert_close(vecs @ torch.diag(vals) @ vecs.T, cov, rtol=1e-10, atol=1e-12)
        assert torch.all(vals[1:] >= vals[:-1])  # ascending
        np.testing.assert_allclose(vals.numpy(), np.linalg.eigvalsh(cov.numpy()), rtol=1e-10, atol=1e-12)
    assert layer.a_count == 33 and layer.g_count == 9


def test_eigendecompose_refuses_non_finite_covariances():
    layer = _empty()
    layer.add_covariance(_capture(0))
    layer.g_sum[1, 2] = float("nan")
    with pytest.raises(FactorsError, match=r"layer\.x gradients covariance has 1 non-finite"):
        layer.eigendecompose("layer.x")


def test_corrected_eigenvalues_are_mean_squared_rotated_gradients():
    captures = [_capture(seed) for seed in range(3)]
    layer = _fitted(captures)
    u_a, u_g = layer.a_eigvecs, layer.g_eigvecs
    expected = torch.zeros(3, 5, dtype=F64)
    examples = 0
    for cap in captures:
        for b in range(cap.a.shape[0]):
            examples += 1
            for s in range(cap.g.shape[0]):
                dw = sum(torch.outer(cap.g[s, b, t], cap.a[b, t]) for t in range(cap.a.shape[1]))
                expected += (u_g.T @ dw @ u_a) ** 2
    expected /= examples
    torch.testing.assert_close(layer.corrected_eigenvalues(), expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(layer.kfac_eigenvalues(), torch.outer(layer.g_eigvals.clamp_min(0),
                                                                     layer.a_eigvals.clamp_min(0)))


def test_corrected_eigenvalues_need_fitting():
    layer = _empty()
    with pytest.raises(FactorsError, match="not fitted"):
        layer.corrected_eigenvalues()
    layer.l_sum = torch.zeros(3, 5, dtype=F64)
    with pytest.raises(FactorsError, match="not fitted"):
        layer.corrected_eigenvalues()  # l_count == 0


def test_engine_corrected_eigenvalues_match_autograd_gradients(tokenizer):
    """The fitted L of a real (tiny) model, against per-example DW from autograd on the layer parameters."""
    model = TinyMLP()
    engine = InfluenceEngine(model, tokenizer, EngineConfig(layers="token_proj,classifier", fisher="empirical",
                                                           dtype="float64", batch_size=3))
    factors = engine.fit(TEXTS, LABELS)
    double = copy.deepcopy(model).double().eval()
    for name in engine.layers:
        layer = factors.layers[name]
        module = dict(double.named_modules())[name]
        expected = torch.zeros(layer.shape, dtype=F64)
        for text, label in zip(TEXTS, LABELS):
            enc = tokenizer([text], return_tensors="pt", truncation=True, max_length=128)
            logits = double(enc["input_ids"], enc["attention_mask"])
            loss = nn.functional.cross_entropy(logits, torch.tensor([label]))
            dw, db = torch.autograd.grad(loss, [module.weight, module.bias])
            full = torch.cat([dw, db.unsqueeze(1)], 1)
            expected += (layer.g_eigvecs.T @ full @ layer.a_eigvecs) ** 2
        expected /= len(TEXTS)
        torch.testing.assert_close(layer.corrected_eigenvalues(), expected, rtol=1e-8, atol=1e-14)
        assert layer.l_count == len(TEXTS)
        torch.testing.assert_close(factors.eigenvalues(name), expected, rtol=1e-8, atol=1e-14)
        torch.testing.assert_close(factors.eigenvalues(name, "kfac"), layer.kfac_eigenvalues())


@pytest.mark.parametrize(
    ("tokens", "width", "out", "terms"),
    [
        (1, 5, 3, 2),  # one token: rotating the tokens is cheaper
        (50, 4, 3, 1),  # many tokens: forming DW first is cheaper
        (6, 7, 4, 3),
    ],
)
def test_rotate_equals_ug_t_dw_ua(tokens, width, out, terms):
    cap = _capture(7, batch=2, tokens=tokens, width=width, out=out, terms=terms, pads=0)
    gen = torch.Generator().manual_seed(3)
    layer = LayerFactors(torch.zeros(width, width, dtype=F64), torch.zeros(out, out, dtype=F64))
    layer.a_eigvecs = torch.linalg.qr(torch.randn(width, width, generator=gen, dtype=F64))[0]
    layer.g_eigvecs = torch.linalg.qr(torch.randn(out, out, generator=gen, dtype=F64))[0]
    rotated = rotate(cap, layer, F64)
    plain = rotate(cap, None, F64)
    assert tuple(rotated.shape) == tuple(plain.shape) == (terms, 2, out, width)
    for s in range(terms):
        for b in range(2):
            dw = sum(torch.outer(cap.g[s, b, t], cap.a[b, t]) for t in range(tokens))
            torch.testing.assert_close(plain[s, b], dw, rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(rotated[s, b], layer.g_eigvecs.T @ dw @ layer.a_eigvecs, rtol=1e-10,
                                       atol=1e-12)


def _factors(fingerprint: str = "f" * 20, *, with_l: bool = True) -> Factors:
    layers = {"enc.ffn": _fitted([_capture(0), _capture(1)]), "head": _fitted([_capture(2)])}
    if not with_l:
        for layer in layers.values():
            layer.l_sum, layer.l_count = None, 0
    return Factors(layers, "ekfac" if with_l else "kfac", "true", fingerprint, num_examples=6,
                   meta={"max_length": 32, "note": "tiny"})


def test_save_load_round_trip(tmp_path):
    factors = _factors()
    path = factors.save(tmp_path / "sub" / "factors.safetensors")
    assert path == tmp_path / "sub" / "factors.safetensors"
    loaded = Factors.load(path)
    assert loaded.layer_names == ["enc.ffn", "head"]
    assert (loaded.method, loaded.fisher, loaded.fingerprint, loaded.num_examples) == ("ekfac", "true", "f" * 20, 6)
    assert loaded.meta == {"max_length": 32, "note": "tiny"}
    for name, layer in factors.layers.items():
        other = loaded.layers[name]
        for key in ("a_sum", "g_sum", "a_eigvals", "a_eigvecs", "g_eigvals", "g_eigvecs", "l_sum"):
            assert torch.equal(getattr(other, key), getattr(layer, key)), key
            assert getattr(other, key).dtype == F64
        assert (other.a_count, other.g_count, other.l_count) == (layer.a_count, layer.g_count, layer.l_count)
        torch.testing.assert_close(loaded.eigenvalues(name), factors.eigenvalues(name), rtol=0, atol=0)
    assert loaded.num_tokens == factors.num_tokens == 22
    side = json.loads(path.with_suffix(".json").read_text())
    assert side["format_version"] == FORMAT_VERSION
    assert side["model_fingerprint"] == "f" * 20
    assert side["layers"] == ["enc.ffn", "head"]
    assert side["num_tokens"] == {"enc.ffn": 22, "head": 11}
    assert side["shapes"] == {"enc.ffn": [3, 5], "head": [3, 5]}
    assert side["counts"] == {"enc.ffn": [22, 6, 6], "head": [11, 3, 3]}
    assert (side["max_length"], side["note"]) == (32, "tiny")
    assert side["versions"]["torch"] == torch.__version__
    assert not (path.parent / "factors.safetensors.tmp").exists()


def test_save_load_round_trip_without_eigenvalue_correction(tmp_path):
    loaded = Factors.load(_factors(with_l=False).save(tmp_path / "kfac.safetensors"))
    assert loaded.method == "kfac"
    assert all(layer.l_sum is None and layer.l_count == 0 for layer in loaded.layers.values())
    head = loaded.layers["head"]
    torch.testing.assert_close(loaded.eigenvalues("head"),
                               torch.outer(head.g_eigvals.clamp_min(0), head.a_eigvals.clamp_min(0)))
    with pytest.raises(FactorsError, match="not fitted"):
        loaded.eigenvalues("head", "ekfac")


def test_load_refuses_what_is_not_a_factors_file(tmp_path):
    with pytest.raises(FactorsError, match="no factors file"):
        Factors.load(tmp_path / "missing.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(FactorsError, match="not a factors file"):
        Factors.load(junk)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"x": torch.zeros(2)}, str(foreign))  # valid safetensors, but no influence_core metadata
    with pytest.raises(FactorsError, match="not a factors file"):
        Factors.load(foreign)
    future = tmp_path / "future.safetensors"
    save_file({"x": torch.zeros(2)}, str(future), metadata={"influence_core": json.dumps({"format_version": 99})})
    with pytest.raises(FactorsError, match=f"format 99, expected {FORMAT_VERSION}"):
        Factors.load(future)


def test_check_compatible():
    factors = _factors()
    factors.check_compatible("f" * 20, ["enc.ffn", "head"], "ekfac")
    factors.check_compatible("f" * 20, ["head"], "kfac")
    with pytest.raises(FactorsError, match="another model"):
        factors.check_compatible("0" * 20, ["head"], "ekfac")
    with pytest.raises(FactorsError, match="do not cover layer.*classifier"):
        factors.check_compatible("f" * 20, ["head", "classifier"], "ekfac")
    kfac = _factors(with_l=False)
    kfac.check_compatible("f" * 20, ["enc.ffn", "head"], "kfac")
    kfac.check_compatible("f" * 20, ["head"], "identity")
    with pytest.raises(FactorsError, match="no EK-FAC eigenvalue correction"):
        kfac.check_compatible("f" * 20, ["head"], "ekfac")


def test_model_fingerprint_tracks_every_weight():
    model = tiny_bert()
    before = model_fingerprint(model)
    assert re.fullmatch("[0-9a-f]{20}", before)
    assert model_fingerprint(copy.deepcopy(model)) == before
    assert model_fingerprint(tiny_bert()) == before  # same seed, same weights
    with torch.no_grad():
        model.classifier.bias[1] += 1e-3
    changed = model_fingerprint(model)
    assert changed != before
    with torch.no_grad():
        model.classifier.bias[1] -= 1e-3
        model.bert.encoder.layer[1].output.dense.weight[0, 0] += 1e-3
    assert model_fingerprint(model) not in (before, changed)
    assert model_fingerprint(tiny_bert(seed=1)) != before
    assert model_fingerprint(tiny_bert(num_labels=3)) != before
    mlp = TinyMLP()
    mlp_print = model_fingerprint(mlp)
    assert mlp_print != before and model_fingerprint(TinyMLP()) == mlp_print
    with torch.no_grad():
        mlp.token_proj.weight[2, 3] = mlp.token_proj.weight[2, 3] + 0.5
    assert model_fingerprint(mlp) != mlp_print
