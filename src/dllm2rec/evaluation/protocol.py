"""Full-ranking evaluation: every row's target is ranked against all N items (no sampling).

- Scores come from the student in eval mode, in row chunks of ``batch`` so memory stays at batch×N floats
  (``item_chunk`` additionally streams the item axis for very large catalogues).
- ``exclude_history``: history items get -inf before ranking, except the target itself (a repeated item stays
  rankable). Off by default, as in the official code.
- Ties: items scoring exactly the target's score count as ranked above it (pessimistic).
Metric keys carry the protocol: ``full/HR@20``; with history exclusion, ``full-excl/HR@20``.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np
import torch

from dllm2rec.evaluation.metrics import DEFAULT_KS, sum_metrics_from_ranks
from dllm2rec.utils.progress import progress


def protocol_name(exclude_history: bool) -> str:
    return "full-excl" if exclude_history else "full"


@torch.inference_mode()
def rank_targets(model, split, batch: int = 1024, exclude_history: bool = False, device: str = "cpu",
                 item_chunk: int | None = None, rows: np.ndarray | None = None) -> torch.Tensor:
    """0-based rank of each row's target among all items ([R] int64)."""
    was_training = model.training
    model.eval()
    seq_all = torch.from_numpy(split.seq)
    len_all = torch.from_numpy(split.len)
    tgt_all = torch.from_numpy(split.target)
    if rows is not None:
        idx = torch.from_numpy(np.asarray(rows))
        seq_all, len_all, tgt_all = seq_all[idx], len_all[idx], tgt_all[idx]
    n = model.n_items
    out = []
    for s in progress(range(0, len(tgt_all), batch), desc="eval", unit="batch"):
        seq = seq_all[s:s + batch].to(device)
        lens = len_all[s:s + batch].to(device)
        tgt = tgt_all[s:s + batch].to(device)
        state = model.encode(seq, lens)
        if item_chunk is None or item_chunk >= n:
            scores = model.score_all(state)
            if exclude_history:
                hist = seq.clamp(max=n - 1).masked_fill(seq == n, 0)
                mask = torch.zeros_like(scores, dtype=torch.bool).scatter_(1, hist, seq != n)
                mask.scatter_(1, tgt[:, None], False)
                scores = scores.masked_fill(mask, float("-inf"))
            t = scores.gather(1, tgt[:, None])
            out.append((scores >= t).sum(1) - 1)
        else:
            out.append(_rank_streaming(model, state, seq, tgt, exclude_history, item_chunk))
    model.train(was_training)
    return torch.cat(out).cpu() if out else torch.zeros(0, dtype=torch.long)


def _rank_streaming(model, state, seq, tgt, exclude_history, item_chunk):
    """Rank targets without a [B, N] matrix: count items scoring >= target, chunk by chunk."""
    n = model.n_items
    t = model.score_items(state, tgt)  # [B]
    w, b = model.output_weight(), model.out.bias
    above = torch.zeros_like(tgt)
    for c in range(0, n, item_chunk):
        sc = state @ w[c:c + item_chunk].T + b[c:c + item_chunk]
        ge = sc >= t[:, None]
        if exclude_history:
            ids = torch.arange(c, min(c + item_chunk, n), device=seq.device)
            inhist = (seq[:, :, None] == ids[None, None, :]).any(1) & (ids[None, :] != tgt[:, None])
            ge &= ~inhist
        above += ge.sum(1)
    return above - 1


def evaluate(model, split, ks: Iterable[int] = DEFAULT_KS, batch: int = 1024, exclude_history: bool = False,
             device: str = "cpu", item_chunk: int | None = None) -> dict[str, float]:
    ranks = rank_targets(model, split, batch, exclude_history, device, item_chunk)
    sums = sum_metrics_from_ranks(ranks, ks)
    proto = protocol_name(exclude_history)
    n = max(len(ranks), 1)
    return {f"{proto}/{k}": v / n for k, v in sums.items()}
