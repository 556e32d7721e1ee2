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

from dllm2rec.evaluation.metrics import DEFAULT_KS, sum_metrics_from_ranks, target_ranks
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
                scores = scores.masked_fill(history_mask(seq, n, keep=tgt), float("-inf"))
            out.append(target_ranks(scores, tgt))
        else:
            out.append(_rank_streaming(model, state, seq, tgt, exclude_history, item_chunk))
    model.train(was_training)
    return torch.cat(out).cpu() if out else torch.zeros(0, dtype=torch.long)


def history_mask(seq: torch.Tensor, n: int, keep: torch.Tensor | None = None) -> torch.Tensor:
    """[B, N] bool, True at the items of each row's history (PAD ignored); ``keep`` [B] ids are never masked.

    The one dense history mask (evaluation, the llm-emb teacher). PAD goes to a spare column: writing "not in
    history" for PAD at column 0 used to unmask item 0 in every padded row whose history held it."""
    mask = _history_mask(seq, 0, n, n)
    if keep is not None:
        mask.scatter_(1, keep[:, None], False)
    return mask


def _history_mask(seq: torch.Tensor, c: int, m: int, n: int) -> torch.Tensor:
    """[B, m] bool: item c+j is in the row's history (PAD ignored), built in O(B × m) memory."""
    rel = seq - c
    ok = (seq != n) & (rel >= 0) & (rel < m)
    mask = torch.zeros(seq.shape[0], m + 1, dtype=torch.bool, device=seq.device)
    mask.scatter_(1, torch.where(ok, rel, torch.full_like(rel, m)), True)  # misses go to a spare column
    return mask[:, :m]


def _rank_streaming(model, state, seq, tgt, exclude_history, item_chunk):
    """Rank targets without a [B, N] matrix: count items scoring >= target, chunk by chunk.

    Peak extra memory is O(B × item_chunk). The target's own column is skipped rather than compared with itself
    (its chunked score may differ from ``score_items`` in the last bit), so a rank can never come out negative.
    """
    n = model.n_items
    t = model.score_items(state, tgt)  # [B]
    w, b = model.output_weight(), model.output_bias()
    above = torch.zeros_like(tgt)
    for c in range(0, n, item_chunk):
        sc = torch.nn.functional.linear(state, w[c:c + item_chunk], b[c:c + item_chunk])
        m = sc.shape[1]
        ge = sc >= t[:, None]
        if exclude_history:
            ge &= ~_history_mask(seq, c, m, n)
        above += ge.sum(1, dtype=torch.int32)  # int32 accumulation: ~1.5x faster than the int64 default on CPU
        r = ((tgt >= c) & (tgt < c + m)).nonzero().squeeze(1)  # rows whose target is in this chunk:
        above[r] -= ge[r, tgt[r] - c].long()  # the target never counts against itself
    return above


@torch.inference_mode()
def top_k(model, seq: torch.Tensor, lens: torch.Tensor, k: int = 20, item_chunk: int | None = None,
          exclude_history: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k item ids and scores ([B, k] each, best first) for a batch of histories.

    With ``item_chunk`` the catalogue is scanned in chunks and a running top-k is merged, so memory is
    O(B × (item_chunk + k)) instead of O(B × N). Same result as ``score_all(...).topk(k)`` up to the order of
    exactly tied scores.
    """
    was_training = model.training
    model.eval()
    try:
        n = model.n_items
        k = min(int(k), n)
        state = model.encode(seq, lens)
        chunk = n if item_chunk is None else max(int(item_chunk), 1)
        w, b = model.output_weight(), model.output_bias()
        best_s = best_i = None
        for c in range(0, n, chunk):
            sc = torch.nn.functional.linear(state, w[c:c + chunk], b[c:c + chunk])
            if exclude_history:
                sc = sc.masked_fill(_history_mask(seq, c, sc.shape[1], n), float("-inf"))
            s, i = sc.topk(min(k, sc.shape[1]), dim=1)
            i = i + c
            if best_s is not None:
                s, j = torch.cat([best_s, s], 1).topk(k, dim=1)
                i = torch.cat([best_i, i], 1).gather(1, j)
            best_s, best_i = s, i
        return best_i, best_s
    finally:
        model.train(was_training)


def evaluate(model, split, ks: Iterable[int] = DEFAULT_KS, batch: int = 1024, exclude_history: bool = False,
             device: str = "cpu", item_chunk: int | None = None, rows: np.ndarray | None = None) -> dict[str, float]:
    ranks = rank_targets(model, split, batch, exclude_history, device, item_chunk, rows)
    sums = sum_metrics_from_ranks(ranks, ks)
    proto = protocol_name(exclude_history)
    n = max(len(ranks), 1)
    return {f"{proto}/{k}": v / n for k, v in sums.items()}
