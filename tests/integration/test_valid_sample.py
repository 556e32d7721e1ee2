"""Bounded validation cost: epochs are compared on a fixed validation sample above a size, and the selected
checkpoint is ranked on every validation row at the end; results.json says which is which."""
import json

import numpy as np

from dllm2rec.config import RunConfig
from dllm2rec.data.synthetic import make_synthetic
from dllm2rec.evaluation.protocol import evaluate
from dllm2rec.students.checkpoint import load_student
from dllm2rec.training import trainer as T


def _cfg(**train):
    return RunConfig.model_validate({"model": {"name": "gru4rec", "dim": 8},
                                     "train": {"epochs": 3, "patience": 5, "ks": [10], "num_threads": 1, **train}})


def test_selection_on_a_fixed_sample_full_validation_at_the_end(tmp_path):
    ds = make_synthetic(n_items=60, n_users=1000, seq_len=12, seed=0)
    n_valid = len(ds["valid"])
    res = T.Trainer(_cfg(valid_sample=50), ds, tmp_path / "s", quiet=True).fit()
    sel = res["valid_selection"]
    assert sel["rows"] == 50 and sel["of"] == n_valid and "fixed sample of 50" in res["protocol"]["selection"]
    model, _ = load_student(tmp_path / "s" / "best")
    full = evaluate(model, ds["valid"], [10])
    rows = np.sort(np.random.default_rng(T.VALID_SAMPLE_SEED).choice(n_valid, 50, replace=False))
    sample = evaluate(model, ds["valid"], [10], rows=rows)
    assert res["valid"]["valid/full/NDCG@10"] == full["full/NDCG@10"]          # valid = every row
    assert sel["metrics"]["valid/full/NDCG@10"] == sample["full/NDCG@10"]      # selection = the sample
    log = [json.loads(line) for line in (tmp_path / "s" / "log.jsonl").read_text().splitlines()]
    assert log[res["best_epoch"] - 1]["valid/full/NDCG@10"] == sample["full/NDCG@10"]


def test_auto_samples_only_above_the_size(tmp_path, monkeypatch):
    ds = make_synthetic(n_items=60, n_users=1000, seq_len=12, seed=0)
    res = T.Trainer(_cfg(epochs=1), ds, tmp_path / "a", quiet=True).fit()
    assert "valid_selection" not in res                                        # small split: all rows, as before
    monkeypatch.setattr(T, "VALID_FULL_UP_TO", 10)
    monkeypatch.setattr(T, "VALID_SAMPLE", 40)
    res = T.Trainer(_cfg(epochs=1), ds, tmp_path / "b", quiet=True).fit()
    assert res["valid_selection"]["rows"] == 40
    res = T.Trainer(_cfg(epochs=1, valid_sample=0), ds, tmp_path / "c", quiet=True).fit()
    assert "valid_selection" not in res                                        # 0 = always every row
