"""Full-ranking evaluation: every row's target is ranked against all N items (no sampling).

- Scores come from the student in eval mode, in row chunks of ``batch`` so memory stays at batch×N floats
  (``item_chunk`` additionally streams the item axis for very large catalogues).
- ``exclude_history``: history items get -inf before ranking, except the target itself (a repeated item stays
  rankable). Off by default, as in the official code.
- Ties: items scoring exactly the target's score count as ranked above it (pessimistic).
Metric keys carry the protocol: ``full/HR@20``; with history exclusion, ``full-excl/HR@20``.

The streamed path (``item_chunk`` < N) is one pass of cache-sized GEMM blocks (``ROW_BLOCK`` rows × ``ITEM_BLOCK``
items, scored into one preallocated buffer with ``torch.mm(out=)`` + the bias) followed, while the block is still
in cache, by a count of the scores >= the target's. Neither path builds a [B, N] (or [B, chunk]) history mask: the
(row, item) pairs to leave out — the history and the target's own column — are deduplicated once per batch,
sorted by item, and per block the few that fall in it are looked up and their hits subtracted.
"""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

from dllm2rec.evaluation.metrics import DEFAULT_KS, sum_metrics_from_ranks, target_ranks
from dllm2rec.utils.progress import progress

# Block sizes of the streamed passes, measured on a 1 MiB-L2 AVX-512 core (docs/scaling.md "Large catalogues"):
# a 256 × 1024 float block (1 MiB) is still in L2 when the comparison reads it back; [1024, 65536] blocks (the
# old path) ran at about a third of the rate. They only bound the work per GEMM call — results do not depend on
# them (blocks are split evenly, so no tiny tail takes a different GEMM kernel with a different last bit).
ROW_BLOCK = 256
ITEM_BLOCK = 1024
TOPK_GROUP = 32  # top-k: per block, only groups of 32 items whose max beats the row's running k-th score are read
TOPK_MERGE_EVERY = 16  # top-k: blocks between two merges of the pending candidates into the running top-k


def protocol_name(exclude_history: bool) -> str:
    return "full-excl" if exclude_history else "full"


@torch.inference_mode()
def rank_targets(model, split, batch: int = 1024, exclude_history: bool = False, device: str = "cpu",
                 item_chunk: int | None = None, rows: np.ndarray | None = None) -> torch.Tensor:
    """0-based rank of each row's target among all items ([R] int64).

    Without ``item_chunk`` the target's score is read from ``model.score_all`` (the same matrix it is compared
    with); with it, from ``model.score_items`` and the target's own column is skipped (see
    :func:`_rank_streaming`)."""
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
    wb = None
    for s in progress(range(0, len(tgt_all), batch), desc="eval", unit="batch"):
        seq = seq_all[s:s + batch].to(device)
        lens = len_all[s:s + batch].to(device)
        tgt = tgt_all[s:s + batch].to(device)
        state = model.encode(seq, lens)
        if item_chunk is None or item_chunk >= n:
            scores = model.score_all(state)
            if exclude_history:
                out.append(_count_ge(scores, scores.gather(1, tgt[:, None]), *_left_out(seq, tgt, n, True)))
            else:
                out.append(target_ranks(scores, tgt))
        else:
            if wb is None:  # once per call: output_weight() may add an offset module's [N, H] output
                wb = model.output_weight(), model.output_bias()
            out.append(_rank_streaming(model, state, seq, tgt, exclude_history, item_chunk, *wb))
    model.train(was_training)
    return torch.cat(out).cpu() if out else torch.zeros(0, dtype=torch.long)


def history_mask(seq: torch.Tensor, n: int, keep: torch.Tensor | None = None) -> torch.Tensor:
    """[B, N] bool, True at the items of each row's history (PAD ignored); ``keep`` [B] ids are never masked.

    The dense history mask of the llm-emb teacher (evaluation itself no longer builds one). PAD goes to a spare
    column: writing "not in history" for PAD at column 0 used to unmask item 0 in every padded row whose history
    held it."""
    ok = (seq != n) & (seq >= 0) & (seq < n)
    mask = torch.zeros(seq.shape[0], n + 1, dtype=torch.bool, device=seq.device)
    mask.scatter_(1, torch.where(ok, seq, torch.full_like(seq, n)), True)  # misses go to the spare column
    mask = mask[:, :n]
    if keep is not None:
        mask.scatter_(1, keep[:, None], False)
    return mask


