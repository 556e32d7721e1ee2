"""Split recipes that turn an interaction log into the canonical :class:`SeqDataset`.

* :func:`bigrec_dataset` — BIGRec's ``process.ipynb`` recipe (spec §3.2): per-user time sort (stable: ties keep
  the file order), one next-item window per position ``i in range(min(L, n-1), n)`` with history
  ``items[max(i-L, 0):i]``, then a global stable sort of all windows by target timestamp (ties: user id, then
  position) and an 80/10/10 cut at ``int(0.8R)`` and ``int(0.9R)``. row_id = position within the split.
* :func:`leave_one_out_dataset` — for logs without timestamps (Amazon Toys P5): per user the last item is the
  test target, the second last the valid target, and every earlier position (i ≥ 1) a training window.
* :func:`file_split_dataset` / :func:`window_dataset` — the source's own split: an atomic log whose events carry the
  split of the file they came from (RecBole ``NAME.train/.valid/.test.inter``), or ready-made (history, target)
  windows (RecBole's sequential benchmark files).

:func:`apply_recipe` picks one by name (:data:`RECIPES`, the names ``data import --recipe`` takes) and refuses a
recipe that cannot apply. ``meta["recipe"]`` records the one used.

Both are vectorised with numpy so ML-10M-sized logs (10M events) stay fast.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from dllm2rec.data.schema import SPLITS, SeqDataset, Split
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
    split_of: np.ndarray | None = None  # int8 per event: index into SPLITS of the file it came from (or None)

    @property
    def n_items(self) -> int:
        return len(self.titles)

    def __len__(self) -> int:
        return int(self.items.shape[0])


@dataclass
class WindowTable:
    """Ready-made (history, target) rows per split, as RecBole's sequential benchmark files hold them.

    ``hist`` is CSR: the history of row r is ``items[offsets[r]:offsets[r+1]]`` (oldest first); items, targets
    and users are already dense ids (users may be None)."""

    splits: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]]  # items, offsets, target, user
    titles: list[str]
    source: str = "<memory>"
    meta: dict = field(default_factory=dict)

    @property
    def n_items(self) -> int:
        return len(self.titles)


RECIPES = ("auto", "temporal-global", "leave-one-out", "file")


def dense_ids(raw: np.ndarray) -> tuple[np.ndarray, list]:
    """Map raw ids to 0..N-1 by sorting the distinct raw ids (numerically when all are integers, else as strings).

    Deterministic whatever the file order (BIGRec iterates a Python ``set``, which is not). Returns (dense, vocab)
    where ``vocab[dense_id]`` is the raw id. Digit strings beyond int64 (RecBole tokens may be any string) are
    ordered exactly with Python integers. String arrays are first factorised (hashing) so only the distinct ids
    are sorted.
    """
    raw = np.asarray(raw)
    if raw.dtype.kind in "iu":
        vocab, inv = np.unique(raw, return_inverse=True)
        return inv.astype(np.int64), vocab.tolist()
    import pandas as pd

    codes, uniq = pd.factorize(raw.astype(str).ravel(), sort=False)
    strs = np.asarray(uniq, dtype=str)
    if len(strs) and all(s.isdigit() for s in strs):
        nums = [int(s) for s in strs]
        if max(nums) < 2 ** 63:
            vocab, inv = np.unique(np.asarray(nums, dtype=np.int64), return_inverse=True)
            return inv.astype(np.int64)[codes], [str(v) for v in vocab.tolist()]
        ordered = sorted(set(nums))
        rank = {v: i for i, v in enumerate(ordered)}
        inv = np.asarray([rank[v] for v in nums], dtype=np.int64)
        return inv[codes], [str(v) for v in ordered]
    vocab, inv = np.unique(strs, return_inverse=True)
    return inv.astype(np.int64)[codes], vocab.tolist()


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
        why = log.meta.get("no_timestamps", "this log has none")
        raise DataError(f"{log.source}: recipe 'temporal-global' (BIGRec) needs timestamps, but {why}; "
                        f"use --recipe leave-one-out")
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
    meta = {**log.meta, "recipe": "temporal-global", "split_ratios": list(ratios),
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
            need = 4 if split == "train" else 3
            raise DataError(f"{log.source}: split '{split}' would be empty (leave-one-out: no user has ≥ {need} "
                            f"interactions)")
        begins = np.maximum(ends - max_len, gstart[ends])
        seq, lens = _windows(items, ends, begins, log.n_items, max_len)
        splits[split] = Split(seq, lens, items[ends], np.arange(len(ends)), users[ends], None)
    meta = {**log.meta, "recipe": "leave-one-out", "users": int(len(np.unique(log.users))),
            "interactions": int(len(log)), "users_dropped_lt3": int(len(np.unique(users[~ok])))}
    return SeqDataset(name, log.n_items, max_len, list(log.titles), splits, meta).validate(log.source)


def file_split_dataset(log: InteractionLog, name: str, max_len: int = 10) -> SeqDataset:
    """The source's own split of an interaction log: each event is a target in the split of its file.

    Per user, events are in time order (file order without timestamps; the files are read train, valid, test).
    A train event needs a non-empty history (its position ≥ 1, as leave-one-out); valid and test events are all
    kept (an empty history is a cold-start row). History = the user's previous ≤ L events, from any file.
    """
    if log.split_of is None:
        raise DataError(f"{log.source}: recipe 'file' needs a source with its own split (RecBole "
                        f"NAME.train/.valid/.test.inter, or the official layout); this log has none")
    _check_log(log, max_len)
    order, gstart, _ = _user_order(log)
    items, users, lab = log.items[order], log.users[order], log.split_of[order]
    times = None if log.times is None else log.times[order]
    pos = np.arange(len(order)) - gstart
    splits: dict[str, Split] = {}
    for k, split in enumerate(SPLITS):
        ends = np.flatnonzero((lab == k) & ((pos >= 1) if split == "train" else True))
        if len(ends) == 0:
            raise DataError(f"{log.source}: split '{split}' would be empty (no {split} event"
                            f"{' with an earlier event of its user' if split == 'train' else ''})")
        begins = np.maximum(ends - max_len, gstart[ends])
        seq, lens = _windows(items, ends, begins, log.n_items, max_len)
        splits[split] = Split(seq, lens, items[ends], np.arange(len(ends)), users[ends],
                              None if times is None else times[ends])
    meta = {**log.meta, "recipe": "file", "users": int(len(np.unique(log.users))), "interactions": int(len(log))}
    return SeqDataset(name, log.n_items, max_len, list(log.titles), splits, meta).validate(log.source)


def window_dataset(table: WindowTable, name: str, max_len: int = 10) -> SeqDataset:
    """Ready-made windows (RecBole sequential files) as they are; histories keep their last ``max_len`` items."""
    if max_len < 1:
        raise DataError(f"{table.source}: max_len must be ≥ 1, got {max_len}")
    splits: dict[str, Split] = {}
    users_all = []
    truncated = 0
    for split in SPLITS:
        if split not in table.splits:
            raise DataError(f"{table.source}: recipe 'file' needs a {split} file")
        items, offsets, target, user = table.splits[split]
        n = len(target)
        if n == 0:
            raise DataError(f"{table.source}: split '{split}' is empty (0 rows)")
        full = np.diff(offsets)
        lens = np.minimum(full, max_len)
        truncated += int((full > max_len).sum())
        begins = offsets[1:] - lens  # keep the most recent L items
        seq, lens = _windows(items, offsets[1:], begins, table.n_items, max_len) if len(items) else (
            np.full((n, max_len), table.n_items, dtype=np.int64), np.zeros(n, dtype=np.int64))
        splits[split] = Split(seq, lens, target, np.arange(n), user, None)
        if user is not None:
            users_all.append(np.unique(user))
    meta = {**table.meta, "recipe": "file", "histories_truncated": truncated}
    if users_all:
        meta["users"] = int(len(np.unique(np.concatenate(users_all))))
    return SeqDataset(name, table.n_items, max_len, list(table.titles), splits, meta).validate(table.source)


def duplicate_mask(log: InteractionLog) -> np.ndarray:
    """True for every event repeating an earlier event's (user, item, timestamp); all False without timestamps."""
    if log.times is None or len(log) == 0:
        return np.zeros(len(log), dtype=bool)
    import pandas as pd

    return pd.DataFrame({"u": log.users, "i": log.items, "t": log.times}).duplicated(keep="first").to_numpy()


