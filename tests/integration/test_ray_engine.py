"""``teacher generate --engine ray`` against the local lock-file engine, on a local Ray instance on loopback with a
tiny offline LLaMA: (1) the same shard records and the same grounded artifacts; (2) a Ray worker killed mid-shard
has its shard redone by Ray and the output is still the same; (3) a rerun over finished shards generates nothing
(and starts no Ray), a rerun with one shard missing generates exactly that shard.

The shard records are compared without their timing fields (batch_seconds, seconds) and the writing process
(worker): those are the only fields that may differ between two runs of the same plan.
"""
from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from dllm2rec.errors import ConfigError, MissingDependencyError
from dllm2rec.teachers.bigrec import ray_engine
from dllm2rec.teachers.bigrec.generate import GenConfig, load_plan, read_shards

# Ray on loopback only. Ray takes the machine's network address as its node address; this switch (read when ray is
# imported, and by the processes it starts) is its single-machine mode, which binds everything to 127.0.0.1.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

OFF_PLAN = ("batch_seconds", "seconds", "worker")
N_SHARDS = 6  # 24 train rows / --shard-size 4; --batch-size 2 makes two batches per shard ("mid-shard" exists)


def _records(gen_dir: Path) -> list[dict]:
    plan, shards = read_shards(gen_dir)
    assert len(shards) == plan.n_shards == N_SHARDS
    return [{k: v for k, v in s.items() if k not in OFF_PLAN} for s in shards]


def _pid(rec: dict) -> int:
    return int(rec["worker"].rsplit(":", 1)[1])


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    pytest.importorskip("transformers")
    from ray._private import ray_constants

    mp = pytest.MonkeyPatch()
    mp.setattr(ray_constants, "ENABLE_RAY_CLUSTER", False)  # in case ray was imported before the switch was set
    if ray.is_initialized():
        ray.shutdown()
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    try:
        assert {n["NodeManagerAddress"] for n in ray.nodes()} == {"127.0.0.1"}
        yield ray
    finally:
        ray.shutdown()
        mp.undo()


@pytest.fixture(scope="module")
def world(tmp_path_factory, ray_local):
    from dllm2rec.teachers.bigrec.tiny import make_tiny_llama, tiny_dataset

    root = tmp_path_factory.mktemp("rayeng")
    ds = tiny_dataset(n_train=24, n_eval=4)
    ds.save(root / "ds")
    model = make_tiny_llama(root / "model")
    common = ["--dataset", str(root / "ds"), "--model", str(model), "--num-beams", "2", "--max-new-tokens", "6",
              "--shard-size", "4", "--batch-size", "2", "--threads", "1"]
    env = {"OMP_NUM_THREADS": "1", "CI": "true", "DLLM2REC_CACHE": str(root / "cache")}

    def cli(*args) -> dict:
        from typer.testing import CliRunner

        from dllm2rec.cli import app

        res = CliRunner(env=env).invoke(app, [str(a) for a in args], catch_exceptions=False)
        assert res.exit_code == 0, res.output
        # the JSON summary; Ray forwards its workers' log lines to the driver's output too
        return json.JSONDecoder().raw_decode(res.output[res.output.index("{"):])[0]

    def ground(gen: Path, art: Path):
        from dllm2rec.teachers.artifacts import TeacherArtifacts

        cli("teacher", "ground", "--dataset", root / "ds", "--model", model, "--gen", gen, "--out", art,
            "--top-n", "5")
        return TeacherArtifacts.load(art, ds)

    local = cli("teacher", "generate", *common, "--out", root / "gen-local")  # the reference: the local engine
    assert local["complete"] and local["generated_now"] == N_SHARDS
    return {"root": root, "ds": ds, "model": model, "common": common, "cli": cli, "ground": ground}


@pytest.fixture(scope="module")
def ray_run(world):
    """One run of the CLI with --engine ray (in this process, so it uses the module's Ray instance)."""
    res = world["cli"]("teacher", "generate", *world["common"], "--engine", "ray", "--out", world["root"] / "gen-ray")
    return res, world["root"] / "gen-ray"


def test_ray_engine_writes_what_the_local_engine_writes(world, ray_run):
    res, gen_ray = ray_run
    assert res["engine"] == "ray" and res["complete"] and res["generated_now"] == N_SHARDS
    assert res["rows_now"] == 24
    assert _records(gen_ray) == _records(world["root"] / "gen-local")
    _, shards = read_shards(gen_ray)
    assert all(_pid(s) != os.getpid() for s in shards)  # generated in Ray worker processes, not in the driver
    assert not list(gen_ray.glob("*.lock")) and not list(gen_ray.glob(".*.tmp"))
    a_local = world["ground"](world["root"] / "gen-local", world["root"] / "art-local")
    a_ray = world["ground"](gen_ray, world["root"] / "art-ray")
    assert a_ray.covered.all()
    np.testing.assert_array_equal(a_local.topk_ids, a_ray.topk_ids)
    np.testing.assert_array_equal(a_local.topk_dist, a_ray.topk_dist)
    np.testing.assert_array_equal(a_local.covered, a_ray.covered)


def _crash_once_factory(model_dir: str, titles: list[str], cfg: GenConfig, marker: Path):
    """The CLI's hf backend, except that the first worker process to reach the second batch of a shard (its
    first shard: two batches per shard) dies there, before the shard is written — as if it were killed."""
    def factory():
        from dllm2rec.teachers.bigrec.generate import HFBackend
        from dllm2rec.teachers.models import load_causal_lm, load_tokenizer, resolve_model

        ref = resolve_model(model_dir)
        inner = HFBackend(load_causal_lm(ref), load_tokenizer(ref), cfg, titles)
        calls = [0]

        class CrashOnce:
            def generate(self, prompts):
                calls[0] += 1
                if calls[0] == 2:
                    try:  # O_EXCL: of two workers getting here at once, exactly one dies
                        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                    except FileExistsError:
                        return inner.generate(prompts)
                    os.write(fd, str(os.getpid()).encode())
                    os.close(fd)
                    os._exit(1)
                return inner.generate(prompts)

        return CrashOnce()

    return factory


