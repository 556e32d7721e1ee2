"""Dataset-agnostic model configs (configs/<student>.yaml, configs/dllm2rec-<student>.yaml): --data picks the data,
-o distill.teacher the teacher; the per-dataset configs differ from them only in those two fields."""
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from dllm2rec.cli import app
from dllm2rec.config import load_config
from dllm2rec.errors import Dllm2recError
from dllm2rec.teachers.controls import make_control

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
runner = CliRunner()


@pytest.mark.parametrize("student", ["sasrec", "gru4rec", "caser"])
def test_per_dataset_configs_are_the_agnostic_ones_plus_data_and_teacher(student):
    for kind in ("", "dllm2rec-"):
        base = yaml.safe_load((CONFIGS / f"{kind}{student}.yaml").read_text())
        assert "data" not in base
        for ds, teacher in (("ml100k", "ml-100k"), ("lastfm", "lastfm")):
            full = yaml.safe_load((CONFIGS / f"{kind}{student}-{ds}.yaml").read_text())
            full.pop("data")
            if kind:
                assert full["distill"].pop("teacher") == f"artifacts/teachers/{teacher}"
                base_d = dict(base["distill"])
                assert base_d.pop("teacher") is None
                assert full["distill"] == base_d
                assert {k: v for k, v in full.items() if k != "distill"} == \
                       {k: v for k, v in base.items() if k != "distill"}
            else:
                assert full == base


def test_agnostic_config_trains_on_the_data_given(tiny_dataset, tmp_path):
    data = tiny_dataset.save(tmp_path / "data")
    make_control("synthetic", tiny_dataset, seed=0).save(tmp_path / "teacher", tiny_dataset)
    with pytest.raises(Dllm2recError, match="needs distill.teacher") as e:  # no teacher: one line, before training
        r = runner.invoke(app, ["train", "-c", str(CONFIGS / "dllm2rec-gru4rec.yaml"), "--data", str(data),
                                "-o", f"out_dir={tmp_path / 'runs'}"])
        raise r.exception
    assert "\n" not in str(e.value)
    r = runner.invoke(app, ["train", "-c", str(CONFIGS / "dllm2rec-gru4rec.yaml"), "--data", str(data),
                            "-o", f"distill.teacher={tmp_path / 'teacher'}", "-o", "train.epochs=1",
                            "-o", "model.dim=8", "-o", "train.num_threads=1", "-o", f"out_dir={tmp_path / 'runs'}"])
    assert r.exit_code == 0, r.output
    assert load_config(CONFIGS / "sasrec.yaml").model.name == "sasrec"


def test_train_needs_a_dataset_stated(tmp_path):
    r = runner.invoke(app, ["train"])                                 # no config, no data: help, exit 2
    assert r.exit_code == 2 and "Usage" in r.output and "--data" in r.output
    r = runner.invoke(app, ["train", "-c", str(CONFIGS / "sasrec.yaml")])  # agnostic config without --data
    assert isinstance(r.exception, Dllm2recError) and "names no dataset" in str(r.exception)
