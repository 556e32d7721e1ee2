"""Readers for raw interaction logs → :class:`InteractionLog` (then a recipe in :mod:`dllm2rec.data.recipes`).

Formats:
* ``movielens`` — GroupLens ML-100K: ``u.data`` (``user<TAB>item<TAB>rating<TAB>ts``) + ``u.item`` (``id|title|...``),
  or ML-1M/10M ``ratings.dat`` + ``movies.dat`` (``::``). Titles are decoded line by line: UTF-8 where the line is
  valid UTF-8 (some redistributed copies were re-encoded), else latin-1 (GroupLens' original encoding) for that
  line only, so one bad byte cannot garble the other titles. Every rating is an interaction (BIGRec binarises
  ratings but does not use them).
* ``recbole`` — RecBole atomic ``.inter`` files (with or without ``timestamp``) and the sequential benchmark
  triple ``NAME.train/.valid/.test.inter`` (``item_id_list:token_seq``); see :mod:`dllm2rec.data.recbole`.
* ``amazon`` — Amazon 2018 (or 2014) ``<Cat>_5.json.gz`` reviews + ``meta_<Cat>.json.gz``, processed as BIGRec:
  drop items whose title has length ≤ 1 (or no meta), drop reviews lacking ``overall``/``unixReviewTime``.
* ``p5`` — P5 ``sequential.txt`` (``user item item ...`` in time order, no timestamps) + ``datamaps.json``.
  ``id2item`` maps ids to ASINs, not titles: real titles come only from an Amazon ``meta_<Category>.json(.gz)``
  placed in the same directory (joined on the ASIN); without it every title is a placeholder.

Titles that are not titles (missing, ASIN-like, ...) are counted in ``meta["placeholder_titles"]`` and listed in
``meta["placeholder_title_ids"]`` (see :mod:`dllm2rec.data.quality`).

Item ids are dense 0..N-1 in the sorted order of the raw ids (numeric when all raw ids are integers, else
lexicographic) — deterministic, unlike BIGRec's ``set`` iteration. User ids are dense the same way.
Every problem raises :class:`DataError` with one line naming the file and the field.
"""
from __future__ import annotations

import ast
import gzip
import io
import json
import warnings
from pathlib import Path

import numpy as np

from dllm2rec.data.quality import record_placeholders, titles_for
from dllm2rec.data.recipes import InteractionLog, dense_ids
from dllm2rec.errors import DataError

INT64_MAX = 2 ** 63 - 1


# --------------------------------------------------------------------------- helpers
def _need_file(path: Path) -> Path:
    if not path.is_file():
        raise DataError(f"{path}: missing file")
    return path


def _read_text(path: Path, encoding: str) -> str:
    data = _need_file(path).read_bytes()
    if b"\x00" in data:
        # latin-1 decodes any byte, so binary garbage has to be caught explicitly
        raise DataError(f"{path}: contains NUL bytes; not a text file in {encoding}")
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not valid {encoding} text (byte {e.start}: {e.reason})") from None


def _read_lines_mixed(path: Path) -> tuple[list[str], int]:
    """Lines decoded one by one: UTF-8, or latin-1 for a line that is not valid UTF-8. Returns (lines, n_latin1)."""
    data = _need_file(path).read_bytes()
    if b"\x00" in data:
        raise DataError(f"{path}: contains NUL bytes; not a text file")
    out, latin = [], 0
    for raw in data.splitlines():
        try:
            out.append(raw.decode("utf-8"))
        except UnicodeDecodeError:
            out.append(raw.decode("latin-1"))
            latin += 1
    return out, latin


def _parse_int_table(path: Path, text: str, sep: str | None, fields: tuple[str, ...]) -> np.ndarray:
    """Parse lines of ``len(fields)`` integer fields; the first malformed line is reported with its number and field.

    Fast path: one pandas (C parser) read of the whole text (ML-10M has 10M lines); only if that fails does the slow
    line-by-line loop run, to name the offending line.
    """
    ncols, what = len(fields), ", ".join(fields)
    if sep is not None:
        import pandas as pd

        try:
            with warnings.catch_warnings():  # "invalid value encountered in cast" for inf/nan: reported below
                warnings.simplefilter("ignore", RuntimeWarning)
                df = pd.read_csv(io.StringIO(text if sep == "\t" else text.replace(sep, "\t")), sep="\t",
                                 header=None, dtype=np.int64, skip_blank_lines=True)
            if df.shape[1] == ncols and len(df) > 0:
                return df.to_numpy(dtype=np.int64)
        except (ValueError, OverflowError, pd.errors.ParserError, pd.errors.EmptyDataError):
            pass  # fall through to the slow loop, which names the bad line and field
    rows = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split(sep)
        if len(parts) != ncols:
            raise DataError(f"{path}: line {lineno} has {len(parts)} fields, expected {ncols} ({what})")
        vals = []
        for name, p in zip(fields, parts):
            try:
                v = int(p)
            except ValueError:
                raise DataError(f"{path}: line {lineno} has a non-integer field '{name}' ({what}): {p.strip()[:30]!r}"
                                ) from None
            if not -INT64_MAX - 1 <= v <= INT64_MAX:
                raise DataError(f"{path}: line {lineno} field '{name}' = {p.strip()[:30]} does not fit in 64 bits")
            vals.append(v)
        rows.append(vals)
    if not rows:
        raise DataError(f"{path}: no interactions")
    return np.asarray(rows, dtype=np.int64)


