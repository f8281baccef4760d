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

import argparse
import os
import time

import numpy as np
import pandas as pd
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmarks.mislabel import finetuned, parse_args, sst2_sample  # noqa: E402
from influence_core.mislabel import (  # noqa: E402
    COMBINED_PARTS,
    combine,
    confident_learning,
    evaluate_rankings,
    label_losses,
)
from influence_core.training.crossfit import cross_fit  # noqa: E402


def main(argv: list[str] | None = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.mislabel_crossfit_recipe",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--frame", default="/tmp/frame-sst2-s100.csv", help="per-row signals of benchmarks.mislabel")
    parser.add_argument("--seed", type=int, default=100, help="the sample seed the frame was made with")
    parser.add_argument("--recipes", default="3:1e-4,4:5e-5,2:5e-5", help="epochs:lr of each cross-fit")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    harness = parse_args([])  # the recipe and sample of the harness's defaults, so its cached model is found
    data = sst2_sample(args.seed, harness.n_train, harness.flip_rate)
    texts, labels, truth = data["text"].tolist(), data["label"].to_numpy(), data["flipped"].to_numpy()
    true_labels = np.where(truth == 1, 1 - labels, labels)
    model_dir = finetuned(f"sst2-s{args.seed}", texts, labels, harness, args.seed)
    frame = pd.read_csv(args.frame)
    first = cross_fit(model_dir, texts, labels, k=4, seed=args.seed)  # cached by the harness
    if not np.allclose(label_losses(first.probs, labels), frame["oof_loss"].to_numpy(), atol=1e-5):
        raise SystemExit("the cached cross-fit does not give the frame's oof_loss; run benchmarks.mislabel first")
    runs = {f"{harness.epochs}:{harness.lr:g} (the model's)": first.probs}
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
