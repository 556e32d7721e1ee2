"""Formats users bring (RecBole sequential / timestamp-free atomic), --recipe, split warnings, placeholder titles,
importer robustness (huge ids, inf/nan times, duplicates, mixed encodings) and the popularity baseline.

Every expected value is worked out by hand in the comments on tiny files written to tmp_path.
"""
from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from dllm2rec.data.importers import read_movielens
from dllm2rec.data.official import export_official, import_official
from dllm2rec.data.quality import is_placeholder_title, placeholder_title_ids, split_warnings
from dllm2rec.data.recipes import InteractionLog, apply_recipe, dense_ids
from dllm2rec.data.registry import import_dataset
from dllm2rec.data.schema import SeqDataset, make_split
from dllm2rec.errors import DataError
from dllm2rec.evaluation.baselines import evaluate_baseline, popularity_scorer
from dllm2rec.evaluation.metrics import target_ranks
from dllm2rec.evaluation.protocol import rank_targets

SEQ_HEAD = "user_id:token\titem_id_list:token_seq\titem_id:token\n"


def one_line(fn, *parts: str) -> str:
    with pytest.raises(DataError) as ei:
        fn()
    msg = str(ei.value)
    assert "\n" not in msg, msg
    for p in parts:
        assert p in msg, f"{p!r} not in {msg!r}"
    return msg


def write_seq_triple(d: Path, name: str = "toy") -> Path:
    """Sequential benchmark triple; items i10..i60 → dense 0..5 (string order); i60 occurs in test only."""
    d.mkdir(parents=True, exist_ok=True)
    (d / f"{name}.train.inter").write_text(SEQ_HEAD + "u1\ti10\ti20\nu1\ti10 i20\ti30\nu2\ti20\ti30\nu2\ti20 i30\ti40\n")
    (d / f"{name}.valid.inter").write_text(SEQ_HEAD + "u1\ti10 i20 i30\ti40\nu2\ti20 i30 i40\ti10\n")
    (d / f"{name}.test.inter").write_text(SEQ_HEAD + "u1\ti10 i20 i30 i40\ti50\nu2\ti20 i30 i40 i10\ti60\n")
    # i30's "title" is an ASIN, i50 has no line, i60 an empty title: 3 placeholders (dense ids 2, 4, 5)
    (d / f"{name}.item").write_text("item_id:token\ttitle:token_seq\ni10\tTen\ni20\tTwenty\ni30\tB00ABCDEFG\n"
                                    "i40\tForty\ni60\t\n")
    return d


# ----------------------------------------------------------------------------- RecBole sequential
def test_recbole_sequential_triple_keeps_the_file_split(tmp_path):
    d = write_seq_triple(tmp_path / "rb")
    (d / "toy.inter").write_text("user_id:token\titem_id:token\nu1\ti10\n")  # a stray atomic file: the triple wins
    ds = import_dataset("recbole", d, max_len=3)
    assert ds.meta["recipe"] == "file" and ds.meta["source_format"] == "recbole-sequential"
    assert ds.n_items == 6 and ds.titles[:2] == ["Ten", "Twenty"] and ds.titles[4] == "item i50"
    assert ds["train"].histories() == [[0], [0, 1], [1], [1, 2]] and ds["train"].target.tolist() == [1, 2, 2, 3]
    assert ds["valid"].histories() == [[0, 1, 2], [1, 2, 3]] and ds["valid"].target.tolist() == [3, 0]
    # 4-item test histories truncated to the last L = 3
    assert ds["test"].histories() == [[1, 2, 3], [2, 3, 0]] and ds["test"].target.tolist() == [4, 5]
    assert ds.meta["histories_truncated"] == 2 and ds.meta["users"] == 2
    assert ds["train"].user.tolist() == [0, 0, 1, 1] and ds["test"].row_id.tolist() == [0, 1]
    assert ds.meta["placeholder_titles"] == 3 and ds.meta["placeholder_title_ids"] == [2, 4, 5]
    # naming one file of the triple reads the whole triple
    assert import_dataset("recbole", d / "toy.valid.inter", max_len=3).fingerprint() == ds.fingerprint()
    assert import_dataset("auto", d, max_len=3).fingerprint() == ds.fingerprint()


