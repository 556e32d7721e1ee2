"""TeacherArtifacts: the one way teacher knowledge reaches a student.

Contents (R = rows of the dataset's *train* split, in ``row_id`` order; N = items; D = any dim):
- ``item_emb``   [N, D] float — the teacher's item embeddings (BIGRec: LLM last-token state of each title)
- ``topk_ids``   [R, n] int64 — the teacher's ranked top-n items per training row (best first)
- ``topk_dist``  [R, n] float32 — grounding distance of each of those items (smaller = more confident)
- ``target_dist``[R] float32 — distance between the teacher's generation and the true target (NaN = unknown)
- ``covered``    [R] bool — rows the teacher answered; uncovered rows' ids/dists are ignored (filled with -1/NaN)
- ``manifest``   dict — dataset fingerprint, train split hash, teacher kind/model id, pooling, distance kind ...

On disk (pickle-free): ``artifacts.safetensors`` + ``manifest.json``. ``load(path, dataset)`` validates everything
against the dataset and raises ArtifactError naming the file and the problem.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dllm2rec.errors import ArtifactError
from dllm2rec.utils.io import atomic_dir, read_json
from dllm2rec.utils.mmap import MMAP_ERRORS, mmap_safetensors

FORMAT = "dllm2rec-teacher-artifacts"


@dataclass
class TeacherArtifacts:
    item_emb: np.ndarray
    topk_ids: np.ndarray
    topk_dist: np.ndarray
    covered: np.ndarray
    target_dist: np.ndarray | None = None
    manifest: dict = field(default_factory=dict)
    #: what validation against a dataset noticed but did not refuse (e.g. other title strings); not saved
    notes: list[str] = field(default_factory=list, compare=False)

    # ------------------------------------------------------------------ shape helpers
    @property
    def n_items(self) -> int:
        return int(self.item_emb.shape[0])

    @property
    def dim(self) -> int:
        return int(self.item_emb.shape[1])

    @property
    def n_rows(self) -> int:
        return int(self.topk_ids.shape[0])

    @property
    def top_n(self) -> int:
        return int(self.topk_ids.shape[1])

    @property
    def coverage(self) -> float:
        return float(self.covered.mean()) if self.n_rows else 0.0

    # ------------------------------------------------------------------ validation
    def validate(self, dataset=None, source: str = "<memory>") -> "TeacherArtifacts":
        self.notes = []

        def bad(msg: str):
            raise ArtifactError(f"{source}: {msg}")

        if self.item_emb.ndim != 2:
            bad(f"field 'item_emb' must be 2-D [N, D], got shape {tuple(self.item_emb.shape)}")
        if not np.isfinite(self.item_emb).all():
            bad("field 'item_emb' contains NaN/inf")
        if self.topk_ids.ndim != 2 or self.topk_dist.shape != self.topk_ids.shape:
            bad(f"fields 'topk_ids' {tuple(self.topk_ids.shape)} and 'topk_dist' {tuple(self.topk_dist.shape)} "
                "must both be [R, n]")
        if self.covered.shape != (self.n_rows,):
            bad(f"field 'covered' has shape {tuple(self.covered.shape)}, expected ({self.n_rows},)")
        if self.target_dist is not None and self.target_dist.shape != (self.n_rows,):
            bad(f"field 'target_dist' has shape {tuple(self.target_dist.shape)}, expected ({self.n_rows},)")
        cov = self.covered.astype(bool)
        ids = self.topk_ids[cov]
        if ids.size:
            if (ids < 0).any() or (ids >= self.n_items).any():
                r = int(np.nonzero(cov)[0][np.argmax(((ids < 0) | (ids >= self.n_items)).any(1))])
                bad(f"field 'topk_ids' row {r} holds an item id outside 0..{self.n_items - 1}")
            s = np.sort(ids, axis=1)
            dup = (s[:, 1:] == s[:, :-1]).any(1)
            if dup.any():
                bad(f"field 'topk_ids' row {int(np.nonzero(cov)[0][np.argmax(dup)])} has duplicated item ids")
            if not np.isfinite(self.topk_dist[cov]).all():
                bad("field 'topk_dist' contains NaN/inf on covered rows")
        if self.target_dist is not None:
            td = self.target_dist[cov]
            if np.isinf(td).any():
                bad("field 'target_dist' contains inf")
        if dataset is not None:
            if self.n_items != dataset.n_items:
                bad(f"item_emb has {self.n_items} rows but dataset '{dataset.name}' has {dataset.n_items} items")
            train = dataset["train"]
            if self.n_rows != len(train):
                bad(f"teacher covers {self.n_rows} rows but dataset '{dataset.name}' has {len(train)} training rows")
            # Identity = what the teacher's rankings depend on (ids, interactions, splits). Titles are checked
            # apart: other title strings for the same interactions are a note, not a different dataset.
            ifp = self.manifest.get("dataset_interactions_fingerprint")
            if ifp is not None:
                if ifp != dataset.interactions_fingerprint():
                    bad(f"manifest field 'dataset_interactions_fingerprint' {ifp} does not match dataset "
                        f"'{dataset.name}' ({dataset.interactions_fingerprint()}); the teacher was made for other "
                        "interactions or another split")
                th = self.manifest.get("titles_hash")
                if th is not None and th != dataset.titles_hash():
                    self.notes.append(f"item titles differ from the ones the teacher was made with (titles_hash "
                                      f"{th} vs {dataset.titles_hash()}); ids, interactions and splits match, so "
                                      "its rankings and item embeddings apply as they are")
            else:
                fp = self.manifest.get("dataset_fingerprint")
                if fp is not None and fp != dataset.fingerprint():
                    bad(f"manifest field 'dataset_fingerprint' {fp} does not match dataset '{dataset.name}' "
                        f"({dataset.fingerprint()}); the teacher was made for other data")
            sh = self.manifest.get("train_split_hash")
            if sh is not None and sh != dataset.split_hash("train"):
                bad(f"manifest field 'train_split_hash' {sh} does not match the dataset's train split")
        return self

    # ------------------------------------------------------------------ io
    def save(self, path: str | Path, dataset=None) -> Path:
        from safetensors.numpy import save_file

        path = Path(path)
        if dataset is not None:
            self.manifest.setdefault("dataset_fingerprint", dataset.fingerprint())
            self.manifest.setdefault("dataset_interactions_fingerprint", dataset.interactions_fingerprint())
            self.manifest.setdefault("titles_hash", dataset.titles_hash())
            self.manifest.setdefault("train_split_hash", dataset.split_hash("train"))
            self.manifest.setdefault("dataset", dataset.name)
        self.validate(dataset, str(path))
        tensors = {
            "item_emb": np.ascontiguousarray(self.item_emb),
            # ids are stored as int32 on disk (half the size of shipped artifacts); loaded back as int64
            "topk_ids": np.ascontiguousarray(self.topk_ids, dtype=np.int32 if self.n_items < 2**31 - 1 else np.int64),
            "topk_dist": np.ascontiguousarray(self.topk_dist, dtype=np.float32),
            "covered": np.ascontiguousarray(self.covered.astype(np.uint8)),
        }
        if self.target_dist is not None:
            tensors["target_dist"] = np.ascontiguousarray(self.target_dist, dtype=np.float32)
        manifest = dict(self.manifest)
        manifest.update(format=FORMAT, n_items=self.n_items, dim=self.dim, n_rows=self.n_rows, top_n=self.top_n,
                        coverage=round(self.coverage, 6))
        with atomic_dir(path) as tmp:
            save_file(tensors, str(tmp / "artifacts.safetensors"))
            (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path, dataset=None, mmap: bool = False) -> "TeacherArtifacts":
        """Read and validate artifacts. ``mmap=True`` memory-maps ``item_emb``/``topk_dist``/``target_dist`` (the
        [N, D] teacher matrix then lives once in the page cache for every process on a node, e.g. DDP ranks);
        ``topk_ids``/``covered`` are converted to the in-memory contract (int64 / bool), which copies those small
        [R, n] / [R] arrays. Files that cannot be mapped (e.g. bf16) are read normally."""
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        path = Path(path)
        mpath, tpath = path / "manifest.json", path / "artifacts.safetensors"
        for p in (mpath, tpath):
            if not p.is_file():
                raise ArtifactError(f"{p}: missing (not a teacher-artifacts directory)")
        manifest = read_json(mpath, ArtifactError)
        if manifest.get("format") != FORMAT:
            raise ArtifactError(f"{mpath}: field 'format' is {manifest.get('format')!r}, expected {FORMAT!r}")
        t = None
        if mmap:
            try:
                t = mmap_safetensors(tpath)
            except MMAP_ERRORS:
                t = None  # the normal reader below reports the problem precisely
        if t is None:
            try:
                t = load_file(str(tpath))
            except (SafetensorError, OSError, ValueError) as e:
                raise ArtifactError(f"{tpath}: unreadable safetensors ({e})") from None
        for k in ("item_emb", "topk_ids", "topk_dist", "covered"):
            if k not in t:
                raise ArtifactError(f"{tpath}: missing tensor '{k}'")
        art = cls(t["item_emb"], t["topk_ids"].astype(np.int64), t["topk_dist"], t["covered"].astype(bool), t.get("target_dist"),
                  manifest)
        return art.validate(dataset, str(path))

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_rankings(cls, item_emb, topk_ids, topk_dist, covered=None, target_dist=None, **manifest):
        topk_ids = np.asarray(topk_ids, dtype=np.int64)
        if covered is None:
            covered = np.ones(topk_ids.shape[0], dtype=bool)
        return cls(np.asarray(item_emb), topk_ids, np.asarray(topk_dist, dtype=np.float32),
                   np.asarray(covered, dtype=bool),
                   None if target_dist is None else np.asarray(target_dist, dtype=np.float32), dict(manifest))

    def stats(self) -> dict:
        cov = self.covered
        d = self.topk_dist[cov]
        return {
            "teacher": self.manifest.get("teacher", "?"),
            "kind": self.manifest.get("kind", "?"),
            "items": self.n_items, "dim": self.dim, "rows": self.n_rows, "top_n": self.top_n,
            "coverage": round(self.coverage, 4),
            "dist_min": float(d.min()) if d.size else None,
            "dist_mean": float(d.mean()) if d.size else None,
            "dist_max": float(d.max()) if d.size else None,
        }
