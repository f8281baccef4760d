"""``torchrun --nproc-per-node 2 -m influence_core ...`` gives one process's factors, scores and self-influence.

Every run is a real ``torchrun`` (gloo, one thread per rank, a free master port, a timeout) on a tiny BERT
classifier saved to a folder; the single-process reference is the same command through ``cli.main``.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from influence_core import Factors, cli
from tests.engine.test_distributed import LABELS, TEXTS

TORCHRUN = str(Path(sys.executable).with_name("torchrun"))
ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_S = 240
pytestmark = pytest.mark.slow




@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    pd.DataFrame({"text": TEXTS, "label": LABELS}).to_csv(folder / "train.csv", index=False)
    pd.DataFrame({"text": TEXTS[:3], "label": LABELS[:3]}).to_csv(folder / "test.csv", index=False)
    return folder / "train.csv", folder / "test.csv"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    return {**env, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT),
            "INFLUENCE_CORE_DIST_TIMEOUT": "60", **extra}


def torchrun(argv, nproc: int = 2, launcher: list[str] | None = None, **env) -> subprocess.CompletedProcess:
    """One multi-rank run of a CLI command (plain torchrun, or ``launcher`` with torchrun's options)."""
    head = launcher or [TORCHRUN]
    command = [*head, "--nproc-per-node", str(nproc), "--master-addr", "127.0.0.1", "--master-port",
               str(_free_port()), *([] if launcher else ["-m", "influence_core"]), *map(str, argv)]
    return subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S, env=_env(**env), cwd=ROOT)


def single(argv, capsys) -> str:
    torch.set_num_threads(1)
    code = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return captured.err


def _close(actual, expected, rtol):
    actual, expected = np.asarray(actual, dtype=float), np.asarray(expected, dtype=float)
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * np.abs(expected).max())


def test_fit_scores_self_influence_match_one_process(model_dir, files, tmp_path, capsys):
    train, test = files
    common = ["--model", model_dir, "--dtype", "float64", "--damping", "1e-3"]
    one, two = tmp_path / "one.safetensors", tmp_path / "two.safetensors"
    single(["fit", *common, "--data", train, "--out", one, "--batch-size", "4"], capsys)
    shards = tmp_path / "shards"
    run = torchrun(["fit", *common, "--data", train, "--out", two, "--batch-size", "3", "--shard-dir", shards])
    assert run.returncode == 0, run.stderr
    assert {f"rank {r} of 2: fit on 6 of 12 examples" for r in (0, 1)} <= set(run.stderr.splitlines())
    assert "saved factors" in run.stdout and run.stdout.count("saved") == 1  # rank 0 alone writes and reports
    expected, got = Factors.load(one), Factors.load(two)
    assert got.meta["world_size"] == 2 and expected.meta["world_size"] == 1
    for name, layer in expected.layers.items():
        other = got.layers[name]
        assert (other.a_count, other.g_count, other.l_count) == (layer.a_count, layer.g_count, layer.l_count)
        for key in ("a_sum", "g_sum", "l_sum", "a_eigvals", "g_eigvals"):
            _close(getattr(other, key), getattr(layer, key), 1e-10)

    scores_one, scores_two = tmp_path / "one.npz", tmp_path / "two.npz"
    single(["scores", *common, "--train", train, "--test", test, "--factors", one, "--out", scores_one], capsys)
    run = torchrun(["scores", *common, "--train", train, "--test", test, "--factors", two, "--out", scores_two,
                    "--batch-size", "5"])
    assert run.returncode == 0, run.stderr
    expected, got = np.load(scores_one), np.load(scores_two)
    assert int(got["world_size"]) == 2 and int(expected["world_size"]) == 1
    for key in ("influences", "self_influence", *[k for k in expected.files if k.startswith("layer:")]):
        _close(got[key], expected[key], 1e-8)

    self_one, self_two = tmp_path / "one.csv", tmp_path / "two.csv"
    single(["self-influence", *common, "--train", train, "--factors", one, "--out", self_one], capsys)
    run = torchrun(["self-influence", *common, "--train", train, "--factors", two, "--out", self_two,
                    "--sharding", "strided", "--batch-size", "2"])
    assert run.returncode == 0, run.stderr
    expected, got = pd.read_csv(self_one), pd.read_csv(self_two)
    assert got["text"].tolist() == TEXTS
    _close(got["self_influence"], expected["self_influence"], 1e-8)
    assert got["rank"].tolist() == expected["rank"].tolist()

    # a rerun resumes from the shards of the first one and writes the same factors
    again = tmp_path / "again.safetensors"
    run = torchrun(["fit", *common, "--data", train, "--out", again, "--batch-size", "3", "--shard-dir", shards])
    assert run.returncode == 0, run.stderr
    assert f"rank 1 of 2: fit on 6 of 12 examples (covariances, eigenvalues resumed from {shards})" in run.stderr
    for name, layer in Factors.load(two).layers.items():
        assert torch.equal(Factors.load(again).layers[name].l_sum, layer.l_sum)


def test_float32_matches_one_process(model_dir, files, tmp_path, capsys):
    train, test = files
    common = ["--model", model_dir, "--damping", "1e-3", "--train", train, "--test", test]
    one, two = tmp_path / "one.npz", tmp_path / "two.npz"
    single(["scores", *common, "--out", one], capsys)  # fits on the training file, then scores
    run = torchrun(["scores", *common, "--out", two, "--batch-size", "5", "--sharding", "strided"])
    assert run.returncode == 0, run.stderr
    _close(np.load(two)["influences"], np.load(one)["influences"], 1e-5)


