"""CLI ``report`` writes Markdown + PNGs; ``experiment`` skips finished runs and resumes killed ones; ``tune``."""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from dllm2rec.cli import app

runner = CliRunner()
PNG = b"\x89PNG\r\n\x1a\n"
FAST = ["-o", "model.dim=8", "-o", "train.num_threads=1", "-o", "train.ks=[10,20]"]


def _fake(root, name, strategy, teacher, seed, ndcg):
    d = root / name
    d.mkdir(parents=True)
    (d / "results.json").write_text(json.dumps({
        "dataset": "ds", "student": "sasrec", "seed": seed, "best_epoch": 2, "epochs_run": 4,
        "strategy": {"strategy": strategy}, "valid": {"valid/full/NDCG@20": ndcg},
        "test": {"test/full/NDCG@20": ndcg, "test/full/HR@20": 2 * ndcg},
        "config": {"train": {"epochs": 50, "patience": 2}, "distill": {"strategy": strategy, "teacher": teacher}}}))
    (d / "log.jsonl").write_text("".join(json.dumps({"epoch": e, "valid/full/NDCG@20": ndcg * e / 4}) + "\n"
                                         for e in range(1, 5)))


def test_report_cli_writes_markdown_and_pngs(tmp_path):
    for s in range(3):
        _fake(tmp_path / "runs", f"none-{s}", "none", None, s, 0.1 + 0.01 * s)
        _fake(tmp_path / "runs", f"ctl-{s}", "dllm2rec", "random", s, 0.12 + 0.01 * s)
        _fake(tmp_path / "runs", f"kd-{s}", "dllm2rec", "/t", s, 0.15 + 0.01 * s)
    tm = tmp_path / "teacher.json"
    tm.write_text(json.dumps({"test/full/NDCG@20": 0.05}))
    out = tmp_path / "rep"
    r = runner.invoke(app, ["report", str(tmp_path / "runs" / "*"), "--out", str(out), "--teacher-metrics", str(tm)])
    assert r.exit_code == 0, r.output
    md = (out / "report.md").read_text()
    assert "valid-selected, test at selected epoch" in md
    assert "random-teacher control" in md and "0.1100 ± 0.0248" in md   # mean 0.11, t(2)·0.01/√3 = 0.0248
    for png in ("curves.png", "bars.png"):
        assert (out / png).read_bytes()[:8] == PNG
    summary = json.loads((out / "summary.json").read_text())
    assert {g["method"] for g in summary["groups"]} == {"none", "random-teacher control", "dllm2rec"}
    assert "random-teacher control" in r.output


def test_experiment_skips_finished_runs(tiny_dataset_dir, tmp_path):
    out = tmp_path / "exp"
    args = ["experiment", "--data", str(tiny_dataset_dir), "--students", "sasrec,gru4rec", "--methods", "none",
            "--seeds", "0", "--out", str(out), "-o", "train.epochs=2", *FAST]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    for st in ("sasrec", "gru4rec"):
        d = out / tiny_dataset_dir.name / st / "none" / "s0"
        assert (d / "results.json").is_file()
        assert json.loads((d / "experiment.json").read_text())["label"] == "none"
    assert (out / "report.md").is_file() and "| gru4rec | none |" in (out / "report.md").read_text()

    res = out / tiny_dataset_dir.name / "sasrec" / "none" / "s0" / "results.json"
    stamp = res.stat().st_mtime_ns
    r2 = runner.invoke(app, args + ["--no-report"])
    assert r2.exit_code == 0, r2.output
    assert "2 finished, 0 to do" in r2.output
    assert res.stat().st_mtime_ns == stamp
    r3 = runner.invoke(app, args + ["--dry-run"])
    assert r3.output.count("done ") == 2


def test_experiment_resumes_killed_run(tiny_dataset_dir, tmp_path):
    from dllm2rec.config import load_config
    from dllm2rec.data.schema import SeqDataset
    from dllm2rec.experiments import GridSpec
    from dllm2rec.training.trainer import Trainer

    out = tmp_path / "exp"
    ov = ["train.epochs=2", "model.dim=8", "train.num_threads=1", "train.ks=[10,20]"]
    grid = GridSpec(data=[str(tiny_dataset_dir)], students=["gru4rec"], methods=["none"], seeds=[0], out=out,
                    overrides=ov)
    spec = grid.runs()[0]
    tr = Trainer(load_config(None, spec.overrides), SeqDataset.load(tiny_dataset_dir), spec.run_dir, quiet=True)
    assert tr.fit(max_epochs_this_call=1)["status"] == "paused"     # "killed" after epoch 1 of 2
    r = runner.invoke(app, ["experiment", "--data", str(tiny_dataset_dir), "--students", "gru4rec", "--methods",
                            "none", "--seeds", "0", "--out", str(out), "--resume", "--no-report",
                            *sum((["-o", o] for o in ov), [])])
    assert r.exit_code == 0, r.output
    assert "(resuming)" in r.output
    assert len((spec.run_dir / "log.jsonl").read_text().splitlines()) == 2   # continued, not restarted


