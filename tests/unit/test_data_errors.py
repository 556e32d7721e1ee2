"""Every bad input ends in one DataError line that names the file and the problem; nothing half-written stays."""
from __future__ import annotations

import gzip
import pickle
import shutil
from pathlib import Path
from typing import Callable

import pandas as pd
import pytest

from dllm2rec.data.official import export_official, import_official
from dllm2rec.data.registry import import_dataset, load_or_prepare, prepare
from dllm2rec.data.schema import SeqDataset, make_split
from dllm2rec.errors import DataError

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "tiny-movielens"


def one_line_error(fn: Callable[[], object], names: str, problem: str) -> str:
    with pytest.raises(DataError) as ei:
        fn()
    msg = str(ei.value)
    assert "\n" not in msg, msg
    assert names in msg, f"{names!r} not in {msg!r}"
    assert problem in msg, f"{problem!r} not in {msg!r}"
    return msg


def ml_copy(tmp_path: Path) -> Path:
    d = tmp_path / "ml"
    shutil.copytree(FIX, d)
    return d


# ----------------------------------------------------------------------------- MovieLens / RecBole
def test_missing_u_data(tmp_path):
    d = ml_copy(tmp_path)
    (d / "u.data").unlink()
    one_line_error(lambda: import_dataset("movielens", d), "u.data", "missing file")


def test_missing_u_item(tmp_path):
    d = ml_copy(tmp_path)
    (d / "u.item").unlink()
    one_line_error(lambda: import_dataset("movielens", d), "u.item", "missing file")


def test_missing_source_dir(tmp_path):
    one_line_error(lambda: import_dataset("movielens", tmp_path / "nope"), "nope", "missing")


@pytest.mark.parametrize("line,problem", [("1\t2\t3", "line 3 has 3 fields, expected 4"),
                                          ("1\tx\t3\t4", "line 3 has a non-integer field")])
def test_malformed_u_data(tmp_path, line, problem):
    d = ml_copy(tmp_path)
    lines = (d / "u.data").read_text().splitlines()
    lines[2] = line
    (d / "u.data").write_text("\n".join(lines) + "\n")
    one_line_error(lambda: import_dataset("movielens", d), "u.data", problem)


def test_binary_garbage_u_item(tmp_path):
    d = ml_copy(tmp_path)
    (d / "u.item").write_bytes(b"\x00\xff\xfe garbage \x00")
    one_line_error(lambda: import_dataset("movielens", d), "u.item", "NUL bytes")


def test_u_item_without_titles_for_used_items(tmp_path):
    d = ml_copy(tmp_path)
    (d / "u.item").write_text("9|Nine|x\n", encoding="latin-1")
    one_line_error(lambda: import_dataset("movielens", d), "u.item", "have no title line")


def test_recbole_not_utf8_and_bad_header(tmp_path):
    d = tmp_path / "rb"
    d.mkdir()
    (d / "x.inter").write_bytes(b"user_id:token\titem_id:token\ttimestamp:float\n1\t\xff\xfe\t3\n")
    one_line_error(lambda: import_dataset("recbole", d), "x.inter", "not valid utf-8")
    (d / "x.inter").write_text("user_id:token\titem_id:token\trating:float\n1\t2\t3\n")
    # without timestamps the default recipe is leave-one-out; BIGRec's temporal recipe is refused
    one_line_error(lambda: import_dataset("recbole", d, recipe="temporal-global"), "x.inter", "lacks field 'timestamp'")
    (d / "x.inter").write_text("user_id:token\titem_id:token\ttimestamp:float\n1\t2\tnoon\n")
    one_line_error(lambda: import_dataset("recbole", d), "x.inter", "line 2 field 'timestamp'")


def test_too_few_windows_is_an_empty_split(tmp_path):
    d = tmp_path / "ml"
    d.mkdir()
    (d / "u.data").write_text("1\t1\t5\t10\n1\t2\t5\t11\n")
    (d / "u.item").write_text("1|A|\n2|B|\n")
    one_line_error(lambda: import_dataset("movielens", d), "ml", "would be empty")


# ----------------------------------------------------------------------------- Amazon
def test_amazon_bad_files(tmp_path):
    d = tmp_path / "amz"
    d.mkdir()
    one_line_error(lambda: import_dataset("amazon", d), "_5.json.gz", "missing file")
    with gzip.open(d / "meta_X.json.gz", "wt") as f:
        f.write('{"asin": "A", "title": "Alpha"}\n')
    (d / "X_5.json.gz").write_bytes(b"not gzip at all")
    one_line_error(lambda: import_dataset("amazon", d), "X_5.json.gz", "unreadable")
    with gzip.open(d / "X_5.json.gz", "wt") as f:
        f.write('{"reviewerID": "u", "asin": "A", "overall": 5, "unixReviewTime": 1}\n{broken\n')
    one_line_error(lambda: import_dataset("amazon", d), "X_5.json.gz", "line 2 is neither JSON")
    with gzip.open(d / "X_5.json.gz", "wt") as f:
        f.write('{"asin": "A", "overall": 5, "unixReviewTime": 1}\n')
    one_line_error(lambda: import_dataset("amazon", d), "X_5.json.gz", "lacks field 'reviewerID'")


# ----------------------------------------------------------------------------- official layout
def official_dir(tmp_path: Path) -> Path:
    pad = 5
    tr = make_split([[0], [0, 1], [1, 2]], [1, 2, 3], pad, 3)
    va = make_split([[1, 2]], [3], pad, 3)
    te = make_split([[3]], [4], pad, 3)
    ds = SeqDataset("t", 5, 3, list("abcde"), {"train": tr, "valid": va, "test": te})
    return export_official(ds, tmp_path / "off")


