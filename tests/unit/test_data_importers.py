"""Raw-log importers (MovieLens, RecBole, Amazon, P5) on tiny fixtures, and the real ML-100K / Toys counts."""
from __future__ import annotations

import gzip
import json
import time
from pathlib import Path

import numpy as np
import pytest

from dllm2rec.data.importers import read_amazon, read_movielens
from dllm2rec.data.recipes import bigrec_dataset
from dllm2rec.data.registry import import_dataset
from dllm2rec.data.schema import SeqDataset

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "tiny-movielens"
SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"


def test_movielens_fixture_windows():
    log = read_movielens(FIX)
    # raw ids 9,10,20,30,40,50 → 0..5 in numeric order; titles decoded as latin-1
    assert log.titles == ["Nine (1999)", "Ten (1990)", "Twenty été (1995)", "Thirty (1996)", "Forty (1997)", "Fifty (1998)"]
    ds = bigrec_dataset(log, "tiny", max_len=3)
    assert {k: len(v) for k, v in ds.splits.items()} == {"train": 5, "valid": 1, "test": 1}
    tr = ds["train"]
    assert tr.histories() == [[1, 2, 0], [2, 0, 3], [0, 3, 4], [2, 0], [4]]
    assert tr.target.tolist() == [3, 4, 5, 1, 5]
    assert tr.time.tolist() == [103, 104, 105, 112, 121]
    assert ds["valid"].histories() == [[0, 1, 2]] and ds["valid"].target.tolist() == [3]
    assert ds["test"].histories() == [[1, 2, 3]] and ds["test"].time.tolist() == [134]
    assert ds.meta["interactions"] == 16 and ds.meta["users"] == 4


def test_movielens_save_load_roundtrip(tmp_path):
    ds = import_dataset("movielens", FIX, name="tiny", max_len=3)
    ds.save(tmp_path / "p")
    back = SeqDataset.load(tmp_path / "p")
    assert back.fingerprint() == ds.fingerprint() and back.titles == ds.titles


def _write_recbole(d: Path) -> Path:
    d.mkdir()
    rows = [line.split("\t") for line in (FIX / "u.data").read_text().splitlines()]
    inter = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n" + "".join(
        f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in rows)
    (d / "tiny.inter").write_text(inter)
    titles = [line.split("|")[:2] for line in (FIX / "u.item").read_text(encoding="latin-1").splitlines()]
    (d / "tiny.item").write_text("item_id:token\tmovie_title:token_seq\trelease_year:token\n"
                                 + "".join(f"{i}\t{t.rsplit(' (', 1)[0]}\t1990\n" for i, t in titles))
    return d


def test_recbole_matches_movielens(tmp_path):
    ml = import_dataset("movielens", FIX, name="tiny", max_len=3)
    rb = import_dataset("recbole", _write_recbole(tmp_path / "rb"), name="tiny", max_len=3)
    for s in ("train", "valid", "test"):
        assert rb[s].content_hash() == ml[s].content_hash()
    assert rb.titles[2] == "Twenty été"  # RecBole titles carry no "(year)"


def _gz_lines(path: Path, objs: list[dict]) -> Path:
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for o in objs:
            f.write(json.dumps(o) + "\n")
    return path


def write_amazon(d: Path) -> Path:
    d.mkdir(exist_ok=True)
    meta = [{"asin": "B01", "title": "Game One"}, {"asin": "A02", "title": "Game Two"},
            {"asin": "C03", "title": "Game Three"}, {"asin": "D04", "title": "x"},  # title length ≤ 1: dropped
            {"asin": "E05"}]  # no title: dropped
    _gz_lines(d / "meta_Video_Games.json.gz", meta)
    reviews = []
    seqs = {"U1": ["B01", "A02", "C03", "D04", "B01"], "U2": ["C03", "A02", "E05", "B01"], "U3": ["A02", "C03"],
            "U4": ["B01", "C03", "A02"], **{f"U{k}": ["A02", "B01", "C03"] for k in range(5, 10)}}
    t = 1000
    for u, items in seqs.items():
        for a in items:
            t += 10
            reviews.append({"reviewerID": u, "asin": a, "overall": 5.0, "unixReviewTime": t})
    reviews.append({"reviewerID": "U3", "asin": "B01", "unixReviewTime": 5})  # no overall: dropped
    reviews.append({"reviewerID": "U3", "asin": "B01", "overall": 1.0})  # no time: dropped
    _gz_lines(d / "Video_Games_5.json.gz", reviews[::-1])
    return d


def test_amazon_fixture(tmp_path):
    log = read_amazon(write_amazon(tmp_path / "amz"))
    assert log.titles == ["Game Two", "Game One", "Game Three"]  # ASINs sorted: A02, B01, C03
    assert log.meta["reviews_dropped"] == {"no_overall_or_time": 2, "no_title": 2}
    assert len(log) == 27 and log.meta["source_format"] == "amazon"


