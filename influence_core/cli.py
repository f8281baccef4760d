"""``python -m influence_core``: everything the app computes, in batch, for data too big for a browser.

Commands: ``fit`` (factors to a safetensors file), ``scores`` (test x train influences to .npz),
``self-influence`` (training rows ranked by self-influence to CSV), ``finetune``, plus the commands
other modules register through ``add_cli``. Bad input prints one line on stderr and exits with 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from influence_core.errors import DataError, InfluenceError

#: Modules that add their own sub-commands with ``add_cli(subparsers)``.
COMMAND_MODULES = ("influence_core.finetune", "influence_core.mislabel")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (argparse's default prints the usage too)
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="influence-core", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    fit = sub.add_parser("fit", help="fit EK-FAC factors and save them (safetensors + JSON metadata)")
    _model_options(fit)
    fit.add_argument("--data", required=True, help="examples to fit on (.csv, .tsv, .parquet, .jsonl)")
    _engine_options(fit)
    fit.add_argument("--out", required=True, help="factors file to write, e.g. factors.safetensors")
    fit.set_defaults(func=run_fit)

    scores = sub.add_parser("scores", help="pairwise influences of training on test examples (.npz)")
    _model_options(scores)
    scores.add_argument("--train", required=True, help="training examples to score")
    scores.add_argument("--test", required=True, help="test examples whose predictions are explained")
    source = scores.add_mutually_exclusive_group()
    source.add_argument("--factors", help="factors from `fit` (default: fit on --fit)")
    source.add_argument("--fit", help="examples to fit the factors on (default: the --train file)")
    _engine_options(scores)
    scores.add_argument("--out", required=True, help="output .npz: influences, layer:<name>, self_influence, layers")
    scores.set_defaults(func=run_scores)

    self_inf = sub.add_parser("self-influence", help="rank training examples by self-influence (.csv)")
    _model_options(self_inf)
    self_inf.add_argument("--train", required=True, help="training examples to score")
    group = self_inf.add_mutually_exclusive_group()
    group.add_argument("--factors", help="factors from `fit` (default: fit on --fit)")
    group.add_argument("--fit", help="examples to fit the factors on (default: the --train file)")
    _engine_options(self_inf)
    self_inf.add_argument("--out", required=True, help="output CSV: the input rows plus self_influence and rank")
    self_inf.set_defaults(func=run_self_influence)

    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        if hasattr(module, "add_cli"):
            module.add_cli(sub)
    return parser


def _model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="a model folder, a Hugging Face Hub id, or 'demo'")
    parser.add_argument("--text-col", default="text", help="text column (default: text; 'sentence' also found)")
    parser.add_argument("--label-col", default="label", help="label column: ids or the model's label names")


def _engine_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--layers", default="ffn,head", help="groups (ffn, attention, head, all) or module names")
    parser.add_argument("--method", default="ekfac", choices=["ekfac", "kfac", "identity"])
    parser.add_argument("--fisher", default="true", choices=["true", "sampled", "empirical"])
    parser.add_argument("--damping", type=float, default=1e-5, help="absolute damping (default 1e-5)")
    parser.add_argument("--relative-damping", type=float, default=None, help="damping = R x mean eigenvalue")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as done:  # --help, or a usage error already printed as one line
        return int(done.code or 0)
    try:
        return int(args.func(args) or 0)
    except InfluenceError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # unwritable output, disk full, ...
        print(f"error: {err.strerror or err}: {getattr(err, 'filename', '') or ''}".rstrip(": "), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


# ----------------------------------------------------------------------------- shared steps
def load_model(args: argparse.Namespace):
    """A LoadedModel from ``--model`` (a folder if it exists, 'demo', else a Hub id)."""
    from influence_core.models import ModelSource, load_classifier

    name = args.model
    if name == "demo":
        source = ModelSource("demo")
    elif Path(name).expanduser().exists() or name.startswith(("/", "./", "../", "~")):
        source = ModelSource("local", name)
    else:
        source = ModelSource("hub", name)
    return load_classifier(source, progress=_Bar("load model"))


def read_examples(path: str, args: argparse.Namespace) -> pd.DataFrame:
    """Read ``path`` into ``text`` and raw ``label`` columns, refusing empty files and missing texts."""
    from influence_core.data import read_table, select_columns

    table = read_table(path)
    text_col = args.text_col
    if text_col == "text" and "text" not in table.columns and "sentence" in table.columns:
        text_col = "sentence"
    table = select_columns(table, text_col, args.label_col, where=Path(path).name)
    if table.empty:
        raise DataError(f"{path} has no rows")
    missing = table["text"].map(lambda t: not isinstance(t, str) or not t.strip())
    if missing.any():
        raise DataError(f"{path}: row {int(np.flatnonzero(missing)[0])} has no text; remove empty rows")
    return table


def aligned(table: pd.DataFrame, loaded) -> pd.DataFrame:
    """``table`` with its labels mapped onto the model's classes (int ``label``)."""
    from influence_core.data import align_labels

    return align_labels(table, loaded.label_names)


