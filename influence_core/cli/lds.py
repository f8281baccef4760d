"""``lds``: do the influence numbers predict retraining? The linear datamodeling score per scoring variant, to CSV."""

from __future__ import annotations

import argparse

from influence_core.cli.inputs import (
    add_engine_options,
    add_model_options,
    aligned,
    check_out,
    engine_config,
    load_model,
    model_source,
    read_examples,
)
from influence_core.errors import ConfigError


def add_parser(sub) -> None:
    parser = sub.add_parser("lds", help="linear datamodeling score: how well influence predicts retraining (.csv)")
    add_model_options(parser)
    parser.add_argument("--train", required=True, help="the training examples (subsets of them are retrained on)")
    parser.add_argument("--test", required=True, help="the test examples whose loss is predicted")
    parser.add_argument("--subsets", type=int, default=50, help="random training subsets retrained on (default 50)")
    parser.add_argument("--fraction", type=float, default=0.5, help="share of the training set per subset (0.5)")
    parser.add_argument("--seeds", type=int, default=1, help="retrains per subset; 2+ reports the noise ceiling")
    parser.add_argument("--subset-seed", type=int, default=0, help="seed of the subset draws")
    parser.add_argument("--methods", default="ekfac,kfac,identity", help="comma-separated: ekfac, kfac, identity")
    parser.add_argument("--fishers", default="true", help="comma-separated: true, sampled, empirical")
    parser.add_argument("--dampings", default="1e-5,1e-4,1e-3,1e-2,1e-1", help="comma-separated damping grid")
    parser.add_argument("--index-projections", default="64",
                        help="comma-separated projection sizes of the training-gradient index to score as well "
                             "(method 'index', on the EK-FAC factors; when ekfac is among the methods); empty for none")
    parser.add_argument("--recipe", default="head", choices=["head", "finetune"],
                        help="head: retrain the classifier head on frozen features (seconds); finetune: the model's "
                             "recorded fine-tuning recipe (minutes per retrain)")
    parser.add_argument("--measure", default="loss", choices=["loss", "margin"])
    parser.add_argument("--head-steps", type=int, default=100, help="L-BFGS steps of the head recipe")
    parser.add_argument("--head-l2", type=float, default=1e-3, help="L2 pull toward the initial head (head recipe)")
    parser.add_argument("--no-relative", action="store_true", help="skip the relative-influence variants")
    add_engine_options(parser)
    parser.add_argument("--out", required=True, help="output CSV: one row per scoring variant plus a random control")
    parser.set_defaults(func=run)


def _list(text: str, what: str) -> tuple[str, ...]:
    items = tuple(t.strip() for t in str(text).split(",") if t.strip())
    if not items:
        raise ConfigError(f"--{what} is empty")
    return items


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(t) for t in _list(text, "dampings"))
    except ValueError:
        raise ConfigError(f"--dampings must be numbers separated by commas, got {text!r}") from None


def _ints(text: str, what: str) -> tuple[int, ...]:
    items = tuple(t.strip() for t in str(text).split(",") if t.strip())
    try:
        values = tuple(int(t) for t in items)
    except ValueError:
        raise ConfigError(f"--{what.replace(' ', '-')} must be whole numbers separated by commas, got {text!r}") from None
    if any(v < 1 for v in values):
        raise ConfigError(f"--{what.replace(' ', '-')} must be at least 1, got {text!r}")
    return values


def run(args: argparse.Namespace) -> int:
    from influence_core.cli.progress import Bar
    from influence_core.lds import HeadRecipe, LDSConfig, run_lds

    config = LDSConfig(subsets=args.subsets, fraction=args.fraction, seeds=args.seeds, subset_seed=args.subset_seed,
                       recipe=args.recipe, measure=args.measure, methods=_list(args.methods, "methods"),
                       fishers=_list(args.fishers, "fishers"), dampings=_floats(args.dampings),
                       relative_damping=args.relative_damping is not None, relative=not args.no_relative,
                       index_projections=_ints(args.index_projections, "index projections")
                       if "ekfac" in _list(args.methods, "methods") else (), head=HeadRecipe(steps=args.head_steps, l2=args.head_l2))
    scoring = engine_config(args)
    out = check_out(args.out)
    train = read_examples(args.train, args)
    test = read_examples(args.test, args)
    model_dir = None
    if args.recipe == "finetune":
        source = model_source(args.model)
        if source.kind == "hub":
            raise ConfigError("--recipe finetune needs a model folder written by `finetune` (with finetune.json)")
        if source.kind == "demo":
            from influence_core.demo import resolve_model

            model_dir = resolve_model("demo")
        else:
            model_dir = source.name
    loaded = load_model(args)
    train, test = aligned(train, loaded), aligned(test, loaded)
    result = run_lds(loaded.model, loaded.tokenizer, train["text"].tolist(), train["label"].to_numpy(),
                     test["text"].tolist(), test["label"].to_numpy(), config=config, engine_config=scoring,
                     model_dir=model_dir, progress=Bar("lds", unit="step"))
    result.table.to_csv(out, index=False)
    best = result.best()
    print(f"recipe: {result.recipe}")
    print(f"{result.subsets} subsets of {result.fraction:g} x {result.n_train} training examples, {result.seeds} "
          f"seed(s), {result.n_test} test examples, measure {result.measure}")
    if result.ceiling is None:
        print("retraining-noise ceiling: not measured (use --seeds 2 or more)")
    else:
        c = result.ceiling
        print(f"retraining-noise ceiling (two seeds' outcomes): {c.lds:.3f} [{c.ci_low:.3f}, {c.ci_high:.3f}]")
    random_row = result.table[result.table["method"] == "random"].iloc[0]
    print(f"best: {best['variant']} LDS {best['lds']:.3f} [{best['ci_low']:.3f}, {best['ci_high']:.3f}]; "
          f"random control {random_row['lds']:.3f}")
    print(f"saved {len(result.table)} rows to {out} ({result.seconds.get('total', 0):.0f} s)")
    return 0
