"""``finetune``: an encoder fine-tuned into a sequence classifier, saved as a Hugging Face folder.

    python -m influence_core finetune --base FOLDER_OR_HUB_ID --train train.csv --out my-model \\
        [--eval dev.csv] [--epochs 3] [--lr 5e-5] [--batch-size 16] [--max-length 128] [--seed 0]
"""

from __future__ import annotations

from typing import Any

from tqdm import tqdm

from influence_core.cli.inputs import select_cli_columns
from influence_core.errors import ConfigError
from influence_core.sources.data import align_labels, label_ids, read_table
from influence_core.training.finetune import finetune


def add_parser(subparsers: Any) -> None:
    """Register ``finetune`` on an argparse ``subparsers`` object (``parser.add_subparsers()``)."""
    parser = subparsers.add_parser(
        "finetune",
        help="fine-tune an encoder into a sequence classifier (saved as a Hugging Face folder)",
        description="Fine-tune an encoder (folder or Hub id) on a labelled CSV/TSV/Parquet/JSON-lines file and "
        "save a sequence classifier (safetensors, tokenizer, label names) that the explorer can analyse.",
    )
    parser.add_argument("--base", required=True, help="encoder or classifier: a folder or a Hugging Face Hub id")
    parser.add_argument("--train", required=True, help="training file (.csv, .tsv, .parquet, .jsonl)")
    parser.add_argument("--out", required=True, help="output folder (created; an earlier fine-tune is replaced)")
    parser.add_argument("--eval", default=None, help="optional evaluation file, scored after training")
    parser.add_argument("--text-col", default="text", help="text column (default: text; 'sentence' is tried too)")
    parser.add_argument("--label-col", default="label", help="label column (default: label)")
    parser.add_argument(
        "--labels",
        default=None,
        help="class names in id order, comma-separated (default: the names found in the data, sorted, "
        "or LABEL_0.. for integer labels)",
    )
    parser.add_argument("--limit", type=int, default=None, help="use only the first N training rows")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--freeze-embeddings", action="store_true",
                        help="keep the word-embedding matrix fixed (about a third less time on a CPU for MiniLM)")
    parser.set_defaults(func=run)


def run(args: Any) -> int:
    """The ``finetune`` command: read the files, train with a tqdm bar, print where the model went."""
    train = select_cli_columns(read_table(args.train), args.text_col, args.label_col, where=args.train)
    if args.limit is not None:
        train = train.iloc[: max(int(args.limit), 0)]
    names = _cli_label_names(args.labels, train["label"])
    train = align_labels(train, names)
    eval_texts = eval_labels = None
    if args.eval:
        evaluation = align_labels(select_cli_columns(read_table(args.eval), args.text_col, args.label_col,
                                                  where=args.eval), names)
        eval_texts, eval_labels = evaluation["text"].tolist(), evaluation["label"].tolist()

    bars: list[tqdm] = []  # created at the first step, so load errors are not drawn under an empty bar

    def progress(done: int, total: int, stage: str) -> None:
        if stage.startswith("fine-tune"):
            if not bars:
                bars.append(tqdm(total=total, unit="step", dynamic_ncols=True))
            bars[0].set_description(stage)
            bars[0].n = done
            bars[0].refresh()

    try:
        result = finetune(
            args.base,
            train["text"].tolist(),
            train["label"].tolist(),
            label_names=names,
            out_dir=args.out,
            epochs=args.epochs,
            lr=args.lr,
            batch_size=args.batch_size,
            max_length=args.max_length,
            seed=args.seed,
            freeze_embeddings=args.freeze_embeddings,
            eval_texts=eval_texts,
            eval_labels=eval_labels,
            progress=progress,
        )
    finally:
        for bar in bars:
            bar.close()
    accuracy = "" if result.eval_accuracy is None else f", eval accuracy {result.eval_accuracy:.4f}"
    print(f"saved {result.out_dir} ({len(train)} examples, {result.seconds:.1f} s{accuracy})")
    return 0


def _cli_label_names(spec: str | None, labels: Any) -> list[str]:
    if spec:
        names = [name.strip() for name in spec.split(",") if name.strip()]
        if len(names) < 2:
            raise ConfigError("--labels needs at least two comma-separated names")
        return names
    values = labels.tolist()
    ids = label_ids(values)
    if ids is not None:
        return [f"LABEL_{i}" for i in range(max(max(ids) + 1, 2))]
    return sorted({str(v) for v in values})
