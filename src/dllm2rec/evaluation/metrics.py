"""HR@K, NDCG@K, Recall@K and MRR@K from 0-based target ranks (one relevant item per row).

rank r (0-based: 0 = top) -> HR@K = 1[r < K], NDCG@K = 1[r < K] / log2(r + 2), MRR@K = 1[r < K] / (r + 1) and
Recall@K = (relevant items in the top K) / (relevant items) = HR@K, because every row has exactly one relevant item
(RecBole reports it under this name). Rows whose target is not ranked at all (e.g. outside a teacher's top-n list)
carry rank = +inf (or any value >= every K) and count as misses.

Tie policy (see ``target_ranks``): an item that scores *equal* to the target is counted as ranked above it
(pessimistic), so a constant or degenerate model cannot score by luck of index order.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np
import torch

DEFAULT_KS = (1, 5, 10, 20)
ALL_METRICS = ("HR", "NDCG", "Recall", "MRR")  # what student evaluation (results.json, log.jsonl) reports


def metric_key(name: str, k: int, protocol: str = "full") -> str:
    return f"{protocol}/{name}@{k}"


def _sums(r: torch.Tensor, k: int, names: Iterable[str]) -> dict[str, float]:
    hit = r < k
    out = {}
    for name in names:
        if name in ("HR", "Recall"):  # one relevant item per row: recall@K is the hit rate
            out[name] = float(hit.sum())
        elif name == "NDCG":
            out[name] = float(torch.where(hit, 1.0 / torch.log2(r.clamp(max=1e9) + 2.0), torch.zeros_like(r)).sum())
        elif name == "MRR":
            out[name] = float(torch.where(hit, 1.0 / (r.clamp(max=1e9) + 1.0), torch.zeros_like(r)).sum())
        else:
            raise ValueError(f"unknown metric {name!r}; known: {', '.join(ALL_METRICS)}")
    return out


def metrics_from_ranks(ranks, ks: Iterable[int] = DEFAULT_KS, protocol: str = "full",
                       names: Iterable[str] = ("HR", "NDCG")) -> dict[str, float]:
    """Mean HR@K / NDCG@K (``names`` may add Recall, MRR) over rows given 0-based target ranks."""
    r = torch.as_tensor(np.asarray(ranks) if not torch.is_tensor(ranks) else ranks).double()
    out: dict[str, float] = {}
    n = max(int(r.numel()), 1)
    for k in ks:
        for name, v in _sums(r, k, names).items():
            out[metric_key(name, k, protocol)] = v / n
    return out


def sum_metrics_from_ranks(ranks: torch.Tensor, ks: Iterable[int],
                           names: Iterable[str] = ALL_METRICS) -> dict[str, float]:
    """Sums of HR / NDCG / Recall / MRR @K over rows (for accumulating over chunks / processes)."""
    r = ranks.double()
    out = {}
    for k in ks:
        for name, v in _sums(r, k, names).items():
            out[f"{name}@{k}"] = v
    return out


def target_ranks(scores: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """0-based rank of ``target`` in each row of ``scores`` [B, N], ties counted against the target."""
    t = scores.gather(1, target.view(-1, 1))
    return (scores >= t).sum(1) - 1


def ranks_from_topk(topk_ids: np.ndarray, target: np.ndarray) -> np.ndarray:
    """0-based rank of the target in a ranked id list per row; +inf where it is absent (teacher lists)."""
    hit = topk_ids == target[:, None]
    pos = np.where(hit.any(1), hit.argmax(1), np.inf)
    return pos.astype(np.float64)
