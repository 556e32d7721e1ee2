"""Split recipes that turn an interaction log into the canonical :class:`SeqDataset`.

* :func:`bigrec_dataset` — BIGRec's ``process.ipynb`` recipe (spec §3.2): per-user time sort (stable: ties keep
  the file order), one next-item window per position ``i in range(min(L, n-1), n)`` with history
  ``items[max(i-L, 0):i]``, then a global stable sort of all windows by target timestamp (ties: user id, then
  position) and an 80/10/10 cut at ``int(0.8R)`` and ``int(0.9R)``. row_id = position within the split.
* :func:`leave_one_out_dataset` — for logs without timestamps (Amazon Toys P5): per user the last item is the
  test target, the second last the valid target, and every earlier position (i ≥ 1) a training window.

Both are vectorised with numpy so ML-10M-sized logs (10M events) stay fast.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from dllm2rec.data.schema import SeqDataset, Split
from dllm2rec.errors import DataError


@dataclass
class InteractionLog:
    """One row per interaction, in the source file's order. ``items`` are already dense ids 0..n_items-1."""

    users: np.ndarray  # int64 dense user ids
    items: np.ndarray  # int64 dense item ids
    times: np.ndarray | None  # int64 timestamps (None: the order within a user is the file order)
    titles: list[str]
    source: str = "<memory>"
    meta: dict = field(default_factory=dict)

    @property
    def n_items(self) -> int:
        return len(self.titles)

    def __len__(self) -> int:
        return int(self.items.shape[0])


def dense_ids(raw: np.ndarray) -> tuple[np.ndarray, list]:
    """Map raw ids to 0..N-1 by sorting the distinct raw ids (numerically when all are integers, else as strings).

    Deterministic whatever the file order (BIGRec iterates a Python ``set``, which is not). Returns (dense, vocab)
    where ``vocab[dense_id]`` is the raw id.
    """
    raw = np.asarray(raw)
    if raw.dtype.kind in "iu":
        vocab, inv = np.unique(raw, return_inverse=True)
        return inv.astype(np.int64), vocab.tolist()
    strs = raw.astype(str)
    if all(s.isdigit() for s in np.unique(strs)):
        vocab, inv = np.unique(strs.astype(np.int64), return_inverse=True)
        return inv.astype(np.int64), [str(v) for v in vocab.tolist()]
    vocab, inv = np.unique(strs, return_inverse=True)
    return inv.astype(np.int64), vocab.tolist()


def _user_order(log: InteractionLog) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Event indices sorted by (user, time, file order); plus each sorted event's group start and group size."""
    pos = np.arange(len(log), dtype=np.int64)
    keys = (pos, log.users) if log.times is None else (pos, log.times, log.users)
    order = np.lexsort(keys)  # last key is primary: user, then time, ties by original order (stable)
    u = log.users[order]
    starts_mask = np.ones(len(u), dtype=bool)
    starts_mask[1:] = u[1:] != u[:-1]
    group_id = np.cumsum(starts_mask) - 1
    starts = np.flatnonzero(starts_mask)
    sizes = np.diff(np.append(starts, len(u)))
    return order, starts[group_id], sizes[group_id]


