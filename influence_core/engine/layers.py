"""Which ``torch.nn.Linear`` layers to track, chosen by name or by structural group.

Groups are detected from the module tree, not from one model family's names, so they work for BERT,
DistilBERT, RoBERTa, MiniLM and similar encoders:

* the transformer blocks are the children of the largest ``nn.ModuleList`` whose children share one
  class and contain Linear layers;
* inside a block, a Linear that maps d -> d is an attention projection (query, key, value, output);
  one that changes the width (d -> d_ff or d_ff -> d) belongs to the feed-forward network (``ffn``);
* every Linear outside the blocks (pooler, pre-classifier, classifier) is part of the ``head``.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from influence_core.errors import ConfigError, ModelError

GROUPS = ("ffn", "attention", "head", "all")


def linear_layers(model: nn.Module) -> dict[str, nn.Linear]:
    """All Linear modules of ``model`` by full name, in registration order."""
    return {name: module for name, module in model.named_modules() if isinstance(module, nn.Linear) and name}


def _block_prefixes(model: nn.Module) -> list[str]:
    best: list[str] = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        kinds = {type(child) for child in module}
        has_linear = any(isinstance(m, nn.Linear) for m in module[0].modules())
        if len(kinds) == 1 and has_linear and len(module) > len(best):
            best = [f"{name}.{index}." if name else f"{index}." for index in range(len(module))]
    return best


def layer_groups(model: nn.Module) -> dict[str, list[str]]:
    """Map each group (``ffn``, ``attention``, ``head``, ``all``) to its Linear module names."""
    linears = linear_layers(model)
    blocks = _block_prefixes(model)
    groups: dict[str, list[str]] = {group: [] for group in GROUPS}
    for name, module in linears.items():
        if any(name.startswith(prefix) for prefix in blocks):
            group = "attention" if module.in_features == module.out_features else "ffn"
        else:
            group = "head"
        groups[group].append(name)
        groups["all"].append(name)
    return groups


def select_layers(model: nn.Module, spec: str | Sequence[str]) -> list[str]:
    """Resolve a selection (groups and/or module names) to Linear module names in model order.

    Raises:
        ConfigError: a token is neither a group nor a Linear module's name.
        ModelError: the model has no Linear layer, or the selection resolves to none.
    """
    tokens = [t.strip() for t in (spec.split(",") if isinstance(spec, str) else spec) if t and t.strip()]
    linears = linear_layers(model)
    if not linears:
        raise ModelError("this model has no torch.nn.Linear layer, so there is nothing to track")
    groups = layer_groups(model)
    chosen: set[str] = set()
    unknown = []
    for token in tokens:
        if token in groups:
            chosen.update(groups[token])
        elif token in linears:
            chosen.add(token)
        else:
            unknown.append(token)
    if unknown:
        examples = ", ".join(list(linears)[:3])
        raise ConfigError(
            f"unknown layer(s) {', '.join(map(repr, unknown))}: use a group ({', '.join(GROUPS)}) "
            f"or a Linear module name such as {examples}"
        )
    if not chosen:
        empty = ", ".join(tokens) or "(nothing)"
        raise ModelError(f"the selection {empty} contains no trackable Linear layer in this model; try 'all'")
    return [name for name in linears if name in chosen]


__all__ = ["GROUPS", "layer_groups", "linear_layers", "select_layers"]
