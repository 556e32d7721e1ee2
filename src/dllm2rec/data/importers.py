"""Readers for raw interaction logs → :class:`InteractionLog` (then a recipe in :mod:`dllm2rec.data.recipes`).

Formats:
* ``movielens`` — GroupLens ML-100K: ``u.data`` (``user<TAB>item<TAB>rating<TAB>ts``) + ``u.item`` (``id|title|...``),
  or ML-1M/10M ``ratings.dat`` + ``movies.dat`` (``::``). Titles are read as UTF-8 when the file is valid UTF-8
  (some redistributed copies were re-encoded), else as latin-1 (GroupLens' original encoding). Every rating is an
  interaction (BIGRec binarises ratings but does not use them).
* ``recbole`` — RecBole atomic files ``<name>.inter`` (header ``user_id:token item_id:token ... timestamp:float``)
  + optional ``<name>.item`` (``item_id:token movie_title:token_seq ...``).
* ``amazon`` — Amazon 2018 (or 2014) ``<Cat>_5.json.gz`` reviews + ``meta_<Cat>.json.gz``, processed as BIGRec:
  drop items whose title has length ≤ 1 (or no meta), drop reviews lacking ``overall``/``unixReviewTime``.
* ``p5`` — P5 ``sequential.txt`` (``user item item ...`` in time order, no timestamps) + ``datamaps.json``.

Item ids are dense 0..N-1 in the sorted order of the raw ids (numeric when all raw ids are integers, else
lexicographic) — deterministic, unlike BIGRec's ``set`` iteration. User ids are dense the same way.
Every problem raises :class:`DataError` with one line naming the file and the field.
"""
from __future__ import annotations

import ast
import gzip
import io
import json
from pathlib import Path

import numpy as np

from dllm2rec.data.recipes import InteractionLog, dense_ids
from dllm2rec.errors import DataError


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


def _parse_int_table(path: Path, text: str, sep: str | None, ncols: int, what: str) -> np.ndarray:
    """Parse lines of ``ncols`` integer fields; the first malformed line is reported with its number.

    Fast path: one pandas (C parser) read of the whole text (ML-10M has 10M lines); only if that fails does the slow
    line-by-line loop run, to name the offending line.
    """
    if sep is not None:
        import pandas as pd

        try:
            df = pd.read_csv(io.StringIO(text if sep == "\t" else text.replace(sep, "\t")), sep="\t", header=None,
                             dtype=np.int64, skip_blank_lines=True)
            if df.shape[1] == ncols and len(df) > 0:
                return df.to_numpy(dtype=np.int64)
        except (ValueError, pd.errors.ParserError, pd.errors.EmptyDataError):
            pass  # fall through to the slow loop, which names the bad line
    rows = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split(sep)
        if len(parts) != ncols:
            raise DataError(f"{path}: line {lineno} has {len(parts)} fields, expected {ncols} ({what})")
        try:
            rows.append([int(p) for p in parts])
        except ValueError:
            raise DataError(f"{path}: line {lineno} has a non-integer field ({what}): {line[:60]!r}") from None
    if not rows:
        raise DataError(f"{path}: no interactions")
    return np.asarray(rows, dtype=np.int64)


def _titles_for(vocab: list, title_of: dict[str, str], placeholder: str = "item {}") -> list[str]:
    """Titles in dense-id order; raw ids without a title get a placeholder (counted in meta by the caller)."""
    return [title_of.get(str(raw), placeholder.format(raw)) for raw in vocab]


def _log(users_raw: np.ndarray, items_raw: np.ndarray, times: np.ndarray | None, title_of: dict[str, str],
         source: Path, fmt: str, placeholder: str = "item {}") -> InteractionLog:
    items, vocab = dense_ids(items_raw)
    users, _ = dense_ids(users_raw)
    titles = _titles_for(vocab, title_of, placeholder)
    missing = sum(1 for raw in vocab if str(raw) not in title_of)
    meta = {"source_format": fmt, "source": str(source), "items_without_title": missing,
            "item_raw_ids": [str(v) for v in vocab]}
    return InteractionLog(users, items, None if times is None else np.asarray(times, dtype=np.int64), titles,
                          str(source), meta)