def drop_events(log: InteractionLog, drop: np.ndarray) -> InteractionLog:
    keep = ~drop
    return InteractionLog(log.users[keep], log.items[keep], None if log.times is None else log.times[keep],
                          log.titles, log.source, dict(log.meta),
                          None if log.split_of is None else log.split_of[keep])


def default_recipe(log: InteractionLog | WindowTable) -> str:
    """``auto``: the source's own split when it has one, BIGRec's temporal split with timestamps, else leave-one-out."""
    if isinstance(log, WindowTable) or log.split_of is not None:
        return "file"
    return "leave-one-out" if log.times is None else "temporal-global"


def apply_recipe(log: InteractionLog | WindowTable, recipe: str, name: str, max_len: int = 10) -> SeqDataset:
    """Build the dataset with ``recipe`` (one of :data:`RECIPES`); a recipe that cannot apply is a DataError."""
    if recipe not in RECIPES:
        raise DataError(f"{log.source}: unknown recipe '{recipe}' (choose from {', '.join(RECIPES)})")
    chosen = default_recipe(log) if recipe == "auto" else recipe
    if isinstance(log, WindowTable):
        if chosen != "file":
            raise DataError(f"{log.source}: recipe '{chosen}' needs an interaction log, but these are ready-made "
                            f"(history, target) rows (RecBole sequential format); use --recipe file")
        return window_dataset(log, name, max_len)
    if chosen == "temporal-global":
        return bigrec_dataset(log, name, max_len)
    if chosen == "leave-one-out":
        return leave_one_out_dataset(log, name, max_len)
    return file_split_dataset(log, name, max_len)