def test_a_failing_rank_stops_every_rank(model_dir, files, tmp_path):
    train, _ = files
    argv = ["fit", "--model", model_dir, "--data", train, "--out", tmp_path / "f.safetensors"]
    start = time.monotonic()
    run = torchrun(argv, INFLUENCE_CORE_FAIL_RANK="1")
    assert time.monotonic() - start < TIMEOUT_S
    assert run.returncode != 0  # plain torchrun reports a failed child with 1
    assert "error: rank 1 of 2: injected failure in covariances (INFLUENCE_CORE_FAIL_RANK)" in run.stderr
    assert not (tmp_path / "f.safetensors").exists()

    # the CLI's launcher: torchrun's options, the rank's one line, exit code 2
    run = torchrun(argv, launcher=[sys.executable, "-m", "influence_core.cli.launch"],
                   INFLUENCE_CORE_FAIL_RANK="0", INFLUENCE_CORE_FAIL_STAGE="eigenvalue correction")
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [
        "error: rank 0 of 2: injected failure in eigenvalue correction (INFLUENCE_CORE_FAIL_RANK)"]
    assert not (tmp_path / "f.safetensors").exists()


def test_a_killed_rank_ends_the_run_cleanly(model_dir, files, tmp_path):
    """A rank killed outright (SIGKILL, as by the OOM killer) cannot report; torchrun tears the other one down, and
    the launcher says which rank stopped, with exit code 2, well within the timeout (no hang)."""
    train, _ = files
    argv = ["fit", "--model", model_dir, "--data", train, "--out", tmp_path / "f.safetensors"]
    start = time.monotonic()
    run = torchrun(argv, launcher=[sys.executable, "-m", "influence_core.cli.launch"], INFLUENCE_CORE_KILL_RANK="1")
    assert time.monotonic() - start < 120
    assert run.returncode == 2
    assert run.stderr.strip().splitlines()[-1] == "error: rank 1 stopped with exit code -9"
    assert not (tmp_path / "f.safetensors").exists()


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_nccl_matches_one_process(model_dir, files, tmp_path, capsys):
    train, test = files
    common = ["--model", model_dir, "--dtype", "float64", "--damping", "1e-3", "--device", "cuda",
              "--train", train, "--test", test]
    one, two = tmp_path / "one.npz", tmp_path / "two.npz"
    single(["scores", *common, "--out", one], capsys)
    run = torchrun(["scores", *common, "--out", two])
    assert run.returncode == 0, run.stderr
    _close(np.load(two)["influences"], np.load(one)["influences"], 1e-8)


def test_mislabels_match_one_process(model_dir, files, tmp_path, capsys):
    train, test = files
    common = ["--model", model_dir, "--dtype", "float64", "--damping", "1e-3", "--train", train, "--trusted", test]
    one, two = tmp_path / "one.csv", tmp_path / "two.csv"
    single(["mislabels", *common, "--out", one], capsys)
    run = torchrun(["mislabels", *common, "--out", two, "--sharding", "strided"])
    assert run.returncode == 0, run.stderr
    expected, got = pd.read_csv(one), pd.read_csv(two)
    for column in ("self_influence", "trusted_influence", "relative_harm", "loss", "combined"):
        _close(got[column], expected[column], 1e-8)
    assert got["rank"].tolist() == expected["rank"].tolist()


def test_index_under_torchrun_matches_one_process(model_dir, files, tmp_path, capsys):
    """Each rank indexes one block of rows against the same factors; rank 0 writes one index equal to one process's,
    and a query on it gives the same rows and numbers."""
    from influence_core.engine.index import GradientIndex

    train, test = files
    common = ["--model", model_dir, "--dtype", "float64", "--damping", "1e-3", "--projected", "--projection-size", "4",
              "--index-dtype", "float64"]
    factors = tmp_path / "factors.safetensors"
    single(["fit", "--model", model_dir, "--dtype", "float64", "--data", train, "--out", factors], capsys)
    one, two = tmp_path / "one", tmp_path / "two"
    single(["index", *common, "--train", train, "--factors", factors, "--out", one], capsys)
    run = torchrun(["index", *common, "--train", train, "--factors", factors, "--out", two, "--batch-size", "3"])
    assert run.returncode == 0, run.stderr
    assert {f"rank {r} of 2: index rows of 6 of 12 examples" for r in (0, 1)} <= set(run.stderr.splitlines())
    expected, got = GradientIndex.read_meta(one), GradientIndex.read_meta(two)
    assert got["world_size"] == 2 and expected["world_size"] == 1 and got["kind"] == expected["kind"] == "projected"
    _close(np.load(two / "rows.npy"), np.load(one / "rows.npy"), 1e-10)
    answers = []
    for folder in (one, two):
        out = tmp_path / f"{folder.name}.csv"
        single(["query", "--index", folder, "--text", TEXTS[0], "--label", LABELS[0], "--top", "3", "--rerank", "0",
                "--out", out], capsys)
        answers.append(pd.read_csv(out))
    assert answers[0]["train_row"].tolist() == answers[1]["train_row"].tolist()
    _close(answers[1]["influence"], answers[0]["influence"], 1e-8)