def test_recbole_sequential_refusals(tmp_path):
    d = write_seq_triple(tmp_path / "rb")
    one_line(lambda: import_dataset("recbole", d, recipe="leave-one-out"), "rb", "ready-made", "--recipe file")
    one_line(lambda: import_dataset("recbole", d, drop_duplicates=True), "rb", "--drop-duplicates")
    (d / "toy.valid.inter").unlink()
    one_line(lambda: import_dataset("recbole", d), "toy.valid.inter", "missing file")
    lone = tmp_path / "lone"
    lone.mkdir()
    (lone / "x.inter").write_text(SEQ_HEAD + "u1\ti1\ti2\n")
    one_line(lambda: import_dataset("recbole", lone), "x.inter", "sequential file", "without its split siblings")
    two = tmp_path / "two"
    write_seq_triple(two, "a")
    write_seq_triple(two, "b")
    one_line(lambda: import_dataset("recbole", two), "two", "several RecBole benchmark sets (a, b)")
    (lone / "y.inter").write_text("user_id:token\titem_id:token\nu1\ti1\n")  # two plain files: ambiguous
    one_line(lambda: import_dataset("recbole", lone), "lone", "several .inter files (x.inter, y.inter)")


def test_recbole_sequential_bad_rows(tmp_path):
    d = write_seq_triple(tmp_path / "rb")
    (d / "toy.test.inter").write_text(SEQ_HEAD + "u1\ti10 i20\ti50\nu2\ti20\n")
    one_line(lambda: import_dataset("recbole", d), "toy.test.inter", "line 3 has 2 fields, expected 3")
    (d / "toy.test.inter").write_text(SEQ_HEAD)
    one_line(lambda: import_dataset("recbole", d), "split 'test' is empty")


# ----------------------------------------------------------------------------- RecBole atomic
def test_atomic_without_timestamp_is_leave_one_out_in_file_order(tmp_path):
    d = tmp_path / "rb"
    d.mkdir()
    # items 2,3,4,5 → 0..3; user 1 in file order: 5,3,4,2 → [3,1,2,0]; user 2: 3,5,4 → [1,3,2]
    (d / "x.inter").write_text("user_id:token\titem_id:token\n1\t5\n1\t3\n1\t4\n2\t3\n2\t5\n2\t4\n1\t2\n")
    ds = import_dataset("recbole", d)
    assert ds.meta["recipe"] == "leave-one-out"
    assert ds["test"].histories() == [[3, 1, 2], [1, 3]] and ds["test"].target.tolist() == [0, 2]
    assert ds["valid"].histories() == [[3, 1], [1]] and ds["valid"].target.tolist() == [2, 3]
    assert ds["train"].histories() == [[3]] and ds["train"].target.tolist() == [1]
    assert ds.meta["placeholder_titles"] == 4  # no .item file: every title is "item <id>"
    one_line(lambda: import_dataset("recbole", d, recipe="temporal-global"), "x.inter",
             "needs timestamps", "lacks field 'timestamp' (has user_id, item_id)")
    one_line(lambda: import_dataset("recbole", d, recipe="file"), "x.inter", "recipe 'file' needs")
    one_line(lambda: import_dataset("recbole", d, recipe="newest"), "unknown recipe 'newest'")


def test_atomic_triple_file_recipe(tmp_path):
    d = tmp_path / "rb"
    d.mkdir()
    h = "user_id:token\titem_id:token\n"
    (d / "a.train.inter").write_text(h + "1\t10\n1\t20\n2\t10\n2\t30\n")
    (d / "a.valid.inter").write_text(h + "1\t30\n2\t20\n")
    (d / "a.test.inter").write_text(h + "1\t40\n2\t40\n")
    ds = import_dataset("recbole", d)
    # user 1: 10,20 | 30 | 40 → [0,1 | 2 | 3]; user 2: 10,30 | 20 | 40 → [0,2 | 1 | 3]
    assert ds.meta["recipe"] == "file" and ds.meta["interactions"] == 8
    assert ds["train"].histories() == [[0], [0]] and ds["train"].target.tolist() == [1, 2]
    assert ds["valid"].histories() == [[0, 1], [0, 2]] and ds["valid"].target.tolist() == [2, 1]
    assert ds["test"].histories() == [[0, 1, 2], [0, 2, 1]] and ds["test"].target.tolist() == [3, 3]
    assert import_dataset("recbole", d, recipe="leave-one-out")["test"].target.tolist() == [3, 3]


# ----------------------------------------------------------------------------- recipes and split warnings
def positions_log(n_short: int = 46, n_long: int = 4) -> InteractionLog:
    """Leave-one-out-shaped log with positions used as timestamps: 46 users of 5 items, 4 users of 40."""
    users, items, times = [], [], []
    for u in range(n_short + n_long):
        n = 5 if u < n_short else 40
        users += [u] * n
        items += [p % 6 for p in range(n)]
        times += list(range(n))
    return InteractionLog(np.array(users), np.array(items), np.array(times), [f"t{k}" for k in range(6)], "pos")


