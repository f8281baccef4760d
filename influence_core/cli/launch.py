"""``python -m influence_core.cli.launch [torchrun options] COMMAND ...``: torchrun with the CLI's exit codes.

Takes torchrun's options (``--nproc-per-node``, ``--nnodes``, ``--node-rank``, ``--master-addr``,
``--master-port``, ``--rdzv-*``, ...) and then an ``influence_core`` command with its options, e.g.

    python -m influence_core.cli.launch --nproc-per-node 2 scores --model M --train t.csv --test q.csv --out s.npz

Plain ``torchrun ... -m influence_core`` works as well, but when a rank fails torchrun prints its own report
and exits with 1; here the failing rank's one line is all that is printed and the exit code is 2, as for
one process.
"""

from __future__ import annotations

import logging
import sys


def main(argv: list[str] | None = None) -> int:
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    argv = list(sys.argv[1:] if argv is None else argv)
    commands = _command_names()
    split = next((i for i, arg in enumerate(argv) if arg in commands), None)
    if split is None:
        print(f"error: give torchrun options and then a command ({', '.join(sorted(commands))})", file=sys.stderr)
        return 2
    args = parse_args([*argv[:split], "-m", "influence_core", *argv[split:]])
    for name in ("torch.distributed.elastic", "torch.distributed.run", "torch.distributed.launcher"):
        logging.getLogger(name).setLevel(logging.CRITICAL)  # the ranks print what went wrong
    try:
        run(args)
    except ChildFailedError as err:
        rank, failure = err.get_first_failure()
        if failure.exitcode not in (1, 2):  # killed or crashed: the rank could not say why itself
            print(f"error: rank {rank} stopped with exit code {failure.exitcode}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


def _command_names() -> set[str]:
    from influence_core.cli import build_parser

    parser = build_parser()
    sub = next(action for action in parser._actions if action.__class__.__name__ == "_SubParsersAction")
    return set(sub.choices)


if __name__ == "__main__":
    sys.exit(main())
