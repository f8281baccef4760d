"""One forward pass and one backward pass per gradient term, capturing what EK-FAC needs per layer.

For a tracked Linear layer with input ``a`` (plus a column of ones for the bias) and output ``s``, the
pass captures ``a`` [B, T, in(+1)] and the gradient ``g = d(loss_n)/ds`` [S, B, T, out] for each of
``S`` gradient terms. A term is a vector ``v`` in logit space per example: the backward pass propagates
``v`` from the logits, so the cross-entropy gradient of label ``y`` is ``v = softmax(z) - e_y``.
Padding tokens are zeroed in both. No parameter ``.grad`` is touched: gradients are taken with
``torch.autograd.grad`` with respect to the layer outputs only.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from influence_core.engine.batches import Batch
from influence_core.errors import ModelError


@dataclass
class LayerCapture:
    """What one batch gave for one layer.

    Attributes:
        a: Inputs with the bias column, pads zeroed, shape [B, T, in(+1)] (T = 1 for 2-D inputs).
        g: Output gradients, pads zeroed, shape [S, B, T, out].
        num_tokens: Real (non-padding) tokens in ``a``.
    """

    a: torch.Tensor
    g: torch.Tensor
    num_tokens: int


TermFn = Callable[[torch.Tensor, Batch], torch.Tensor]
"""Maps detached logits [B, C] and the batch to logit-space gradient vectors [S, B, C]."""


def label_terms(labels: torch.Tensor) -> TermFn:
    """The cross-entropy gradient of the given labels: one term, ``softmax(z) - e_y``."""

    def terms(logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        probs = torch.softmax(logits, dim=-1)
        return (probs - nn.functional.one_hot(labels, logits.shape[-1]).to(probs.dtype)).unsqueeze(0)

    return terms


def true_fisher_terms(logits: torch.Tensor, batch: Batch) -> torch.Tensor:
    """Exact square-root factors of the logit-space Fisher ``diag(p) - p p^T``.

    ``sum_c v_c v_c^T = diag(p) - p p^T`` with ``v_c = sqrt(p_c) (e_c - p)``; for two classes one term
    ``sqrt(p_0 p_1) (1, -1)`` suffices, so a binary model needs a single backward pass.
    """
    probs = torch.softmax(logits, dim=-1)
    classes = probs.shape[-1]
    if classes == 2:
        scale = torch.sqrt(probs[:, 0] * probs[:, 1])
        return torch.stack([scale, -scale], dim=-1).unsqueeze(0)
    eye = torch.eye(classes, dtype=probs.dtype, device=probs.device)
    # [C, B, C]: term c for example b is sqrt(p_bc) (e_c - p_b)
    return probs.sqrt().T.unsqueeze(-1) * (eye.unsqueeze(1) - probs.unsqueeze(0))


def sampled_terms(generator: torch.Generator) -> TermFn:
    """One label per example drawn from the model's predictive distribution with ``generator``."""

    def terms(logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        probs = torch.softmax(logits, dim=-1)
        drawn = torch.multinomial(probs.double().cpu(), 1, generator=generator).squeeze(-1).to(logits.device)
        return (probs - nn.functional.one_hot(drawn, logits.shape[-1]).to(probs.dtype)).unsqueeze(0)

    return terms


def model_inputs(model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
    """The batch's tensors that ``model.forward`` accepts (DistilBERT takes no ``token_type_ids``)."""
    params = inspect.signature(model.forward).parameters
    if any(p.kind == inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return batch.inputs
    return {key: value for key, value in batch.inputs.items() if key in params}


def model_logits(model: nn.Module, batch: Batch) -> torch.Tensor:
    output = model(**model_inputs(model, batch))
    logits = getattr(output, "logits", output)
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        raise ModelError("the model must return class logits of shape [batch, classes]; is it a classifier?")
    if logits.shape[-1] < 2:
        raise ModelError("the model has a single output (a regression head); influence needs a classifier")
    return logits


class LayerTracker:
    """Forward hooks on the tracked layers; ``run`` does one forward and the backward passes."""

    def __init__(self, model: nn.Module, layer_names: list[str]):
        modules = dict(model.named_modules())
        self.model = model
        self.layer_names = layer_names
        self.modules = {name: modules[name] for name in layer_names}
        self._inputs: dict[str, torch.Tensor] = {}
        self._outputs: dict[str, torch.Tensor] = {}

    @contextlib.contextmanager
    def hooks(self) -> Iterator[None]:
        handles = [module.register_forward_hook(self._hook(name)) for name, module in self.modules.items()]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()
            self._inputs.clear()
            self._outputs.clear()

    def _hook(self, name: str):
        def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor):
            if name in self._outputs:
                raise ModelError(f"layer {name} is called more than once per forward pass; choose other layers")
            self._inputs[name] = inputs[0].detach()
            if not output.requires_grad:
                # Parameters are frozen, so the first tracked layer becomes the leaf gradients start from.
                output = output.detach().requires_grad_(True)
            self._outputs[name] = output
            return output

        return hook

    def forward(self, batch: Batch) -> torch.Tensor:
        """Forward only (inside ``hooks``); returns logits [B, C] attached to the graph."""
        self._inputs.clear()
        self._outputs.clear()
        return model_logits(self.model, batch)

    def run(self, batch: Batch, terms: TermFn, only: Sequence[str] | None = None) -> tuple[torch.Tensor, dict[str, LayerCapture]]:
        """Forward, then one backward per gradient term. Returns detached logits and per-layer captures.

        ``only``: capture just these tracked layers; the backward pass then stops at the lowest of them.
        """
        logits = self.forward(batch)
        vectors = terms(logits.detach(), batch)
        names = list(self.layer_names if only is None else only)
        outputs = [self._outputs[name] for name in names if name in self._outputs]
        missing = [name for name in names if name not in self._outputs]
        if missing:
            raise ModelError(f"layer(s) {', '.join(missing)} were not used by the forward pass")
        if not logits.requires_grad:
            raise ModelError("the logits do not depend on any tracked layer; choose layers on the path to the output")
        grads_per_term = []
        for s in range(vectors.shape[0]):
            grads = torch.autograd.grad(
                logits, outputs, grad_outputs=vectors[s], retain_graph=s < vectors.shape[0] - 1,
                allow_unused=True, materialize_grads=True,
            )
            grads_per_term.append(grads)
        mask = batch.attention_mask
        captures = {}
        for index, name in enumerate(names):
            a = self._inputs[name]
            g = torch.stack([grads[index] for grads in grads_per_term])  # [S, *output shape]
            captures[name] = _shape_capture(a, g, mask, self.modules[name].bias is not None)
        self._inputs.clear()
        self._outputs.clear()
        return logits.detach(), captures


def _shape_capture(a: torch.Tensor, g: torch.Tensor, mask: torch.Tensor, bias: bool) -> LayerCapture:
    batch = a.shape[0]
    if a.dim() == 2:
        a = a.unsqueeze(1)
        g = g.unsqueeze(2)
    elif a.dim() > 3:
        a = a.reshape(batch, -1, a.shape[-1])
        g = g.reshape(g.shape[0], batch, -1, g.shape[-1])
    if bias:
        a = torch.cat([a, torch.ones_like(a[..., :1])], dim=-1)
    num_tokens = a.shape[0] * a.shape[1]
    if a.shape[1] == mask.shape[1] and a.shape[1] > 1:
        token_mask = mask.to(a.dtype).unsqueeze(-1)
        a = a * token_mask
        g = g * token_mask.unsqueeze(0)
        num_tokens = int(mask.sum())
    return LayerCapture(a=a, g=g, num_tokens=num_tokens)


@contextlib.contextmanager
def analysis_mode(model: nn.Module, dtype: torch.dtype, device: torch.device | str) -> Iterator[nn.Module]:
    """Eval mode, frozen parameters, the requested dtype and device; everything restored afterwards."""
    was_training = model.training
    flags = [(p, p.requires_grad) for p in model.parameters()]
    first = next(model.parameters(), None)
    old_dtype = first.dtype if first is not None else dtype
    old_device = first.device if first is not None else torch.device(device)
    target = torch.device(device)
    moved = old_device != target or old_dtype != dtype
    if moved:
        model.to(device=target, dtype=dtype)
    model.eval()
    for param, _ in flags:
        param.requires_grad_(False)
    try:
        with torch.enable_grad():
            yield model
    finally:
        for param, flag in flags:
            param.requires_grad_(flag)
        if moved:
            model.to(device=old_device, dtype=old_dtype)
        model.train(was_training)


__all__ = ["LayerCapture", "LayerTracker", "analysis_mode", "label_terms", "model_logits", "sampled_terms",
           "true_fisher_terms"]