def test_positions_as_timestamps_temporal_global_warns():
    ds = apply_recipe(positions_log(), "temporal-global", "pos")
    # L = 10: short users give 1 window (time 4), long users 30 (times 10..39): 46 + 120 = 166 windows;
    # cuts int(132.8) = 132 and int(149.4) = 149 → valid rows 132..148 and test rows 149..165: all long users
    assert {k: len(v) for k, v in ds.splits.items()} == {"train": 132, "valid": 17, "test": 17}
    assert ds.meta["recipe"] == "temporal-global"
    w = split_warnings(ds)
    assert w == ["valid rows come from 4 of 50 users (8.0% < 10%): the split evaluates a few users only "
                 "(recipe temporal-global; try --recipe leave-one-out)",
                 "test rows come from 4 of 50 users (8.0% < 10%): the split evaluates a few users only "
                 "(recipe temporal-global; try --recipe leave-one-out)"]
    assert split_warnings(apply_recipe(positions_log(), "leave-one-out", "pos")) == []
    # 5 long users of 50 are exactly 10 %: no warning (the threshold is strict)
    assert split_warnings(apply_recipe(positions_log(45, 5), "temporal-global", "pos")) == []


def test_split_warnings_missing_split_and_unseen_targets():
    pad = 5
    tr = make_split([[3], [3]], [1, 0], pad, 2, users=[0, 1])  # train holds items 0, 1 (targets) and 3 (history)
    te = make_split([[0], [1], [2]], [2, 3, 4], pad, 2, users=[0, 1, 2])  # 2 and 4 never in train: 2 of 3
    ds = SeqDataset("w", 5, 2, list("abcde"), {"train": tr, "test": te}, {"recipe": "file"})
    assert split_warnings(ds) == ["split 'valid' is missing",
                                  "67% of test targets never occur in train (> 50%): a model cannot learn them"]
    te2 = make_split([[0], [1], [2]], [1, 0, 4], pad, 2, users=[0, 1, 2])  # 1 of 3 unseen: fine
    ds2 = SeqDataset("w", 5, 2, list("abcde"), {"train": tr, "valid": te2, "test": te2}, {})
    assert split_warnings(ds2) == []


def test_import_records_recipe_and_warnings(tmp_path):
    d = tmp_path / "rb"
    d.mkdir()
    log = positions_log()
    (d / "p.inter").write_text("user_id:token\titem_id:token\ttimestamp:float\n" + "".join(
        f"{u}\t{i}\t{t}\n" for u, i, t in zip(log.users, log.items, log.times)))
    ds = import_dataset("recbole", d)  # timestamps present: auto = temporal-global, as before --recipe
    assert ds.meta["recipe"] == "temporal-global" and len(ds.meta["split_warnings"]) == 2
    loo = import_dataset("recbole", d, recipe="leave-one-out")
    assert loo.meta["recipe"] == "leave-one-out" and loo.meta["split_warnings"] == []


# ----------------------------------------------------------------------------- titles
def test_is_placeholder_title():
    for t in ("", "  ", "unknown", "B00ABCDEFG", "0316769487", "031676948X", "item 7"):
        assert is_placeholder_title(t, 7), t
    for t in ("Toy Story (1995)", "BANANAGRAM", "B00 Lego", "Item 7 of 9"):
        assert not is_placeholder_title(t, 7), t
    assert is_placeholder_title("A17", "A17") and not is_placeholder_title("A17", "B2")


def write_p5(d: Path, meta: list[dict] | None) -> Path:
    d.mkdir()
    (d / "sequential.txt").write_text("1 1 2 3 1\n2 2 3 1 2\n")
    (d / "datamaps.json").write_text(json.dumps({"id2item": {"1": "B000000001", "2": "B000000002", "3": "0316769487"}}))
    if meta is not None:
        with gzip.open(d / "meta_Toys.json.gz", "wt") as f:
            f.writelines(json.dumps(o) + "\n" for o in meta)
    return d


def test_p5_titles_are_asins_unless_joined_with_amazon_meta(tmp_path):
    ds = import_dataset("p5", write_p5(tmp_path / "a", None))
    assert ds.titles == ["B000000001", "B000000002", "0316769487"]
    assert ds.meta["placeholder_titles"] == 3 and placeholder_title_ids(ds) == [0, 1, 2]
    meta = [{"asin": "B000000001", "title": "Lego Set"}, {"asin": "0316769487", "title": "x"}]  # "x": too short
    ds = import_dataset("p5", write_p5(tmp_path / "b", meta))
    assert ds.titles == ["Lego Set", "B000000002", "0316769487"]
    assert ds.meta["placeholder_title_ids"] == [1, 2] and ds.meta["titles_from"] == "meta_Toys.json.gz"


