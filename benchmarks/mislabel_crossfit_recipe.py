"""Does a cross-fit with another fine-tune recipe than the model's make the mislabel ranking better?

Run after ``python -m benchmarks.mislabel --task sst2 --dev ... --out /tmp/mdev.json``, which caches the development
seed's model and cross-fit and writes its per-row signals to ``/tmp/frame-sst2-s100.csv``::

    python -m benchmarks.mislabel_crossfit_recipe --frame /tmp/frame-sst2-s100.csv --recipes 3:1e-4,4:5e-5,2:5e-5

Each recipe ``epochs:lr`` cross-fits the same four folds again (``cross_fit``'s overrides; batch size, length and
seed as the model's). It prints how often the fold models get the true label of the rows they hold out (the flips'
truth is used for this diagnostic only), and grades the out-of-fold loss, and ``combined`` with that loss and
confident learning's scores from the new probabilities in place of the old. Development seed only.
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
from influence_core.training.crossfit import cross_fit  # noqa: E402


def main(argv: list[str] | None = None) -> pd.DataFrame:
    parser = development_parser("benchmarks.mislabel_crossfit_recipe", __doc__)
    parser.add_argument("--recipes", default="3:1e-4,4:5e-5,2:5e-5", help="epochs:lr of each cross-fit")
    args = parser.parse_args(argv)
    texts, labels, truth, model_dir, frame, first = development_run(args)
    true_labels = np.where(truth == 1, 1 - labels, labels)
    own = first.recipe.hyperparameters
    runs = {f"{own['epochs']}:{own['lr']:g} (the model's)": first.probs}
    for item in args.recipes.split(","):
        epochs, lr = item.split(":")
        start = time.perf_counter()
        runs[item] = cross_fit(model_dir, texts, labels, k=4, seed=args.seed, epochs=int(epochs), lr=float(lr)).probs
        print(f"cross-fit {item}: {time.perf_counter() - start:.0f} s", flush=True)
    columns = []
    for name, probs in runs.items():
        accuracy = float((probs.argmax(axis=1) == true_labels).mean())
        print(f"{name}: out-of-fold accuracy on the true labels {accuracy:.3f}")
        scores, _ = confident_learning(labels, probs)
        parts = {**{p: frame[p].to_numpy() for p in COMBINED_PARTS}, "oof_loss": label_losses(probs, labels),
                 "cleanlab": 1.0 - scores}
        frame[f"oof_loss {name}"] = parts["oof_loss"]
        frame[f"combined {name}"] = combine({p: parts[p] for p in COMBINED_PARTS})
        columns += [f"oof_loss {name}", f"combined {name}"]
    graded = evaluate_rankings(frame, truth, columns=columns)
    print(graded.to_string(index=False, float_format="%.3f"))
    return graded


if __name__ == "__main__":
    main()