def make_engine(args: argparse.Namespace, loaded):
    from influence_core import EngineConfig, InfluenceEngine

    config = EngineConfig(
        layers=args.layers, method=args.method, fisher=args.fisher, damping=args.damping,
        relative_damping=args.relative_damping, max_length=args.max_length, batch_size=args.batch_size,
        seed=args.seed, dtype=args.dtype, device=args.device,
    )
    if config.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise DataError("--device cuda was given but no CUDA device is available; use --device cpu")
    return InfluenceEngine(loaded.model, loaded.tokenizer, config)


def prepare_factors(engine, args: argparse.Namespace, loaded, default_fit: str) -> None:
    if engine.config.method == "identity":
        return
    if getattr(args, "factors", None):
        engine.load_factors(args.factors)
        return
    fit = aligned(read_examples(getattr(args, "fit", None) or default_fit, args), loaded)
    engine.fit(fit["text"].tolist(), fit["label"].tolist(), progress=_Bar("fit"))


class _Bar:
    """A progress callback drawing one tqdm bar per stage on stderr."""

    def __init__(self, prefix: str):
        self.prefix, self.bar, self.stage = prefix, None, None

    def __call__(self, done: int, total: int, stage: str) -> None:
        from tqdm import tqdm

        if total <= 1:  # a single step (loading a model) needs no bar
            return
        if stage != self.stage:
            self.close()
            self.stage = stage
            self.bar = tqdm(total=total, desc=f"{self.prefix}: {stage}", unit="batch", file=sys.stderr,
                            dynamic_ncols=True, leave=False)
        self.bar.n = done
        self.bar.refresh()
        if done >= total:
            self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _check_out(path: str) -> Path:
    out = Path(path)
    if out.parent and not out.parent.exists():
        raise DataError(f"the output folder {out.parent} does not exist; create it first")
    return out


# ----------------------------------------------------------------------------- commands
def run_fit(args: argparse.Namespace) -> int:
    out = _check_out(args.out)
    data = read_examples(args.data, args)
    loaded = load_model(args)
    engine = make_engine(args, loaded)
    data = aligned(data, loaded)
    start = time.perf_counter()
    factors = engine.fit(data["text"].tolist(), data["label"].tolist(), progress=_Bar("fit"))
    factors.save(out)
    print(f"saved factors for {len(engine.layers)} layers fitted on {len(data)} examples to {out} "
          f"({time.perf_counter() - start:.1f} s)")
    return 0


def run_scores(args: argparse.Namespace) -> int:
    out = _check_out(args.out)
    train, test = read_examples(args.train, args), read_examples(args.test, args)
    loaded = load_model(args)
    engine = make_engine(args, loaded)
    train, test = aligned(train, loaded), aligned(test, loaded)
    start = time.perf_counter()
    prepare_factors(engine, args, loaded, args.train)
    table = engine.score(test["text"].tolist(), test["label"].tolist(), train["text"].tolist(),
                         train["label"].tolist(), progress=_Bar("scores"))
    arrays = {"influences": table.total(0), "self_influence": table.self_total(0), "layers": np.array(table.layers)}
    arrays.update({f"layer:{name}": values for name, values in table.by_layer(0).items()})
    np.savez(out, **arrays)
    print(f"saved influences of {len(train)} training on {len(test)} test examples to {out} "
          f"({time.perf_counter() - start:.1f} s; positive = helpful)")
    return 0


def run_self_influence(args: argparse.Namespace) -> int:
    out = _check_out(args.out)
    train = read_examples(args.train, args)
    loaded = load_model(args)
    engine = make_engine(args, loaded)
    train = aligned(train, loaded)
    prepare_factors(engine, args, loaded, args.train)
    scores = engine.self_influence(train["text"].tolist(), train["label"].tolist(), progress=_Bar("self-influence"))
    rows = train.copy()
    rows["self_influence"] = scores
    rows["rank"] = rows["self_influence"].rank(ascending=False, method="first").astype(int)
    rows.to_csv(out, index=False)
    print(f"saved {len(rows)} rows ranked by self-influence to {out} (rank 1 = most self-influential)")
    return 0


__all__ = ["build_parser", "main"]