def _left_out(seq: torch.Tensor, tgt: torch.Tensor | None, n: int, history: bool):
    """(items, rows) of the cells a rank or a top-k ignores, each (row, item) once, sorted by item.

    ``history``: every real history item (PAD and out-of-range ids ignored); ``tgt``: the row's target (its own
    column is never compared with itself). Deduplicated because a repeated history item must be subtracted once."""
    b = seq.shape[0]
    parts_i, parts_r = [], []
    if history:
        ok = (seq != n) & (seq >= 0) & (seq < n)
        parts_i.append(seq[ok])
        parts_r.append(torch.arange(b, device=seq.device)[:, None].expand_as(seq)[ok])
    if tgt is not None:
        parts_i.append(tgt)
        parts_r.append(torch.arange(b, device=seq.device))
    key = torch.unique(torch.cat(parts_i).long() * b + torch.cat(parts_r))  # sorted: by item, then row
    return key // b, key % b


def _count_ge(scores: torch.Tensor, t: torch.Tensor, items: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """#{j : scores[i, j] >= t[i]} minus the left-out cells (rows, items) that were counted ([B] int64)."""
    ge = scores >= t
    cnt = ge.sum(1)
    return cnt.index_add_(0, rows, ge[rows, items].long(), alpha=-1)


def _blocks(n: int, size: int, align: int = TOPK_GROUP) -> list[tuple[int, int]]:
    """[(start, length)] covering 0..n in ceil(n / size) blocks of (nearly) equal length, a multiple of ``align``
    where that keeps them within ``size`` (whole top-k groups; only the last block may be shorter)."""
    size = max(int(size), 1)
    k = max(1, -(-n // size))
    step = -(-n // k)
    if -(-step // align) * align <= size:
        step = -(-step // align) * align
    return [(c, min(step, n - c)) for c in range(0, n, step)]


class _Scorer:
    """Scores row blocks × item blocks into one preallocated buffer (no allocation per block)."""

    def __init__(self, w: torch.Tensor, b: torch.Tensor, rows: int, items: int):
        self.w, self.b = w, b
        self.flat = torch.empty(rows * items, dtype=w.dtype, device=w.device)
        self.mask = torch.empty(rows * items, dtype=torch.bool, device=w.device)

    def __call__(self, state: torch.Tensor, c: int, m: int) -> torch.Tensor:
        buf = self.flat[:state.shape[0] * m].view(state.shape[0], m)
        torch.mm(state, self.w[c:c + m].t(), out=buf)
        return buf.add_(self.b[c:c + m])  # = addmm(b, state, w.T) bit for bit (checked), without its bias copy


def _rank_streaming(model, state, seq, tgt, exclude_history, item_chunk, w=None, b=None):
    """Rank targets without a [B, N] matrix: count items scoring >= target, block by block.

    Peak extra memory is O(min(B, ROW_BLOCK) × min(item_chunk, ITEM_BLOCK)). The target's own column is skipped
    rather than compared with itself (its block score may differ from ``score_items`` in the last bit), so a rank
    can never come out negative.
    """
    n = model.n_items
    if w is None:
        w, b = model.output_weight(), model.output_bias()
    t = model.score_items(state, tgt)  # [B]
    rblocks = _blocks(state.shape[0], ROW_BLOCK)
    iblocks = _blocks(n, min(int(item_chunk), ITEM_BLOCK))
    sc = _Scorer(w, b, rblocks[0][1], iblocks[0][1])
    out = torch.empty_like(tgt, dtype=torch.long)
    for r0, rm in rblocks:
        items, rows = _left_out(seq[r0:r0 + rm], tgt[r0:r0 + rm], n, exclude_history)
        bounds = torch.searchsorted(items, torch.tensor([c for c, _ in iblocks] + [n], device=items.device)).tolist()
        st, tc = state[r0:r0 + rm], t[r0:r0 + rm, None]
        cnt = torch.zeros(rm, dtype=torch.int32, device=state.device)
        for j, (c, m) in enumerate(iblocks):
            ge = torch.ge(sc(st, c, m), tc, out=sc.mask[:rm * m].view(rm, m))
            cnt += ge.sum(1, dtype=torch.int32)  # int32 accumulation: ~3x faster than the int64 default on CPU
            lo, hi = bounds[j], bounds[j + 1]
            if hi > lo:  # the left-out cells in this block: subtract those that were counted
                rr = rows[lo:hi]
                cnt.index_add_(0, rr, ge[rr, items[lo:hi] - c].int(), alpha=-1)
        out[r0:r0 + rm] = cnt
    return out


@torch.inference_mode()
def top_k(model, seq: torch.Tensor, lens: torch.Tensor, k: int = 20, item_chunk: int | None = None,
          exclude_history: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k item ids and scores ([B, k] each, best first) for a batch of histories.

    With ``item_chunk`` the catalogue is scanned in blocks and a running top-k is kept, so memory is
    O(B × k + ROW_BLOCK × min(item_chunk, ITEM_BLOCK)) instead of O(B × N). Exactly tied scores are ordered by
    item id (lower first), in both paths, so the result does not depend on the chunking.
    """
    was_training = model.training
    model.eval()
    try:
        n = model.n_items
        k = min(int(k), n)
        state = model.encode(seq, lens)
        w, b = model.output_weight(), model.output_bias()
        if k <= 0 or state.shape[0] == 0:  # nothing to rank: the blocked passes assume >= 1 row and k >= 1
            return (torch.zeros(state.shape[0], max(k, 0), dtype=torch.long, device=state.device),
                    torch.zeros(state.shape[0], max(k, 0), dtype=w.dtype, device=state.device))
        if item_chunk is None or item_chunk >= n:
            sc = torch.nn.functional.linear(state, w, b)
            if exclude_history:
                sc = sc.masked_fill(history_mask(seq, n), float("-inf"))
            return _sorted_top(sc, k)
        return _topk_streaming(state, seq, w, b, n, k, int(item_chunk), exclude_history)
    finally:
        model.train(was_training)


def _sorted_top(sc: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top k of each row by (score desc, id asc).

    ``topk`` picks an arbitrary subset of the items tied at the k-th score, so rows with such a tie (more than k
    items >= their k-th score; rare with real scores) take a stable descending sort instead, which keeps equal
    scores in id order; the other rows only reorder their k."""
    s, i = sc.topk(k, dim=1)
    o = torch.argsort(i, dim=1, stable=True)
    o = o.gather(1, torch.argsort(s.gather(1, o), dim=1, descending=True, stable=True))
    s, i = s.gather(1, o), i.gather(1, o)
    tied = ((sc >= s[:, -1:]).sum(1) > k).nonzero().squeeze(1)
    if len(tied):
        ts, ti = torch.sort(sc[tied], dim=1, descending=True, stable=True)
        s[tied], i[tied] = ts[:, :k], ti[:, :k]
    return i, s


def _topk_streaming(state, seq, w, b, n, k, item_chunk, exclude_history):
    rblocks = _blocks(state.shape[0], ROW_BLOCK)
    iblocks = _blocks(n, min(item_chunk, ITEM_BLOCK))
    sc = _Scorer(w, b, rblocks[0][1], iblocks[0][1])
    ninf = float("-inf")
    best_s = torch.full((state.shape[0], k), ninf, dtype=w.dtype, device=w.device)
    best_i = torch.full((state.shape[0], k), n, dtype=torch.long, device=w.device)  # id n: "no item yet"
    for r0, rm in rblocks:
        bs, bi = best_s[r0:r0 + rm], best_i[r0:r0 + rm]
        if exclude_history:
            items, rows = _left_out(seq[r0:r0 + rm], None, n, True)
            bounds = torch.searchsorted(items, torch.tensor([c for c, _ in iblocks] + [n], device=items.device)).tolist()
        st = state[r0:r0 + rm]
        thr, pending, n_pending, age = None, [], 0, 0
        for j, (c, m) in enumerate(iblocks):
            buf = sc(st, c, m)
            if exclude_history and bounds[j + 1] > bounds[j]:
                lo, hi = bounds[j], bounds[j + 1]
                buf[rows[lo:hi], items[lo:hi] - c] = ninf
            if thr is None:  # first block: admit everything that ties the block's k-th score
                thr = torch.nextafter(buf.topk(min(k, m), dim=1).values[:, -1], best_s.new_tensor(ninf))
            cand = _candidates(buf, c, thr)
            if cand is not None:
                pending.append(cand)
                n_pending += len(cand[0])
            age += 1
            # Merging costs a sort of every involved row's k entries, so candidates are batched: merged once they
            # are as many as the running top-k (early blocks) or every TOPK_MERGE_EVERY blocks (the threshold
            # meanwhile stays as it was, which only admits a few more candidates).
            if pending and (n_pending >= rm * k or age >= TOPK_MERGE_EVERY or j == len(iblocks) - 1):
                _merge(bs, bi, *map(torch.cat, zip(*pending)))
                thr = torch.maximum(thr, bs[:, -1])  # a later (higher) id must beat the k-th strictly to enter
                pending, n_pending, age = [], 0, 0
        short = (bi == n).any(1).nonzero().squeeze(1)
        if len(short):  # fewer than k items above -inf (history covers nearly all): rank those rows densely
            full = torch.nn.functional.linear(st[short], w, b)
            if exclude_history:
                full = full.masked_fill(history_mask(seq[r0:r0 + rm][short], n), ninf)
            bi[short], bs[short] = _sorted_top(full, k)
    return best_i, best_s


def _candidates(buf, c, thr):
    """(rows, scores, ids) of the block's cells scoring > thr[row], or None.

    Only item groups whose maximum beats the row's threshold are read; after the first blocks of a row that is a
    small fraction, so a block costs about one pass of ``amax`` on top of its GEMM."""
    rm, m = buf.shape
    g = TOPK_GROUP
    full = m // g * g
    gmax = buf[:, :full].view(rm, -1, g).amax(2)
    if full < m:
        gmax = torch.cat([gmax, buf[:, full:].amax(1, keepdim=True)], 1)
    gr, gg = (gmax > thr[:, None]).nonzero(as_tuple=True)
    if len(gr) == 0:
        return None
    cols = gg[:, None] * g + torch.arange(g, device=buf.device)  # [H, g] candidate columns
    cols = cols.clamp_(max=m - 1)  # the partial last group repeats its last column; dropped as a duplicate below
    vals = buf[gr[:, None], cols]
    keep = vals > thr[gr, None]
    keep[:, 1:] &= cols[:, 1:] != cols[:, :-1]
    return gr[:, None].expand_as(cols)[keep], vals[keep], cols[keep] + c


def _merge(bs, bi, r, s, i):
    """Fold candidates (rows r, scores s, ids i) into the running top-k (bs, bi: score desc, id asc), in place."""
    rows = torch.unique(r)
    r = torch.cat([r, rows.repeat_interleave(bs.shape[1])])
    s = torch.cat([s, bs[rows].reshape(-1)])
    i = torch.cat([i, bi[rows].reshape(-1)])
    o = torch.argsort(i, stable=True)  # order by (row asc, score desc, id asc): three stable sorts, last key first
    o = o[torch.argsort(s[o], descending=True, stable=True)]
    o = o[torch.argsort(r[o], stable=True)]
    r, s, i = r[o], s[o], i[o]
    cnt = torch.unique_consecutive(r, return_counts=True)[1]
    pos = torch.arange(len(r), device=r.device) - (torch.cumsum(cnt, 0) - cnt).repeat_interleave(cnt)
    top = pos < bs.shape[1]
    bs[r[top], pos[top]] = s[top]
    bi[r[top], pos[top]] = i[top]


def evaluate(model, split, ks: Iterable[int] = DEFAULT_KS, batch: int = 1024, exclude_history: bool = False,
             device: str = "cpu", item_chunk: int | None = None, rows: np.ndarray | None = None) -> dict[str, float]:
    ranks = rank_targets(model, split, batch, exclude_history, device, item_chunk, rows)
    sums = sum_metrics_from_ranks(ranks, ks)
    proto = protocol_name(exclude_history)
    n = max(len(ranks), 1)
    return {f"{proto}/{k}": v / n for k, v in sums.items()}
