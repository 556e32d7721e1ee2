"""`bash benchmarks/gpu_reranker.sh --dry-run`: the reranker's GPU run end to end on CPU (tiny LLaMA, tiny data), so
the script works the first time it meets a GPU; plus its one-line refusals."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("peft")
pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_reranker.sh"
pytestmark = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                                reason="needs bash and coreutils timeout")


def _run(tmp_path, *args):
    env = dict(os.environ, OUT=str(tmp_path / "out"), PYTHON=sys.executable, OMP_NUM_THREADS="1")
    env.pop("PYTHONPATH", None)
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)


def test_dry_run_end_to_end(tmp_path):
    from dllm2rec.data.schema import SeqDataset
    from dllm2rec.teachers.artifacts import TeacherArtifacts

    r = _run(tmp_path, "--dry-run")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    s = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert s["status"] == "ok" and s["dry_run"] is True
    assert list(s["steps"]) == ["tiny-setup", "retriever", "fit", "evaluate-valid", "evaluate-test", "artifacts",
                                "distill"]
    assert s["fit"]["steps"] == 2 and s["fit"]["finished"]
    for split in ("valid", "test"):
        assert set(s[split]) == {"retriever", "reranker", "popularity"}
        assert "minus_retriever" in s[split]["reranker"]
    assert s["latency_ms"]["requests"] == 5
    work = tmp_path / "out" / "work"
    ds = SeqDataset.load(work / "ds")
    art = TeacherArtifacts.load(work / "artifacts", ds)
    assert int(art.covered.sum()) == s["artifacts"]["rows_covered"] == 8
    assert "test/full/NDCG@20" in s["distilled_test"] and "test/full/NDCG@20" in s["retriever_test"]


def test_refusals_are_one_line(tmp_path):
    for args, msg in ((["--steps", "x"], "--steps must be a non-negative integer"),
                      (["--bogus"], "unknown option '--bogus'"),
                      ([], "--data DIR")):
        r = _run(tmp_path, *args)
        assert r.returncode == 2 and msg in r.stderr and len(r.stderr.strip().splitlines()) == 1, (args, r.stderr)
