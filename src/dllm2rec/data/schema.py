"""The canonical dataset every other part of dllm2rec reads.

Items are 0..N-1 with titles; the padding id is N. Each split (train/valid/test) is a table of next-item
windows: ``seq`` [R, L] right-padded with PAD, ``len`` [R], ``target`` [R] and a stable ``row_id`` [R]
(teacher artifacts index training rows by it). Optional per-row ``user`` and ``time`` (target timestamp).

On disk (pickle-free): ``manifest.json`` + ``items.json`` (titles) + ``{split}.npz``; the manifest stores a
content hash (``fingerprint``) over everything, plus one hash per split, so teacher artifacts and runs can
name exactly which data they were made from.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

from dllm2rec.errors import DataError
from dllm2rec.utils.io import atomic_dir, atomic_write_text, read_json
from dllm2rec.utils.mmap import MMAP_ERRORS, mmap_npz

SPLITS = ("train", "valid", "test")
FORMAT_VERSION = 1


@dataclass
class Split:
    """Next-item windows of one split. Arrays are int64 numpy; ``seq`` is right-padded with PAD."""

    seq: np.ndarray
    len: np.ndarray
    target: np.ndarray
    row_id: np.ndarray
    user: np.ndarray | None = None
    time: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.seq = np.ascontiguousarray(self.seq, dtype=np.int64)
        self.len = np.ascontiguousarray(self.len, dtype=np.int64)
        self.target = np.ascontiguousarray(self.target, dtype=np.int64)
        self.row_id = np.ascontiguousarray(self.row_id, dtype=np.int64)
        if self.user is not None:
            self.user = np.ascontiguousarray(self.user, dtype=np.int64)
        if self.time is not None:
            self.time = np.ascontiguousarray(self.time, dtype=np.int64)

    def __len__(self) -> int:
        return int(self.target.shape[0])

    @property
    def max_len(self) -> int:
        return int(self.seq.shape[1])

    def subset(self, idx: np.ndarray) -> "Split":
        return Split(
            self.seq[idx], self.len[idx], self.target[idx], self.row_id[idx],
            None if self.user is None else self.user[idx],
            None if self.time is None else self.time[idx],
        )

    def histories(self) -> list[list[int]]:
        return [row[:n].tolist() for row, n in zip(self.seq, self.len)]

    def arrays(self) -> dict[str, np.ndarray]:
        out = {"seq": self.seq, "len": self.len, "target": self.target, "row_id": self.row_id}
        if self.user is not None:
            out["user"] = self.user
        if self.time is not None:
            out["time"] = self.time
        return out

    def content_hash(self) -> str:
        h = hashlib.sha256()
        for k, v in sorted(self.arrays().items()):
            h.update(k.encode())
            h.update(np.ascontiguousarray(v).tobytes())
        return h.hexdigest()[:16]


def make_split(histories: Iterable[list[int]], targets: Iterable[int], pad: int, max_len: int,
               row_ids=None, users=None, times=None) -> Split:
    """Build a right-padded Split from python lists; histories longer than max_len keep their last items."""
    hs = list(histories)
    tg = np.asarray(list(targets), dtype=np.int64)
    seq = np.full((len(hs), max_len), pad, dtype=np.int64)
    lens = np.zeros(len(hs), dtype=np.int64)
    for i, h in enumerate(hs):
        h = list(h)[-max_len:]
        seq[i, : len(h)] = h
        lens[i] = len(h)
    rid = np.arange(len(hs), dtype=np.int64) if row_ids is None else np.asarray(row_ids, dtype=np.int64)
    return Split(seq, lens, tg, rid,
                 None if users is None else np.asarray(users, dtype=np.int64),
                 None if times is None else np.asarray(times, dtype=np.int64))


@dataclass
class SeqDataset:
    """A prepared sequential-recommendation dataset (see module docstring)."""

    name: str
    n_items: int
    max_len: int
    titles: list[str]
    splits: dict[str, Split]
    meta: dict = field(default_factory=dict)

    @property
    def pad(self) -> int:
        return self.n_items

    def __getitem__(self, split: str) -> Split:
        if split not in self.splits:
            raise DataError(f"dataset '{self.name}': no split '{split}' (has {sorted(self.splits)})")
        return self.splits[split]

    # ----------------------------------------------------------------- validation
    def validate(self, source: str = "<memory>") -> "SeqDataset":
        """Raise DataError (one line, naming source and field) on any inconsistency."""
        if self.n_items <= 0:
            raise DataError(f"{source}: n_items must be positive, got {self.n_items}")
        if len(self.titles) != self.n_items:
            raise DataError(f"{source}: titles has {len(self.titles)} entries but n_items is {self.n_items}")
        for name, s in self.splits.items():
            where = f"{source}: split '{name}'"
            if len(s) == 0:
                raise DataError(f"{where} is empty")
            if s.seq.ndim != 2 or s.seq.shape[0] != len(s):
                raise DataError(f"{where}: field 'seq' has shape {s.seq.shape}, expected [{len(s)}, L]")
            if s.seq.shape[1] > self.max_len:
                raise DataError(f"{where}: field 'seq' holds histories of length {s.seq.shape[1]} > max_len {self.max_len}")
            for f in ("len", "row_id"):
                if getattr(s, f).shape != (len(s),):
                    raise DataError(f"{where}: field '{f}' has shape {getattr(s, f).shape}, expected ({len(s)},)")
            if (s.len < 0).any() or (s.len > s.seq.shape[1]).any():
                bad = int(np.argmax((s.len < 0) | (s.len > s.seq.shape[1])))
                raise DataError(f"{where}: field 'len' = {int(s.len[bad])} at row {bad} is outside 0..{s.seq.shape[1]}")
            if (s.target < 0).any() or (s.target >= self.n_items).any():
                bad = int(np.argmax((s.target < 0) | (s.target >= self.n_items)))
                raise DataError(f"{where}: field 'target' = {int(s.target[bad])} at row {bad} is outside 0..{self.n_items - 1}")
            pos = np.arange(s.seq.shape[1])[None, :]
            real = pos < s.len[:, None]
            bad_real = real & ((s.seq < 0) | (s.seq >= self.n_items))
            if bad_real.any():
                r, c = np.argwhere(bad_real)[0]
                raise DataError(f"{where}: field 'seq' holds item id {int(s.seq[r, c])} at row {r} (valid ids 0..{self.n_items - 1})")
            if (s.seq[~real] != self.pad).any():
                r, c = np.argwhere(~real & (s.seq != self.pad))[0]
                raise DataError(f"{where}: field 'seq' row {r} is not right-padded with PAD={self.pad} after len={int(s.len[r])}")
            if len(np.unique(s.row_id)) != len(s):
                raise DataError(f"{where}: field 'row_id' has duplicates")
        return self

    # ----------------------------------------------------------------- hashing
    def split_hash(self, split: str) -> str:
        return self[split].content_hash()

    def fingerprint(self) -> str:
        """Content hash of everything (ids, splits and titles): the integrity check of the files on disk."""
        h = hashlib.sha256()
        h.update(f"{self.n_items}|{self.max_len}".encode())
        h.update("\n".join(self.titles).encode("utf-8"))
        for name in sorted(self.splits):
            h.update(name.encode())
            h.update(self.split_hash(name).encode())
        return h.hexdigest()[:16]

    def interactions_fingerprint(self) -> str:
        """Hash of what a ranking teacher depends on: catalogue size, window length and every split's rows.

        Titles are left out on purpose: the same interactions with other title strings (ML-100K from ``u.item``
        has "Toy Story (1995)", RecBole's copy "Toy Story") are the same recommendation problem, so teacher
        artifacts keyed to this hash stay valid; titles are compared apart (:meth:`titles_hash`) and reported.
        """
        h = hashlib.sha256()
        h.update(f"interactions|{self.n_items}|{self.max_len}".encode())
        for name in sorted(self.splits):
            h.update(name.encode())
            h.update(self.split_hash(name).encode())
        return h.hexdigest()[:16]

    def titles_hash(self) -> str:
        return hashlib.sha256("\n".join(self.titles).encode("utf-8")).hexdigest()[:16]

    def item_counts(self, split: str = "train") -> np.ndarray:
        """How often each item is a target in ``split`` (DROS propensities, popularity baseline)."""
        return np.bincount(self[split].target, minlength=self.n_items)

    def stats(self) -> dict:
        users = set()
        inter = 0
        out = {"name": self.name, "items": self.n_items, "max_len": self.max_len, "fingerprint": self.fingerprint(),
               "interactions_fingerprint": self.interactions_fingerprint(), "titles_hash": self.titles_hash()}
        for name, s in self.splits.items():
            out[f"rows/{name}"] = len(s)
            if s.user is not None:
                users.update(np.unique(s.user).tolist())
        # interactions: distinct (user, item, position) are not recoverable from windows in general; report
        # the number of target events (each window's target is one interaction) plus first histories.
        for s in self.splits.values():
            inter += len(s)
        out["users"] = len(users) if users else None
        out["target_events"] = inter
        if "interactions" in self.meta:
            out["interactions"] = self.meta["interactions"]
        if "users" in self.meta and out["users"] is None:
            out["users"] = self.meta["users"]
        return out

    # ----------------------------------------------------------------- io
    def save(self, path: str | Path) -> Path:
        path = Path(path)
        self.validate(str(path))
        with atomic_dir(path) as tmp:
            for name, s in self.splits.items():
                np.savez(tmp / f"{name}.npz", **s.arrays())
            (tmp / "items.json").write_text(json.dumps(self.titles, ensure_ascii=False), encoding="utf-8")
            manifest = {
                "format": "dllm2rec-dataset",
                "format_version": FORMAT_VERSION,
                "name": self.name,
                "n_items": self.n_items,
                "pad": self.pad,
                "max_len": self.max_len,
                "splits": {n: {"rows": len(s), "hash": s.content_hash()} for n, s in self.splits.items()},
                "fingerprint": self.fingerprint(),
                "meta": self.meta,
            }
            atomic_write_text(tmp / "manifest.json", json.dumps(manifest, indent=2, ensure_ascii=False))
        return path

    @classmethod
    def load(cls, path: str | Path, verify: bool = True, mmap: bool = False) -> "SeqDataset":
        """Read a prepared dataset. ``mmap=True`` memory-maps the split arrays straight out of the uncompressed
        ``.npz`` members (zero copy: N processes on a node share one page-cache copy, e.g. DDP ranks); a split that
        cannot be mapped is read normally."""
        path = Path(path)
        mpath = path / "manifest.json"
        manifest = read_json(mpath, DataError, "missing (not a prepared dllm2rec dataset; run `dllm2rec data prepare`)")
        if manifest.get("format") != "dllm2rec-dataset":
            raise DataError(f"{mpath}: field 'format' is {manifest.get('format')!r}, expected 'dllm2rec-dataset'")
        titles = read_json(path / "items.json", DataError)
        splits = {}
        for name in manifest["splits"]:
            f = path / f"{name}.npz"
            arrays = None
            if mmap and f.is_file():
                try:
                    arrays = mmap_npz(f)
                except MMAP_ERRORS:
                    arrays = None  # the normal reader below reports the problem precisely
            try:
                if arrays is None:
                    with np.load(f, allow_pickle=False) as z:
                        arrays = {k: z[k] for k in z.files}
                splits[name] = Split(**arrays)
            except FileNotFoundError:
                raise DataError(f"{f}: missing") from None
            except (ValueError, OSError, TypeError) as e:
                raise DataError(f"{f}: unreadable ({e})") from None
        ds = cls(manifest["name"], int(manifest["n_items"]), int(manifest["max_len"]), titles, splits,
                 manifest.get("meta", {}))
        ds.validate(str(path))
        if verify and ds.fingerprint() != manifest["fingerprint"]:
            raise DataError(f"{mpath}: field 'fingerprint' {manifest['fingerprint']} does not match the content "
                            f"({ds.fingerprint()}); the files were modified")
        return ds
