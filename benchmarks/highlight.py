"""Token highlighting on Explain: the time to score the tokens of the cards of one test review.

On the built-in demo (480 training reviews, FFN + head, relative damping 10, the app's defaults) this fits the
factors, scores ``--reviews`` test reviews, and for each times the tokens of its 5 most helpful and 5 most harmful
training reviews (the page's 10 cards) two ways: all cards in one call (``token_influences``, what the page does)
and one call per card (``token_influence``, what the page did until this wave). Prints the medians over the
reviews, with the largest gap between the two ways' token scores. Run it alone on the machine::

    python -m benchmarks.highlight --reviews 5 --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np


def demo_setup(threads: int):
    """``(engine, train, test)`` on the built-in demo with the app's defaults (FFN + head, relative damping 10), not
    fitted, torch on ``threads`` threads; ``train`` and ``test`` are the demo corpus's splits."""
    import torch

    from influence_core.demo import load_model
    from influence_core.engine.config import EngineConfig
    from influence_core.engine.influence import InfluenceEngine
    from influence_core.sources.corpus import demo_corpus
    from influence_core.sources.models import ModelSource

    torch.set_num_threads(threads)
    loaded = load_model(ModelSource("demo"))
    corpus = demo_corpus()
    engine = InfluenceEngine(loaded.model, loaded.tokenizer, EngineConfig(layers="ffn,head", relative_damping=10.0))
    return engine, corpus[corpus["split"] == "train"], corpus[corpus["split"] == "test"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reviews", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)

    engine, train, test = demo_setup(args.threads)
    test = test.sample(args.reviews, random_state=0)
    engine.fit(train["text"].tolist(), train["label"].to_numpy())
    scores = engine.score(test["text"].tolist(), test["label"].to_numpy(), train["text"].tolist(),
                          train["label"].to_numpy(), self_influence=False).total(0)
    texts, labels = train["text"].tolist(), train["label"].tolist()
    together, apart, gaps = [], [], []
    for q, (text, label) in enumerate(zip(test["text"], test["label"], strict=True)):
        order = np.argsort(-scores[q])
        cards = [int(j) for j in [*order[:5], *order[::-1][:5]]]
        started = time.perf_counter()
        many = engine.token_influences(text, int(label), [texts[j] for j in cards], [labels[j] for j in cards])
        together.append(time.perf_counter() - started)
        started = time.perf_counter()
        single = [engine.token_influence(text, int(label), texts[j], labels[j]) for j in cards]
        apart.append(time.perf_counter() - started)
        gaps.append(max(float(np.abs(a.scores - b.scores).max() / max(np.abs(b.scores).max(), 1e-300))
                        for a, b in zip(many, single, strict=True)))
    print(f"`python -m benchmarks.highlight --reviews {args.reviews} --threads {args.threads}`\n")
    print("| 10 cards of one test review | median s | max s |")
    print("|---|---|---|")
    print(f"| all in one call (the page now) | {statistics.median(together):.2f} | {max(together):.2f} |")
    print(f"| one call per card (until this wave) | {statistics.median(apart):.2f} | {max(apart):.2f} |")
    print(f"\nlargest relative difference of the token scores: {max(gaps):.1e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
