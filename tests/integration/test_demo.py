"""``dllm2rec demo --quick`` end to end on a tiny synthetic prepared dataset: teacher -> baseline, control, distilled
-> table + plots."""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from dllm2rec.cli import app
from dllm2rec.errors import ArtifactError

runner = CliRunner()


def test_demo_quick_end_to_end(tiny_dataset_dir, tmp_path, monkeypatch):
    from dllm2rec.registry import available

    if "dllm2rec" not in available("strategy"):
        pytest.skip("dllm2rec strategy not available")
    monkeypatch.chdir(tmp_path)          # no shipped teacher here: the demo stops, unless a teacher is named
    out = tmp_path / "demo"
    r0 = runner.invoke(app, ["demo", "--data", str(tiny_dataset_dir), "--quick", "--out", str(out)])
    assert isinstance(r0.exception, ArtifactError), r0.output        # main() prints it as one line, exit 2
    assert "no shipped teacher artifacts" in str(r0.exception) and "--teacher" in str(r0.exception)
    assert not out.exists()
    r = runner.invoke(app, ["demo", "--data", str(tiny_dataset_dir), "--quick", "--out", str(out), "--teacher",
                            "synthetic", "-o", "model.dim=8", "-o", "train.num_threads=1"])
    assert r.exit_code == 0, r.output
    assert "SYNTHETIC teacher" in r.output
    md = (out / "report.md").read_text()
    for label in ("none", "random-teacher control", "dllm2rec (synthetic teacher)"):
        assert f"| {label} |" in md or f"**{label}**" in md, md
    assert (out / "curves.png").stat().st_size > 1000 and (out / "bars.png").stat().st_size > 1000
    runs = list(out.rglob("results.json"))
    assert len(runs) == 3
    assert all(json.loads(p.read_text())["epochs_run"] <= 2 for p in runs)
    # a second call reuses the finished runs
    r2 = runner.invoke(app, ["demo", "--data", str(tiny_dataset_dir), "--quick", "--out", str(out),
                             "--teacher", "synthetic", "-o", "model.dim=8", "-o", "train.num_threads=1"])
    assert r2.exit_code == 0 and "3 finished, 0 to do" in r2.output

    # why (not): teacher HR@K, overlap and gain on teacher-right rows, for the demo's runs
    r3 = runner.invoke(app, ["analyze", str(out), "--data", str(tiny_dataset_dir), "--teacher", "synthetic",
                             "--out", str(tmp_path / "why")])
    assert r3.exit_code == 0, r3.output
    res = json.loads((tmp_path / "why.json").read_text())
    assert 0.0 <= res["teacher_hr"] <= 1.0 and len(res["runs"]) == 3
    assert all(0.0 <= x["overlap"] <= 1.0 for x in res["runs"])
    assert "where teacher right" in (tmp_path / "why.md").read_text()
