"""Does a second cross-fit (another fold split, four more fine-tunes) make the mislabel ranking better?

Run after ``python -m benchmarks.mislabel --task sst2 --dev ... --out /tmp/mdev.json``, which caches the development
seed's model and cross-fit and writes its per-row signals to ``/tmp/frame-sst2-s100.csv``::

    python -m benchmarks.mislabel_repeats --frame /tmp/frame-sst2-s100.csv

It cross-fits the same model again with fold seed ``seed + 1``, averages the two repetitions' out-of-fold
probabilities and grades the out-of-fold loss and ``combined`` with either. Development seed only.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import pandas as pd
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmarks.mislabel import finetuned, parse_args, sst2_sample  # noqa: E402
from influence_core.mislabel import COMBINED_PARTS, combine, evaluate_rankings, label_losses  # noqa: E402
from influence_core.training.crossfit import cross_fit  # noqa: E402


def main(argv: list[str] | None = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.mislabel_repeats", description=__doc__.splitlines()[0])
    parser.add_argument("--frame", default="/tmp/frame-sst2-s100.csv", help="per-row signals of benchmarks.mislabel")
    parser.add_argument("--seed", type=int, default=100, help="the sample seed the frame was made with")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    harness = parse_args([])  # the recipe and sample of the harness's defaults, so its cached model is found
    data = sst2_sample(args.seed, harness.n_train, harness.flip_rate)
    texts, labels, truth = data["text"].tolist(), data["label"].to_numpy(), data["flipped"].to_numpy()
    model_dir = finetuned(f"sst2-s{args.seed}", texts, labels, harness, args.seed)
    frame = pd.read_csv(args.frame)
    first = cross_fit(model_dir, texts, labels, k=4, seed=args.seed).probs  # cached by the harness
    if not np.allclose(label_losses(first, labels), frame["oof_loss"].to_numpy(), atol=1e-5):
        raise SystemExit("the cached cross-fit does not give the frame's oof_loss; run benchmarks.mislabel first")
    start = time.perf_counter()
    second = cross_fit(model_dir, texts, labels, k=4, seed=args.seed + 1).probs
    print(f"second cross-fit: {time.perf_counter() - start:.0f} s")
    frame["oof_loss_second"] = label_losses(second, labels)
    frame["oof_loss_both"] = label_losses((first + second) / 2, labels)
    frame["combined_both"] = combine({p: frame["oof_loss_both" if p == "oof_loss" else p].to_numpy()
                                      for p in COMBINED_PARTS})
    graded = evaluate_rankings(frame, truth, columns=["oof_loss", "oof_loss_second", "oof_loss_both", "combined",
                                                      "combined_both"])
    print(graded.to_string(index=False, float_format="%.3f"))
    return graded


if __name__ == "__main__":
    main()
