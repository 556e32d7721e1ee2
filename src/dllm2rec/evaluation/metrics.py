"""HR@K and NDCG@K from 0-based target ranks (one relevant item per row).

rank r (0-based: 0 = top) -> HR@K = 1[r < K], NDCG@K = 1[r < K] / log2(r + 2). Rows whose target is not ranked at all
(e.g. outside a teacher's top-n list) carry rank = +inf (or any value >= every K) and count as misses.

Tie policy (see ``target_ranks``): an item that scores *equal* to the target is counted as ranked above it
(pessimistic), so a constant or degenerate model cannot score by luck of index order.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np
import torch

DEFAULT_KS = (1, 5, 10, 20)


def metric_key(name: str, k: int, protocol: str = "full") -> str:
    return f"{protocol}/{name}@{k}"


def metrics_from_ranks(ranks, ks: Iterable[int] = DEFAULT_KS, protocol: str = "full") -> dict[str, float]:
    """Mean HR@K / NDCG@K over rows given 0-based target ranks (numpy or torch, float or int)."""
    r = torch.as_tensor(np.asarray(ranks) if not torch.is_tensor(ranks) else ranks).double()
    out: dict[str, float] = {}
    n = max(int(r.numel()), 1)
    for k in ks:
        hit = r < k
        out[metric_key("HR", k, protocol)] = float(hit.sum()) / n
        gain = torch.where(hit, 1.0 / torch.log2(r.clamp(max=1e9) + 2.0), torch.zeros_like(r))
        out[metric_key("NDCG", k, protocol)] = float(gain.sum()) / n
    return out


def sum_metrics_from_ranks(ranks: torch.Tensor, ks: Iterable[int]) -> dict[str, float]:
    """Like metrics_from_ranks but returns sums (for accumulating over chunks / processes)."""
    r = ranks.double()
    out = {}
    for k in ks:
        hit = r < k
        out[f"HR@{k}"] = float(hit.sum())
        out[f"NDCG@{k}"] = float(torch.where(hit, 1.0 / torch.log2(r.clamp(max=1e9) + 2.0), torch.zeros_like(r)).sum())
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
