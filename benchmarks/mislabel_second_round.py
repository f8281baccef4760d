"""Does a second cross-fit on the cleaned folds make the mislabel ranking better?

Run after ``python -m benchmarks.mislabel --task sst2 --dev ... --out /tmp/mdev.json``, which caches the development
seed's model and cross-fit and writes its per-row signals to ``/tmp/frame-sst2-s100.csv``::

    python -m benchmarks.mislabel_second_round --frame /tmp/frame-sst2-s100.csv

The first cross-fit's fold models trained on every row of their folds, the flips included, so the flips confuse the
models that are meant to catch them. This one removes the first round's suspects from the training side and
fine-tunes the four folds again on what is left. The suspects are the top of ``combined``, and there are as many of
them as confident learning's estimate of wrong labels, so no evaluation label is used. Each fold still scores every
row it holds out, the suspects too. It grades the new out-of-fold loss, and ``combined`` with the new loss in place
of the old. Development seed only.
"""

from __future__ import annotations

import os
import time

import numpy as np
import pandas as pd

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmarks.mislabel import development_parser, development_run  # noqa: E402
from influence_core.mislabel import (  # noqa: E402
    COMBINED_PARTS,
    combine,
    confident_learning,
    evaluate_rankings,
    label_losses,
)
from influence_core.training.retrain import predict_probabilities, recipe_of, train_cached  # noqa: E402


def main(argv: list[str] | None = None) -> pd.DataFrame:
    parser = development_parser("benchmarks.mislabel_second_round", __doc__)
    args = parser.parse_args(argv)
    texts, labels, truth, model_dir, frame, first = development_run(args)
    _, estimate = confident_learning(labels, first.probs)
    suspects = np.argsort(-frame["combined"].to_numpy(), kind="stable")[:estimate]
    dropped = np.zeros(len(texts), dtype=bool)
    dropped[suspects] = True
    print(f"dropping the {estimate} rows ranked first by combined (confident learning's estimate); "
          f"{int(truth[dropped].sum())} of them are flips, {int(truth.sum())} flips in all")

    recipe = recipe_of(model_dir)
    folds = first.folds  # the first round's split, so every row is held out by the same fold again
    second = np.zeros_like(first.probs)
    start = time.perf_counter()
    for fold in range(4):
        inside = np.flatnonzero((folds != fold) & ~dropped)
        held = np.flatnonzero(folds == fold)
        folder = train_cached(recipe, [texts[i] for i in inside], labels[inside].tolist())
        second[held] = predict_probabilities(folder, [texts[i] for i in held],
                                             max_length=int(recipe.hyperparameters["max_length"]))
    print(f"second round: {time.perf_counter() - start:.0f} s")
    frame["oof_loss_second_round"] = label_losses(second, labels)
    frame["combined_second_round"] = combine(
        {p: frame["oof_loss_second_round" if p == "oof_loss" else p].to_numpy() for p in COMBINED_PARTS})
    graded = evaluate_rankings(frame, truth, columns=["oof_loss", "oof_loss_second_round", "combined",
                                                      "combined_second_round"])
    print(graded.to_string(index=False, float_format="%.3f"))
    return graded


if __name__ == "__main__":
    main()