def set_val(d: Path, text: str) -> None:
    (d / "val_data.csv").write_text(text)


@pytest.mark.parametrize("csv,problem", [
    ("seq,len_seq\n\"[1, 5, 5]\",1\n", "missing column(s) 'next'"),
    ("seq,len_seq,next\n\"[1, 5, 5]\",1,3\n\"[1, 5, 5]\",1,3,9,9\n", "malformed CSV"),
    ("seq,len_seq,next\n\"[1, 5, oops]\",1,3\n", "row 0 field 'seq' is not a list"),
    ("seq,len_seq,next\n\"[1, 5, 5]\",1,three\n", "row 0 field 'next' is not an integer"),
    ("seq,len_seq,next\n\"[1, 5, 5]\",1,3.5\n", "row 0 field 'next' is not an integer"),
    ("seq,len_seq,next\n\"[1, 5, 5]\",1,99\n", "field 'next' holds item id 99 outside 0..4"),
    ("seq,len_seq,next\n\"[1, 7, 5]\",2,3\n", "field 'seq' holds item id 7 outside 0..4"),
    ("seq,len_seq,next\n\"[1, -1, 5]\",2,3\n", "field 'seq' holds item id -1"),
    ("seq,len_seq,next\n", "split is empty"),
    ("seq,len_seq,next\n\"[1, 2, 3, 4]\",4,3\n", "histories of length 4 > L = 3"),
    ("seq,len_seq,next\n\"[1, 2]\",2,3\n\"[1, 2, 5]\",2,3\n", "row 1 field 'seq' has 3 entries"),
    ("seq,len_seq,next\n\"[5, 1, 5]\",1,3\n", "not right-padded"),
    ("seq,len_seq,next\n\"[1, 2, 5]\",3,3\n", "field 'len_seq' = 3 but 'seq' holds 2 items"),
])
def test_bad_official_csv(tmp_path, csv, problem):
    d = official_dir(tmp_path)
    set_val(d, csv)
    one_line_error(lambda: import_official(d, allow_pickle=True), "val_data.csv", problem)


def test_malformed_and_wrong_pickles(tmp_path):
    d = official_dir(tmp_path)
    (d / "train_data.df").write_bytes(b"\x80\x04garbage")
    one_line_error(lambda: import_official(d, allow_pickle=True), "train_data.df", "malformed pickle")
    (d / "train_data.df").write_bytes(pickle.dumps([1, 2, 3]))
    one_line_error(lambda: import_official(d, allow_pickle=True), "train_data.df", "expected a pandas DataFrame")
    (d / "train_data.df").unlink()
    one_line_error(lambda: import_official(d, allow_pickle=True), "train_data.df", "missing file for split 'train'")


def test_bad_data_statis_and_id2name(tmp_path):
    d = official_dir(tmp_path)
    pd.DataFrame({"x": [1]}).to_pickle(d / "data_statis.df")
    one_line_error(lambda: import_official(d, allow_pickle=True), "data_statis.df", "'seq_size' and 'item_num'")
    (d / "data_statis.df").unlink()
    (d / "id2name.txt").write_text("0::a\nthis line has no id\n")
    one_line_error(lambda: import_official(d, allow_pickle=True), "id2name.txt", "line 2 is neither")
    (d / "id2name.txt").write_bytes(b"0::\xff\xfe\n")
    one_line_error(lambda: import_official(d, allow_pickle=True), "id2name.txt", "not valid UTF-8")


def test_history_longer_than_L_requested(tmp_path):
    d = official_dir(tmp_path)
    one_line_error(lambda: import_dataset("official", d, max_len=2, allow_pickle=True), "train_data.df",
                   "histories of length 3 > L = 2")


# ----------------------------------------------------------------------------- prepared datasets / presets
def test_nothing_half_written(tmp_path):
    ds = SeqDataset("bad", 5, 3, list("abcde"), {"train": make_split([[0]], [7], 5, 3)})
    one_line_error(lambda: ds.save(tmp_path / "out"), "out", "field 'target' = 7")
    assert not (tmp_path / "out").exists() and list(tmp_path.iterdir()) == []
    d = ml_copy(tmp_path)
    (d / "u.data").write_text("1\t1\t5\n")
    one_line_error(lambda: prepare("ml-100k", source=d, out=tmp_path / "prep"), "u.data", "fields")
    assert not (tmp_path / "prep").exists()


def test_tampered_prepared_dataset(tmp_path):
    ds = import_dataset("movielens", FIX, max_len=3)
    ds.save(tmp_path / "p")
    (tmp_path / "p" / "items.json").write_text('["x", "y", "z", "w", "v", "u"]')
    one_line_error(lambda: load_or_prepare(tmp_path / "p"), "manifest.json", "does not match")
    (tmp_path / "p" / "valid.npz").unlink()
    one_line_error(lambda: load_or_prepare(tmp_path / "p"), "valid.npz", "missing")


def test_unknown_preset_and_format(tmp_path):
    one_line_error(lambda: prepare("ml-1b"), "ml-1b", "unknown dataset preset")
    one_line_error(lambda: import_dataset("csvish", FIX), "tiny-movielens", "unknown format 'csvish'")
    one_line_error(lambda: load_or_prepare(tmp_path), "manifest.json", "not a prepared dataset")
    one_line_error(lambda: load_or_prepare("no-such-thing"), "no-such-thing", "neither a prepared dataset")