def _windows(items: np.ndarray, ends: np.ndarray, begins: np.ndarray, pad: int, max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-padded seq[R, L] of ``items[begins[r]:ends[r]]`` (ends - begins ≤ L) and the lengths."""
    lens = ends - begins
    idx = begins[:, None] + np.arange(max_len)[None, :]
    real = np.arange(max_len)[None, :] < lens[:, None]
    seq = np.where(real, items[np.minimum(idx, len(items) - 1)], pad)
    return seq.astype(np.int64), lens.astype(np.int64)


def _check_log(log: InteractionLog, max_len: int) -> None:
    if max_len < 1:
        raise DataError(f"{log.source}: max_len must be ≥ 1, got {max_len}")
    if len(log) == 0:
        raise DataError(f"{log.source}: no interactions left to build windows from")
    if (log.items < 0).any() or (log.items >= log.n_items).any():
        bad = int(log.items[(log.items < 0) | (log.items >= log.n_items)][0])
        raise DataError(f"{log.source}: item id {bad} is outside 0..{log.n_items - 1}")


def bigrec_windows(log: InteractionLog, max_len: int = 10) -> dict[str, np.ndarray]:
    """All BIGRec windows, users in dense-id order and positions in time order (before the global time sort)."""
    _check_log(log, max_len)
    order, gstart, gsize = _user_order(log)
    items = log.items[order]
    pos_in_user = np.arange(len(order)) - gstart
    # a window ends at every position i >= min(L, n-1), literally as BIGRec: a user with a single interaction
    # gives one window with an empty history (5-core sources have none; the official LastFM files have such rows)
    keep = pos_in_user >= np.minimum(max_len, gsize - 1)
    ends = np.flatnonzero(keep)
    begins = np.maximum(ends - max_len, gstart[ends])
    seq, lens = _windows(items, ends, begins, log.n_items, max_len)
    out = {"seq": seq, "len": lens, "target": items[ends], "user": log.users[order][ends]}
    if log.times is not None:
        out["time"] = log.times[order][ends]
    return out


def _ratio_cut(n: int, ratios: tuple[float, float, float]) -> tuple[int, int]:
    a = int(n * ratios[0])
    b = int(n * (ratios[0] + ratios[1]))
    return a, b


def bigrec_dataset(log: InteractionLog, name: str, max_len: int = 10,
                   ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)) -> SeqDataset:
    """BIGRec recipe: windows of ≤ L items, global stable sort by target time, 80/10/10 cut (see module doc)."""
    if log.times is None:
        raise DataError(f"{log.source}: the BIGRec recipe needs timestamps; use the leave-one-out recipe")
    w = bigrec_windows(log, max_len)
    order = np.argsort(w["time"], kind="stable")
    w = {k: v[order] for k, v in w.items()}
    n = len(order)
    a, b = _ratio_cut(n, ratios)
    splits: dict[str, Split] = {}
    for split, (lo, hi) in zip(("train", "valid", "test"), ((0, a), (a, b), (b, n))):
        if hi <= lo:
            raise DataError(f"{log.source}: split '{split}' would be empty ({n} windows in total); "
                            f"the log is too small for an 80/10/10 cut")
        sl = slice(lo, hi)
        # row_id: position inside the split (teacher artifacts index training rows by it)
        splits[split] = Split(w["seq"][sl], w["len"][sl], w["target"][sl], np.arange(hi - lo),
                              w["user"][sl], w["time"][sl])
    meta = {**log.meta, "recipe": "bigrec", "split_ratios": list(ratios),
            "users": int(len(np.unique(log.users))), "interactions": int(len(log)), "windows": int(n)}
    return SeqDataset(name, log.n_items, max_len, list(log.titles), splits, meta).validate(log.source)


def leave_one_out_dataset(log: InteractionLog, name: str, max_len: int = 10) -> SeqDataset:
    """Leave-one-out: last item → test, second last → valid, positions 1..n-3 → train (users need ≥ 3 items)."""
    _check_log(log, max_len)
    order, gstart, gsize = _user_order(log)
    items = log.items[order]
    users = log.users[order]
    pos = np.arange(len(order)) - gstart
    ok = gsize >= 3  # shorter users cannot give a train, a valid and a test target
    from_end = gsize - 1 - pos  # 0 = last item of the user
    splits: dict[str, Split] = {}
    for split, sel in (("train", ok & (pos >= 1) & (from_end >= 2)),
                       ("valid", ok & (from_end == 1)), ("test", ok & (from_end == 0))):
        ends = np.flatnonzero(sel)
        if len(ends) == 0:
            raise DataError(f"{log.source}: split '{split}' would be empty (no user has ≥ 3 interactions)")
        begins = np.maximum(ends - max_len, gstart[ends])
        seq, lens = _windows(items, ends, begins, log.n_items, max_len)
        splits[split] = Split(seq, lens, items[ends], np.arange(len(ends)), users[ends], None)
    meta = {**log.meta, "recipe": "leave_one_out", "users": int(len(np.unique(log.users))),
            "interactions": int(len(log)), "users_dropped_lt3": int(len(np.unique(users[~ok])))}
    return SeqDataset(name, log.n_items, max_len, list(log.titles), splits, meta).validate(log.source)