def _log(users_raw: np.ndarray, items_raw: np.ndarray, times: np.ndarray | None, title_of: dict[str, str],
         source: Path, fmt: str, id_like: set[str] = frozenset()) -> InteractionLog:
    """Dense ids + titles; ``id_like``: raw ids whose "title" is known to be an identifier (a placeholder)."""
    items, vocab = dense_ids(items_raw)
    users, _ = dense_ids(users_raw)
    titles, placeholders = titles_for(vocab, title_of)
    if id_like:
        placeholders = sorted(set(placeholders) | {i for i, raw in enumerate(vocab) if str(raw) in id_like})
    missing = sum(1 for raw in vocab if str(raw) not in title_of)
    meta = {"source_format": fmt, "source": str(source), "items_without_title": missing,
            "item_raw_ids": [str(v) for v in vocab]}
    record_placeholders(meta, placeholders)
    return InteractionLog(users, items, None if times is None else np.asarray(times, dtype=np.int64), titles,
                          str(source), meta)


# --------------------------------------------------------------------------- MovieLens raw
def read_movielens(source: str | Path) -> InteractionLog:
    """MovieLens raw directory: ML-100K (``u.data`` + ``u.item``, tab / pipe) or ML-1M/10M (``ratings.dat`` +
    ``movies.dat``, ``::``-separated). Titles: per line UTF-8, else latin-1 (that line only)."""
    src = Path(source)
    if (src / "u.data").is_file() or not (src / "ratings.dat").is_file():
        data_path, item_path, sep, isep = src / "u.data", src / "u.item", "\t", "|"
    else:
        data_path, item_path, sep, isep = src / "ratings.dat", src / "movies.dat", "::", "::"
    arr = _parse_int_table(data_path, _read_text(data_path, "latin-1"), sep, ("user", "item", "rating", "timestamp"))
    item_lines, latin1 = _read_lines_mixed(item_path)
    title_of: dict[str, str] = {}
    for lineno, line in enumerate(item_lines, 1):
        if not line.strip():
            continue
        parts = line.split(isep)
        if len(parts) < 2 or not parts[0].strip().isdigit():
            raise DataError(f"{item_path}: line {lineno} is not 'id{isep}title{isep}...': {line[:60]!r}")
        title_of[str(int(parts[0]))] = parts[1]
    log = _log(arr[:, 0], arr[:, 1], arr[:, 3], title_of, src, "movielens")
    log.meta["title_lines_latin1"] = latin1
    if log.meta["items_without_title"]:
        raise DataError(f"{item_path}: {log.meta['items_without_title']} item ids of {data_path.name} have no title line")
    return log


def norm_id(s: str) -> str:
    # dense_ids prints integer raw ids without leading zeros; match that for the title lookup
    return str(int(s)) if s.isdigit() else s


