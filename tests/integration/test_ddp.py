"""DDP (torchrun, 2 CPU processes, gloo) against single-process training; a killed DDP run resumes; streaming
evaluation / top-k and the memory-mapped loaders.

Why DDP is compared within a tolerance and not bit for bit: with the same seed and global batch, every rank sees the
same permutation and the same negatives as the single process (training/distributed.py), but (1) the gradient of
the global batch is computed as two half-batch gradients that are averaged by an all-reduce — a different floating
point summation order — and (2) dropout masks come from one RNG stream per rank instead of one stream for the whole
batch. With dropout 0 only (1) remains: per-epoch losses agree to ~1e-6 relative and the ranking metrics agree
(we allow 1e-4 relative on losses and one flipped evaluation row, 1/150, on each metric). Resuming a killed DDP run,
on the other hand, must reproduce the uninterrupted DDP run exactly: every rank's RNG state is checkpointed.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import warnings
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from dllm2rec.config import load_config
from dllm2rec.data.schema import SeqDataset
from dllm2rec.data.synthetic import make_synthetic
from dllm2rec.evaluation.protocol import evaluate, rank_targets, top_k
from dllm2rec.students.base import build_student
from dllm2rec.teachers.artifacts import TeacherArtifacts
from dllm2rec.teachers.controls import make_control
from dllm2rec.training import distributed as D
from dllm2rec.training.trainer import Trainer
from dllm2rec.utils.mmap import is_mapped

N_EVAL = 150  # valid/test rows of the dataset below: one flipped row moves HR by 1/150
# 1200 training rows, global batch 109: 11 full batches split 55/54 and a last batch of ONE row (rank 1 runs an
# empty slice), so uneven shards are exercised. Distillation (DLLM2Rec ranking + embedding hooks) is on.
BASE = ["train.epochs=3", "train.patience=100", "train.batch_size=109", "train.eval_batch=256",
        "model.name=sasrec", "distill.strategy=dllm2rec"]

needs_gloo = pytest.mark.skipif(not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
                                reason="torch.distributed with gloo not available")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    ds = make_synthetic(n_items=120, n_users=300, seq_len=15, seed=3)
    ds.save(root / "data")
    make_control("synthetic:0.8:0.6", ds, seed=1).save(root / "teacher", ds)
    return root


def _ov(root: Path, *extra: str) -> list[str]:
    return [*BASE, f"distill.teacher={root / 'teacher'}", f"out_dir={root}", *extra]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cmd(root: Path, run: str, *extra: str, resume: bool = False) -> list[str]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
           "-m", "dllm2rec", "train", "--data", str(root / "data"), "--run-dir", str(root / run)]
    for o in _ov(root, *extra):
        cmd += ["-o", o]
    return cmd + (["--resume"] if resume else [])


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "DLLM2REC_LOG_EPOCHS": "0", "CI": "true",
            "PYTHONWARNINGS": "ignore"}


def _start(root: Path, run: str, *extra: str, resume: bool = False) -> subprocess.Popen:
    p = subprocess.Popen(_cmd(root, run, *extra, resume=resume), env=_env(), stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    p.launch = (extra, resume)  # type: ignore[attr-defined]
    return p


def _finish(p: subprocess.Popen, root: Path, run: str, retry: bool = True) -> dict:
    out, _ = p.communicate(timeout=300)
    if p.returncode != 0 and retry and "exitcode: -6" in out and hasattr(p, "launch"):
        # gloo on a loaded 2-core box: a worker very rarely aborts (SIGABRT) in the TCP transport; relaunch once
        # (resumable), still failing the test if it happens twice. Seen ~1 in 20 launches in CI here.
        extra, _ = p.launch
        warnings.warn("torchrun worker aborted (SIGABRT); relaunching once with --resume")
        return _finish(_start(root, run, *extra, resume=True), root, run, retry=False)
    if p.returncode != 0:
        err = [x for x in out.splitlines() if "find_unused_parameters" not in x]
        pytest.fail("torchrun failed:\n" + "\n".join(err[-80:]))
    return json.loads((root / run / "results.json").read_text())


def _log(root: Path, run: str) -> list[dict]:
    return [json.loads(x) for x in (root / run / "log.jsonl").read_text().splitlines()]


def _children(pid: int) -> list[int]:
    out = []
    for t in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(x) for x in (t / "children").read_text().split()]
        except OSError:
            pass
    return out


@needs_gloo
@pytest.mark.slow
def test_ddp_matches_single_process(world):
    """Same seed, same global batch: 2-rank DDP ≈ 1 process (dropout 0: only the summation order differs)."""
    p = _start(world, "ddp0", "model.dropout=0.0")
    ds = SeqDataset.load(world / "data")  # the single-process reference trains while torchrun runs
    single = Trainer(load_config(None, _ov(world, "model.dropout=0.0")), ds, world / "single0", quiet=True).fit()
    ddp = _finish(p, world, "ddp0")
    l1, l2 = _log(world, "single0"), _log(world, "ddp0")
    assert [r["epoch"] for r in l1] == [r["epoch"] for r in l2] == [1, 2, 3]
    for a, b in zip(l1, l2):
        for k in ("train/loss", "train/bce", "train/rd"):
            assert b[k] == pytest.approx(a[k], rel=1e-4), (a["epoch"], k)
    for split in ("valid", "test"):
        for k, v in single[split].items():
            assert ddp[split][k] == pytest.approx(v, abs=1.0 / N_EVAL + 1e-9), k
    assert ddp["best_epoch"] == single["best_epoch"]
    # rank 0 alone wrote the run: one log line per epoch, checkpoints, results
    assert (world / "ddp0" / "best" / "model.safetensors").is_file()
    st = torch.load(world / "ddp0" / "last" / "trainer_state.pt", weights_only=True)
    assert len(st["torch_rng_ranks"]) == 2


@needs_gloo
@pytest.mark.slow
def test_killed_ddp_run_resumes_to_the_uninterrupted_result(world):
    """SIGKILL both workers mid-run; ``--resume`` under torchrun reproduces the uninterrupted DDP run exactly."""
    pf = _start(world, "ddp_full")  # dropout 0.1: per-rank dropout RNG states must be restored too
    p = subprocess.Popen(_cmd(world, "ddp_killed"), env=_env(), stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    log = world / "ddp_killed" / "log.jsonl"
    deadline = time.time() + 180
    while time.time() < deadline and p.poll() is None:
        if log.is_file() and len(log.read_text().splitlines()) >= 1:
            break
        time.sleep(0.01)
    workers = _children(p.pid)
    for pid in workers:  # the training processes themselves, not the launcher
        os.kill(pid, signal.SIGKILL)
    p.wait(timeout=60)
    assert workers and p.returncode != 0
    assert not (world / "ddp_killed" / "results.json").exists()
    done = len(log.read_text().splitlines())
    assert 1 <= done < 3
    full = _finish(pf, world, "ddp_full")
    res = _finish(_start(world, "ddp_killed", resume=True), world, "ddp_killed")
    assert res["best_epoch"] == full["best_epoch"]
    for split in ("valid", "test"):
        for k, v in full[split].items():
            assert res[split][k] == pytest.approx(v, abs=1e-9), k
    la, lb = _log(world, "ddp_full"), _log(world, "ddp_killed")
    assert len(la) == len(lb) == 3
    for a, b in zip(la, lb):
        assert b["train/loss"] == pytest.approx(a["train/loss"], abs=1e-9), a["epoch"]


# ---------------------------------------------------------------------------------------------- in-process parts
def test_shard_splits_global_batches_and_pads_empty_slices():
    idx = torch.arange(10, 19)
    parts = [D.shard(idx, r, 2) for r in range(2)]
    assert torch.equal(torch.cat([p for p, _ in parts]), idx)
    assert sum(w for _, w in parts) == pytest.approx(1.0)
    one = torch.tensor([7])
    assert D.shard(one, 0, 2) == (one, 1.0)
    part, w = D.shard(one, 1, 2)
    assert w == 0.0 and part.tolist() == [7]  # runs one dummy row with weight 0


def test_shared_loaders_memory_map_and_equal_normal_loaders(world):
    a, b = SeqDataset.load(world / "data"), D.load_dataset_shared(world / "data")
    assert a.fingerprint() == b.fingerprint()
    assert all(is_mapped(b[s].seq) and is_mapped(b[s].target) for s in b.splits)
    assert not is_mapped(a["train"].seq)
    t1 = TeacherArtifacts.load(world / "teacher", a)
    t2 = D.load_teacher_shared(world / "teacher", a)
    assert is_mapped(t2.item_emb) and t2.topk_ids.dtype == np.int64 and t2.covered.dtype == bool
    for k in ("item_emb", "topk_ids", "topk_dist", "covered"):
        np.testing.assert_array_equal(getattr(t1, k), getattr(t2, k))
    # a Trainer on the mapped dataset uses the mapped training arrays in place (no per-process copy)
    tr = Trainer(load_config(None, _ov(world, "distill.strategy=none")), b, world / "mm", quiet=True)
    assert np.shares_memory(tr.train_seq.numpy(), b["train"].seq)


@pytest.mark.parametrize("name", ["sasrec", "gru4rec", "caser"])
def test_streaming_rank_and_topk_equal_full_scoring(world, name):
    ds = SeqDataset.load(world / "data")
    torch.manual_seed(0)
    m = build_student(name, ds.n_items, max_len=ds.max_len).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    for excl in (False, True):
        full = rank_targets(m, ds["test"], 64, excl)
        streamed = rank_targets(m, ds["test"], 64, excl, item_chunk=37)
        assert torch.equal(full, streamed) and int(streamed.min()) >= 0
        assert evaluate(m, ds["test"], [5, 20], 64, excl, item_chunk=37) == evaluate(m, ds["test"], [5, 20], 64,
                                                                                      excl)
        sp = ds["test"]
        seq, lens = torch.from_numpy(sp.seq[:40]), torch.from_numpy(sp.len[:40])
        i1, s1 = top_k(m, seq, lens, 10, None, excl)
        i2, s2 = top_k(m, seq, lens, 10, 17, excl)
        assert torch.equal(i1, i2) and torch.allclose(s1, s2)
        with torch.no_grad():
            ref = m(seq, lens)
            if excl:
                hist = torch.zeros_like(ref, dtype=torch.bool)
                for r in range(len(seq)):
                    hist[r, seq[r, : lens[r]]] = True
                ref = ref.masked_fill(hist, float("-inf"))
        assert torch.equal(ref.topk(10, dim=1).indices, i1)


def test_eval_item_chunk_config_gives_the_same_metrics(world):
    ds = SeqDataset.load(world / "data")
    cfg = _ov(world, "distill.strategy=none", "train.epochs=1")
    a = Trainer(load_config(None, cfg), ds, world / "c1", quiet=True)
    b = Trainer(load_config(None, [*cfg, "train.eval_item_chunk=25"]), ds, world / "c2", quiet=True)
    assert a.evaluate_split("valid") == b.evaluate_split("valid", a.model)


# ---------------------------------------------------------------------------------------------- teacher workers
@pytest.mark.slow
def test_teacher_generation_with_independent_workers(tmp_path):
    """N independent ``teacher generate`` processes on one directory: a stale lock of a killed worker is broken,
    every shard is generated exactly once, and ``ground`` merges them into the same validated artifacts as one
    worker."""
    from typer.testing import CliRunner

    from dllm2rec.cli import app
    from dllm2rec.teachers.bigrec.tiny import make_tiny_llama, tiny_dataset

    ds = tiny_dataset(n_train=24, n_eval=4)
    ds.save(tmp_path / "ds")
    model = make_tiny_llama(tmp_path / "model")
    common = ["--dataset", str(tmp_path / "ds"), "--model", str(model), "--num-beams", "2", "--max-new-tokens", "6",
              "--shard-size", "4", "--batch-size", "4", "--threads", "1"]
    env = {**_env(), "DLLM2REC_CACHE": str(tmp_path / "cache")}

    def cli(*args):
        res = CliRunner(env=env).invoke(app, [str(a) for a in args], catch_exceptions=False)
        assert res.exit_code == 0, res.output

    # reference: one worker
    cli("teacher", "generate", *common, "--out", tmp_path / "gen1")
    cli("teacher", "ground", "--dataset", tmp_path / "ds", "--model", model, "--gen", tmp_path / "gen1",
        "--out", tmp_path / "art1", "--top-n", "5")
    # a worker that was killed while holding shard 2: its lock stays behind and stops heart-beating
    (tmp_path / "gen2").mkdir()
    stale = tmp_path / "gen2" / "shard-00002.lock"
    stale.write_text("killed-worker")
    os.utime(stale, (time.time() - 3600, time.time() - 3600))
    cmd = [sys.executable, "-m", "dllm2rec", "teacher", "generate", *common, "--out", str(tmp_path / "gen2"),
           "--lock-timeout", "30"]
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]  # two independent workers, started together, no worker ids needed
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    shards = sorted((tmp_path / "gen2").glob("shard-*.json"))
    assert len(shards) == 6 and not list((tmp_path / "gen2").glob("shard-*.lock"))
    cli("teacher", "ground", "--dataset", tmp_path / "ds", "--model", model, "--gen", tmp_path / "gen2",
        "--out", tmp_path / "art2", "--top-n", "5")
    a1 = TeacherArtifacts.load(tmp_path / "art1", ds)
    a2 = D.load_teacher_shared(tmp_path / "art2", ds)  # the DDP loader reads the merged artifacts too
    assert a2.covered.all()
    np.testing.assert_array_equal(a1.topk_ids, a2.topk_ids)
    np.testing.assert_array_equal(a1.covered, a2.covered)
    np.testing.assert_allclose(a1.item_emb, a2.item_emb)


def test_evaluate_cli_item_chunk_gives_the_same_metrics(world):
    from typer.testing import CliRunner

    from dllm2rec.cli import app

    ds = SeqDataset.load(world / "data")
    Trainer(load_config(None, _ov(world, "distill.strategy=none", "train.epochs=1",
                                  f"data.path={world / 'data'}")), ds, world / "ev", quiet=True).fit()
    out = []
    for extra in ([], ["--item-chunk", "17"]):
        res = CliRunner().invoke(app, ["evaluate", str(world / "ev"), "--json", *extra], catch_exceptions=False)
        assert res.exit_code == 0, res.output
        out.append(json.loads(res.output))
    assert out[0] == out[1] and "full/NDCG@20" in out[0]