def test_placeholder_ids_official_and_old_datasets(tmp_path):
    pad = 4
    ds = SeqDataset("t", 4, 2, ["Alpha", "B00ABCDEFG", "Gamma", "unknown"],
                    {s: make_split([[0], [1]], [2, 3], pad, 2) for s in ("train", "valid", "test")})
    assert placeholder_title_ids(ds) == [1, 3]  # no meta key (prepared before it existed): recomputed
    out = export_official(ds, tmp_path / "off")
    (out / "id2name.txt").write_text("0::Alpha\n2::Gamma\n")  # items 1 and 3 lose their lines → "item 1", "item 3"
    back = import_dataset("official", out, allow_pickle=True)
    assert back.titles[1] == "item 1" and back.meta["placeholder_title_ids"] == [1, 3]
    assert back.meta["recipe"] == "file"
    one_line(lambda: import_dataset("official", out, allow_pickle=True, recipe="leave-one-out"),
             "off", "cannot apply to the official layout")


def test_u_item_decoded_per_line(tmp_path):
    d = tmp_path / "ml"
    d.mkdir()
    (d / "u.data").write_text("1\t1\t5\t10\n1\t2\t5\t11\n1\t3\t5\t12\n")
    (d / "u.item").write_bytes("1|Amélie (2001)|x\n".encode() + b"2|Caf\xe9 (1999)|x\n"
                               + "3|Zoë (2000)|x\n".encode())
    log = read_movielens(d)  # one latin-1 line must not turn the UTF-8 titles into mojibake
    assert log.titles == ["Amélie (2001)", "Café (1999)", "Zoë (2000)"] and log.meta["title_lines_latin1"] == 1


# ----------------------------------------------------------------------------- robustness
@pytest.mark.parametrize("line,parts", [
    ("1\t100000000000000000000\t5\t11", ("line 2 field 'item' = 100000000000000000000 does not fit in 64 bits",)),
    ("1\t2\t5\tinf", ("line 2 has a non-integer field 'timestamp'", "'inf'")),
    ("1\t2\t5\tnan", ("line 2 has a non-integer field 'timestamp'",)),
    ("-99999999999999999999\t2\t5\t11", ("line 2 field 'user'",)),
])
def test_movielens_huge_ids_and_bad_times(tmp_path, line, parts):
    d = tmp_path / "ml"
    d.mkdir()
    (d / "u.data").write_text("1\t1\t5\t10\n" + line + "\n")
    (d / "u.item").write_text("1|A|\n2|B|\n")
    one_line(lambda: import_dataset("movielens", d), "u.data", *parts)


@pytest.mark.parametrize("ts", ["inf", "nan", "-inf", "1e30"])
def test_atomic_bad_timestamps(tmp_path, ts):
    d = tmp_path / "rb"
    d.mkdir()
    (d / "x.inter").write_text(f"user_id:token\titem_id:token\ttimestamp:float\n1\t2\t3\n1\t3\t{ts}\n")
    one_line(lambda: import_dataset("recbole", d), "x.inter", f"line 3 field 'timestamp' = {ts} is not a finite")


def test_atomic_huge_token_ids_are_ordered_exactly(tmp_path):
    big, bigger = "99999999999999999999", "100000000000000000000"  # both beyond int64
    dense, vocab = dense_ids(np.array([bigger, "5", big, "5"]))
    assert vocab == ["5", big, bigger] and dense.tolist() == [2, 0, 1, 0]
    d = tmp_path / "rb"
    d.mkdir()
    (d / "x.inter").write_text(f"user_id:token\titem_id:token\n1\t{bigger}\n1\t5\n1\t{big}\n1\t5\n")
    ds = import_dataset("recbole", d)
    assert ds["test"].histories() == [[2, 0, 1]] and ds["test"].target.tolist() == [0]


def test_p5_huge_id(tmp_path):
    d = tmp_path / "p5"
    d.mkdir()
    (d / "sequential.txt").write_text("1 1 2 3\n2 1 100000000000000000000 3\n")
    one_line(lambda: import_dataset("p5", d), "sequential.txt",
             "line 2 field 'item (field 3)' = 100000000000000000000 does not fit in 64 bits")


