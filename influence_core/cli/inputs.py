"""What every command reads from its arguments: the model, the example files, the engine and its factors."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from influence_core.demo import load_model as load_any_model
from influence_core.engine.config import DEFAULT_RELATIVE_DAMPING, EngineConfig
from influence_core.engine.influence import InfluenceEngine
from influence_core.errors import DataError
from influence_core.sources.data import align_labels, read_table, select_columns
from influence_core.sources.models import LoadedModel, ModelSource

#: The options that name a file's columns, for the message when one is missing.
_COLUMN_OPTIONS = {"text": "--text-col", "label": "--label-col"}


def add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="a model folder, a Hugging Face Hub id, or 'demo'")
    parser.add_argument("--text-col", default="text", help="text column (default: text; 'sentence' also found)")
    parser.add_argument("--label-col", default="label", help="label column: ids or the model's label names")


def add_engine_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--layers", default="ffn,head", help="groups (ffn, attention, head, all) or module names")
    parser.add_argument("--method", default=EngineConfig.method, choices=["ekfac", "kfac", "identity"])
    parser.add_argument("--fisher", default=EngineConfig.fisher, choices=["true", "sampled", "empirical"],
                        help=f"labels the factors are fitted with (default {EngineConfig.fisher}, the LDS-best)")
    parser.add_argument("--damping", type=float, default=None, help="absolute damping (instead of the relative default)")
    parser.add_argument("--relative-damping", type=float, default=None,
                        help=f"damping = R x each layer's mean eigenvalue (default {DEFAULT_RELATIVE_DAMPING:g}, the "
                             "LDS-best, unless --damping is given)")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")


def add_factor_source(parser: argparse.ArgumentParser) -> None:
    """``--factors`` (from ``fit``) or ``--fit`` (examples to fit on; default the training file)."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--factors", help="factors from `fit` (default: fit on --fit)")
    group.add_argument("--fit", help="examples to fit the factors on (default: the --train file)")


def model_source(name: str) -> ModelSource:
    """``--model``: a folder if it exists (or looks like a path), ``demo``, else a Hub id."""
    if name == "demo":
        return ModelSource("demo")
    if Path(name).expanduser().exists() or name.startswith(("/", "./", "../", "~")):
        return ModelSource("local", name)
    return ModelSource("hub", name)


def load_model(args: argparse.Namespace) -> LoadedModel:
    """The classifier named by ``--model`` (the demo is fine-tuned on first use)."""
    from influence_core.cli.progress import Bar

    return load_any_model(model_source(args.model), progress=Bar("load model"))


def select_cli_columns(table: pd.DataFrame, text_col: str, label_col: str, *, where: str) -> pd.DataFrame:
    """:func:`select_columns` for a command line: ``sentence`` stands in for a missing default ``text`` column (as
    in GLUE's SST-2), and a missing column is reported with the option that names it."""
    if text_col == "text" and "text" not in table.columns and "sentence" in table.columns:
        text_col = "sentence"
    return select_columns(table, text_col, label_col, where=where, options=_COLUMN_OPTIONS)


def read_examples(path: str, args: argparse.Namespace) -> pd.DataFrame:
    """Read ``path`` into ``text`` and raw ``label`` columns, refusing empty files and missing texts."""
    table = select_cli_columns(read_table(path), args.text_col, args.label_col, where=Path(path).name)
    if table.empty:
        raise DataError(f"{path} has no rows")
    missing = table["text"].map(lambda t: not isinstance(t, str) or not t.strip())
    if missing.any():
        raise DataError(f"{path}: row {int(np.flatnonzero(missing)[0])} has no text; remove empty rows")
    return table


def aligned(table: pd.DataFrame, loaded: LoadedModel) -> pd.DataFrame:
    """``table`` with its labels mapped onto the model's classes (int ``label``)."""
    return align_labels(table, loaded.label_names)


def engine_config(args: argparse.Namespace) -> EngineConfig:
    return EngineConfig(
        layers=args.layers, method=args.method, fisher=args.fisher, damping=args.damping,
        relative_damping=args.relative_damping, max_length=args.max_length, batch_size=args.batch_size,
        seed=args.seed, dtype=args.dtype, device=args.device,
    )


def make_engine(args: argparse.Namespace, loaded: LoadedModel) -> InfluenceEngine:
    config = engine_config(args)
    if config.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise DataError("--device cuda was given but no CUDA device is available; use --device cpu")
    return InfluenceEngine(loaded.model, loaded.tokenizer, config)


def prepare_factors(engine: InfluenceEngine, args: argparse.Namespace, loaded: LoadedModel, default_fit: str) -> None:
    """Load ``--factors``, or fit on ``--fit`` (default ``default_fit``); nothing for ``identity``."""
    from influence_core.cli.distributed import context, progress_bar

    if engine.config.method == "identity":
        return
    if getattr(args, "factors", None):
        engine.load_factors(args.factors)
        return
    fit = aligned(read_examples(getattr(args, "fit", None) or default_fit, args), loaded)
    engine.fit(fit["text"].tolist(), fit["label"].tolist(), progress=progress_bar(args, "fit"),
               distributed=context(args))


def check_out(path: str) -> Path:
    """The output path, refusing one whose folder does not exist (before any work is done)."""
    out = Path(path)
    if out.parent and not out.parent.exists():
        raise DataError(f"the output folder {out.parent} does not exist; create it first")
    return out
