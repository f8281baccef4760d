"""The demo model's fine-tune with and without the word embeddings trained: seconds and test accuracy.

Fine-tunes MiniLM on the demo's 480 training reviews with the demo's hyper-parameters
(:data:`influence_core.demo.DEMO_HYPERPARAMETERS`), once with ``freeze_embeddings`` off and once on, each in a
fresh process, and scores the 160 test reviews. Run it alone on the machine::

    python -m benchmarks.demo_finetune --threads 2
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def one(freeze: bool, threads: int) -> dict:
    import torch

    from influence_core.demo import DEMO_HYPERPARAMETERS
    from influence_core.sources.corpus import DEMO_LABELS, demo_corpus
    from influence_core.sources.models import base_encoder_path
    from influence_core.training.finetune import finetune

    torch.set_num_threads(threads)
    corpus = demo_corpus()
    train, test = corpus[corpus["split"] == "train"], corpus[corpus["split"] == "test"]
    hyper = {**DEMO_HYPERPARAMETERS, "freeze_embeddings": freeze}
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        result = finetune(base_encoder_path(), train["text"].tolist(), train["label"].tolist(),
                          label_names=list(DEMO_LABELS), out_dir=Path(folder) / "model",
                          eval_texts=test["text"].tolist(), eval_labels=test["label"].tolist(), **hyper)
        seconds = time.perf_counter() - started
    return {"freeze_embeddings": freeze, "seconds": round(seconds, 1), "test_accuracy": result.eval_accuracy,
            "test_loss": round(result.eval_loss, 3)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--one", choices=("trained", "frozen"), help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(one(args.one == "frozen", args.threads)))
        return 0
    rows = []
    for mode in ("trained", "frozen"):
        done = subprocess.run([sys.executable, "-m", "benchmarks.demo_finetune", "--threads", str(args.threads),
                               "--one", mode], check=True, capture_output=True, text=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(f"`python -m benchmarks.demo_finetune --threads {args.threads}`\n")
    print("| word embeddings | fine-tune s | test accuracy (160) | test loss |")
    print("|---|---|---|---|")
    for row in rows:
        print(f"| {'fixed' if row['freeze_embeddings'] else 'trained'} | {row['seconds']:.1f} | "
              f"{row['test_accuracy']:.1%} | {row['test_loss']:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
