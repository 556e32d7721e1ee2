"""Import / export the official DLLM2Rec teacher files (spec §1.2, §2.4).

- ``all_embeddings.pt``   torch tensor [N, D] (LLM embedding of each item title; loaded with ``weights_only=True``)
- ``myrank_train.txt``    one line per training row (row i = the i-th row of ``train_data.df`` = our ``row_id`` i):
                          the teacher's ranked item ids, whitespace-separated, best first
- ``confidence_train.txt`` the same shape: the grounding distance of each of those items (smaller = closer)

The official files have no notion of coverage; on import a row whose ids are all negative (or empty) is marked
unanswered, and on export unanswered rows are refused unless ``allow_partial`` (then they are written as -1 / nan,
which the official script cannot read).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from dllm2rec.errors import ArtifactError
from dllm2rec.teachers.artifacts import TeacherArtifacts
from dllm2rec.utils import untrusted

EMB_FILE, RANK_FILE, CONF_FILE = "all_embeddings.pt", "myrank_train.txt", "confidence_train.txt"


def _read_matrix(path: Path, dtype, n_rows: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Whitespace-separated rows -> ([R, n] array, [R] bool non-empty); ragged rows are an error."""
    rows: list[list[str]] = []
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                rows.append(line.split())
    except UnicodeDecodeError as e:
        raise ArtifactError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason}); expected whitespace-separated "
                            "numbers, one line per training row") from None
    while rows and not rows[-1]:
        rows.pop()
    first = next((r for r in rows if r), None)
    if first is None:
        raise ArtifactError(f"{path}: no data rows")
    n = len(first)
    bad = next((i for i, r in enumerate(rows) if r and len(r) != n), None)
    if bad is not None:
        raise ArtifactError(f"{path}: line {bad + 1} has {len(rows[bad])} values, the first row has {n}")
    if n_rows is not None and len(rows) != n_rows:
        raise ArtifactError(f"{path}: {len(rows)} rows but the dataset has {n_rows} training rows (one line per row)")
    present = np.array([bool(r) for r in rows])
    out = np.full((len(rows), n), -1 if dtype == np.int64 else np.nan, dtype=dtype)
    try:
        if present.any():
            vals = np.array([r for r in rows if r], dtype=np.float64)
            if dtype == np.int64:
                if not np.all(np.isfinite(vals)) or not np.all(vals == np.round(vals)):
                    raise ValueError("non-integer item id")
            out[present] = vals.astype(dtype)
    except ValueError as e:
        raise ArtifactError(f"{path}: unparsable value ({e})") from None
    return out, present


def load_embeddings(path: Path) -> np.ndarray:
    """The [N, D] tensor of ``all_embeddings.pt``, through the gate: ``weights_only=True`` always (tensors and plain
    containers only; a file that needs a full unpickle is refused in one line; there is no flag to widen it here)."""
    import torch

    obj = untrusted.torch_load(path, allow=False)
    if isinstance(obj, dict) and len(obj) == 1:
        obj = next(iter(obj.values()))
    if not isinstance(obj, torch.Tensor) or obj.dim() != 2 or 0 in obj.shape:
        raise ArtifactError(f"{path}: expected one 2-D tensor [N, D] with N, D >= 1, got {type(obj).__name__}"
                            + (f" of shape {tuple(obj.shape)}" if isinstance(obj, torch.Tensor) else ""))
    return obj.detach().to(torch.float32).numpy()


