"""CLI: export -> bundle -> Recommender; serve builds the app (uvicorn stubbed); bench runs (small, no timing asserts)."""
from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from dllm2rec.cli import app
from dllm2rec.data import SeqDataset, make_split
from dllm2rec.errors import DataError
from dllm2rec.serving.recommender import Recommender
from dllm2rec.students import build_student
from dllm2rec.students.checkpoint import save_student

N, L = 30, 5
runner = CliRunner()


@pytest.fixture()
def run_and_data(tmp_path):
    sp = make_split([[1, 2], [3, 4, 5], [6, 7]], [3, 6, 8], N, L)
    ds = SeqDataset("tiny-cli", N, L, [f"Book {i}" for i in range(N)], {"train": sp, "valid": sp, "test": sp})
    ds.save(tmp_path / "data")
    torch.manual_seed(0)
    model = build_student("caser", N, max_len=L, dim=8)
    save_student(model, tmp_path / "run" / "best", meta={"dataset": ds.name, "dataset_fingerprint": ds.fingerprint(),
                                                         "metrics": {"valid/full/NDCG@20": 0.5},
                                                         "config": {"data": {"path": str(tmp_path / "data")}}})
    return tmp_path / "run", tmp_path / "data"


def test_export_then_recommend(tmp_path, run_and_data):
    run, data = run_and_data
    r = runner.invoke(app, ["export", str(run), "--dataset", str(data), "--out", str(tmp_path / "bundle"), "--onnx"])
    assert r.exit_code == 0, r.output
    assert "caser" in r.output and "parity" in r.output and "selected on validation (full)" in r.output and "NDCG@20=0.5000" in r.output
    manifest = json.loads((tmp_path / "bundle" / "manifest.json").read_text())
    assert {"model.safetensors", "student.json", "items.json", "model.onnx"} <= set(manifest["files"])
    for backend in ("torch", "onnx"):
        rec = Recommender.load(tmp_path / "bundle", backend=backend)
        out = rec.recommend([[1, 2], ["Book 3"]], k=4)
        assert len(out) == 2 and all(len(o.ids) == 4 for o in out)
        assert out[1].titles[0].startswith("Book ")


def test_export_defaults_to_the_runs_dataset(tmp_path, run_and_data):
    run, _ = run_and_data
    r = runner.invoke(app, ["export", str(run), "--out", str(tmp_path / "bundle")])
    assert r.exit_code == 0, r.output
    assert Recommender.load(tmp_path / "bundle").titles[3] == "Book 3"


def test_export_errors_are_user_errors(tmp_path, run_and_data):
    run, data = run_and_data
    other = SeqDataset("other", N, L, [f"x{i}" for i in range(N)],
                       {"train": make_split([[1]], [2], N, L)})
    other.save(tmp_path / "other")
    r = runner.invoke(app, ["export", str(run), "-d", str(tmp_path / "other"), "--out", str(tmp_path / "b")])
    assert r.exit_code != 0 and isinstance(r.exception, DataError)
    assert "dataset_fingerprint" in str(r.exception)
    assert not (tmp_path / "b").exists()
    r = runner.invoke(app, ["export", str(run), "-d", str(data), "--out", str(tmp_path / "b"), "--which", "worst"])
    assert r.exit_code != 0 and "--which" in str(r.exception)


def test_serve_builds_the_app(tmp_path, run_and_data, monkeypatch):
    uvicorn = pytest.importorskip("uvicorn")
    from fastapi.testclient import TestClient

    run, data = run_and_data
    assert runner.invoke(app, ["export", str(run), "-d", str(data), "--out", str(tmp_path / "bundle")]).exit_code == 0
    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda a, **kw: seen.update(app=a, **kw))
    r = runner.invoke(app, ["serve", str(tmp_path / "bundle"), "--port", "8123", "--max-batch", "2"])
    assert r.exit_code == 0, r.output
    assert seen["host"] == "127.0.0.1" and seen["port"] == 8123
    with TestClient(seen["app"]) as c:
        assert c.post("/recommend", json={"history": ["Book 1"], "k": 2}).status_code == 200
        assert c.post("/recommend", json={"histories": [[1]] * 3}).status_code == 413
    r = runner.invoke(app, ["serve", str(tmp_path / "bundle"), "--backend", "tpu"])
    assert r.exit_code != 0 and "--backend" in str(r.exception)
    r = runner.invoke(app, ["serve", str(tmp_path / "bundle"), "--index", "annoy"])
    assert r.exit_code != 0 and "--index" in str(r.exception)


def test_bench_smoke(tmp_path):
    out = tmp_path / "bench.json"
    r = runner.invoke(app, ["bench", "--n-items", "300", "--dim", "16", "--iters", "20", "--batch", "8",
                            "--batch-iters", "2", "--backends", "torch,onnx", "--no-http", "--json-out", str(out),
                            "--teacher-model", str(tmp_path / "no-such-model")])
    assert r.exit_code == 0, r.output
    assert "floor (addmm+topk)" in r.output and "student torch" in r.output and "teacher: skipped" in r.output
    res = json.loads(out.read_text())
    assert set(res["student"]) == {"torch", "onnx"} and res["floor"]["b1_p50_ms"] > 0


@pytest.mark.slow
def test_bench_http_load_test_smoke(tmp_path):
    """Starts `dllm2rec serve` in a subprocess on a free loopback port, 40 requests, then stops it."""
    pytest.importorskip("uvicorn")
    r = runner.invoke(app, ["bench", "--n-items", "200", "--dim", "16", "--iters", "5", "--batch", "4",
                            "--batch-iters", "1", "--backends", "torch", "--requests", "40", "--concurrency", "4",
                            "--json-out", str(tmp_path / "b.json")])
    assert r.exit_code == 0, r.output
    assert "app in-process (ASGI, no socket)" in r.output
    h = json.loads((tmp_path / "b.json").read_text())["http"]
    assert h["errors"] == 0 and h["requests"] == 40


def test_bench_teacher_timing_with_tiny_llama(tmp_path):
    """The optional teacher timing on the project's tiny offline LLaMA (random weights; no hub download)."""
    pytest.importorskip("transformers")
    pytest.importorskip("tokenizers")
    from dllm2rec.serving.bench import bench_teacher
    from dllm2rec.teachers.bigrec.tiny import make_tiny_llama

    path = make_tiny_llama(tmp_path / "llm")
    r = bench_teacher(path, [[0, 1, 2], [3]], [f"Item {i}" for i in range(5)], n=2, max_new_tokens=3)
    assert "skipped" not in r, r
    assert r["requests"] == 2 and r["p50_ms"] > 0
