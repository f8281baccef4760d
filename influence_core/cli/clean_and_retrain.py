"""``clean-and-retrain``: a flag list applied to the training rows, the model retrained, before vs after."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from influence_core.cli.inputs import read_examples
from influence_core.cli.progress import Bar
from influence_core.demo import resolve_model
from influence_core.errors import DataError
from influence_core.sources.data import align_labels, read_table
from influence_core.training.retrain import clean_dataset, read_flags, recipe_of, retrain


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "clean-and-retrain", help="apply flags (drop / relabel) to the training set and retrain; before vs after",
        description="Apply a flag list to the training rows, fine-tune again with the model's recipe and compare "
        "test accuracy and loss before and after. Writes the model, cleaned_train.csv and retrain.json to --out.")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="the model under study: a fine-tuned folder (its base and hyper-parameters "
                        "are reused) or 'demo'")
    source.add_argument("--base", help="an encoder to fine-tune; 'before' is then trained on the uncleaned rows")
    parser.add_argument("--train", required=True, help="training rows (.csv, .tsv, .parquet, .jsonl)")
    parser.add_argument("--flags", required=True, help="CSV with row_id and action (fine, drop, mislabeled, a label "
                        "or relabel:<label>); the app's flag list (row_id, mark, new_label) also works")
    parser.add_argument("--test", required=True, help="test rows scored before and after")
    parser.add_argument("--out", required=True, help="output folder for the retrained model")
    parser.add_argument("--text-col", default="text", help="text column (default: text; 'sentence' also found)")
    parser.add_argument("--label-col", default="label", help="label column: ids or label names")
    parser.add_argument("--labels", default=None, help="class names in id order, comma-separated (for --base)")
    parser.add_argument("--mislabeled", default="drop", choices=["drop", "flip"],
                        help="what a 'mislabeled' flag does (default drop; flip = give the other label, binary only)")
    for name, kind in (("epochs", int), ("lr", float), ("batch-size", int), ("max-length", int), ("seed", int)):
        parser.add_argument(f"--{name}", type=kind, default=None, help="override the model's recipe")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if not out.parent.exists():
        raise DataError(f"the output folder's parent {out.parent} does not exist; create it first")
    model = resolve_model(args.model) if args.model else args.base
    names = [n.strip() for n in args.labels.split(",") if n.strip()] if args.labels else None
    recipe = recipe_of(model, label_names=names)
    names = list(recipe.label_names)
    train = align_labels(read_examples(args.train, args), names)
    test = align_labels(read_examples(args.test, args), names)
    flags = read_flags(read_table(args.flags))
    cleaned = clean_dataset(train, flags, label_names=names, mislabeled=args.mislabeled, strict=True)
    bar = Bar("clean-and-retrain")
    result = retrain(model, cleaned, test, original_train_df=train if args.base else None, label_names=names,
                     out_dir=out, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                     max_length=args.max_length, seed=args.seed, progress=bar)
    bar.close()
    cleaned.to_csv(out / "cleaned_train.csv", index=False)
    summary = {**result.to_dict(), "dropped": len(train) - len(cleaned),
               "relabelled": int((cleaned["action"] == "relabel").sum())}
    (out / "retrain.json").write_text(json.dumps(summary, indent=1, default=str))
    print(f"{summary['dropped']} rows dropped, {summary['relabelled']} relabelled; retrained on {len(cleaned)} rows "
          f"in {result.seconds:.0f} s -> {out}")
    print(result.summary().to_string(index=False, float_format="%.4f"))
    for note in result.notes:
        print(f"note: {note}")
    return 0
