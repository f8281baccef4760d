"""Several processes, one result: fit, score and self-influence split across ranks, identical to one process.

Each rank takes one shard of the training examples (``contiguous`` or ``strided``); covariance and eigenvalue
sums are all-reduced in float64 together with their counts; the eigendecomposition is done once, on rank 0,
and broadcast, so every rank holds bit-identical eigenvectors; score columns and self-influences are
gathered and put back in the original order. Up to round-off the results are those of one process, whatever
the number of ranks, the shard boundaries or the batch size (``fisher="sampled"`` draws its labels per batch,
so it gives another, equally valid, sample).

Three ways to get a :class:`Distributed`:

* under ``torchrun`` (``RANK`` / ``WORLD_SIZE`` in the environment): ``Distributed.from_env()`` joins the
  group (``gloo`` on CPU, ``cpu:gloo,cuda:nccl`` on CUDA), with a timeout so a lost rank cannot hang the rest;
* from a process group you already created: ``Distributed.from_group(group)``;
* from a notebook: ``launch(fn, nprocs)`` starts ``nprocs`` local workers over ``gloo`` and calls
  ``fn(distributed, *args)`` in each, returning rank 0's result::

      def work(distributed, texts, labels):
          engine = InfluenceEngine(model, tokenizer, config)
          engine.fit(texts, labels, distributed=distributed)
          return engine.self_influence(texts, labels, distributed=distributed)

      scores = launch(work, 2, texts, labels)   # [n_train], same as one process

Failures: every stage runs inside :meth:`Distributed.guard`; at its end the ranks exchange their errors, so
an error on one rank stops every rank at the same point (the failing rank re-raises its own error, the others
raise :class:`PeerFailure`). With ``shard_dir`` every rank writes each stage's partial result to
``shard_dir/<stage>-rank-<r>-of-<n>.npz`` (atomically) and a rerun loads, instead of recomputing, each
shard whose recorded inputs match.

The collectives :meth:`all_reduce`, :meth:`broadcast`, :meth:`gather_rows` and :meth:`gather_columns` are
generic, for other sharded computations (a gradient index built by rows, say).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import hashlib
import json
import os
import signal
import socket
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from influence_core.engine.batches import Encoded
from influence_core.engine.factors import Factors, LayerFactors
from influence_core.engine.scores import ScoreTable
from influence_core.errors import ConfigError, DataError, InfluenceError

#: Seconds a rank waits in a collective (and in ``init_process_group``) before giving up; override with
#: ``INFLUENCE_CORE_DIST_TIMEOUT``.
DEFAULT_TIMEOUT_S = 1800.0
#: Test hook: the rank named here raises a DataError inside its first guarded stage (or the stage named by
#: ``INFLUENCE_CORE_FAIL_STAGE``), to check that a failing rank stops the run cleanly.
FAIL_RANK_ENV = "INFLUENCE_CORE_FAIL_RANK"
FAIL_STAGE_ENV = "INFLUENCE_CORE_FAIL_STAGE"
#: Test hook: the rank named here kills itself (SIGKILL) at its first guarded stage, as a crashed or OOM-killed
#: worker would, to check that the others are torn down and the run ends cleanly.
KILL_RANK_ENV = "INFLUENCE_CORE_KILL_RANK"
SHARDINGS = ("contiguous", "strided")
Arrays = dict[str, np.ndarray | None]


class PeerFailure(InfluenceError):
    """Another rank failed; this rank stopped at the same point. ``failed_rank`` and its message are kept."""

    def __init__(self, message: str, failed_rank: int):
        super().__init__(message)
        self.failed_rank = failed_rank


@dataclass
class Distributed:
    """This process's place among ``world_size`` ranks and the collectives the engine needs.

    Attributes:
        rank: This process's rank in ``group``, 0..world_size-1 (0 writes the outputs).
        world_size: Number of ranks (1: a single process; every collective is then a no-op).
        group: The process group (None: the default group, or no group at all when ``world_size == 1``).
        device: Where tensors travel for collectives (``cpu`` for gloo, the rank's GPU for nccl).
        sharding: ``contiguous`` (rank r gets one block of rows) or ``strided`` (rows r, r + n, r + 2n, ...).
        shard_dir: Folder for resumable per-rank partial results, or None.
        owns_group: Whether :meth:`close` should destroy the group (True when this object created it).
    """

    rank: int = 0
    world_size: int = 1
    group: object | None = None
    device: str = "cpu"
    sharding: str = "contiguous"
    shard_dir: Path | None = None
    owns_group: bool = False
    resumed: list[str] = dataclasses.field(default_factory=list)  # stages loaded from shard_dir, in order
    _logged: int = dataclasses.field(default=0, repr=False)

    def __post_init__(self):
        if self.sharding not in SHARDINGS:
            raise ConfigError(f"unknown sharding {self.sharding!r}: choose {' or '.join(SHARDINGS)}")
        if self.shard_dir is not None:
            self.shard_dir = Path(self.shard_dir)

    # ----------------------------------------------------------------- construction
    @classmethod
    def single(cls, *, shard_dir: str | Path | None = None) -> Distributed:
        """One process (rank 0 of 1); still resumable with ``shard_dir``."""
        return cls(shard_dir=shard_dir)

    @classmethod
    def from_env(cls, *, device: str = "cpu", sharding: str = "contiguous", shard_dir: str | Path | None = None,
                 timeout_s: float | None = None) -> Distributed:
        """Join the group torchrun describes in ``RANK``/``WORLD_SIZE``/``MASTER_ADDR``/``MASTER_PORT``.

        Without those variables (a plain ``python``), a single process. ``device``: the engine's device; on
        ``cuda`` each rank uses GPU ``LOCAL_RANK`` and the group gets nccl for CUDA tensors.
        """
        world_size = int(os.environ.get("WORLD_SIZE", "1") or 1)
        if "RANK" not in os.environ or world_size <= 1:
            return cls(sharding=sharding, shard_dir=shard_dir)
        import torch.distributed as dist

        cuda = device.startswith("cuda")
        if cuda:
            if not torch.cuda.is_available():
                raise ConfigError("device cuda was given but no CUDA device is available; use cpu")
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        if not dist.is_initialized():
            dist.init_process_group(backend="cpu:gloo,cuda:nccl" if cuda else "gloo",
                                    timeout=datetime.timedelta(seconds=timeout_s or default_timeout()))
            owns = True
        else:
            owns = False
        return cls(rank=dist.get_rank(), world_size=dist.get_world_size(), device=_collective_device(cuda),
                   sharding=sharding, shard_dir=shard_dir, owns_group=owns)

    @classmethod
    def from_group(cls, group=None, *, sharding: str = "contiguous", shard_dir: str | Path | None = None,
                   device: str = "cpu") -> Distributed:
        """Use an existing process group (None: the default one, which must be initialised)."""
        import torch.distributed as dist

        if not dist.is_initialized():
            raise ConfigError("no process group: call torch.distributed.init_process_group first (or use launch)")
        return cls(rank=dist.get_rank(group), world_size=dist.get_world_size(group), group=group,
                   device=_collective_device(device.startswith("cuda")), sharding=sharding, shard_dir=shard_dir)

    def close(self) -> None:
        """Destroy the process group if this object created it."""
        if self.owns_group:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
            self.owns_group = False

    # ----------------------------------------------------------------- who does what
    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, n: int) -> np.ndarray:
        """This rank's rows of ``n`` examples, ascending, shape [n_local]; the shards of all ranks partition 0..n-1."""
        if n < self.world_size:
            raise DataError(f"{n} examples cannot be split across {self.world_size} processes; use fewer processes")
        if self.sharding == "strided":
            return np.arange(self.rank, n, self.world_size)
        bounds = np.linspace(0, n, self.world_size + 1).round().astype(np.int64)
        return np.arange(bounds[self.rank], bounds[self.rank + 1])

    def log(self, message: str) -> None:
        """One line on stderr, prefixed with the rank (only when there are several ranks); says which stages
        were resumed from ``shard_dir`` since the last line."""
        if len(self.resumed) > self._logged:
            message += f" ({', '.join(self.resumed[self._logged:])} resumed from {self.shard_dir})"
            self._logged = len(self.resumed)
        if self.active:  # one write per line, so the ranks' lines never interleave
            sys.stderr.flush()
            os.write(sys.stderr.fileno(), f"rank {self.rank} of {self.world_size}: {message}\n".encode())

    # ----------------------------------------------------------------- failures
    @contextlib.contextmanager
    def guard(self, stage: str) -> Iterator[None]:
        """Run one stage; at its end every rank learns whether any rank failed in it, and all stop together.

        The failing rank re-raises its own error; the others raise :class:`PeerFailure` naming it.
        """
        if not self.active:
            yield
            return
        error: BaseException | None = None
        try:
            if os.environ.get(KILL_RANK_ENV) == str(self.rank):
                os.kill(os.getpid(), signal.SIGKILL)
            failing = os.environ.get(FAIL_RANK_ENV)
            if failing is not None and int(failing) == self.rank and os.environ.get(FAIL_STAGE_ENV, stage) == stage:
                raise DataError(f"rank {self.rank} of {self.world_size}: injected failure in {stage} ({FAIL_RANK_ENV})")
            yield
        except Exception as err:  # noqa: BLE001 - any failure must reach the other ranks before it propagates
            error = err
        self.check(stage, error)

    def check(self, stage: str, error: BaseException | None = None) -> None:
        """A sync point: raise if any rank reports an error (``error`` is this rank's, or None)."""
        if not self.active:
            if error is not None:
                raise error
            return
        message = None if error is None else (str(error) or type(error).__name__)
        messages = self._all_gather_object(message)
        failed = [rank for rank, text in enumerate(messages) if text is not None]
        if not failed:
            return
        if error is not None:
            if isinstance(error, InfluenceError) and not str(error).startswith("rank "):
                raise type(error)(f"rank {self.rank} of {self.world_size}: {error}") from error
            raise error
        first = failed[0]
        raise PeerFailure(f"rank {first} of {self.world_size} failed in {stage}: {messages[first]}", first)

    # ----------------------------------------------------------------- collectives
    def all_reduce(self, tensors: list[torch.Tensor]) -> None:
        """Sum each tensor over the ranks, in place (float64 sums stay float64)."""
        if not self.active:
            return
        import torch.distributed as dist

        for tensor in tensors:
            moved = _sendable(tensor, self.device)
            dist.all_reduce(moved, group=self.group)
            if moved is not tensor:
                tensor.copy_(moved)

    def broadcast(self, tensors: list[torch.Tensor]) -> None:
        """Overwrite each tensor with rank 0's, in place (same shape and dtype on every rank)."""
        if not self.active:
            return
        import torch.distributed as dist

        source = dist.get_global_rank(self.group, 0) if self.group is not None else 0
        for tensor in tensors:
            moved = _sendable(tensor, self.device)
            dist.broadcast(moved, src=source, group=self.group)
            if moved is not tensor:
                tensor.copy_(moved)

    def gather_rows(self, parts: Mapping[str, np.ndarray | None], index: np.ndarray, n: int,
                    axes: Mapping[str, int] | None = None) -> Arrays:
        """Every rank's shard, merged in the original order, on every rank.

        ``parts[key]`` holds this rank's rows ``index`` (of ``n``) along axis ``axes.get(key, 0)``; returns
        each key's full array with the rows of every rank put back at their positions (None stays None).
        """
        axes = dict(axes or {})
        shards = self._all_gather_object((np.asarray(index), dict(parts))) if self.active else [(index, dict(parts))]
        merged: Arrays = {}
        for key in parts:
            pieces = [(idx, shard[key]) for idx, shard in shards]
            if any(piece is None for _, piece in pieces):
                merged[key] = None
                continue
            axis = axes.get(key, 0) % pieces[0][1].ndim
            shape = list(pieces[0][1].shape)
            shape[axis] = n
            out = np.zeros(shape, dtype=np.result_type(*[piece for _, piece in pieces]))
            for idx, piece in pieces:
                where = [slice(None)] * len(shape)
                where[axis] = idx
                out[tuple(where)] = piece
            merged[key] = out
        return merged

    def gather_columns(self, parts: Mapping[str, np.ndarray | None], index: np.ndarray, n: int) -> Arrays:
        """:meth:`gather_rows` along the last axis (score columns are training examples)."""
        return self.gather_rows(parts, index, n, {key: -1 for key in parts})

    def _all_gather_object(self, value) -> list:
        import torch.distributed as dist

        out = [None] * self.world_size
        dist.all_gather_object(out, value, group=self.group)
        return out

    # ----------------------------------------------------------------- resumable stages
    def resumable(self, stage: str, inputs: Mapping, compute: Callable[[], Arrays]) -> Arrays:
        """``compute()``, or this rank's saved result of ``stage`` when ``shard_dir`` has one for the same ``inputs``.

        ``inputs``: JSON-able description of everything the result depends on (it is stored with the arrays).
        """
        if self.shard_dir is None:
            return compute()
        path = self.shard_path(stage)
        key = json.dumps({"stage": stage, "rank": self.rank, "world_size": self.world_size, **inputs},
                         sort_keys=True, default=str)
        if path.is_file():
            try:
                with np.load(path, allow_pickle=False) as saved:
                    if str(saved["__inputs__"]) == key:
                        missing = json.loads(str(saved["__none__"]))
                        self.resumed.append(stage)
                        return {**{k: saved[k] for k in saved.files if not k.startswith("__")},
                                **{k: None for k in missing}}
            except (OSError, ValueError, KeyError):
                pass  # unreadable or from another run: compute again and overwrite it
        arrays = compute()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as handle:
            np.savez(handle, __inputs__=np.array(key), __none__=np.array(json.dumps(
                [k for k, v in arrays.items() if v is None])), **{k: v for k, v in arrays.items() if v is not None})
        os.replace(tmp, path)
        return arrays

    def shard_path(self, stage: str) -> Path:
        return Path(self.shard_dir) / f"{stage}-rank-{self.rank}-of-{self.world_size}.npz"

    # ----------------------------------------------------------------- the engine's work, sharded
    def fit(self, engine, encoded: Encoded, *, progress=None, on_batch=None) -> Factors:
        """``engine.fit`` on this rank's shard of ``encoded``; every rank returns the same factors.

        ``on_batch`` rides on this rank's eigenvalue pass (``batch.index`` are positions in ``encoded.subset(
        self.shard(len(encoded)))``); with it the pass is always run, never resumed from ``shard_dir``.
        """
        n = len(encoded)
        index = self.shard(n)
        local = encoded.subset(index)
        inputs = {"engine": _engine_key(engine), "data": digest_encoded(encoded), "rows": _digest(index)}
        with self.guard("covariances"):
            arrays = self.resumable("covariances", inputs, lambda: _pack_covariances(
                engine.covariance_statistics(local, progress=progress)))
        statistics = _unpack_covariances(arrays, engine.layers)
        self.all_reduce([t for layer in statistics.values() for t in (layer.a_sum, layer.g_sum)])
        counts = torch.tensor([[layer.a_count, layer.g_count] for layer in statistics.values()], dtype=torch.int64)
        self.all_reduce([counts])
        for layer, (a_count, g_count) in zip(statistics.values(), counts.tolist()):
            layer.a_count, layer.g_count = a_count, g_count
        factors = Factors(statistics, engine.config.method, engine.config.fisher, engine.fingerprint, n,
                          meta={"max_length": engine.config.max_length, "world_size": self.world_size})
        with self.guard("eigendecomposition"):
            for name, layer in factors.layers.items():
                if self.is_main:
                    layer.eigendecompose(name)
                else:
                    width, out = layer.a_sum.shape[0], layer.g_sum.shape[0]
                    layer.a_eigvals, layer.a_eigvecs = torch.empty(width, dtype=torch.float64), torch.empty(
                        width, width, dtype=torch.float64)
                    layer.g_eigvals, layer.g_eigvecs = torch.empty(out, dtype=torch.float64), torch.empty(
                        out, out, dtype=torch.float64)
        self.broadcast([t for layer in factors.layers.values()
                        for t in (layer.a_eigvals, layer.a_eigvecs, layer.g_eigvals, layer.g_eigvecs)])
        if engine.config.method == "ekfac":
            inputs["eigenvectors"] = _digest(*[t for layer in factors.layers.values()
                                               for t in (layer.a_eigvecs, layer.g_eigvecs)])
            with self.guard("eigenvalue correction"):
                def correction() -> Arrays:
                    engine.eigenvalue_statistics(local, factors, progress=progress, on_batch=on_batch)
                    return {f"{name}::l_sum": layer.l_sum.numpy() for name, layer in factors.layers.items()} | {
                        "l_count": np.array([layer.l_count for layer in factors.layers.values()])}

                arrays = correction() if on_batch is not None else self.resumable("eigenvalues", inputs, correction)
            for i, (name, layer) in enumerate(factors.layers.items()):
                layer.l_sum = torch.as_tensor(np.array(arrays[f"{name}::l_sum"]), dtype=torch.float64)
                layer.l_count = int(arrays["l_count"][i])
            self.all_reduce([layer.l_sum for layer in factors.layers.values()])
            l_counts = torch.tensor([layer.l_count for layer in factors.layers.values()], dtype=torch.int64)
            self.all_reduce([l_counts])
            for layer, count in zip(factors.layers.values(), l_counts.tolist()):
                layer.l_count = count
        self.log(f"fit on {len(index)} of {n} examples")
        engine.factors = factors
        return factors

    def score(self, engine, test: Encoded, train: Encoded, *, dampings=None, self_influence: bool = True,
              progress=None) -> ScoreTable:
        """``engine.score`` with the training examples sharded; every rank returns the whole table."""
        n = len(train)
        index = self.shard(n)
        inputs = {"engine": _engine_key(engine), "factors": factors_key(engine), "test": digest_encoded(test),
                  "train": digest_encoded(train), "rows": _digest(index), "dampings": list(map(float, dampings or [])),
                  "self_influence": self_influence}
        with self.guard("scores"):
            def scores() -> Arrays:
                table = engine.score(test, None, train.subset(index), None, dampings=dampings,
                                     self_influence=self_influence, progress=progress)
                return {f.name: np.asarray(getattr(table, f.name)) if getattr(table, f.name) is not None else None
                        for f in dataclasses.fields(ScoreTable) if f.name not in ("damping_mode", "method", "meta")}

            arrays = self.resumable("scores", inputs, scores)
        gathered = self.gather_rows(
            {key: arrays[key] for key in ("pairwise", "self_influence", "train_probs", "train_labels")}, index, n,
            {"pairwise": -1, "self_influence": -1})
        self.log(f"scored {len(index)} of {n} training examples against {len(test)} test examples")
        return ScoreTable(
            dampings=arrays["dampings"], layers=[str(name) for name in arrays["layers"]],
            pairwise=gathered["pairwise"], self_influence=gathered["self_influence"],
            test_self_influence=arrays["test_self_influence"], test_probs=arrays["test_probs"],
            train_probs=gathered["train_probs"], test_labels=arrays["test_labels"],
            train_labels=gathered["train_labels"],
            damping_mode="relative" if engine.config.relative_damping is not None else "absolute",
            method=engine.config.method,
            meta={"config": engine.config.key(), "fingerprint": engine.fingerprint, "world_size": self.world_size},
        )

    def self_influence(self, engine, train: Encoded, *, dampings=None, progress=None) -> np.ndarray:
        """``engine.self_influence`` with the examples sharded; [n_train] (or [K, n_train]) on every rank."""
        n = len(train)
        index = self.shard(n)
        inputs = {"engine": _engine_key(engine), "factors": factors_key(engine), "train": digest_encoded(train),
                  "rows": _digest(index), "dampings": list(map(float, dampings or []))}
        with self.guard("self-influence"):
            arrays = self.resumable("self-influence", inputs, lambda: {"values": np.asarray(engine.self_influence(
                train.subset(index), None, dampings=dampings, progress=progress))})
        self.log(f"self-influence of {len(index)} of {n} examples")
        return self.gather_columns(arrays, index, n)["values"]


# ----------------------------------------------------------------- launching workers from Python
def launch(fn: Callable, nprocs: int, *args, sharding: str = "contiguous", shard_dir: str | Path | None = None,
           timeout_s: float | None = None, threads: int | None = None, start_method: str = "spawn"):
    """Run ``fn(distributed, *args)`` in ``nprocs`` local processes over gloo; return rank 0's result.

    ``fn`` and ``args`` must be picklable (a module-level function; from a notebook use
    ``start_method="fork"``). ``threads``: torch threads per worker (default: the cores split evenly).
    A worker's exception is raised here (``torch.multiprocessing.ProcessRaisedException``) after every
    worker stopped.
    """
    import torch.multiprocessing as mp

    if nprocs < 1:
        raise ConfigError("nprocs must be at least 1")
    threads = threads or max(1, (os.cpu_count() or 1) // nprocs)
    # rank 0's result goes through a file: a queue's pipe would block a large result until the parent reads,
    # and the parent reads only after joining the workers
    with tempfile.TemporaryDirectory(prefix="influence-launch-") as folder:
        result = Path(folder) / "result.pt"
        mp.start_processes(_worker, args=(fn, args, nprocs, _free_port(), sharding, shard_dir, timeout_s, threads,
                                          str(result)), nprocs=nprocs, join=True, start_method=start_method)
        return torch.load(result, weights_only=False) if result.is_file() else None


def _worker(rank: int, fn, args, nprocs, port, sharding, shard_dir, timeout_s, threads, result: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(threads)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=nprocs,
                            timeout=datetime.timedelta(seconds=timeout_s or default_timeout()))
    distributed = Distributed(rank=rank, world_size=nprocs, sharding=sharding, shard_dir=shard_dir,
                              owns_group=True)
    try:
        value = fn(distributed, *args)
        if rank == 0:
            torch.save(value, result)
    except BaseException:
        distributed.close()
        raise  # spawn reports it to the parent
    distributed.close()
    sys.stdout.flush()
    sys.stderr.flush()
    # the result is saved and the group is gone: skip interpreter teardown, where a library's still-joinable C++
    # thread can abort the process ("terminate called without an active exception") after the work succeeded
    os._exit(0)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ----------------------------------------------------------------- helpers
def default_timeout() -> float:
    return float(os.environ.get("INFLUENCE_CORE_DIST_TIMEOUT", DEFAULT_TIMEOUT_S))


def _sendable(tensor: torch.Tensor, device: str) -> torch.Tensor:
    """``tensor`` on ``device`` in row-major order: collectives send raw memory, and eigh returns column-major
    eigenvectors, which a row-major receiver would read transposed."""
    return tensor.to(device).contiguous()


def _collective_device(cuda: bool) -> str:
    return f"cuda:{torch.cuda.current_device()}" if cuda else "cpu"


def _digest(*values) -> str:
    digest = hashlib.sha256()
    for value in values:
        array = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
        digest.update(str(array.dtype).encode() + str(array.shape).encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:20]


def digest_encoded(encoded: Encoded) -> str:
    """A short hash of the tokens and labels of ``encoded`` (what a saved shard was computed from)."""
    digest = hashlib.sha256(repr(encoded.input_ids).encode())
    digest.update(repr(encoded.token_type_ids).encode())
    digest.update(np.asarray(encoded.labels, dtype=np.int64).tobytes())
    return digest.hexdigest()[:20]


def _engine_key(engine) -> dict:
    return {"fingerprint": engine.fingerprint, "config": engine.config.key(), "layers": list(engine.layers)}


def factors_key(engine) -> str | None:
    factors = engine.factors
    if factors is None or engine.config.method == "identity":
        return None
    tensors = [t for layer in factors.layers.values()
               for t in (layer.a_eigvecs, layer.g_eigvecs, layer.l_sum, layer.a_eigvals, layer.g_eigvals)
               if t is not None]
    return _digest(*tensors, np.array([layer.l_count for layer in factors.layers.values()]))


def _pack_covariances(statistics: Mapping[str, LayerFactors]) -> Arrays:
    arrays: Arrays = {}
    for name, layer in statistics.items():
        arrays[f"{name}::a_sum"] = layer.a_sum.numpy()
        arrays[f"{name}::g_sum"] = layer.g_sum.numpy()
    arrays["counts"] = np.array([[layer.a_count, layer.g_count] for layer in statistics.values()], dtype=np.int64)
    return arrays


def _unpack_covariances(arrays: Arrays, layers: list[str]) -> dict[str, LayerFactors]:
    out = {}
    for i, name in enumerate(layers):
        a_count, g_count = (int(c) for c in arrays["counts"][i])
        out[name] = LayerFactors(torch.as_tensor(np.array(arrays[f"{name}::a_sum"]), dtype=torch.float64),
                                 torch.as_tensor(np.array(arrays[f"{name}::g_sum"]), dtype=torch.float64),
                                 a_count, g_count)
    return out


__all__ = ["Distributed", "PeerFailure", "digest_encoded", "factors_key", "launch"]
