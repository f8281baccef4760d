"""What every command needs to run under ``torchrun``: the ``--shard-dir`` and ``--sharding`` options, the
process group, progress bars on rank 0 only, and outputs written by rank 0 only.

    torchrun --nproc-per-node 2 -m influence_core fit --model M --data train.csv --out factors.safetensors

Each rank fits, scores or ranks its shard of the training rows; the results are those of one process (see
``influence_core.engine.distributed``). Without torchrun's variables a command runs as one process, as before.
Plain torchrun exits with 1 (and its own report) when a rank fails; ``python -m influence_core.cli.launch``
takes the same options and leaves only the failing rank's one line and exit code 2.
"""

from __future__ import annotations

import argparse
import atexit

from influence_core.cli.progress import Bar
from influence_core.engine.distributed import SHARDINGS, Distributed


def add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sharding", default="contiguous", choices=list(SHARDINGS),
                        help="under torchrun: each rank takes one block of rows (contiguous) or every n-th (strided)")
    parser.add_argument("--shard-dir", default=None,
                        help="folder for each rank's partial results; a rerun resumes from the ones that match")


def context(args: argparse.Namespace) -> Distributed:
    """This process's :class:`Distributed`, created on first use (joining torchrun's group when there is one)."""
    existing = getattr(args, "_distributed", None)
    if existing is None:
        existing = Distributed.from_env(device=getattr(args, "device", "cpu"),
                                        sharding=getattr(args, "sharding", "contiguous"),
                                        shard_dir=getattr(args, "shard_dir", None))
        if existing.owns_group:
            atexit.register(existing.close)
        args._distributed = existing
    return existing


def progress_bar(args: argparse.Namespace, prefix: str) -> Bar | None:
    """A tqdm bar on rank 0; the other ranks work silently."""
    return Bar(prefix) if context(args).is_main else None


def is_main(args: argparse.Namespace) -> bool:
    """Whether this process writes the outputs (rank 0, or the only process)."""
    return context(args).is_main
