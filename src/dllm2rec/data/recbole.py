"""RecBole files → :class:`InteractionLog` (atomic) or :class:`WindowTable` (sequential benchmark).

Accepted inputs (a directory or one ``.inter`` file):

* **Atomic** ``NAME.inter``: header ``user_id:token item_id:token [timestamp:float] ...``. With ``timestamp`` the
  order within a user is the time order (default recipe: BIGRec temporal-global); without it, the file order
  (default recipe: leave-one-out).
* **Benchmark triple** ``NAME.train.inter`` + ``NAME.valid.inter`` + ``NAME.test.inter`` in one directory (or one of
  them named): the files' own split (recipe ``file``). Either

  - *sequential* files, header ``user_id:token item_id_list:token_seq item_id:token`` — every row is a
    (history, target) window, the history space-separated and oldest first; it is kept as it is, truncated to
    the last L items; or
  - *atomic* files: each event is a target in the split of its file, its history the user's previous events.

  A directory holding a triple uses the triple (name a single ``.inter`` file to import that one instead).
* Optional ``NAME.item`` (``item_id:token`` + ``movie_title``/``title``/``name``) for titles.

Item ids are dense over all files together (sorted raw tokens, numerically when all are integers; tokens beyond
64 bits are fine — they are strings to RecBole). Every problem is one DataError naming the file, line and field.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np

from dllm2rec.data.importers import _log, _read_text, norm_id
from dllm2rec.data.quality import record_placeholders, titles_for
from dllm2rec.data.recipes import InteractionLog, WindowTable, dense_ids
from dllm2rec.data.schema import SPLITS
from dllm2rec.errors import DataError

TRIPLE_RE = re.compile(r"^(?P<name>.+)\.(?P<split>train|valid|test)\.inter$")
TITLE_FIELDS = ("movie_title", "title", "name")


# --------------------------------------------------------------------------- locating files
def find_inputs(src: Path) -> tuple[dict[str, Path] | Path, str]:
    """→ (a split → file dict for a benchmark triple, or one atomic file; the dataset NAME for ``.item``)."""
    if src.is_file():
        if src.suffix != ".inter":
            raise DataError(f"{src}: not a RecBole .inter file")
        m = TRIPLE_RE.match(src.name)
        if m:
            return _triple(src.parent, m["name"]), m["name"]
        return src, src.stem
    found = sorted(src.glob("*.inter"))
    if not found:
        raise DataError(f"{src / '<name>.inter'}: missing file (no RecBole .inter file in {src})")
    names = sorted({m["name"] for p in found if (m := TRIPLE_RE.match(p.name))})
    if len(names) > 1:
        raise DataError(f"{src}: several RecBole benchmark sets ({', '.join(names)}); pass one of their files")
    if names:
        return _triple(src, names[0]), names[0]
    if len(found) > 1:
        raise DataError(f"{src}: several .inter files ({', '.join(p.name for p in found)}); pass one file")
    return found[0], found[0].stem


def _triple(d: Path, name: str) -> dict[str, Path]:
    files = {s: d / f"{name}.{s}.inter" for s in SPLITS}
    for s, p in files.items():
        if not p.is_file():
            raise DataError(f"{p}: missing file (the {s} part of the RecBole benchmark set '{name}')")
    return files


def _item_file(src: Path, name: str) -> Path | None:
    base = src.parent if src.is_file() else src
    if (base / f"{name}.item").is_file():
        return base / f"{name}.item"
    if src.is_file():
        return None  # a named .inter file takes titles from NAME.item only
    found = sorted(base.glob("*.item"))
    if len(found) > 1:
        raise DataError(f"{base}: several .item files ({', '.join(p.name for p in found)}) and none is {name}.item")
    return found[0] if found else None


# --------------------------------------------------------------------------- parsing
def _header(path: Path, line: str) -> dict[str, int]:
    cols: dict[str, int] = {}
    for i, h in enumerate(line.rstrip("\r\n").split("\t")):
        cols[h.split(":", 1)[0]] = i
    return cols


def _lines(path: Path) -> tuple[dict[str, int], list[str]]:
    lines = _read_text(path, "utf-8").splitlines()
    if not lines:
        raise DataError(f"{path}: empty file (expected a header line)")
    return _header(path, lines[0]), lines


def _timestamp(tok: str, path: Path, lineno: int) -> int:
    try:
        v = float(tok)
    except ValueError:
        raise DataError(f"{path}: line {lineno} field 'timestamp' is not a number: {tok[:30]!r}") from None
    if not math.isfinite(v) or abs(v) >= 2.0 ** 63:
        raise DataError(f"{path}: line {lineno} field 'timestamp' = {tok[:30]} is not a finite 64-bit time")
    return int(v)


def _rows(path: Path, cols: dict[str, int], lines: list[str]):
    for lineno, line in enumerate(lines[1:], 2):
        if not line.strip():
            continue
        parts = line.rstrip("\r").split("\t")
        if len(parts) != len(cols):
            raise DataError(f"{path}: line {lineno} has {len(parts)} fields, expected {len(cols)}")
        yield lineno, parts


def _need(path: Path, cols: dict[str, int], *fields: str) -> None:
    for need in fields:
        if need not in cols:
            raise DataError(f"{path}: header lacks field '{need}' (has {', '.join(cols)})")


def _read_atomic(path: Path, cols: dict[str, int], lines: list[str]):
    _need(path, cols, "user_id", "item_id")
    ui, ii, ti = cols["user_id"], cols["item_id"], cols.get("timestamp")
    users, items, times = [], [], []
    for lineno, parts in _rows(path, cols, lines):
        if ti is not None:
            times.append(_timestamp(parts[ti], path, lineno))
        for f, i in (("user_id", ui), ("item_id", ii)):
            if not parts[i].strip():
                raise DataError(f"{path}: line {lineno} field '{f}' is empty")
        users.append(parts[ui])
        items.append(parts[ii])
    return users, items, (times if ti is not None else None)


def _titles(item_file: Path | None) -> dict[str, str]:
    title_of: dict[str, str] = {}
    if item_file is None:
        return title_of
    icols, ilines = _lines(item_file)
    tcol = next((icols[c] for c in TITLE_FIELDS if c in icols), None)
    if "item_id" not in icols or tcol is None:
        raise DataError(f"{item_file}: header needs fields 'item_id' and a title ('movie_title'/'title'/'name')")
    for lineno, line in enumerate(ilines[1:], 2):
        parts = line.split("\t")
        if len(parts) <= max(tcol, icols["item_id"]):
            if line.strip():
                raise DataError(f"{item_file}: line {lineno} has {len(parts)} fields, expected {len(icols)}")
            continue
        title_of[norm_id(parts[icols["item_id"]])] = parts[tcol]
    return title_of


# --------------------------------------------------------------------------- readers
def read_recbole(source: str | Path) -> InteractionLog | WindowTable:
    """Read RecBole files (see module doc): an InteractionLog, or a WindowTable for the sequential triple."""
    src = Path(source)
    inputs, name = find_inputs(src)
    title_of = _titles(_item_file(src, name))
    if isinstance(inputs, Path):
        cols, lines = _lines(inputs)
        if "item_id_list" in cols:
            raise DataError(f"{inputs}: is a RecBole sequential file (field 'item_id_list') without its split "
                            f"siblings; name it NAME.train.inter next to NAME.valid.inter and NAME.test.inter")
        users, items, times = _read_atomic(inputs, cols, lines)
        if not items:
            raise DataError(f"{inputs}: no interactions")
        log = _log(np.asarray(users), np.asarray(items), None if times is None else np.asarray(times),
                   title_of, inputs, "recbole")
        log.meta["files"] = [inputs.name]
        if times is None:
            log.meta["no_timestamps"] = f"the header lacks field 'timestamp' (has {', '.join(cols)})"
        return log
    parsed = {s: _lines(p) for s, p in inputs.items()}
    seq_like = {s: "item_id_list" in cols for s, (cols, _) in parsed.items()}
    if len(set(seq_like.values())) > 1:
        raise DataError(f"{inputs['train'].parent}: the benchmark files of '{name}' mix the sequential "
                        f"(item_id_list) and atomic formats: {', '.join(f'{s}={v}' for s, v in seq_like.items())}")
    if seq_like["train"]:
        return _read_sequential(inputs, parsed, title_of)
    return _read_atomic_triple(inputs, parsed, title_of)


def _read_atomic_triple(inputs: dict[str, Path], parsed: dict, title_of: dict[str, str]) -> InteractionLog:
    users, items, times, split_of = [], [], [], []
    has_time = {s: "timestamp" in cols for s, (cols, _) in parsed.items()}
    if len(set(has_time.values())) > 1:
        raise DataError(f"{inputs['train']}: field 'timestamp' is in some benchmark files only "
                        f"({', '.join(s for s, v in has_time.items() if v)})")
    for k, s in enumerate(SPLITS):
        cols, lines = parsed[s]
        u, i, t = _read_atomic(inputs[s], cols, lines)
        if not i:
            raise DataError(f"{inputs[s]}: no interactions (split '{s}' would be empty)")
        users += u
        items += i
        times += t or []
        split_of += [k] * len(i)
    log = _log(np.asarray(users), np.asarray(items), np.asarray(times) if has_time["train"] else None,
               title_of, inputs["train"].parent, "recbole")
    log.split_of = np.asarray(split_of, dtype=np.int8)
    if not has_time["train"]:
        log.meta["no_timestamps"] = f"the headers lack field 'timestamp' (has {', '.join(parsed['train'][0])})"
    log.meta["files"] = [p.name for p in inputs.values()]
    return log


def _read_sequential(inputs: dict[str, Path], parsed: dict, title_of: dict[str, str]) -> WindowTable:
    tokens: list[str] = []  # every history token, then every target, per split in order
    per: dict[str, tuple[list[int], list[str], list[str] | None]] = {}
    for s in SPLITS:
        path, (cols, lines) = inputs[s], parsed[s]
        _need(path, cols, "item_id_list", "item_id")
        li, ti, ui = cols["item_id_list"], cols["item_id"], cols.get("user_id")
        lens, targets, users = [], [], ([] if ui is not None else None)
        for lineno, parts in _rows(path, cols, lines):
            hist = parts[li].split(" ")
            hist = [h for h in hist if h]
            if not parts[ti].strip():
                raise DataError(f"{path}: line {lineno} field 'item_id' is empty")
            tokens += hist
            lens.append(len(hist))
            targets.append(parts[ti].strip())
            if users is not None:
                users.append(parts[ui])
        per[s] = (lens, targets, users)
    all_items = tokens + [t for s in SPLITS for t in per[s][1]]
    if not all_items:
        raise DataError(f"{inputs['train']}: no rows")
    dense, vocab = dense_ids(np.asarray(all_items))
    titles, placeholders = titles_for(vocab, title_of)
    has_users = all(per[s][2] is not None for s in SPLITS)
    udense = dense_ids(np.asarray([u for s in SPLITS for u in per[s][2]]))[0] if has_users else None  # type: ignore[union-attr]
    n_hist = len(tokens)
    h_at, t_at, u_at = 0, n_hist, 0
    splits = {}
    for s in SPLITS:
        lens, targets, _ = per[s]
        offsets = np.concatenate([[0], np.cumsum(lens, dtype=np.int64)]).astype(np.int64)
        items = dense[h_at:h_at + int(offsets[-1])]
        target = dense[t_at:t_at + len(targets)]
        user = None if udense is None else udense[u_at:u_at + len(targets)]
        h_at += int(offsets[-1])
        t_at += len(targets)
        u_at += len(targets)
        splits[s] = (items, offsets, target, user)
    meta = {"source_format": "recbole-sequential", "source": str(inputs["train"].parent),
            "files": [p.name for p in inputs.values()], "items_without_title": sum(
                1 for raw in vocab if str(raw) not in title_of), "item_raw_ids": [str(v) for v in vocab]}
    record_placeholders(meta, placeholders)
    return WindowTable(splits, titles, str(inputs["train"].parent), meta)
