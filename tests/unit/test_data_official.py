"""Official DLLM2Rec/DROS layout: import (LastFM, Games val/test), pickle opt-in, export and round trip."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dllm2rec.data.official import export_official, import_official
from dllm2rec.data.schema import SeqDataset, make_split
from dllm2rec.errors import DataError

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
LASTFM = SHARED / "lastfm-llara"
GAME = SHARED / "dllm2rec-game"
need_lastfm = pytest.mark.skipif(not (LASTFM / "train_data.df").is_file(), reason="../shared/data/lastfm-llara missing")
need_game = pytest.mark.skipif(not (GAME / "val_data.csv").is_file(), reason="../shared/data/dllm2rec-game missing")


def tiny_dataset() -> SeqDataset:
    pad = 5
    tr = make_split([[], [0], [0, 1], [2, 3, 4, 1]], [0, 1, 2, 0], pad, 3)  # [] = empty history, last one cut to L
    va = make_split([[1, 2]], [3], pad, 3)
    te = make_split([[3]], [4], pad, 3)
    return SeqDataset("tiny", 5, 3, ["a", "b::x", "c", "d", "e"], {"train": tr, "valid": va, "test": te}).validate()


def test_round_trip_tiny(tmp_path):
    ds = tiny_dataset()
    out = export_official(ds, tmp_path / "off")
    assert sorted(p.name for p in out.iterdir()) == ["data_statis.df", "id2name.txt", "test_data.csv",
                                                     "train_data.df", "val_data.csv"]
    train = pd.read_pickle(out / "train_data.df")
    assert train["seq"].iloc[0] == [5, 5, 5] and train["len_seq"].iloc[0] == 1  # empty history as the official files
    assert pd.read_pickle(out / "data_statis.df").to_dict("list") == {"seq_size": [3], "item_num": [5]}
    back = import_official(out, "tiny", allow_pickle=True)
    assert back.n_items == 5 and back.max_len == 3 and back.titles == ds.titles
    for s in ("train", "valid", "test"):
        for f in ("seq", "len", "target", "row_id"):
            assert np.array_equal(getattr(back[s], f), getattr(ds[s], f)), (s, f)
    assert back.meta["empty_history_rows"] == {"train": 1, "valid": 0, "test": 0}


def test_pickles_need_explicit_permission(tmp_path):
    out = export_official(tiny_dataset(), tmp_path / "off")
    with pytest.raises(DataError, match=r"train_data\.df: is a pandas pickle.*--allow-pickle"):
        import_official(out)
    # val/test are CSV: importing only those works without pickles (n_items from id2name.txt)
    ds = import_official(out, splits=("valid", "test"))
    assert ds.n_items == 5 and sorted(ds.splits) == ["test", "valid"]


@need_lastfm
def test_lastfm_import_and_round_trip(tmp_path):
    ds = import_official(LASTFM, "lastfm", allow_pickle=True)
    assert ds.n_items == 4606 and ds.pad == 4606 and ds.max_len == 10
    assert {k: len(v) for k, v in ds.splits.items()} == {"train": 50_800, "valid": 3_133, "test": 2_861}
    assert ds.titles[0] == "Morcheeba" and ds.titles[4605] == "Abney Park"
    assert ds.meta["empty_history_rows"] == {"train": 976, "valid": 122, "test": 122}
    assert ds["train"].row_id.tolist() == list(range(50_800))
    out = export_official(ds, tmp_path / "lastfm-off")
    orig, new = pd.read_pickle(LASTFM / "train_data.df"), pd.read_pickle(out / "train_data.df")
    assert orig["seq"].tolist() == new["seq"].tolist()
    assert orig["len_seq"].tolist() == new["len_seq"].tolist() and orig["next"].tolist() == new["next"].tolist()
    assert (out / "id2name.txt").read_text(encoding="utf-8") == (LASTFM / "id2name.txt").read_text(encoding="utf-8")
    back = import_official(out, "lastfm", allow_pickle=True)
    assert all(back[s].content_hash() == ds[s].content_hash() for s in ds.splits)


@need_game
def test_games_val_test_only():
    with pytest.raises(DataError, match=r"train_data\.df: missing file for split 'train'"):
        import_official(GAME)
    ds = import_official(GAME, "game", splits=("valid", "test"))  # no pickle: n_items from id2name.txt
    assert ds.n_items == 17_408 and len(ds["valid"]) == len(ds["test"]) == 14_980
    assert ds.titles[0] == " Xbox 360 Guitar Hero 5 Guitar Bundle"  # leading space kept (BIGRec grounds on it)
    assert int((ds["test"].len == 10).sum()) == 7_202
    with_statis = import_official(GAME, "game", splits=("valid", "test"), allow_pickle=True)
    assert with_statis.fingerprint() == ds.fingerprint()


def test_id2name_formats(tmp_path):
    from dllm2rec.data.official import read_id2name

    p = tmp_path / "id2name.txt"
    p.write_text(" Halo 3 - Xbox 360\t0\n007::Legends\t1\n\n", encoding="utf-8")  # tab format; '::' inside a title
    assert read_id2name(p) == {0: " Halo 3 - Xbox 360", 1: "007::Legends"}
    p.write_text("0::Morcheeba\n1::Café Del Mar\n", encoding="utf-8")
    assert read_id2name(p) == {0: "Morcheeba", 1: "Café Del Mar"}
    p.write_text("0::a\n0::b\n", encoding="utf-8")
    with pytest.raises(DataError, match="line 2 repeats item id 0"):
        read_id2name(p)
