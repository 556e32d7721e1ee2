"""Synthetic sequential data with learnable structure, for tests and the informative-teacher check.

Each user walks a noisy Markov chain over items: the next item is ``(prev + step) mod N`` with a per-user step in
{1, 2, 3} (probability ``p_follow``), otherwise a uniformly random item. Windows follow the BIGRec recipe
(last ``max_len`` items, global sort by a synthetic target time, 80/10/10 split).
"""
from __future__ import annotations

import numpy as np

from dllm2rec.data.schema import SeqDataset, make_split


def make_synthetic(n_items: int = 200, n_users: int = 300, seq_len: int = 20, max_len: int = 10,
                   p_follow: float = 0.7, seed: int = 0, name: str = "synthetic") -> SeqDataset:
    rng = np.random.default_rng(seed)
    hists, tgts, users, times = [], [], [], []
    for u in range(n_users):
        step = int(rng.integers(1, 4))
        cur = int(rng.integers(0, n_items))
        items = [cur]
        for _ in range(seq_len - 1):
            cur = (cur + step) % n_items if rng.random() < p_follow else int(rng.integers(0, n_items))
            items.append(cur)
        t0 = int(rng.integers(0, 1000))
        for i in range(min(max_len, len(items) - 1), len(items)):
            hists.append(items[max(i - max_len, 0):i])
            tgts.append(items[i])
            users.append(u)
            times.append(t0 + i * 10 + int(rng.integers(0, 10)))
    order = np.argsort(np.asarray(times), kind="stable")
    R = len(order)
    cuts = [0, int(0.8 * R), int(0.9 * R), R]
    splits = {}
    for name_s, a, b in zip(("train", "valid", "test"), cuts[:-1], cuts[1:]):
        idx = order[a:b]
        splits[name_s] = make_split([hists[i] for i in idx], [tgts[i] for i in idx], n_items, max_len,
                                    row_ids=np.arange(b - a), users=[users[i] for i in idx],
                                    times=[times[i] for i in idx])
    titles = [f"Item {i}" for i in range(n_items)]
    return SeqDataset(name, n_items, max_len, titles, splits, {"domain": "generic", "synthetic": True})
