"""Non-learned baselines ranked by the students' protocol (:mod:`dllm2rec.evaluation.protocol`).

``popularity``: every row scores item j by how often j is a *training target* (``ds.item_counts("train")``), the
popularity row of every table. It is wrapped as a one-feature "student" (state = 1, output weights = the
counts), so :func:`dllm2rec.evaluation.protocol.evaluate` ranks it exactly as it ranks a model: in row batches
(memory batch × N, or batch × ``item_chunk`` with streaming — never a dense [rows, N] matrix), ties pessimistic
(items with the target's count rank above it), optional history exclusion, the same metric keys.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np
import torch
from torch import nn

from dllm2rec.errors import Dllm2recError
from dllm2rec.evaluation.protocol import evaluate

BASELINES = ("popularity",)


class ConstantScorer(nn.Module):
    """Scores every row with the same per-item vector, through the student interface the protocol uses."""

    def __init__(self, scores: np.ndarray):
        super().__init__()
        scores = np.asarray(scores)
        # float32 holds integer counts exactly up to 2^24; beyond that keep float64 so ties stay exact
        dtype = torch.float32 if np.abs(scores).max(initial=0) < 2 ** 24 else torch.float64
        self.n_items = int(len(scores))
        self.out = nn.Linear(1, self.n_items, dtype=dtype)
        with torch.no_grad():
            self.out.weight.copy_(torch.as_tensor(scores, dtype=dtype)[:, None])
            self.out.bias.zero_()

    def encode(self, seq: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
        return torch.ones(seq.shape[0], 1, dtype=self.out.weight.dtype, device=seq.device)

    def output_weight(self) -> torch.Tensor:
        return self.out.weight

    def output_bias(self) -> torch.Tensor:
        return self.out.bias

    def score_all(self, state: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(state, self.out.weight, self.out.bias)

    def score_items(self, state: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        scale = state[:, 0].reshape(-1, *([1] * (items.dim() - 1)))  # [B] or [B, 1] against items [B] / [B, k]
        return scale * self.out.weight[items, 0] + self.out.bias[items]


def popularity_scorer(ds, fit_split: str = "train") -> ConstantScorer:
    return ConstantScorer(ds.item_counts(fit_split))


def evaluate_baseline(name: str, ds, split: str = "test", ks: Iterable[int] = (1, 5, 10, 20), batch: int = 1024,
                      exclude_history: bool = False, item_chunk: int | None = None) -> dict[str, float]:
    """HR/NDCG@K of baseline ``name`` on ``ds[split]`` (metric keys as for a student: ``full/HR@20``)."""

    if name not in BASELINES:
        raise Dllm2recError(f"--baseline: unknown baseline '{name}' (choose from {', '.join(BASELINES)})")
    return evaluate(popularity_scorer(ds), ds[split], list(ks), batch, exclude_history, item_chunk=item_chunk)
