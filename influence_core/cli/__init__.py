"""``python -m influence_core``: everything the app computes, in batch, for data too big for a browser.

One module per command, each with ``add_parser(subparsers)`` and ``run(args)``: ``fit`` (factors to a
safetensors file), ``scores`` (test x train influences to .npz), ``self-influence`` (training rows ranked by
self-influence to CSV), ``finetune``, ``mislabels``, ``clean-and-retrain`` and ``lds`` (does influence predict
retraining?). Bad input prints one line on
stderr and exits with 2. The library never imports this package.
"""

from __future__ import annotations

import argparse
import sys

from influence_core.cli import clean_and_retrain, finetune, fit, index, lds, mislabels, query, scores, self_influence
from influence_core.engine.distributed import PeerFailure
from influence_core.errors import InfluenceError

#: The commands in the order ``--help`` lists them.
COMMANDS = (fit, scores, self_influence, finetune, mislabels, clean_and_retrain, index, query, lds)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (argparse's default prints the usage too)
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="influence-core", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as done:  # --help, or a usage error already printed as one line
        return int(done.code or 0)
    try:
        return int(args.func(args) or 0)
    except PeerFailure:  # under torchrun: the failing rank prints the one line, its peers stop quietly
        return 2
    except InfluenceError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # unwritable output, disk full, ...
        print(f"error: {err.strerror or err}: {getattr(err, 'filename', '') or ''}".rstrip(": "), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


__all__ = ["build_parser", "main"]
