"""The blocked ranking and top-k of ``evaluation.protocol`` against a naive dense reference.

Scores are small integers (integer states, weights and biases), so every score is exact in float32 whatever the
GEMM's summation order: ties are real and frequent, and the blocked paths must give *exactly* the reference's
ranks (ties against the target, history excluded but never the target) and top-k (score desc, then id asc).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from dllm2rec.data.schema import Split
from dllm2rec.evaluation import protocol
from dllm2rec.evaluation.protocol import rank_targets, top_k


class IntScorer(nn.Module):
    """A student-shaped scorer whose scores are exact small integers (many ties)."""

    def __init__(self, n: int, dim: int = 3, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.n_items = n
        self.emb = nn.Parameter(torch.randint(-1, 2, (n + 1, dim), generator=g).float())
        with torch.no_grad():
            self.emb[n] = 0  # PAD
        self.w = nn.Parameter(torch.randint(-2, 3, (n, dim), generator=g).float())
        self.b = nn.Parameter(torch.randint(-1, 2, (n,), generator=g).float())

    def encode(self, seq, lens):
        return self.emb[seq].sum(1)

    def output_weight(self):
        return self.w

    def output_bias(self):
        return self.b

    def score_all(self, state):
        return state @ self.w.T + self.b

    def score_items(self, state, items):
        return (state * self.w[items]).sum(-1) + self.b[items]


def _split(rows: int, n: int, seed: int) -> Split:
    rng = np.random.default_rng(seed)
    L = 6
    lens = rng.integers(1, L + 1, rows)
    seq = rng.integers(0, n, (rows, L))
    seq[:, 1] = seq[:, 0]  # repeated history items: must be left out once, not twice
    tgt = rng.integers(0, n, rows)
    seq[::5, 0] = tgt[::5]  # the target is in the history: it must stay rankable
    seq[np.arange(L)[None, :] >= lens[:, None]] = n  # right-padded with PAD = N
    seq[::7, 2] = 0  # item 0 in some histories (the old PAD-at-column-0 bug)
    return Split(seq, lens, tgt, np.arange(rows))


def _reference(model, split, exclude_history):
    seq, tgt = torch.from_numpy(split.seq), torch.from_numpy(split.target)
    with torch.no_grad():
        sc = model.score_all(model.encode(seq, torch.from_numpy(split.len)))
    t = sc.gather(1, tgt[:, None])
    rank_sc, top_sc = sc.clone(), sc.clone()
    if exclude_history:  # cell by cell: the history is left out of both; the target stays rankable
        for r in range(len(tgt)):
            for j in seq[r].tolist():
                if j != model.n_items:
                    top_sc[r, j] = float("-inf")
                    if j != int(tgt[r]):
                        rank_sc[r, j] = float("-inf")
    ranks = (rank_sc >= t).sum(1) - 1
    order = torch.sort(top_sc, dim=1, descending=True, stable=True)
    return ranks, order


@pytest.fixture(params=[(1009, 7, 40), (2503, 100, 64), (2503, 3000, 64)], ids=["tiny-blocks", "chunk100", "dense"])
def setting(request, monkeypatch):
    n, chunk, item_block = request.param
    monkeypatch.setattr(protocol, "ROW_BLOCK", 37)  # 300 rows: uneven row blocks within each batch
    monkeypatch.setattr(protocol, "ITEM_BLOCK", item_block)
    return n, chunk


@pytest.mark.parametrize("excl", [False, True])
def test_blocked_ranks_and_top_k_equal_the_dense_reference(setting, excl):
    n, chunk = setting
    model, split = IntScorer(n), _split(300, n, 1)
    ref_ranks, (ref_s, ref_i) = _reference(model, split, excl)
    assert len(torch.unique(ref_s[:, :50])) < 30, "the test needs many ties"
    got = rank_targets(model, split, batch=128, exclude_history=excl, item_chunk=chunk)
    assert got.dtype == torch.long
    assert torch.equal(got, ref_ranks)
    seq, lens = torch.from_numpy(split.seq), torch.from_numpy(split.len)
    for k in (1, 20):
        ids, s = top_k(model, seq, lens, k, chunk, excl)
        assert torch.equal(s, ref_s[:, :k]) and torch.equal(ids, ref_i[:, :k]), k


def test_top_k_rows_with_fewer_than_k_rankable_items(monkeypatch):
    """History covers all but 2 of 12 items: the best k are the 2 rankable items, then -inf items in id order."""
    monkeypatch.setattr(protocol, "ITEM_BLOCK", 5)
    n = 12
    model = IntScorer(n, seed=3)
    seq = torch.tensor([[j for j in range(n) if j not in (4, 9)]])
    ids, s = top_k(model, seq, torch.tensor([n - 2]), 4, item_chunk=5, exclude_history=True)
    ref_i = _reference(model, Split(seq.numpy(), np.array([n - 2]), np.array([4]), np.arange(1)), True)[1][1]
    assert sorted(ids[0, :2].tolist()) == [4, 9] and torch.isinf(s[0, 2:]).all()
    assert torch.equal(ids, ref_i[:, :4]) and ids[0, 2:].tolist() == [0, 1]


def test_top_k_of_no_rows_or_k_0_is_empty():
    model = IntScorer(30)
    seq, lens = torch.full((0, 4), 30), torch.zeros(0, dtype=torch.long)
    for chunk in (None, 7):
        ids, s = top_k(model, seq, lens, 5, chunk)
        assert ids.shape == (0, 5) and s.shape == (0, 5)
        ids, s = top_k(model, torch.tensor([[1, 30]]), torch.tensor([1]), 0, chunk)
        assert ids.shape == (1, 0)
