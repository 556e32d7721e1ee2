import json
import os
import time

import numpy as np
import pytest

from dllm2rec.errors import ConfigError
from dllm2rec.teachers.bigrec import generate as gen
from dllm2rec.teachers.bigrec.generate import GenConfig, RowBeams, run_generation, select_rows
from dllm2rec.teachers.bigrec.tiny import tiny_dataset


class FakeBackend:
    """Deterministic stand-in for a model: echoes the number of quoted titles in the prompt."""

    calls = 0

    def generate(self, prompts):
        FakeBackend.calls += len(prompts)
        return [RowBeams([f"n{p.count(chr(34)) // 2}"], [-1.0], [-1.0]) for p in prompts]


def run(ds, out, **kw):
    kw.setdefault("shard_size", 8)
    return run_generation(ds, "train", out, FakeBackend, GenConfig(batch_size=3), "fake", **kw)


def test_select_rows():
    assert select_rows(10).tolist() == list(range(10))
    assert select_rows(10, rows="2:5").tolist() == [2, 3, 4]
    assert select_rows(10, budget=3).tolist() == [0, 1, 2]
    r = select_rows(100, budget=5, select="random", seed=3)
    assert len(set(r.tolist())) == 5 and r.tolist() == sorted(r.tolist())
    assert r.tolist() == select_rows(100, budget=5, select="random", seed=3).tolist()
    with pytest.raises(ConfigError):
        select_rows(10, rows="a:b")


def test_interrupted_run_resumes_and_skips_finished_shards(tmp_path):
    ds = tiny_dataset(n_train=30)
    FakeBackend.calls = 0
    r1 = run(ds, tmp_path, max_shards=2)  # "killed" after two shards
    assert r1["finished"] == 2 and not r1["complete"] and FakeBackend.calls == 16
    mtimes = {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("shard-*.json")}
    r2 = run(ds, tmp_path)
    assert r2["complete"] and r2["generated_now"] == 2 and FakeBackend.calls == 30  # only the missing 14 rows
    for name, m in mtimes.items():
        assert (tmp_path / name).stat().st_mtime_ns == m
    assert not list(tmp_path.glob("*.lock"))
    plan, shards = gen.read_shards(tmp_path)
    pos = [p for s in shards for p in s["positions"]]
    assert pos == list(range(30))
    assert [s["row_id"] for s in shards][0] == ds["train"].row_id[:8].tolist()
    # batches are length-sorted internally, but every result lands on its own row
    texts = [t[0] for s in shards for t in s["texts"]]
    assert texts == [f"n{int(n)}" for n in ds["train"].len[:30]]
    # a finished directory never even builds the backend
    calls = FakeBackend.calls
    assert run(ds, tmp_path)["generated_now"] == 0 and FakeBackend.calls == calls


def test_other_plan_in_same_dir_is_refused(tmp_path):
    ds = tiny_dataset(n_train=30)
    run(ds, tmp_path, max_shards=1)
    with pytest.raises(ConfigError, match="shard_size"):
        run(ds, tmp_path, shard_size=4)


def test_locks_exclusive_and_stale_locks_are_broken(tmp_path):
    assert gen.try_claim(tmp_path, 0, lock_timeout=60)
    assert not gen.try_claim(tmp_path, 0, lock_timeout=60)  # another worker holds it
    old = time.time() - 120
    os.utime(gen.lock_path(tmp_path, 0), (old, old))
    assert gen.try_claim(tmp_path, 0, lock_timeout=60)  # owner died: lock broken and re-claimed
    gen.release(tmp_path, 0)
    assert not gen.lock_path(tmp_path, 0).exists()


def test_workers_share_a_directory(tmp_path):
    ds = tiny_dataset(n_train=40)
    # a live lock held by some other process: this worker skips that shard
    gen.try_claim(tmp_path, 1, lock_timeout=60)
    a = run(ds, tmp_path, worker_id=0, num_workers=2)
    assert a["generated_now"] == 3 and not a["complete"]  # shards 0, 2, 4
    b = run(ds, tmp_path, worker_id=1, num_workers=2)
    assert b["locked_by_others"] == 1 and b["generated_now"] == 1  # shard 3 only
    gen.release(tmp_path, 1)
    c = run(ds, tmp_path, worker_id=1, num_workers=2)
    assert c["complete"]
    _, shards = gen.read_shards(tmp_path)
    assert sorted(p for s in shards for p in s["positions"]) == list(range(40))
    rec = json.loads((tmp_path / "shard-00000.json").read_text())
    assert rec["batch_rows"] == [3, 3, 2] and len(rec["batch_seconds"]) == 3