@pytest.mark.parametrize("csv,part", [
    ("seq,len_seq,next\n\"[1, 5, 5]\",1,100000000000000000000\n", "row 0 field 'next' = "),
    ("seq,len_seq,next\n\"[1, 100000000000000000000, 5]\",2,3\n", "row 0 field 'seq' holds 100000000000000000000"),
])
def test_official_huge_id_is_not_reported_wrapped(tmp_path, csv, part):
    pad = 5
    ds = SeqDataset("t", 5, 3, list("abcde"), {s: make_split([[0], [0, 1]], [1, 2], pad, 3)
                                                for s in ("train", "valid", "test")})
    d = export_official(ds, tmp_path / "off")
    (d / "val_data.csv").write_text(csv)
    msg = one_line(lambda: import_official(d, allow_pickle=True), "val_data.csv", part, "does not fit in 64 bits")
    assert "-9223372036854775808" not in msg


def test_duplicates_counted_and_dropped(tmp_path):
    d = tmp_path / "rb"
    d.mkdir()
    # user 1: a@10, a@10 (duplicate), a@11 (same item, other time: kept), b@12, c@13 → items a,b,c = 0,1,2
    (d / "x.inter").write_text("user_id:token\titem_id:token\ttimestamp:float\n"
                               "1\ta\t10\n1\ta\t10\n1\ta\t11\n1\tb\t12\n1\tc\t13\n")
    kept = import_dataset("recbole", d, recipe="leave-one-out")
    assert kept.meta["duplicate_interactions"] == 1 and "duplicates_dropped" not in kept.meta
    assert kept["test"].histories() == [[0, 0, 0, 1]]
    dropped = import_dataset("recbole", d, recipe="leave-one-out", drop_duplicates=True)
    assert dropped.meta["duplicates_dropped"] == 1 and dropped.meta["interactions"] == 4
    assert dropped["test"].histories() == [[0, 0, 1]] and dropped["test"].target.tolist() == [2]


# ----------------------------------------------------------------------------- popularity baseline
def pop_dataset() -> SeqDataset:
    pad = 5
    tr = make_split([[1], [2], [3], [0], [0], [4]], [0, 0, 0, 1, 1, 2], pad, 2)  # counts [3, 2, 1, 0, 0]
    te = make_split([[0], [1, 0], [2], []], [1, 2, 3, 0], pad, 2)
    return SeqDataset("pop", 5, 2, list("abcde"), {"train": tr, "valid": te, "test": te})


def test_popularity_ranks_by_hand():
    ds = pop_dataset()
    model = popularity_scorer(ds)
    # ties pessimistic: target 1 (count 2) ← item 0; target 2 (1) ← 0, 1; target 3 (0) ← 0, 1, 2, 4; target 0: top
    assert rank_targets(model, ds["test"]).tolist() == [1, 2, 4, 0]
    assert rank_targets(model, ds["test"], item_chunk=2).tolist() == [1, 2, 4, 0]
    # history excluded: row 0 masks item 0 → 0; row 1 masks 1 and 0 → 0; row 2 masks 2 → 0, 1, 4 above → 3
    assert rank_targets(model, ds["test"], exclude_history=True, item_chunk=2, batch=3).tolist() == [0, 0, 3, 0]
    m = evaluate_baseline("popularity", ds, "test", ks=(1, 2))
    assert m["full/HR@1"] == 0.25 and m["full/HR@2"] == 0.5
    assert math.isclose(m["full/NDCG@2"], (1 + 1 / math.log2(3)) / 4)
    ex = evaluate_baseline("popularity", ds, "test", ks=(1,), exclude_history=True, item_chunk=2)
    assert (ex["full-excl/HR@1"], ex["full-excl/NDCG@1"]) == (0.75, 0.75)


def test_dense_history_exclusion_masks_item_0_in_padded_rows():
    ds = pop_dataset()
    assert rank_targets(popularity_scorer(ds), ds["test"], exclude_history=True).tolist() == [0, 0, 3, 0]


def test_popularity_matches_dense_ranking_on_random_data():
    rng = np.random.default_rng(0)
    n, pad = 50, 50
    tr = make_split([[int(x)] for x in rng.integers(0, n, 400)], rng.zipf(1.5, 400) % n, pad, 3)
    te = make_split([list(rng.integers(0, n, 3)) for _ in range(300)], rng.integers(0, n, 300), pad, 3)
    ds = SeqDataset("r", n, 3, [f"t{i}" for i in range(n)], {"train": tr, "valid": te, "test": te})
    counts = torch.as_tensor(ds.item_counts("train"), dtype=torch.float64)
    dense = target_ranks(counts.expand(len(te), -1), torch.from_numpy(te.target))
    got = rank_targets(popularity_scorer(ds), te, batch=64, item_chunk=7)
    assert torch.equal(got, dense)
    with pytest.raises(Exception, match="unknown baseline 'random'"):
        evaluate_baseline("random", ds)
