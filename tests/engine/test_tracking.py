"""What LayerTracker captures, checked against plain autograd on the layer parameters."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from influence_core.engine.batches import batches, encode, make_batch
from influence_core.engine.tracking import (
    LayerTracker,
    analysis_mode,
    label_terms,
    model_logits,
    true_fisher_terms,
)
from influence_core.errors import ModelError
from tests.conftest import LABELS, TEXTS, TinyMLP, tiny_bert


class UnmaskedSum(nn.Module):
    """Sums a token-wise Linear over *all* positions, pads included, so pads get a non-zero gradient."""

    def __init__(self, num_labels: int = 3):
        super().__init__()
        torch.manual_seed(1)
        self.embed = nn.Embedding(30522, 4)
        self.proj = nn.Linear(4, 5)
        self.classifier = nn.Linear(5, num_labels)

    def forward(self, input_ids, attention_mask):
        return self.classifier(torch.tanh(self.proj(self.embed(input_ids))).sum(1))


def _capture(model, layers, batch, terms=None):
    tracker = LayerTracker(model, layers)
    with analysis_mode(model, torch.float64, "cpu"), tracker.hooks():
        return tracker.run(batch, terms or label_terms(batch.labels))


def _autograd_dw(model, layer, batch, row, loss_label):
    """d CE(logits_row, label) / d(weight | bias) of one example, run on its own (no padding)."""
    model = copy.deepcopy(model).double().eval()
    n = int(batch.attention_mask[row].sum())
    inputs = {key: value[row : row + 1, :n] for key, value in batch.inputs.items()}
    logits = model_logits(model, type(batch)(batch.index[row : row + 1], inputs, batch.labels[row : row + 1]))
    loss = nn.functional.cross_entropy(logits, torch.tensor([loss_label]))
    module = dict(model.named_modules())[layer]
    params = [module.weight] + ([module.bias] if module.bias is not None else [])
    grads = torch.autograd.grad(loss, params)
    return torch.cat([grads[0], grads[1].unsqueeze(1)], 1) if len(grads) == 2 else grads[0]


CASES = {
    "mlp": (TinyMLP, ["token_proj", "hidden", "classifier"]),
    "bert": (tiny_bert, ["bert.encoder.layer.0.intermediate.dense", "bert.encoder.layer.1.output.dense",
                         "bert.pooler.dense", "classifier"]),
}


@pytest.mark.parametrize("family", list(CASES))
def test_per_example_gradient_equals_autograd(family, tokenizer):
    build, layers = CASES[family]
    model = build()
    encoded = encode(tokenizer, TEXTS, LABELS, 32)
    for batch in batches(encoded, 4):  # mixed lengths, so most rows are padded
        _, captures = _capture(model, layers, batch)
        for name in layers:
            capture = captures[name]
            assert capture.g.shape[0] == 1  # one gradient term for label_terms
            for row in range(len(batch)):
                # DW_n = sum_t g_t a_t^T
                dw = capture.g[0, row].T @ capture.a[row]
                expected = _autograd_dw(model, name, batch, row, int(batch.labels[row]))
                torch.testing.assert_close(dw, expected, rtol=1e-9, atol=1e-12)


def test_activations_have_a_bias_column_and_pads_are_zeroed(tokenizer):
    model = TinyMLP()
    encoded = encode(tokenizer, TEXTS, LABELS, 32)
    batch = make_batch(encoded, np.arange(len(TEXTS)))
    _, captures = _capture(model, ["token_proj", "hidden"], batch)
    lengths = batch.attention_mask.sum(1)
    a = captures["token_proj"].a
    embedded = model.embed(batch.inputs["input_ids"]).detach().double()
    assert tuple(a.shape) == (len(TEXTS), batch.attention_mask.shape[1], 7)
    for row, n in enumerate(lengths.tolist()):
        torch.testing.assert_close(a[row, :n, :6], embedded[row, :n])
        assert a[row, :n, 6].tolist() == [1.0] * n
        assert a[row, n:].abs().sum().item() == 0.0
        assert captures["token_proj"].g[:, row, n:].abs().sum().item() == 0.0
    assert captures["token_proj"].num_tokens == int(lengths.sum()) == sum(encoded.lengths.tolist())
    # A 2-D input (the pooled vector) is one "token" per example, and a bias-free layer gets no ones column.
    hidden = captures["hidden"]
    assert tuple(hidden.a.shape) == (len(TEXTS), 1, 7)
    assert tuple(hidden.g.shape) == (1, len(TEXTS), 1, 5)
    assert hidden.num_tokens == len(TEXTS)


def test_pad_gradients_are_zeroed_even_when_pads_reach_the_output(tokenizer):
    model = UnmaskedSum()
    encoded = encode(tokenizer, TEXTS, [0, 1, 2, 0, 1, 2, 0], 32)
    batch = make_batch(encoded, np.arange(len(TEXTS)))
    _, captures = _capture(model, ["proj"], batch)
    capture = captures["proj"]
    # The same pass without the tracker: pads do get a gradient here, so zeroing them is the tracker's work.
    double = copy.deepcopy(model).double()
    hidden = double.proj(double.embed(batch.inputs["input_ids"]))
    logits = double.classifier(torch.tanh(hidden).sum(1))
    vectors = label_terms(batch.labels)(logits.detach(), batch)[0]
    (raw_g,) = torch.autograd.grad(logits, hidden, grad_outputs=vectors)
    mask = batch.attention_mask.bool()
    assert raw_g[~mask].abs().sum().item() > 1e-3
    torch.testing.assert_close(capture.g[0][mask], raw_g[mask])
    assert capture.g[0][~mask].abs().sum().item() == 0.0
    assert capture.a[~mask].abs().sum().item() == 0.0


def test_fisher_terms_give_one_backward_per_term_with_autograd_gradients(tokenizer):
    model = TinyMLP(num_labels=3)
    encoded = encode(tokenizer, TEXTS[:3], [0, 1, 2], 32)
    batch = make_batch(encoded, np.arange(3))
    logits, captures = _capture(model, ["classifier"], batch, true_fisher_terms)
    capture = captures["classifier"]
    assert capture.g.shape[0] == 3
    probs = torch.softmax(logits, -1)
    for row in range(3):
        # Term c is v_c = sqrt(p_c) (e_c - p) = -sqrt(p_c) (p - e_c): minus sqrt(p_c) times the
        # cross-entropy gradient of label c (the sign cancels in every square the engine takes).
        for c in range(3):
            dw = capture.g[c, row].T @ capture.a[row]
            expected = -probs[row, c].sqrt() * _autograd_dw(model, "classifier", batch, row, c)
            torch.testing.assert_close(dw, expected, rtol=1e-9, atol=1e-12)


def _fisher(terms):
    return torch.einsum("sbc,sbd->bcd", terms, terms)


@pytest.mark.parametrize("classes", [2, 3, 5])
def test_true_fisher_terms_square_to_the_logit_fisher(classes):
    torch.manual_seed(classes)
    logits = 3 * torch.randn(4, classes, dtype=torch.float64)
    terms = true_fisher_terms(logits, None)
    assert tuple(terms.shape) == ((1 if classes == 2 else classes), 4, classes)
    p = torch.softmax(logits, -1)
    expected = torch.stack([torch.diag(row) - torch.outer(row, row) for row in p])
    torch.testing.assert_close(_fisher(terms), expected, rtol=1e-12, atol=1e-14)


def test_binary_true_fisher_term_is_written_out():
    logits = torch.tensor([[0.0, 0.0], [2.0, -1.0]], dtype=torch.float64)
    terms = true_fisher_terms(logits, None)
    p0 = 1 / (1 + np.exp(-3.0))
    scale = np.sqrt(p0 * (1 - p0))
    np.testing.assert_allclose(terms[0].numpy(), [[0.5, -0.5], [scale, -scale]], rtol=1e-12)


def test_label_terms_equal_softmax_minus_onehot_and_the_cross_entropy_gradient():
    torch.manual_seed(0)
    logits = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 2, 1, 1, 0])
    terms = label_terms(labels)(logits.detach(), None)
    assert tuple(terms.shape) == (1, 5, 3)
    expected = torch.softmax(logits.detach(), -1) - torch.eye(3, dtype=torch.float64)[labels]
    torch.testing.assert_close(terms[0], expected, rtol=1e-12, atol=1e-14)
    (grad,) = torch.autograd.grad(nn.functional.cross_entropy(logits, labels, reduction="sum"), logits)
    torch.testing.assert_close(terms[0], grad, rtol=1e-12, atol=1e-14)


def _state(model):
    return (model.training, [m.training for m in model.modules()],
            {name: (p.dtype, p.requires_grad) for name, p in model.named_parameters()})


def test_analysis_mode_sets_and_restores_dtype_flags_and_mode():
    model = TinyMLP().train()
    model.embed.weight.requires_grad_(False)
    before = _state(model)
    weights = {name: p.detach().clone() for name, p in model.named_parameters()}
    with torch.no_grad(), analysis_mode(model, torch.float64, "cpu") as inside:
        assert inside is model
        assert torch.is_grad_enabled()
        assert not any(m.training for m in model.modules())
        assert {p.dtype for p in model.parameters()} == {torch.float64}
        assert not any(p.requires_grad for p in model.parameters())
    assert _state(model) == before
    assert before[2]["embed.weight"] == (torch.float32, False)
    assert before[2]["token_proj.weight"] == (torch.float32, True)
    for name, p in model.named_parameters():
        assert torch.equal(p, weights[name])  # float32 -> float64 -> float32 is exact


def test_analysis_mode_restores_after_an_exception():
    model = TinyMLP().train()
    model.classifier.bias.requires_grad_(False)
    before = _state(model)
    with pytest.raises(RuntimeError, match="boom"), analysis_mode(model, torch.float64, "cpu"):
        assert model.classifier.weight.dtype == torch.float64
        raise RuntimeError("boom")
    assert _state(model) == before
    model.eval()
    with pytest.raises(KeyError), analysis_mode(model, torch.float32, "cpu"):
        raise KeyError("x")
    assert _state(model)[0] is False
    assert model.classifier.weight.requires_grad and not model.classifier.bias.requires_grad


def test_tracker_refuses_layers_off_the_forward_path(tokenizer):
    class Unused(TinyMLP):
        def __init__(self):
            super().__init__()
            self.spare = nn.Linear(5, 5)

    model = Unused()
    batch = make_batch(encode(tokenizer, TEXTS[:2], [0, 1], 16), np.arange(2))
    with pytest.raises(ModelError, match="spare"):
        _capture(model, ["classifier", "spare"], batch)


def test_tracker_refuses_a_layer_called_twice(tokenizer):
    class Twice(TinyMLP):
        def forward(self, input_ids, attention_mask, token_type_ids=None):
            first = self.hidden(self.token_proj(self.embed(input_ids)[:, 0]))  # 7 -> 5
            second = self.hidden(torch.cat([first, first[:, :2]], 1))  # the same layer again
            return self.classifier(second)

    model = Twice()
    batch = make_batch(encode(tokenizer, TEXTS[:2], [0, 1], 16), np.arange(2))
    with pytest.raises(ModelError, match="more than once"):
        _capture(model, ["hidden"], batch)