def test_a_worker_killed_mid_shard_has_its_shard_redone(world):
    from dllm2rec.teachers.bigrec.prompts import dataset_domain

    ds, root = world["ds"], world["root"]
    cfg = GenConfig(num_beams=2, max_new_tokens=6, batch_size=2, domain=dataset_domain(ds, None))  # as the CLI's
    marker = root / "crashed.pid"
    factory = _crash_once_factory(str(world["model"]), ds.titles, cfg, marker)
    res = ray_engine.run_generation_ray(ds, "train", root / "gen-crash", factory, cfg, str(world["model"]),
                                        shard_size=4, max_retries=2)
    assert marker.is_file()  # a worker did die mid-shard ...
    assert res["complete"] and res["generated_now"] == N_SHARDS  # ... and Ray redid its shard on another worker
    assert _records(root / "gen-crash") == _records(root / "gen-local")
    _, shards = read_shards(root / "gen-crash")
    assert int(marker.read_text()) not in {_pid(s) for s in shards}  # the dead worker wrote nothing
    assert not list((root / "gen-crash").glob(".*.tmp"))


def test_an_error_in_a_task_is_reported_in_one_line_and_not_retried(world):
    from dllm2rec.errors import ConfigError as Bad

    tries = world["root"] / "bad-tries"

    def bad_factory():
        with open(tries, "a") as f:
            f.write("x")
        raise Bad("model /nowhere: not found")

    cfg = GenConfig(num_beams=2, max_new_tokens=6, batch_size=2)
    with pytest.raises(Bad, match="^model /nowhere: not found$"):
        ray_engine.run_generation_ray(world["ds"], "train", world["root"] / "gen-bad", bad_factory, cfg, "m",
                                      positions=np.arange(4), shard_size=4)
    assert tries.read_text() == "x"  # our own errors are not retried (only dead workers are)
    assert not list((world["root"] / "gen-bad").glob("shard-*.json"))


def test_rerun_generates_only_missing_shards(world, ray_run, monkeypatch):
    _, gen_ray = ray_run
    ds, root = world["ds"], world["root"]
    mtimes = {p.name: p.stat().st_mtime_ns for p in gen_ray.glob("shard-*.json")}
    again = world["cli"]("teacher", "generate", *world["common"], "--engine", "ray", "--out", gen_ray)
    assert again["complete"] and again["generated_now"] == 0 and again["rows_now"] == 0
    assert {p.name: p.stat().st_mtime_ns for p in gen_ray.glob("shard-*.json")} == mtimes

    def no_ray():
        raise AssertionError("Ray started although every shard was finished")

    def no_model():
        raise AssertionError("backend built although every shard was finished")

    plan = load_plan(gen_ray)
    cfg = GenConfig(num_beams=2, max_new_tokens=6, batch_size=2, domain=plan.decoding["domain"])
    with monkeypatch.context() as m:
        m.setattr(ray_engine, "import_ray", no_ray)
        done = ray_engine.run_generation_ray(ds, "train", gen_ray, no_model, cfg, plan.model_id, shard_size=4)
    assert done["complete"] and done["generated_now"] == 0
    # one shard lost (say, its node's disk): only that shard is generated again, to the same record
    (gen_ray / "shard-00003.json").unlink()
    # ... and a write of it that was killed half-way: the temp file of an atomic write never counts as finished
    (gen_ray / ".shard-00003.json.killed.tmp").write_text('{"shard": 3, "positions": [12, 1')
    once = world["cli"]("teacher", "generate", *world["common"], "--engine", "ray", "--out", gen_ray)
    assert once["complete"] and once["generated_now"] == 1 and once["rows_now"] == 4
    assert _records(gen_ray) == _records(root / "gen-local")
    assert {p.name: p.stat().st_mtime_ns for p in gen_ray.glob("shard-*.json") if p.name != "shard-00003.json"} \
        == {k: v for k, v in mtimes.items() if k != "shard-00003.json"}


# ---------------------------------------------------------------------------------------------- no Ray needed
def test_without_ray_the_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    with pytest.raises(MissingDependencyError, match=r"pip install 'dllm2rec\[ray\]'"):
        ray_engine.import_ray()


def test_cli_refuses_mixed_engine_options(tmp_path, capsys):
    pytest.importorskip("transformers")
    from dllm2rec.cli import main
    from dllm2rec.teachers.bigrec.tiny import tiny_dataset

    tiny_dataset(n_train=8, n_eval=4).save(tmp_path / "ds")
    base = ["teacher", "generate", "--dataset", str(tmp_path / "ds"), "--model", str(tmp_path / "no-model"),
            "--out", str(tmp_path / "gen")]
    for extra, msg in ((["--engine", "spark"], "--engine must be 'local' or 'ray'"),
                       (["--engine", "ray", "--num-workers", "2", "--worker-id", "1"], "for --engine local"),
                       (["--ray-address", "auto"], "need --engine ray")):
        with pytest.raises(SystemExit) as e:
            main([*base, *extra])
        assert e.value.code == 2
        err = capsys.readouterr().err.strip()
        assert msg in err and len(err.splitlines()) == 1, err
    with pytest.raises(ConfigError, match="--ray-max-retries"):
        ray_engine.run_generation_ray(None, "train", tmp_path / "g", None, GenConfig(), "m", max_retries=-1)