def test_amazon_bigrec_split(tmp_path):
    ds = import_dataset("amazon", write_amazon(tmp_path / "amz"), max_len=2)
    # L=2: U1 [1,0,2,1] → 2 windows, U2/U4 (n=3) → 1 each, U3 (n=2) → 1, U5..U9 (n=3) → 1 each: 10 → 8/1/1
    assert {k: len(v) for k, v in ds.splits.items()} == {"train": 8, "valid": 1, "test": 1}
    tr = ds["train"]
    u1 = tr.user == tr.user[np.argmin(tr.time)]  # U1 reviews first
    assert tr.subset(np.flatnonzero(u1)).histories() == [[1, 0], [0, 2]]
    assert tr.target[u1].tolist() == [2, 1]
    assert tr.time.max() <= ds["valid"].time.min() <= ds["test"].time.min()


def test_p5_fixture(tmp_path):
    d = tmp_path / "p5"
    d.mkdir()
    (d / "sequential.txt").write_text("1 1 2 3 4\n2 3 2 1\n3 4 5\n")
    (d / "datamaps.json").write_text(json.dumps({"id2item": {str(i): f"ASIN{i}" for i in range(1, 6)}}))
    ds = import_dataset("p5", d, max_len=10)
    assert ds.titles == [f"ASIN{i}" for i in range(1, 6)]
    assert ds["test"].histories() == [[0, 1, 2], [2, 1]] and ds["test"].target.tolist() == [3, 0]
    assert ds["valid"].target.tolist() == [2, 1]
    # user 1 (n=4) gives one train window; user 2 (n=3) none; user 3 (n=2) is too short and dropped
    assert ds["train"].histories() == [[0]] and ds["train"].target.tolist() == [1]
    assert ds.meta["users_dropped_lt3"] == 1


@pytest.mark.skipif(not (SHARED / "movielens-100k" / "u.data").is_file(), reason="../shared/data/movielens-100k missing")
def test_real_ml100k_gives_90570_windows():
    t0 = time.perf_counter()
    ds = import_dataset("movielens", SHARED / "movielens-100k", name="ml-100k")
    sizes = {k: len(v) for k, v in ds.splits.items()}
    print(f"ML-100K split sizes {sizes} in {time.perf_counter() - t0:.2f}s")
    assert sum(sizes.values()) == 100_000 - 943 * 10 == 90_570
    assert sizes == {"train": 72_456, "valid": 9_057, "test": 9_057}
    assert ds.n_items == 1682 and ds.titles[0] == "Toy Story (1995)"
    assert (ds["train"].len == 10).all()  # every ML-100K user has ≥ 20 ratings
    assert ds["train"].time.max() <= ds["valid"].time.min() and ds["valid"].time.max() <= ds["test"].time.min()


@pytest.mark.skipif(not (SHARED / "amazon-toys-p5" / "sequential.txt").is_file(), reason="../shared/data/amazon-toys-p5 missing")
def test_real_toys_leave_one_out():
    ds = import_dataset("p5", SHARED / "amazon-toys-p5", name="toys")
    assert ds.n_items == 11_924 and ds.meta["users"] == 19_412 and ds.meta["interactions"] == 167_597
    assert len(ds["valid"]) == len(ds["test"]) == 19_412
    assert len(ds["train"]) == 167_597 - 3 * 19_412
    assert np.char.startswith(np.array(ds.titles[:3]), "B").all() or all(len(t) == 10 for t in ds.titles[:3])


def test_auto_detects_formats(tmp_path):
    assert import_dataset("auto", FIX, max_len=3).meta["source_format"] == "movielens"
    assert import_dataset("auto", _write_recbole(tmp_path / "rb"), max_len=3).meta["source_format"] == "recbole"
    assert import_dataset("auto", write_amazon(tmp_path / "amz"), max_len=2).meta["source_format"] == "amazon"


def test_movielens_dat_layout_matches_u_data(tmp_path):
    """ML-1M/10M layout (ratings.dat / movies.dat with '::') gives the same windows as the ML-100K layout."""
    d = tmp_path / "ml10m"
    d.mkdir()
    rows = [line.split("\t") for line in (FIX / "u.data").read_text().splitlines()]
    (d / "ratings.dat").write_text("".join("::".join(r) + "\n" for r in rows))
    items = [line.split("|")[:2] for line in (FIX / "u.item").read_text(encoding="latin-1").splitlines()]
    (d / "movies.dat").write_text("".join(f"{i}::{t}::Drama\n" for i, t in items), encoding="utf-8")
    a, b = import_dataset("movielens", d, max_len=3), import_dataset("movielens", FIX, max_len=3)
    assert a.titles == b.titles and all(a[s].content_hash() == b[s].content_hash() for s in a.splits)
