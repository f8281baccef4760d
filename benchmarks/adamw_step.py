"""One AdamW step over the demo model's trainable weights: fused, ``foreach`` and the per-tensor loop.

Builds MiniLM with a two-class head from the shipped encoder, makes the fine-tune's parameter groups
(:func:`influence_core.training.finetune._parameter_groups`), fills every gradient with noise and times
``optimizer.step()``. Word embeddings fixed (the demo) or trained. Run it alone on the machine::

    python -m benchmarks.adamw_step --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import time


def timings(freeze: bool, threads: int, steps: int) -> dict[str, float]:
    import torch
    import transformers
    from transformers import AutoModelForSequenceClassification

    from influence_core.sources.models import base_encoder_path
    from influence_core.training.finetune import _parameter_groups

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    transformers.logging.set_verbosity_error()  # the new head's "newly initialized" report
    model = AutoModelForSequenceClassification.from_pretrained(base_encoder_path(), num_labels=2)
    if freeze:
        model.get_input_embeddings().weight.requires_grad_(False)
    trainable = [p for p in model.parameters() if p.requires_grad]
    for p in trainable:
        p.grad = torch.randn_like(p) * 1e-3
    out = {"weights": float(sum(p.numel() for p in trainable))}
    for name, flags in (("fused", {"fused": True}), ("foreach", {"foreach": True}),
                        ("loop", {"foreach": False})):
        optimizer = torch.optim.AdamW(_parameter_groups(model, 0.01), lr=1e-5, **flags)
        seconds = []
        for i in range(steps + 3):
            started = time.perf_counter()
            optimizer.step()
            if i >= 3:  # the first steps allocate the moment buffers
                seconds.append(time.perf_counter() - started)
        out[name] = statistics.median(seconds)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args(argv)
    print(f"`python -m benchmarks.adamw_step --threads {args.threads}` (median of {args.steps} steps)\n")
    print("| word embeddings | trainable weights | fused ms | foreach ms | per-tensor loop ms |")
    print("|---|---|---|---|---|")
    for freeze in (True, False):
        row = timings(freeze, args.threads, args.steps)
        print(f"| {'fixed' if freeze else 'trained'} | {row['weights'] / 1e6:.1f} M | {row['fused'] * 1e3:.0f} | "
              f"{row['foreach'] * 1e3:.0f} | {row['loop'] * 1e3:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