# --------------------------------------------------------------------------- MovieLens raw
def read_movielens(source: str | Path) -> InteractionLog:
    """MovieLens raw directory: ML-100K (``u.data`` + ``u.item``, tab / pipe) or ML-1M/10M (``ratings.dat`` +
    ``movies.dat``, ``::``-separated). Titles: UTF-8 if the file is valid UTF-8, else latin-1."""
    src = Path(source)
    if (src / "u.data").is_file() or not (src / "ratings.dat").is_file():
        data_path, item_path, sep, isep = src / "u.data", src / "u.item", "\t", "|"
    else:
        data_path, item_path, sep, isep = src / "ratings.dat", src / "movies.dat", "::", "::"
    arr = _parse_int_table(data_path, _read_text(data_path, "latin-1"), sep, 4, "user, item, rating, timestamp")
    try:
        item_text = _read_text(item_path, "utf-8")
    except DataError:
        item_text = _read_text(item_path, "latin-1")  # latin-1 decodes anything; NUL bytes still fail above
    title_of: dict[str, str] = {}
    for lineno, line in enumerate(item_text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split(isep)
        if len(parts) < 2 or not parts[0].strip().isdigit():
            raise DataError(f"{item_path}: line {lineno} is not 'id{isep}title{isep}...': {line[:60]!r}")
        title_of[str(int(parts[0]))] = parts[1]
    log = _log(arr[:, 0], arr[:, 1], arr[:, 3], title_of, src, "movielens")
    if log.meta["items_without_title"]:
        raise DataError(f"{item_path}: {log.meta['items_without_title']} item ids of {data_path.name} have no title line")
    return log


# --------------------------------------------------------------------------- RecBole atomic
def _find_atomic(src: Path, ext: str, required: bool) -> Path | None:
    if src.is_file() and src.suffix == ext:
        return src
    base = src.parent if src.is_file() else src
    found = sorted(base.glob(f"*{ext}"))
    if not found:
        if required:
            raise DataError(f"{base / ('<name>' + ext)}: missing file (no RecBole {ext} file in {base})")
        return None
    if len(found) > 1:
        raise DataError(f"{base}: several {ext} files ({', '.join(p.name for p in found)}); pass one file")
    return found[0]


def _atomic_header(path: Path, header: str) -> dict[str, int]:
    cols = {}
    for i, h in enumerate(header.rstrip("\r\n").split("\t")):
        cols[h.split(":", 1)[0]] = i
    return cols


def read_recbole(source: str | Path) -> InteractionLog:
    """RecBole atomic ``.inter`` (+ optional ``.item`` with ``movie_title`` or ``title``) from a dir or an .inter file."""
    src = Path(source)
    inter = _find_atomic(src, ".inter", required=True)
    assert inter is not None
    lines = _read_text(inter, "utf-8").splitlines()
    if not lines:
        raise DataError(f"{inter}: empty file (expected a header line)")
    cols = _atomic_header(inter, lines[0])
    for need in ("user_id", "item_id", "timestamp"):
        if need not in cols:
            raise DataError(f"{inter}: header lacks field '{need}' (has {', '.join(cols)})")
    ui, ii, ti = cols["user_id"], cols["item_id"], cols["timestamp"]
    users, items, times = [], [], []
    for lineno, line in enumerate(lines[1:], 2):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != len(cols):
            raise DataError(f"{inter}: line {lineno} has {len(parts)} fields, expected {len(cols)}")
        try:
            times.append(int(float(parts[ti])))
        except ValueError:
            raise DataError(f"{inter}: line {lineno} field 'timestamp' is not a number: {parts[ti]!r}") from None
        users.append(parts[ui])
        items.append(parts[ii])
    if not items:
        raise DataError(f"{inter}: no interactions")
    title_of: dict[str, str] = {}
    item_file = _find_atomic(src, ".item", required=False) if src.is_dir() else (
        inter.with_suffix(".item") if inter.with_suffix(".item").is_file() else None)
    if item_file is not None:
        ilines = _read_text(item_file, "utf-8").splitlines()
        icols = _atomic_header(item_file, ilines[0] if ilines else "")
        tcol = next((icols[c] for c in ("movie_title", "title", "name") if c in icols), None)
        if "item_id" not in icols or tcol is None:
            raise DataError(f"{item_file}: header needs fields 'item_id' and a title ('movie_title'/'title')")
        for lineno, line in enumerate(ilines[1:], 2):
            parts = line.split("\t")
            if len(parts) <= max(tcol, icols["item_id"]):
                if line.strip():
                    raise DataError(f"{item_file}: line {lineno} has {len(parts)} fields, expected {len(icols)}")
                continue
            title_of[_norm_id(parts[icols["item_id"]])] = parts[tcol]
    return _log(np.asarray(users), np.asarray(items), np.asarray(times), title_of, inter, "recbole")


def _norm_id(s: str) -> str:
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
def read_p5(source: str | Path) -> InteractionLog:
    """P5 ``sequential.txt`` (``user item item ...``, time-ordered) + optional ``datamaps.json`` (titles = ASINs)."""
    src = Path(source)
    seq_path = src / "sequential.txt"
    users, items = [], []
    for lineno, line in enumerate(_read_text(seq_path, "utf-8").splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) < 2 or not all(p.isdigit() for p in parts):
            raise DataError(f"{seq_path}: line {lineno} is not 'user item item ...' with integer ids")
        users.extend([int(parts[0])] * (len(parts) - 1))
        items.extend(int(p) for p in parts[1:])
    if not items:
        raise DataError(f"{seq_path}: no interactions")
    title_of: dict[str, str] = {}
    maps = src / "datamaps.json"
    if maps.is_file():
        try:
            id2item = json.loads(_read_text(maps, "utf-8"))["id2item"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise DataError(f"{maps}: malformed (expected JSON with field 'id2item')") from None
        title_of = {str(k): str(v) for k, v in id2item.items()}
    # no timestamps: times=None keeps the file order within each user
    return _log(np.asarray(users, dtype=np.int64), np.asarray(items, dtype=np.int64), None, title_of, src, "p5")


READERS = {"movielens": read_movielens, "recbole": read_recbole, "amazon": read_amazon, "p5": read_p5}

