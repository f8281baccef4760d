"""The floor: one forward and one backward pass over the training batches, nothing else.

Parameters are frozen and the word-embedding output is the leaf that requires grad, so the backward pass
computes the gradient at every layer's output and no parameter gradient; per-example losses are summed;
no hooks. Every stage of every contender is reported as a multiple of this time.
"""

from __future__ import annotations

import torch

from benchmarks.common import Report, load_model, load_workload, timed, worker_args, write_result


def floor_pass(model: torch.nn.Module, batches: list[dict[str, torch.Tensor]]) -> float:
    """Forward + backward over ``batches``; returns the summed loss (so nothing is optimised away)."""
    embeddings = model.get_input_embeddings()
    total = 0.0
    for batch in batches:
        with torch.no_grad():
            leaf = embeddings(batch["input_ids"])
        leaf.requires_grad_(True)
        logits = model(inputs_embeds=leaf, attention_mask=batch["attention_mask"],
                       token_type_ids=batch["token_type_ids"]).logits
        loss = torch.nn.functional.cross_entropy(logits, batch["labels"], reduction="sum")
        (grad,) = torch.autograd.grad(loss, leaf)
        total += float(loss) + 0.0 * float(grad[0, 0, 0])
    return total


def main(argv: list[str] | None = None) -> None:
    args = worker_args("floor", argv)
    workload = load_workload(args.workload)
    model = load_model(workload)
    for param in model.parameters():
        param.requires_grad_(False)
    report = Report("floor", "floor")
    with timed(report):
        loss = floor_pass(model, workload.train)
    report.notes = {"summed_loss": loss, "batches": len(workload.train)}
    write_result(args.out, report)


if __name__ == "__main__":
    main()
