"""Teacher HR/NDCG@K on the valid/test rows it generated (the students' metric code), and its measured speed.

Ranks come from the grounding distances over all items (``ground_generation``), turned into metrics by
``dllm2rec.evaluation.metrics.metrics_from_ranks`` — the protocol the students are evaluated with. A popularity
baseline (train-target counts, ties pessimistic) is reported on the same rows for reference.

Speed comes from the shards themselves (wall seconds per generated batch): rows/s = rows / Σ batch seconds and
latency per request = mean batch wall time (a request waits for its whole batch), plus seconds per row.
"""
from __future__ import annotations

import numpy as np
import torch

from dllm2rec.evaluation.metrics import metrics_from_ranks, target_ranks
from dllm2rec.teachers.bigrec.generate import read_shards
from dllm2rec.teachers.bigrec.ground import ground_generation


def popularity_ranks(dataset, split: str, positions: np.ndarray) -> np.ndarray:
    counts = torch.as_tensor(dataset.item_counts("train"), dtype=torch.float64)
    t = torch.as_tensor(dataset[split].target[positions], dtype=torch.long)
    return target_ranks(counts.expand(len(t), -1), t).double().numpy()


def speed_from_shards(shards: list[dict]) -> dict:
    secs = [s for sh in shards for s in sh.get("batch_seconds", [])]
    rows = [r for sh in shards for r in sh.get("batch_rows", [])]
    if not secs:
        return {}
    return {"rows": int(sum(rows)), "rows_per_s": round(sum(rows) / sum(secs), 4),
            "latency_per_request_s": round(float(np.mean(secs)), 4),
            "seconds_per_row": round(sum(secs) / sum(rows), 4), "batch_size": int(max(rows))}


def evaluate_generation(gen_dir, dataset, encoder, item_emb: np.ndarray, ks=(1, 5, 10, 20), top_n: int = 20,
                        match_titles: bool | None = None) -> dict:
    plan, shards = read_shards(gen_dir)
    g = ground_generation(gen_dir, dataset, encoder, item_emb, top_n=top_n, match_titles=match_titles)
    res = {"split": plan.split, "rows": int(len(g.positions)), "decoding": plan.decoding, "model": plan.model_id,
           "encoder": encoder.name, "teacher": metrics_from_ranks(g.target_rank, ks),
           "popularity": metrics_from_ranks(popularity_ranks(dataset, plan.split, g.positions), ks),
           "catalogue_title_rate": round(float(g.exact_match.mean()), 4) if len(g.positions) else None,
           "speed": speed_from_shards(shards)}
    if len(g.positions):
        top1 = g.topk_ids[:, 0]
        res["top1_most_common_share"] = round(float(np.bincount(top1).max() / len(top1)), 4)
    return res
