"""The built-in demo's instant questions, once fitted: how long each answer the app draws from the index takes.

On the demo (480 training reviews, 160 test reviews, FFN + head, relative damping 10, the app's index and re-score
settings) this fits the factors and the index in one pass, as the app does, then times, for ``--questions``
different inputs each, the engine's work behind one answer (the page's drawing is not included):

* **Try a sentence**: a typed text at its predicted label, its 5 most helpful and harmful training reviews found
  by the index and re-scored exactly (``--rerank`` per side, default the app's ``RERANK``).
* **Search the training set**: the same for a text at the label the user picks (here the other label).
* **Explain any text**: a review outside the scored slice (demo test reviews, each at its own label).
* **Regularization slider**: one test review's top reviews at a damping the analysis did not compute.
* **Damping sweep**: one test review's estimate over every training review at 17 dampings (4 per decade).
* **Heatmap and Layers of a new test slice**: the index's per-layer estimate of ``--slice`` test reviews against
  every training review (what the heatmap draws while the exact pass runs).
* **Token highlighting**: the tokens of the 10 cards of one test review, in one call.

Prints the medians and maxima as a Markdown table. Run it alone on the machine::

    python -m benchmarks.demo_latency --questions 10 --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

SENTENCES = [
    "a dull, overlong film that forgets its own plot",
    "the cast is wonderful and the ending made me cry",
    "I wanted to like it, but the jokes never land",
    "beautifully shot, patient and quietly moving",
    "two hours of noise with nothing to say",
    "the best thing I have seen this year",
    "the acting is wooden and the script is worse",
    "funny, warm and surprisingly smart",
    "it starts well and then falls apart",
    "a gentle story told with real care",
    "I walked out halfway through",
    "every scene feels alive",
]


def _timed(fn, inputs) -> list[float]:
    seconds = []
    for item in inputs:
        started = time.perf_counter()
        fn(item)
        seconds.append(time.perf_counter() - started)
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--questions", type=int, default=10, help="different inputs timed per kind of answer")
    parser.add_argument("--slice", type=int, default=40, help="test reviews in the new test slice")
    parser.add_argument("--rerank", type=int, default=None, help="candidates re-scored per side (default: the app's)")
    parser.add_argument("--entries", type=int, default=None,
                        help="an eigen index of this many entries per review instead of the app's choice")
    parser.add_argument("--dtype", default="int8", choices=["int8", "float32"], help="its storage, with --entries")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)

    from benchmarks.highlight import demo_setup
    from explorer.store import CARDS, RERANK, index_config
    from influence_core.engine.index import IndexConfig, fit_and_index

    engine, train, test = demo_setup(args.threads)
    test = test.sample(frac=1.0, random_state=0)
    texts, labels = train["text"].tolist(), train["label"].to_numpy()
    started = time.perf_counter()
    config = index_config(engine, len(texts)) if args.entries is None else \
        IndexConfig(exact=False, dtype=args.dtype, entries=args.entries)
    _, index = fit_and_index(engine, texts, labels, config=config)
    fit_seconds = time.perf_counter() - started
    rerank = RERANK if args.rerank is None else args.rerank
    n = args.questions
    sentences = (SENTENCES * (n // len(SENTENCES) + 1))[:n]
    reviews = list(zip(test["text"].tolist()[:n], test["label"].tolist()[:n], strict=True))

    def ask(text: str, label: int | None = None, **kwargs) -> None:
        proba = engine.predict_proba([text])[0]
        chosen = int(np.argmax(proba)) if label is None else int(label)
        index.query([text], [chosen], top=CARDS, rerank=rerank, **kwargs)

    def other_label(text: str) -> None:
        ask(text, 1 - int(np.argmax(engine.predict_proba([text])[0])))

    grid = list(np.logspace(-2, 2, 17) * 10.0)  # relative dampings 0.1 .. 1000
    timings = {
        "Try a sentence (predicted label)": _timed(ask, sentences),
        "Search the training set (a chosen label)": _timed(other_label, sentences),
        "Explain any text (a review outside the slice)": _timed(lambda r: ask(r[0], r[1]), reviews),
        "Regularization slider (a damping not computed)": _timed(
            lambda r: ask(r[0], r[1], damping=float(grid[3])), reviews),
        "Damping sweep, 17 values, one review": _timed(
            lambda r: index.estimates([r[0]], [r[1]], dampings=grid), reviews),
        f"Heatmap and Layers of a new slice of {args.slice} test reviews": _timed(
            lambda k: index.layer_estimates(test["text"].tolist()[k:k + args.slice],
                                            test["label"].to_numpy()[k:k + args.slice]), range(0, 3 * args.slice,
                                                                                               args.slice)),
    }
    highlight = []
    for text, label in reviews:
        found = index.query([text], [label], top=CARDS, rerank=rerank)
        rows = found["train_row"].tolist()
        started = time.perf_counter()
        engine.token_influences(text, int(label), [texts[j] for j in rows], [int(labels[j]) for j in rows])
        highlight.append(time.perf_counter() - started)
    timings["Token highlighting of the 10 cards (after the cards)"] = highlight
    # do the re-scored cards equal the engine's own top CARDS over every training review?
    asked_texts, asked_labels = [r[0] for r in reviews], [r[1] for r in reviews]
    exact = engine.score(asked_texts, asked_labels, texts, labels, self_influence=False).total(0)
    answers = index.query(asked_texts, asked_labels, top=CARDS, rerank=rerank)
    equal = []
    for q in range(len(reviews)):
        for direction, sign in (("helpful", 1), ("harmful", -1)):
            shown = answers[(answers["query"] == q) & (answers["direction"] == direction)]["train_row"].tolist()
            equal.append(shown == list(np.argsort(-sign * exact[q], kind="stable")[:CARDS]))
    flags = ("" if args.rerank is None else f" --rerank {rerank}") + \
        ("" if args.entries is None else f" --entries {args.entries} --dtype {args.dtype}")
    print(f"`python -m benchmarks.demo_latency --questions {n} --slice {args.slice}{flags} --threads "
          f"{args.threads}`\n")
    print(f"fit + index: {fit_seconds:.0f} s ({index.meta['kind']} index, {index.rows.shape[1]:,} entries per "
          f"review, {index.bytes_per_example:,} bytes); re-score: {rerank} per side; the {CARDS} cards per side "
          f"equal the engine's top {CARDS} over all {len(texts)} training reviews (order too) for {np.mean(equal):.0%} of "
          f"{len(equal)} (review, side) pairs\n")
    print("| answer (engine time, page drawing not included) | median s | max s |")
    print("|---|---|---|")
    for name, seconds in timings.items():
        print(f"| {name} | {statistics.median(seconds):.2f} | {max(seconds):.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