# --------------------------------------------------------------------------- Amazon reviews + meta
def _json_lines(path: Path):
    """Yield (lineno, dict) from a (gzipped) JSON-lines file; 2014 dumps use Python literals, so fall back to them."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(_need_file(path), "rt", encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError:
                    try:
                        obj = ast.literal_eval(line)
                    except (ValueError, SyntaxError):
                        raise DataError(f"{path}: line {lineno} is neither JSON nor a Python dict literal") from None
                if not isinstance(obj, dict):
                    raise DataError(f"{path}: line {lineno} is not a JSON object")
                yield lineno, obj
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: unreadable ({type(e).__name__}: {e})") from None


def _amazon_files(src: Path) -> tuple[Path, Path]:
    reviews = sorted(p for p in src.glob("*.json*") if not p.name.startswith("meta_"))
    metas = sorted(src.glob("meta_*.json*"))
    if not reviews:
        raise DataError(f"{src / '<Category>_5.json.gz'}: missing file (no review file in {src})")
    if not metas:
        raise DataError(f"{src / 'meta_<Category>.json.gz'}: missing file (no metadata file in {src})")
    if len(reviews) > 1 or len(metas) > 1:
        raise DataError(f"{src}: expected one review file and one meta_ file, found "
                        f"{', '.join(p.name for p in reviews + metas)}")
    return reviews[0], metas[0]


def read_amazon(source: str | Path, reviews: str | Path | None = None, meta: str | Path | None = None) -> InteractionLog:
    """Amazon reviews (``reviewerID, asin, overall, unixReviewTime``) + metadata (``asin, title``), BIGRec filters."""
    src = Path(source)
    rpath, mpath = (Path(reviews), Path(meta)) if reviews and meta else _amazon_files(src)
    title_of: dict[str, str] = {}
    for lineno, obj in _json_lines(mpath):
        if "asin" not in obj:
            raise DataError(f"{mpath}: line {lineno} lacks field 'asin'")
        title = obj.get("title")
        if isinstance(title, str) and len(title) > 1:  # BIGRec: drop titles of length ≤ 1
            title_of[str(obj["asin"])] = title
    users, items, times = [], [], []
    dropped = {"no_overall_or_time": 0, "no_title": 0}
    for lineno, obj in _json_lines(rpath):
        for need in ("reviewerID", "asin"):
            if need not in obj:
                raise DataError(f"{rpath}: line {lineno} lacks field '{need}'")
        if obj.get("overall") is None or obj.get("unixReviewTime") is None:
            dropped["no_overall_or_time"] += 1
            continue
        asin = str(obj["asin"])
        if asin not in title_of:
            dropped["no_title"] += 1
            continue
        try:
            times.append(int(obj["unixReviewTime"]))
        except (TypeError, ValueError):
            raise DataError(f"{rpath}: line {lineno} field 'unixReviewTime' is not an integer") from None
        users.append(str(obj["reviewerID"]))
        items.append(asin)
    if not items:
        raise DataError(f"{rpath}: no reviews left after BIGRec's filters ({dropped})")
    log = _log(np.asarray(users), np.asarray(items), np.asarray(times), title_of, src, "amazon")
    log.meta["reviews_dropped"] = dropped
    log.meta["reviews_file"], log.meta["meta_file"] = rpath.name, mpath.name
    return log


# --------------------------------------------------------------------------- P5 sequential.txt
def _p5_int(tok: str, seq_path: Path, lineno: int, j: int) -> int:
    if not (tok.isascii() and tok.isdigit()):
        raise DataError(f"{seq_path}: line {lineno} is not 'user item item ...' with integer ids "
                        f"(field {j + 1}: {tok[:30]!r})")
    if len(tok) > 18 and int(tok) > INT64_MAX:
        what = "user" if j == 0 else f"item (field {j + 1})"
        raise DataError(f"{seq_path}: line {lineno} field '{what}' = {tok[:30]} does not fit in 64 bits")
    return int(tok)


def read_p5(source: str | Path) -> InteractionLog:
    """P5 ``sequential.txt`` (``user item item ...``, time-ordered) + optional ``datamaps.json`` (``id2item`` =
    ASINs) + optional Amazon ``meta_*.json(.gz)`` (ASIN → title). Titles that are ASINs count as placeholders."""
    src = Path(source)
    seq_path = src / "sequential.txt"
    users, items = [], []
    for lineno, line in enumerate(_read_text(seq_path, "utf-8").splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) < 2:
            raise DataError(f"{seq_path}: line {lineno} is not 'user item item ...' with integer ids")
        ids = [_p5_int(p, seq_path, lineno, j) for j, p in enumerate(parts)]
        users.extend([ids[0]] * (len(ids) - 1))
        items.extend(ids[1:])
    if not items:
        raise DataError(f"{seq_path}: no interactions")
    title_of: dict[str, str] = {}
    id_like: set[str] = set()
    maps = src / "datamaps.json"
    metas = sorted(src.glob("meta_*.json*"))
    if len(metas) > 1:
        raise DataError(f"{src}: several Amazon metadata files ({', '.join(p.name for p in metas)}); keep one")
    if maps.is_file():
        try:
            id2item = json.loads(_read_text(maps, "utf-8"))["id2item"]
            asin_of = {str(k): str(v) for k, v in id2item.items()}
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
            raise DataError(f"{maps}: malformed (expected JSON with field 'id2item')") from None
        name_of: dict[str, str] = {}
        for mpath in metas:
            for _, obj in _json_lines(mpath):
                t = obj.get("title")
                if "asin" in obj and isinstance(t, str) and len(t.strip()) > 1:  # BIGRec drops titles ≤ 1 char
                    name_of[str(obj["asin"])] = t
        for k, asin in asin_of.items():
            title_of[k] = name_of.get(asin, asin)
            if asin not in name_of:
                id_like.add(k)  # an ASIN is an id, not a title
    # no timestamps: times=None keeps the file order within each user
    log = _log(np.asarray(users, dtype=np.int64), np.asarray(items, dtype=np.int64), None, title_of, src, "p5",
               id_like)
    log.meta["titles_from"] = (metas[0].name if metas else maps.name) if maps.is_file() else None
    log.meta["no_timestamps"] = "P5 sequential.txt holds item orders only"
    return log


# RecBole (atomic and sequential) lives in data/recbole.py, which builds on this module; registry.READERS adds it
READERS = {"movielens": read_movielens, "amazon": read_amazon, "p5": read_p5}

