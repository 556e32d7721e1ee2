"""`bash benchmarks/gpu_teacher.sh --dry-run`: the GPU benchmark end to end on CPU (tiny LLaMA, tiny MovieLens data,
HF backend only), so the script works the first time it meets a GPU; plus its fail-fast path without a GPU."""
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
SCRIPT = ROOT / "benchmarks" / "gpu_teacher.sh"
pytestmark = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                                reason="needs bash and coreutils timeout")


def _run(tmp_path, *args, timeout=600):
    env = dict(os.environ, OUT=str(tmp_path / "out"), PYTHON=sys.executable, OMP_NUM_THREADS="1")
    env.pop("PYTHONPATH", None)
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_dry_run_end_to_end(tmp_path):
    from dllm2rec.data.schema import SeqDataset
    from dllm2rec.teachers.artifacts import TeacherArtifacts

    r = _run(tmp_path, "--dry-run")
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    out = tmp_path / "out"
    s = json.loads((out / "summary.json").read_text())
    assert s["status"] == "ok" and s["error"] is None and s["dry_run"] is True
    assert s["primary_backend"] == "hf" and s["hf_vllm_agreement"] is None
    assert any("vLLM skipped" in n for n in s["notes"])

    names = [st["step"] for st in s["steps"]]
    assert names == ["tiny-setup", "data", "finetune", "generate-hf-test", "generate-hf-train", "ground",
                     "evaluate-hf"]
    assert all(st["status"] == "ok" and st["seconds"] > 0 for st in s["steps"])
    assert set(s["wall_times_s"]) == set(names) and s["wall_s"] >= sum(s["wall_times_s"].values())

    ft = s["finetune"]
    assert ft["mode"] == "full" and ft["steps"] == 3 and ft["train_rows"] > 0 and s["finetune_samples_per_s"] > 0
    model = Path(ft["model"])
    assert (model / "config.json").is_file() and not (model / "adapter_config.json").exists()

    for key in ("hf/test", "hf/train"):
        g = s["generate"][key]
        assert g["status"] == "ok" and g["rows_done"] == g["rows_planned"] > 0 and g["rows_per_s"] > 0
        assert s["rows_per_s"][key] == g["rows_per_s"]
    e = s["evaluate"]["hf"]
    assert e["rows"] == s["generate"]["hf/test"]["rows_done"] and 0.0 <= e["HR@20"] <= 1.0
    assert s["HR@20"] == e["HR@20"] and s["popularity_HR@20"] == e["popularity_HR@20"]

    work = Path(s["work"])
    ds = SeqDataset.load(work / "data")
    art = TeacherArtifacts.load(work / "artifacts", ds)  # validated against the prepared dataset
    assert int(art.covered.sum()) == s["generate"]["hf/train"]["rows_done"]
    assert s["artifacts"]["stats"]["rows"] == len(ds["train"]) and art.manifest["teacher"] == "bigrec"

    md = (out / "summary.md").read_text()
    assert "HR@20" in md and "fine-tune (full)" in md and "DRY RUN" in md
    log = (out / "run.log").read_text()
    assert ">> finetune" in log and "<< evaluate-hf rc=0" in log and "Z +" in log  # timestamp + elapsed per step


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="a GPU is visible: this would start the real run")
def test_without_gpu_fails_fast_with_one_line(tmp_path):
    r = _run(tmp_path, timeout=120)
    assert r.returncode == 2
    err = [ln for ln in (r.stdout + r.stderr).splitlines() if ln.startswith("gpu_teacher: error:")]
    assert len(err) == 1 and "no CUDA GPU" in err[0]
    s = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert s["status"] == "failed" and "no CUDA GPU" in s["error"] and s["dry_run"] is False
    bad = _run(tmp_path, "--test-rows", "x", timeout=60)
    assert bad.returncode == 2 and "gpu_teacher: error: --test-rows must be a whole number" in bad.stderr