def import_official(src: str | Path, dataset, top_n: int | None = None, teacher: str = "bigrec (official files)",
                    **manifest) -> TeacherArtifacts:
    """Read the three official files from directory ``src`` into validated TeacherArtifacts for ``dataset``."""
    src = Path(src)
    for f in (EMB_FILE, RANK_FILE, CONF_FILE):
        if not (src / f).is_file():
            raise ArtifactError(f"{src / f}: missing (need {EMB_FILE}, {RANK_FILE}, {CONF_FILE})")
    emb = load_embeddings(src / EMB_FILE)
    R = len(dataset["train"]) if dataset is not None else None
    ids, present = _read_matrix(src / RANK_FILE, np.int64, R)
    dist, present_d = _read_matrix(src / CONF_FILE, np.float32, R)
    if dist.shape != ids.shape:
        raise ArtifactError(f"{src / CONF_FILE}: shape {dist.shape} does not match {RANK_FILE} {ids.shape}")
    # "not covered" only by an explicit marker: an empty line or a row of -1 ids (what `export --allow-partial`
    # writes). One bad id in an answered row is an error naming it, never a silently dropped row.
    marker = ~present | (ids == -1).all(axis=1)
    n_items = emb.shape[0]
    bad = ~marker[:, None] & ((ids < 0) | (ids >= n_items))
    if bad.any():
        r, c = (int(x) for x in np.argwhere(bad)[0])
        raise ArtifactError(f"{src / RANK_FILE}: line {r + 1}, column {c + 1}: item id {int(ids[r, c])} is outside "
                            f"0..{n_items - 1} (the embeddings' rows); a row of all -1 marks a row as unanswered")
    covered = ~marker & present_d
    d_cov = dist[covered]
    if d_cov.size and (~np.isfinite(d_cov) | (d_cov < 0)).any():
        r = int(np.flatnonzero(covered)[np.argmax((~np.isfinite(d_cov) | (d_cov < 0)).any(1))])
        c = int(np.argmax(~np.isfinite(dist[r]) | (dist[r] < 0)))
        raise ArtifactError(f"{src / CONF_FILE}: line {r + 1}, column {c + 1}: distance {dist[r, c]!r} must be a "
                            "finite number >= 0 (the official file holds L2 distances)")
    if top_n is not None:
        ids, dist = ids[:, :top_n], dist[:, :top_n]
    art = TeacherArtifacts.from_rankings(
        emb, ids, dist, covered, None, teacher=teacher, kind="official-import", source=str(src),
        distance="L2 (official confidence_train.txt)", pooling="unknown (official all_embeddings.pt)", **manifest)
    if dataset is not None:
        art.manifest.setdefault("dataset", dataset.name)
        art.manifest.setdefault("dataset_fingerprint", dataset.fingerprint())
        art.manifest.setdefault("train_split_hash", dataset.split_hash("train"))
    return art.validate(dataset, str(src))


def export_official(art: TeacherArtifacts, out: str | Path, allow_partial: bool = False,
                    pad_to: int | None = None) -> Path:
    """Write ``art`` as the three official files (float32 embeddings; ids as ints; distances %.9g, exact for float32).

    ``pad_to``: zero-pad the embeddings to this width. The official script hard-codes 4096-wide teacher embeddings
    (``nn.Linear(4096, 64)``) and crashes on e.g. a 384-d export; zero columns leave its projection unchanged
    (their weights get zero gradient), so ``pad_to=4096`` is the same model. Each file is written to a temporary
    name and renamed, so a kill never leaves a truncated file.
    """
    import torch

    if not allow_partial and not art.covered.all():
        raise ArtifactError(f"teacher covers {int(art.covered.sum())}/{art.n_rows} rows; the official files need "
                            "every training row (pass allow_partial to write -1/nan rows anyway)")
    emb = np.ascontiguousarray(art.item_emb, dtype=np.float32)
    if pad_to is not None:
        if pad_to < art.dim:
            raise ArtifactError(f"--pad-to {pad_to} is below the teacher's embedding width {art.dim}")
        emb = np.pad(emb, ((0, 0), (0, pad_to - art.dim)))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ids = np.where(art.covered[:, None], art.topk_ids, -1)
    dist = np.where(art.covered[:, None], art.topk_dist, np.nan)
    writers = {EMB_FILE: lambda f: torch.save(torch.from_numpy(emb), f),
               RANK_FILE: lambda f: np.savetxt(f, ids, fmt="%d"),
               CONF_FILE: lambda f: np.savetxt(f, dist, fmt="%.9g")}
    for name, write in writers.items():
        tmp = out / f".{name}.tmp"
        try:
            write(tmp)
            os.replace(tmp, out / name)
        finally:
            tmp.unlink(missing_ok=True)
    return out
