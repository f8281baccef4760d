"""pyDVL ``EkfacInfluence`` on the benchmark workload; runs in ``benchmarks/.venvs/pydvl`` (numpy < 2).

Variants: ``kfac`` is ``EkfacInfluence(model)`` as it is usually called (``update_diagonal=False``: the
K-FAC eigenvalues ``lambda_G x lambda_A``); ``ekfac`` sets ``update_diagonal=True``. Both use
``hessian_regularization=<absolute damping>``. What pyDVL does differently from the engine and kronfluence
(read from pyDVL 0.10.0's source, not configurable):

* every token of every padded batch is a sample of the K-FAC blocks (no attention mask: padding
  activations enter ``A``), and both blocks are divided by the number of *examples*;
* its Fisher is label-free: the gradient of ``sum_c sqrt(p_c) log p_c`` (one backward per batch);
* its EK-FAC diagonal is a sum over tokens of squared rotated token gradients (cross-token terms dropped);
* per-example gradients come from ``torch.func.jacrev`` of a ``vmap``-ed loss.

pyDVL takes one tensor as the model input, so the batches are packed as ``[B, 3, T]`` (input ids,
attention mask, token types) and unpacked by a thin wrapper. Its influence sign is the same as the
engine's (``<H^-1 grad test, grad train>``, positive = helpful). Pairwise scores use pyDVL's own split:
``influence_factors`` of the test batches once, then ``influences_from_factors`` per training batch.
Self-influence is the diagonal of ``influences(x, y)`` per training batch (pyDVL has no self-influence call).
"""

from __future__ import annotations

import torch
from torch import nn

from benchmarks.common import (
    BatchDataset,
    Report,
    load_model,
    load_workload,
    package_version,
    timed,
    worker_args,
    write_result,
)


class PackedInputs(nn.Module):
    """``model(x)`` with ``x`` = [B, 3, T] (input ids, attention mask, token types) -> logits [B, C]."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # A ready 4-D boolean mask: from a 2-D one, transformers decides in Python whether it may skip the mask
        # (data-dependent control flow), which pyDVL's torch.func.vmap refuses. Same attention either way.
        mask = x[:, 1].bool()[:, None, None, :]
        return self.model(input_ids=x[:, 0], attention_mask=mask, token_type_ids=x[:, 2]).logits


def pack(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.stack([batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]], dim=1)


class PackedDataset(BatchDataset):
    def rows(self, indices):
        batch = super().rows(indices)
        return pack(batch), batch["labels"]


def wrapped_model(workload, layers: list[str]) -> PackedInputs:
    model = PackedInputs(load_model(workload))
    tracked = {f"model.{name}" for name in layers}
    for name, module in model.named_modules():
        for param in module.parameters(recurse=False):
            param.requires_grad_(name in tracked)
    return model


def main(argv: list[str] | None = None) -> None:
    from pydvl.influence.torch import EkfacInfluence
    from pydvl.influence.torch.util import EkfacRepresentation

    args = worker_args("pydvl", argv)
    workload = load_workload(args.workload)
    variant = args.variant or "kfac"
    if variant not in ("kfac", "ekfac"):
        raise SystemExit(f"unknown pyDVL variant {variant}: kfac or ekfac")
    model = wrapped_model(workload, workload.layers)
    bs = workload.batch_size
    train = PackedDataset(workload.train).loader(bs)
    state = f"{args.state}/ekfac_representation_{variant}.pt"
    report = Report(f"pydvl-{variant}", args.stage, notes={"variant": variant, "version": package_version("pydvl")})

    def influence(damping: float) -> EkfacInfluence:
        return EkfacInfluence(model, update_diagonal=variant == "ekfac", hessian_regularization=damping)

    def restore(found: EkfacInfluence) -> EkfacInfluence:
        saved = torch.load(state, weights_only=True)
        modules = [found.active_layers[name] for name in saved["layer_names"]]
        found.ekfac_representation = EkfacRepresentation(saved["layer_names"], modules, saved["evecs_a"],
                                                         saved["evecs_g"], saved["diags"])
        return found

    scores = None
    if args.stage == "fit":
        with timed(report):
            found = influence(workload.damping).fit(train)
            rep = found.ekfac_representation
            torch.save({"layer_names": list(rep.layer_names), "evecs_a": list(rep.evecs_a),
                        "evecs_g": list(rep.evecs_g), "diags": list(rep.diags)}, state)
        report.notes["active_layers"] = list(found.active_layers)
    elif args.stage == "pairwise":
        with timed(report):
            found = restore(influence(workload.damping))
            # [n_test, D]: H^-1 grad of each test example, one test batch at a time (pyDVL's per-sample
            # gradients cost grows with the square of the batch).
            factors = torch.cat([found.influence_factors(pack(b), b["labels"]) for b in workload.test])
            columns = [found.influences_from_factors(factors, x, y).detach() for x, y in train]
            scores = torch.cat(columns, dim=1).double().numpy()  # [n_test, n_train], positive = helpful
    elif args.stage == "self":
        with timed(report):
            found = restore(influence(workload.damping))
            scores = torch.cat([torch.diagonal(found.influences(x, y).detach()) for x, y in train]).double().numpy()
    else:
        raise SystemExit(f"pyDVL stage {args.stage} is not run (see benchmarks/README.md)")
    write_result(args.out, report, scores)


if __name__ == "__main__":
    main()
