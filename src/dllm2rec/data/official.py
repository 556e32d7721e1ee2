"""The official DLLM2Rec / DROS directory layout: import into, and export from, the canonical dataset.

Layout: ``train_data.df`` (pandas pickle), ``val_data.csv`` or ``Val_data.df``, ``test_data.csv`` or
``Test_data.df``, optional ``data_statis.df`` (``seq_size``, ``item_num``) and ``id2name.txt`` (``id::name``
as LastFM, or ``title<TAB>id`` as BIGRec Games). Each table has ``seq`` (L ints right-padded with item_num),
``len_seq`` and ``next`` (sometimes written as a float).

Pickles can run arbitrary code when loaded, so ``.df`` files are read only when the caller passes
``allow_pickle=True`` (CLI ``--allow-pickle``). Our own files are pickle-free; the exporter writes pickles only
because the official script reads them.

Quirk kept faithfully: the official files encode an *empty* history as ``len_seq = 1`` with an all-PAD ``seq``
(LastFM: the first window of every user). The canonical ``len`` counts real items, so such rows get ``len = 0``
(``meta['empty_history_rows']``) and the exporter writes them back as ``len_seq = 1``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from dllm2rec.data.schema import SeqDataset, Split
from dllm2rec.errors import DataError
from dllm2rec.utils import untrusted
from dllm2rec.utils.io import atomic_dir

# canonical split -> file names accepted for it, in order of preference
SPLIT_FILES = {
    "train": ("train_data.df", "train_data.csv", "Train_data.df"),
    "valid": ("val_data.csv", "Val_data.df", "val_data.df"),
    "test": ("test_data.csv", "Test_data.df", "test_data.df"),
}
COLUMNS = ("seq", "len_seq", "next")


def _read_pickle(path: Path, allow_pickle: bool):
    return untrusted.read_pickle(path, allow=allow_pickle)  # the one gate: refuses unless the user passed the flag


def _read_table(path: Path, allow_pickle: bool):
    import pandas as pd

    if path.suffix == ".df":
        df = _read_pickle(path, allow_pickle)
        if not isinstance(df, pd.DataFrame):
            raise DataError(f"{path}: pickle holds a {type(df).__name__}, expected a pandas DataFrame")
        return df
    try:
        return pd.read_csv(path)
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as e:
        raise DataError(f"{path}: malformed CSV ({str(e).splitlines()[0]})") from None


def _parse_seq(v, path: Path, row: int) -> list:
    if isinstance(v, str):
        try:
            v = json.loads(v)
        except json.JSONDecodeError:
            raise DataError(f"{path}: row {row} field 'seq' is not a list of ints: {v[:40]!r}") from None
    if isinstance(v, np.ndarray):
        v = v.tolist()
    if not isinstance(v, (list, tuple)):
        raise DataError(f"{path}: row {row} field 'seq' is a {type(v).__name__}, expected a list of ints")
    return list(v)


def _int_column(df, col: str, path: Path) -> np.ndarray:
    import pandas as pd

    vals = pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(vals) | (vals != np.round(vals))
    if bad.any():
        r = int(np.argmax(bad))
        raise DataError(f"{path}: row {r} field '{col}' is not an integer: {str(df[col].iloc[r])!r}")
    huge = np.abs(vals) >= 2.0 ** 63  # astype would wrap these to -9223372036854775808
    if huge.any():
        r = int(np.argmax(huge))
        raise DataError(f"{path}: row {r} field '{col}' = {str(df[col].iloc[r])[:30]} does not fit in 64 bits")
    return vals.astype(np.int64)


def read_split_table(path: Path, allow_pickle: bool, n_items: int | None, max_len: int | None) -> tuple[Split, int]:
    """One official table → (Split, number of empty-history rows). ``n_items`` None: checked later by the caller."""
    df = _read_table(path, allow_pickle)
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(repr(c) for c in missing)} "
                        f"(has {', '.join(map(str, df.columns))})")
    if len(df) == 0:
        raise DataError(f"{path}: split is empty (0 rows)")
    seqs = [_parse_seq(v, path, r) for r, v in enumerate(df["seq"].tolist())]
    widths = {len(s) for s in seqs}
    if len(widths) != 1:
        r = next(i for i, s in enumerate(seqs) if len(s) != len(seqs[0]))
        raise DataError(f"{path}: row {r} field 'seq' has {len(seqs[r])} entries, row 0 has {len(seqs[0])}")
    width = widths.pop()
    if max_len is not None and width > max_len:
        raise DataError(f"{path}: field 'seq' holds histories of length {width} > L = {max_len}")
    try:
        seq = np.asarray(seqs, dtype=np.float64)
    except (TypeError, ValueError):
        raise DataError(f"{path}: field 'seq' holds non-numeric entries") from None
    if (seq != np.round(seq)).any():
        raise DataError(f"{path}: field 'seq' holds non-integer entries")
    huge = ~np.isfinite(seq) | (np.abs(seq) >= 2.0 ** 63)  # astype would wrap these to -9223372036854775808
    if huge.any():
        r, c = (int(x) for x in np.argwhere(huge)[0])
        raise DataError(f"{path}: row {r} field 'seq' holds {str(seqs[r][c])[:30]}, which does not fit in 64 bits")
    seq = seq.astype(np.int64)
    len_seq = _int_column(df, "len_seq", path)
    target = _int_column(df, "next", path)
    if n_items is not None:
        pad = n_items
        for name, arr in (("next", target), ("seq", seq)):
            ok = ((arr >= 0) & (arr < n_items)) | ((arr == pad) if name == "seq" else False)
            if not ok.all():
                r = int(np.argwhere(~ok)[0][0])
                bad = int(np.asarray(arr)[~ok].ravel()[0])
                raise DataError(f"{path}: row {r} field '{name}' holds item id {bad} outside 0..{n_items - 1}"
                                + (f" (PAD={pad})" if name == "seq" else ""))
        real = seq != pad
        lens = real.sum(axis=1)
        # right-padded: every real item comes before the first PAD
        if (np.cumprod(real, axis=1).sum(axis=1) != lens).any():
            r = int(np.argmax(np.cumprod(real, axis=1).sum(axis=1) != lens))
            raise DataError(f"{path}: row {r} field 'seq' is not right-padded with PAD={pad}")
        incons = (len_seq != lens) & ~((lens == 0) & (len_seq == 1))
        if incons.any():
            r = int(np.argmax(incons))
            raise DataError(f"{path}: row {r} field 'len_seq' = {int(len_seq[r])} but 'seq' holds {int(lens[r])} items")
        if (len_seq > width).any():
            r = int(np.argmax(len_seq > width))
            raise DataError(f"{path}: row {r} field 'len_seq' = {int(len_seq[r])} is longer than L = {width}")
        empty = int((lens == 0).sum())
    else:
        lens, empty = len_seq, 0
    # row_id = position in the file (the teacher files index training rows in this order)
    return Split(seq, lens, target, np.arange(len(df))), empty


def _read_statis(path: Path, allow_pickle: bool) -> tuple[int, int] | None:
    if not path.is_file():
        return None
    if not allow_pickle:
        return None  # optional: n_items can come from id2name.txt or the max id instead
    df = _read_pickle(path, allow_pickle)
    try:
        return int(df["seq_size"].iloc[0]), int(df["item_num"].iloc[0])
    except (KeyError, IndexError, TypeError, ValueError, AttributeError):
        raise DataError(f"{path}: expected a DataFrame with columns 'seq_size' and 'item_num'") from None


def read_id2name(path: Path) -> dict[int, str]:
    """``id::name`` (LastFM) or ``title<TAB>id`` (BIGRec Games); titles are kept verbatim (BIGRec grounds on them)."""
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not valid UTF-8 text (byte {e.start})") from None
    out: dict[int, str] = {}
    lines = [ln.rstrip("\r") for ln in text.split("\n")]
    first = next((ln for ln in lines if ln.strip()), "")
    # one format per file, chosen from the first line: a Games title may itself contain "::" after digits
    tab_format = first.rpartition("\t")[2].strip().isdigit() and "\t" in first
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if tab_format:
            title, sep, tail = line.rpartition("\t")
            if not sep or not tail.strip().isdigit():
                raise DataError(f"{path}: line {lineno} is not 'title<TAB>id' like line 1: {line[:60]!r}")
            iid, name = int(tail), title
        else:
            head, sep, rest = line.partition("::")
            if not sep or not head.strip().isdigit():
                raise DataError(f"{path}: line {lineno} is neither 'id::name' nor 'title<TAB>id': {line[:60]!r}")
            iid, name = int(head), rest
        if iid in out:
            raise DataError(f"{path}: line {lineno} repeats item id {iid}")
        out[iid] = name
    return out


def _find(src: Path, names: Sequence[str]) -> Path | None:
    return next((src / n for n in names if (src / n).is_file()), None)


def import_official(source: str | Path, name: str | None = None, allow_pickle: bool = False,
                    splits: Sequence[str] = ("train", "valid", "test"), max_len: int | None = None) -> SeqDataset:
    """Read an official-layout directory. ``splits`` may omit ``train`` (e.g. the public Games val/test only)."""
    src = Path(source)
    if not src.is_dir():
        raise DataError(f"{src}: missing directory (expected the official DLLM2Rec layout)")
    for s in splits:
        if s not in SPLIT_FILES:
            raise DataError(f"{src}: unknown split '{s}' (choose from train, valid, test)")
    statis = _read_statis(src / "data_statis.df", allow_pickle)
    id2name_path = src / "id2name.txt"
    id2name = read_id2name(id2name_path) if id2name_path.is_file() else {}
    n_items: int | None = statis[1] if statis else (max(id2name) + 1 if id2name else None)
    L = max_len if max_len is not None else (statis[0] if statis else None)
    tables: dict[str, Split] = {}
    empty = {}
    for s in splits:
        path = _find(src, SPLIT_FILES[s])
        if path is None:
            raise DataError(f"{src / SPLIT_FILES[s][0]}: missing file for split '{s}' (also tried "
                            f"{', '.join(SPLIT_FILES[s][1:])})")
        tables[s], empty[s] = read_split_table(path, allow_pickle, n_items, L)
    if n_items is None:
        # neither data_statis.df nor id2name.txt: the padding id is the largest id seen (official convention)
        n_items = max(int(t.seq.max()) for t in tables.values())
        if max(int(t.target.max()) for t in tables.values()) >= n_items:
            raise DataError(f"{src}: cannot infer item_num (no data_statis.df/id2name.txt and targets ≥ max seq id)")
        for s in splits:
            tables[s], empty[s] = read_split_table(_find(src, SPLIT_FILES[s]), allow_pickle, n_items, L)  # type: ignore[arg-type]
    if id2name and max(id2name) >= n_items:
        raise DataError(f"{id2name_path}: item id {max(id2name)} outside 0..{n_items - 1} (item_num from data_statis.df)")
    width = max(t.max_len for t in tables.values())
    L = L or width
    for s, t in tables.items():  # every split as wide as L, so consumers can rely on seq.shape[1] == max_len
        tables[s] = Split(_pad_to(t.seq, L, n_items), t.len, t.target, t.row_id)
    titles = [id2name.get(i, f"item {i}") for i in range(n_items)]
    meta = {"source_format": "official", "source": str(src),
            "files": {s: _find(src, SPLIT_FILES[s]).name for s in splits},  # type: ignore[union-attr]
            "empty_history_rows": empty, "items_without_title": sum(1 for i in range(n_items) if i not in id2name)}
    ds = SeqDataset(name or src.name, n_items, L, titles, tables, meta)
    return ds.validate(str(src))


def export_official(ds: SeqDataset, out: str | Path) -> Path:
    """Write ``ds`` in the official layout (train pickle, val/test CSV, data_statis.df, id2name.txt), atomically."""
    import pandas as pd

    out = Path(out)
    ds.validate(ds.name)
    names = {"train": "train_data.df", "valid": "val_data.csv", "test": "test_data.csv"}
    with atomic_dir(out) as tmp:
        for split, fname in names.items():
            if split not in ds.splits:
                continue
            s = ds.splits[split]
            # the official code gathers position len_seq-1, so empty histories are written as len_seq = 1
            df = pd.DataFrame({"seq": [list(map(int, r)) for r in _pad_to(s.seq, ds.max_len, ds.pad)],
                               "len_seq": np.maximum(s.len, 1), "next": s.target})
            if fname.endswith(".df"):
                df.to_pickle(tmp / fname)
            else:
                df.to_csv(tmp / fname, index=False)
        pd.DataFrame({"seq_size": [ds.max_len], "item_num": [ds.n_items]}).to_pickle(tmp / "data_statis.df")
        # id::name, one per line; newlines inside titles would break the format
        lines = [f"{i}::{t.replace(chr(10), ' ').replace(chr(13), ' ')}" for i, t in enumerate(ds.titles)]
        (tmp / "id2name.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out


def _pad_to(seq: np.ndarray, width: int, pad: int) -> np.ndarray:
    if seq.shape[1] >= width:
        return seq
    return np.concatenate([seq, np.full((seq.shape[0], width - seq.shape[1]), pad, dtype=seq.dtype)], axis=1)
