"""A dense, obviously-correct influence reference for tiny models.

One example at a time (no padding, no batching), per-example gradients from plain autograd on the
parameters, covariances from forward hooks, explicit eigendecompositions, and the damped
(EK-)FAC curvature written out as a dense matrix ``Q diag(L + damping) Q^T`` with
``Q = U_G (x) U_A``, solved with ``torch.linalg.solve``.
"""

from __future__ import annotations

import copy
import inspect

import torch
from torch import nn


def _forward(model, tokenizer, text):
    enc = dict(tokenizer([text], return_tensors="pt", truncation=True, max_length=32))
    if "token_type_ids" not in inspect.signature(model.forward).parameters:
        enc.pop("token_type_ids", None)
    out = model(**enc)
    return getattr(out, "logits", out)[0], enc["attention_mask"]


def _label_weights(logits, fisher, label):
    probs = torch.softmax(logits.detach(), -1)
    if fisher == "true":
        return [(probs[c], c) for c in range(len(probs))]
    return [(torch.tensor(1.0, dtype=logits.dtype), label)]


class Reference:
    def __init__(self, model: nn.Module, tokenizer, layers: list[str]):
        self.model = copy.deepcopy(model).double().eval()
        self.tokenizer = tokenizer
        self.layers = layers
        self.modules = dict(self.model.named_modules())

    def _pass(self, text, label, fisher):
        """Returns per-layer activation covariance, token count, and list of (weight, DW, g^T g) per term."""
        captured = {}

        def hook(name):
            def fn(module, inputs, output):
                output.retain_grad()
                captured[name] = (inputs[0].detach(), output)
            return fn

        handles = [self.modules[n].register_forward_hook(hook(n)) for n in self.layers]
        logits, _ = _forward(self.model, self.tokenizer, text)
        for h in handles:
            h.remove()
        terms = []
        for weight, c in _label_weights(logits, fisher, label):
            loss = nn.functional.cross_entropy(logits.unsqueeze(0), torch.tensor([c]))
            params, outputs = [], []
            for n in self.layers:
                module = self.modules[n]
                params.append(module.weight)
                if module.bias is not None:
                    params.append(module.bias)
                outputs.append(captured[n][1])
            grads = torch.autograd.grad(loss, params + outputs, retain_graph=True)
            param_grads, out_grads = grads[: len(params)], grads[len(params):]
            per_layer, i = {}, 0
            for j, n in enumerate(self.layers):
                dw = param_grads[i]
                i += 1
                if self.modules[n].bias is not None:
                    dw = torch.cat([dw, param_grads[i].unsqueeze(1)], 1)
                    i += 1
                g = out_grads[j].reshape(-1, out_grads[j].shape[-1])
                per_layer[n] = (dw, g.T @ g)
            terms.append((weight, per_layer))
        acts = {}
        for n in self.layers:
            a = captured[n][0].reshape(-1, captured[n][0].shape[-1])
            if self.modules[n].bias is not None:
                a = torch.cat([a, torch.ones(a.shape[0], 1, dtype=a.dtype)], 1)
            acts[n] = (a.T @ a, a.shape[0])
        return acts, terms

    def fit(self, texts, labels=None, fisher="true"):
        labels = labels or [0] * len(texts)
        a_sum, g_sum, tokens = {}, {}, {}
        passes = [self._pass(t, y, fisher) for t, y in zip(texts, labels)]
        for acts, terms in passes:
            for n in self.layers:
                a_sum[n] = a_sum.get(n, 0) + acts[n][0]
                tokens[n] = tokens.get(n, 0) + acts[n][1]
                for weight, per_layer in terms:
                    g_sum[n] = g_sum.get(n, 0) + weight * per_layer[n][1]
        self.eig = {}
        for n in self.layers:
            la, ua = torch.linalg.eigh(a_sum[n] / tokens[n])
            lg, ug = torch.linalg.eigh(g_sum[n] / len(texts))
            corrected = 0
            for _, terms in passes:
                for weight, per_layer in terms:
                    corrected = corrected + weight * (ug.T @ per_layer[n][0] @ ua) ** 2
            self.eig[n] = dict(ua=ua, ug=ug, la=la, lg=lg, L=corrected / len(texts), A=a_sum[n] / tokens[n],
                               G=g_sum[n] / len(texts))
        return self

    def gradient(self, text, label):
        _, terms = self._pass(text, label, "empirical")
        return {n: terms[0][1][n][0] for n in self.layers}

    def curvature(self, n, method, damping):
        e = self.eig[n]
        if method == "identity":
            return None
        eigenvalues = e["L"] if method == "ekfac" else torch.outer(e["lg"].clamp_min(0), e["la"].clamp_min(0))
        q = torch.kron(e["ug"], e["ua"])
        return q @ torch.diag(eigenvalues.reshape(-1) + damping) @ q.T

    def influences(self, test, test_labels, train, train_labels, method="ekfac", damping=1e-3):
        """Dense [n_test, n_train] and per-layer dict; positive = helpful."""
        tq = [self.gradient(t, y) for t, y in zip(test, test_labels)]
        tm = [self.gradient(t, y) for t, y in zip(train, train_labels)]
        per_layer = {}
        for n in self.layers:
            h = self.curvature(n, method, damping)
            q = torch.stack([g[n].reshape(-1) for g in tq])
            m = torch.stack([g[n].reshape(-1) for g in tm])
            pre = q if h is None else torch.linalg.solve(h, q.T).T
            per_layer[n] = (pre @ m.T).numpy()
        return sum(per_layer.values()), per_layer