def test_experiment_method_table_and_teacher_requirement(tiny_dataset_dir, tmp_path):
    from dllm2rec.experiments import METHODS, method_overrides, parse_methods

    assert parse_methods("none,random,ablations")[:2] == ["none", "random"]
    assert len(parse_methods("ablations")) == 6
    assert "distill.params.use_position=false" in method_overrides("dllm2rec-wo-position", "/t")
    assert "distill.teacher=random" in method_overrides("random", None)
    assert set(METHODS) >= {"none", "random", "rd", "hint", "dllm2rec"}
    r = runner.invoke(app, ["experiment", "--data", str(tiny_dataset_dir), "--methods", "rd", "--out",
                            str(tmp_path / "x"), "--dry-run"])
    assert r.exit_code != 0 and "needs a teacher" in str(r.exception)
    r = runner.invoke(app, ["experiment", "--data", str(tiny_dataset_dir), "--methods", "bogus", "--dry-run"])
    assert r.exit_code != 0 and "unknown method" in str(r.exception)


def test_tune_uses_validation_and_writes_tune_json(tiny_dataset_dir, tmp_path):
    pytest.importorskip("optuna")
    out = tmp_path / "tune"
    r = runner.invoke(app, ["tune", "-o", f"data.path={tiny_dataset_dir}", "-o", "train.epochs=1", *FAST,
                            "--space", "optim.lr=0.0005:0.005:log", "--space", "model.dropout=0.0,0.2",
                            "--trials", "2", "--out", str(out)])
    assert r.exit_code == 0, r.output
    res = json.loads((out / "tune.json").read_text())
    assert res["objective"].startswith("valid/")
    assert len(res["trials"]) == 2 and set(res["best_params"]) == {"optim.lr", "model.dropout"}
    assert (out / "trial-0000" / "results.json").is_file()
    assert "best params: -o optim.lr=" in r.output


def test_tune_space_parsing():
    from dllm2rec.workflows.tune import parse_space
    from dllm2rec.errors import ConfigError

    sp = parse_space(["a.b=0.1:1.0", "c=1:5", "d=1e-4:1e-1:log", "e=true,false"])
    assert sp == {"a.b": ("float", (0.1, 1.0)), "c": ("int", (1, 5)), "d": ("float-log", (1e-4, 1e-1)),
                  "e": ("cat", [True, False])}
    for bad in ["x", "x=1:0", "x=a:b", "x=1:2:3"]:
        with pytest.raises(ConfigError):
            parse_space([bad])


def test_experiment_skips_cells_locked_by_a_live_process(tiny_dataset_dir, tmp_path):
    import subprocess
    import sys

    from dllm2rec.experiments import GridSpec, run_grid

    ov = ["train.epochs=1", "model.dim=8", "train.num_threads=1", "train.ks=[10,20]"]
    grid = GridSpec(data=[str(tiny_dataset_dir)], students=["sasrec", "gru4rec"], methods=["none"], seeds=[0],
                    out=tmp_path / "exp", overrides=ov)
    busy, stale = grid.runs()
    busy.run_dir.mkdir(parents=True)
    (busy.run_dir / ".lock").write_text("1")                   # pid 1 is alive: someone else trains this cell
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale.run_dir.mkdir(parents=True)
    (stale.run_dir / ".lock").write_text(dead.stdout.strip())   # its process is gone: taken over
    logs: list[str] = []
    res = run_grid(grid, log=logs.append)
    assert not busy.done and stale.done
    assert any("another process is training it" in m for m in logs)
    assert not (stale.run_dir / ".lock").exists() and res["finished"] == 1


def test_resume_extends_runs_that_hit_the_epoch_cap(tiny_dataset_dir, tmp_path):
    from dllm2rec.experiments import GridSpec, run_grid

    base = ["model.dim=8", "train.num_threads=1", "train.ks=[10,20]", "train.patience=50"]

    def grid(epochs, resume):
        return GridSpec(data=[str(tiny_dataset_dir)], students=["gru4rec"], methods=["none"], seeds=[0],
                        out=tmp_path / "exp", overrides=base + [f"train.epochs={epochs}"], resume=resume)

    run_grid(grid(1, False), log=lambda m: None)
    spec = grid(2, True).runs()[0]
    assert not spec.done                                        # hit cap 1 < 2: extendable
    assert grid(2, False).runs()[0].done                        # without --resume: finished is finished
    run_grid(grid(2, True), log=lambda m: None)
    res = json.loads((spec.run_dir / "results.json").read_text())
    assert res["epochs_run"] == 2 and len((spec.run_dir / "log.jsonl").read_text().splitlines()) == 2
    assert grid(2, True).runs()[0].done
