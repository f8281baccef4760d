"""Does a second cross-fit (another fold split, four more fine-tunes) make the mislabel ranking better?

Run after ``python -m benchmarks.mislabel --task sst2 --dev ... --out /tmp/mdev.json``, which caches the development
seed's model and cross-fit and writes its per-row signals to ``/tmp/frame-sst2-s100.csv``::

    python -m benchmarks.mislabel_repeats --frame /tmp/frame-sst2-s100.csv

It cross-fits the same model again with fold seed ``seed + 1``, averages the two repetitions' out-of-fold
probabilities and grades the out-of-fold loss and ``combined`` with either. Development seed only.
"""

from __future__ import annotations

import os
import time

import pandas as pd

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmarks.mislabel import development_parser, development_run  # noqa: E402
from influence_core.mislabel import COMBINED_PARTS, combine, evaluate_rankings, label_losses  # noqa: E402
from influence_core.training.crossfit import cross_fit  # noqa: E402


def main(argv: list[str] | None = None) -> pd.DataFrame:
    parser = development_parser("benchmarks.mislabel_repeats", __doc__)
    args = parser.parse_args(argv)
    texts, labels, truth, model_dir, frame, first_fit = development_run(args)
    first = first_fit.probs
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
