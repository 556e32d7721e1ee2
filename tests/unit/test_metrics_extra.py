"""Recall@K and MRR@K (issue 16): hand-computed values, and they reach results.json / selection."""
import json
import math

import numpy as np
import pytest
import torch

from dllm2rec.evaluation.metrics import metrics_from_ranks, sum_metrics_from_ranks


def test_recall_and_mrr_hand_computed():
    # 0-based ranks 0, 1, 4, 25 (+ a row the model never ranked): 5 rows
    r = torch.tensor([0.0, 1.0, 4.0, 25.0, math.inf])
    s = sum_metrics_from_ranks(r, [1, 5, 20, 30])
    assert s["MRR@1"] == 1.0                            # only the rank-0 row
    assert s["MRR@5"] == pytest.approx(1 + 1 / 2 + 1 / 5, abs=1e-15)
    assert s["MRR@20"] == s["MRR@5"]                    # rank 25 is outside the top 20
    assert s["MRR@30"] == pytest.approx(1 + 1 / 2 + 1 / 5 + 1 / 26, abs=1e-15)
    # one relevant item per row: recall@K = |relevant in top K| / |relevant| = hit@K
    assert [s[f"Recall@{k}"] for k in (1, 5, 20, 30)] == [1.0, 3.0, 3.0, 4.0]
    assert all(s[f"Recall@{k}"] == s[f"HR@{k}"] for k in (1, 5, 20, 30))
    assert s["NDCG@5"] == pytest.approx(1 + 1 / math.log2(3) + 1 / math.log2(6), abs=1e-15)
    m = metrics_from_ranks(r.numpy(), ks=(5,), names=("HR", "Recall", "MRR"))
    assert m == {"full/HR@5": 0.6, "full/Recall@5": 0.6, "full/MRR@5": pytest.approx(1.7 / 5, abs=1e-15)}
    assert set(metrics_from_ranks([0], ks=(5,))) == {"full/HR@5", "full/NDCG@5"}  # teachers' keys unchanged


def test_results_json_has_recall_mrr_and_selects_by_them(tmp_path, tiny_dataset):
    from dllm2rec.config import load_config
    from dllm2rec.evaluation.protocol import rank_targets
    from dllm2rec.students.checkpoint import load_student
    from dllm2rec.training.trainer import Trainer

    cfg = load_config(None, ["train.epochs=3", "train.batch_size=64", "model.dim=8", "train.num_threads=1",
                             "train.select_metric=mrr@10", "train.ks=[5,20]", "train.patience=100"])
    assert cfg.train.select_metric == "MRR@10"
    res = Trainer(cfg, tiny_dataset, tmp_path / "r", quiet=True).fit()
    log = [json.loads(x) for x in (tmp_path / "r" / "log.jsonl").read_text().splitlines()]
    assert res["best_epoch"] == max(log, key=lambda x: x["valid/full/MRR@10"])["epoch"]
    saved = json.loads((tmp_path / "r" / "results.json").read_text())
    assert "MRR@10" in saved["protocol"]["metrics"] and "Recall" in saved["protocol"]["recall"]
    model, _ = load_student(tmp_path / "r" / "best")
    ranks = rank_targets(model, tiny_dataset["test"]).double().numpy()
    for k in (5, 10, 20):  # K=10 is evaluated for the selection although ks lacks it
        hit = ranks < k
        assert saved["test"][f"test/full/MRR@{k}"] == pytest.approx(np.where(hit, 1 / (ranks + 1), 0).mean(),
                                                                    abs=1e-12)
        assert saved["test"][f"test/full/Recall@{k}"] == saved["test"][f"test/full/HR@{k}"] == hit.mean()
