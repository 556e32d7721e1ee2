"""BIGRec split recipe and leave-one-out recipe on hand-made logs (exact windows, counts, temporal order)."""
from __future__ import annotations

import numpy as np
import pytest

from dllm2rec.data.recipes import InteractionLog, bigrec_dataset, bigrec_windows, dense_ids, leave_one_out_dataset
from dllm2rec.errors import DataError

P = 6  # PAD for a 6-item catalogue


def _log(rows: list[tuple[int, int, int]], n_items: int = 6) -> InteractionLog:
    """rows: (user, item, time) in file order."""
    u, i, t = (np.asarray(c, dtype=np.int64) for c in zip(*rows))
    return InteractionLog(u, i, t, [f"t{k}" for k in range(n_items)], "hand-made")


# user 0: 6 items; user 1: 3 items with a time tie (file order must win); user 2: 2 items; user 3: 1 item
ROWS = [
    (0, 0, 10), (1, 5, 30), (0, 1, 11), (0, 2, 12), (2, 4, 40), (1, 3, 31), (1, 2, 31),
    (0, 3, 13), (0, 4, 14), (2, 1, 41), (0, 5, 15), (3, 2, 50),
]


def test_bigrec_windows_exact():
    w = bigrec_windows(_log(ROWS), max_len=3)
    hist = [row[:n].tolist() for row, n in zip(w["seq"], w["len"])]
    # user 0 (n=6 > L): n-L = 3 full windows; user 1 (n=3 ≤ L): one window of n-1; user 2: one of 1; user 3: empty
    assert hist == [[0, 1, 2], [1, 2, 3], [2, 3, 4], [5, 3], [4], []]
    assert w["target"].tolist() == [3, 4, 5, 2, 1, 2]
    assert w["time"].tolist() == [13, 14, 15, 31, 41, 50]
    assert w["user"].tolist() == [0, 0, 0, 1, 2, 3]
    assert (w["seq"][3] == [5, 3, P]).all()  # right-padded with PAD = n_items


def test_bigrec_window_count_formula():
    rng = np.random.default_rng(0)
    rows, expected = [], 0
    for u in range(40):
        n = int(rng.integers(1, 25))
        expected += 1 if n <= 10 else n - 10
        rows += [(u, int(rng.integers(0, 6)), int(rng.integers(0, 1000))) for _ in range(n)]
    ds = bigrec_dataset(_log(rows), "rand", max_len=10)
    total = sum(len(s) for s in ds.splits.values())
    assert total == expected
    assert len(ds["train"]) == int(0.8 * total) and len(ds["valid"]) == int(0.9 * total) - int(0.8 * total)


def test_bigrec_dataset_split_and_temporal_order():
    rows = ROWS + [(4, k % 6, 60 + k) for k in range(7)]  # user 4 (n=7): 4 more windows → 10
    ds = bigrec_dataset(_log(rows), "hand", max_len=3)
    sizes = {k: len(v) for k, v in ds.splits.items()}
    assert sizes == {"train": 8, "valid": 1, "test": 1}  # int(0.8*10), int(0.9*10)
    # temporal global split: every later split's target time is ≥ every earlier split's target time
    assert ds["train"].time.max() <= ds["valid"].time.min() <= ds["valid"].time.max() <= ds["test"].time.min()
    for s in ds.splits.values():
        assert (np.diff(s.time) >= 0).all()
        assert s.row_id.tolist() == list(range(len(s)))
        assert s.user is not None and s.seq.shape[1] == 3
    assert ds.meta["users"] == 5 and ds.meta["interactions"] == len(rows) and ds.meta["windows"] == 10
    assert ds.pad == 6


def test_bigrec_too_small_is_an_empty_split_error():
    with pytest.raises(DataError, match="split .train. would be empty"):
        bigrec_dataset(_log([(0, 0, 1), (0, 1, 2), (0, 2, 3)]), "tiny", max_len=3)


def test_bigrec_needs_timestamps():
    log = _log(ROWS)
    log.times = None
    with pytest.raises(DataError, match="needs timestamps"):
        bigrec_dataset(log, "x")


def test_item_out_of_range_is_reported():
    with pytest.raises(DataError, match="item id 9 is outside 0..5"):
        bigrec_windows(_log([(0, 0, 1), (0, 9, 2)]), 3)


def test_leave_one_out():
    log = _log([(0, i, i) for i in range(5)] + [(1, 5, 0), (1, 4, 1), (1, 3, 2)] + [(2, 1, 0), (2, 2, 1)])
    log.times = None  # file order is the time order
    ds = leave_one_out_dataset(log, "loo", max_len=2)
    assert ds["test"].histories() == [[2, 3], [5, 4]] and ds["test"].target.tolist() == [4, 3]
    assert ds["valid"].histories() == [[1, 2], [5]] and ds["valid"].target.tolist() == [3, 4]
    assert ds["train"].histories() == [[0], [0, 1]] and ds["train"].target.tolist() == [1, 2]
    assert ds.meta["users_dropped_lt3"] == 1


def test_dense_ids_numeric_then_string():
    dense, vocab = dense_ids(np.array(["10", "9", "100", "9"]))
    assert vocab == ["9", "10", "100"] and dense.tolist() == [1, 0, 2, 0]
    dense, vocab = dense_ids(np.array(["B02", "A1", "B02"]))
    assert vocab == ["A1", "B02"] and dense.tolist() == [1, 0, 1]
