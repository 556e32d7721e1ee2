"""``fit-llmemb`` checkpoints: a fit killed after a checkpoint and resumed ends exactly where an uninterrupted fit
ends (same artifacts, bit for bit, one torch thread), both for a SIGKILLed CLI process and for an exception inside
the cross-fitting folds; a stale or foreign checkpoint is refused with a one-line error (exit 2)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from dllm2rec.data.synthetic import make_synthetic
from dllm2rec.errors import ConfigError
from dllm2rec.teachers.artifacts import TeacherArtifacts
from dllm2rec.teachers.llmemb import LLMEmbConfig, LLMEmbTeacher

EPOCHS = 12
FIT = ["--encoder", "random", "--epochs", str(EPOCHS), "--patience", str(EPOCHS), "--dim", "16", "--layers", "1",
       "--top-n", "10", "--batch-size", "32", "--threads", "1"]


def _env() -> dict:
    env = dict(os.environ, CI="true", OMP_NUM_THREADS="1", DLLM2REC_PROGRESS="0")
    env.pop("PYTHONHASHSEED", None)
    return env


def _cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run([sys.executable, "-m", "dllm2rec", "teacher", "fit-llmemb", *args], capture_output=True,
                       text=True, env=_env(), timeout=600)
    if check:
        assert p.returncode == 0, p.stderr[-3000:]
    return p


def _same(a: TeacherArtifacts, b: TeacherArtifacts) -> None:
    np.testing.assert_array_equal(a.topk_ids, b.topk_ids)
    np.testing.assert_array_equal(a.topk_dist, b.topk_dist)
    np.testing.assert_array_equal(a.target_dist, b.target_dist)
    assert a.manifest["fit"]["best_epoch"] == b.manifest["fit"]["best_epoch"]
    assert a.manifest["teacher_valid"] == b.manifest["teacher_valid"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    ds = make_synthetic(n_items=150, n_users=200, seq_len=16, max_len=10, p_follow=0.85, seed=7)
    return ds, ds.save(tmp_path_factory.mktemp("llmemb") / "data")


def test_sigkill_after_a_checkpoint_then_resume_matches_uninterrupted(data, tmp_path):
    ds, path = data
    _cli(str(path), "--out", str(tmp_path / "ref"), *FIT)
    ref = TeacherArtifacts.load(tmp_path / "ref", ds)
    assert not (tmp_path / "ref.ckpt").exists()  # checkpoints are removed after a successful fit

    out, ckpt = tmp_path / "art", tmp_path / "art.ckpt"
    proc = subprocess.Popen([sys.executable, "-m", "dllm2rec", "teacher", "fit-llmemb", str(path), "--out", str(out),
                             *FIT], env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest = ckpt / "full" / "LATEST"
    deadline = time.time() + 300
    while not latest.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the fit ended before it could be killed"
    assert not out.exists()
    state = json.loads((ckpt / "full" / latest.read_text().strip() / "state.json").read_text())
    assert 1 <= state["epoch"] < EPOCHS and not state["done"]
    # pickle-free: safetensors + JSON only
    assert {p.suffix for p in ckpt.rglob("*") if p.is_file()} <= {".safetensors", ".json", ""}

    # without --resume an existing checkpoint is refused: one line, exit 2
    p = _cli(str(path), "--out", str(out), *FIT, check=False)
    assert p.returncode == 2 and "--resume" in p.stderr and len(p.stderr.strip().splitlines()) == 1

    p = _cli(str(path), "--out", str(out), *FIT, "--resume")
    assert f"resumed from {ckpt / 'full'} after epoch {state['epoch']}" in p.stderr
    _same(ref, TeacherArtifacts.load(out, ds))
    assert not ckpt.exists()


def test_exception_inside_a_fold_then_resume_matches_uninterrupted(data, tmp_path):
    ds, _ = data
    cfg = dict(encoder="random", dim=16, n_layers=1, n_heads=2, epochs=4, patience=4, batch_size=32, top_n=10,
               cv_folds=2, item_loss="sampled", negatives=24, threads=1)
    ref = LLMEmbTeacher(LLMEmbConfig(**cfg)).fit(ds).artifacts(ds)

    class Interrupted(Exception):
        pass

    def stop(name: str, epoch: int) -> None:
        if name == "fold-2-of-2" and epoch == 1:
            raise Interrupted

    ckpt = tmp_path / "ckpt"
    with pytest.raises(Interrupted):
        LLMEmbTeacher(LLMEmbConfig(**cfg)).fit(ds, ckpt_dir=ckpt, on_epoch=stop)
    logs: list[str] = []
    t = LLMEmbTeacher(LLMEmbConfig(**cfg)).fit(ds, ckpt_dir=ckpt, resume=True, log=logs.append)
    assert any("fold-1-of-2] resumed" in m and "finished" in m for m in logs)
    assert any("fold-2-of-2] resumed" in m and "after epoch 1" in m for m in logs)
    _same(ref, t.artifacts(ds))

    # a checkpoint made with another config is not resumed
    with pytest.raises(ConfigError, match="another config"):
        LLMEmbTeacher(LLMEmbConfig(**(cfg | {"lr": 5e-3}))).fit(ds, ckpt_dir=ckpt, resume=True)
