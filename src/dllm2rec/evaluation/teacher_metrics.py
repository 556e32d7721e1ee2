"""A teacher's own metrics, wherever they are recorded (``metrics.json``, manifest ``metrics`` or
``teacher_valid``/``teacher_test``, a flat or per-dataset JSON file), read by split and protocol."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from dllm2rec.errors import Dllm2recError
from dllm2rec.utils.io import read_json, try_read_json


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts -> ``a/b/c`` keys."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}/{k}" if prefix else str(k)
        if isinstance(v, dict):
            out.update(flatten(v, key))
        else:
            out[key] = v
    return out


_SPLITS = ("train", "valid", "test")


def _split_of(part: str) -> str | None:
    """'test', 'teacher_test', 'test_metrics' → 'test'; a key part that names no split → None."""
    for sp in _SPLITS:
        if part == sp or part.startswith(sp + "_") or part.endswith("_" + sp):
            return sp
    return None


def find_metric(d: dict[str, Any], split: str, metric: str) -> float | None:
    """``<split>/.../<metric>`` in a (possibly nested) metrics dict. A key counts for ``split`` only if one of its
    parts names that split (``test``, ``teacher_test``); a key naming no split at all counts as test."""
    flat = flatten(d)
    nums = {k: float(v) for k, v in flat.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    unsplit = None
    for k, v in nums.items():
        parts = k.split("/")
        if parts[-1].lower() != metric.lower():
            continue
        named = {_split_of(p) for p in parts[:-1]} - {None}
        if named == {split}:
            return v
        if not named and unsplit is None:
            unsplit = v
    return unsplit if split == "test" else None


def teacher_protocol(d: dict[str, Any]) -> str | None:
    """The ranking protocol named in a teacher's metric keys (``full-excl`` = history masked), if any."""
    for k in flatten(d):
        for p in k.split("/")[:-1]:
            if p.startswith("full") or p.startswith("sampled"):
                return p
    return None


def teacher_metrics_from_dir(teacher_dir: str | Path | None) -> dict[str, Any]:
    """The teacher's own metrics recorded next to its artifacts (``manifest.json['metrics']`` or ``metrics.json``)."""
    if not teacher_dir:
        return {}
    d = Path(teacher_dir)
    for name in ("metrics.json", "eval.json", "test_metrics.json"):
        f = d / name
        data = try_read_json(f)
        if isinstance(data, dict):
            return data
    m = d / "manifest.json"
    man = try_read_json(m)
    if isinstance(man, dict):
        for key in ("metrics", "eval", "evaluation"):
            if isinstance(man.get(key), dict):
                return man[key]
        # llm-emb teacher: teacher_valid / teacher_test
        split_metrics = {sp: man[f"teacher_{sp}"] for sp in ("valid", "test")
                         if isinstance(man.get(f"teacher_{sp}"), dict)}
        if split_metrics:
            return split_metrics
    return {}


def load_teacher_metrics(path: str | Path | None, datasets: Iterable[str] = ()) -> dict[str, dict[str, float]]:
    """``{dataset: {"test/full/NDCG@20": ...}}`` from a JSON file that is either keyed by dataset or flat.

    A flat file applies to the single dataset in ``datasets`` (or to the one named by its ``dataset`` field).
    """
    if path is None:
        return {}
    p = Path(path)
    if p.is_dir() or (p.name == "manifest.json" and p.is_file()):  # a teacher-artifacts dir or its manifest
        tm = teacher_metrics_from_dir(p if p.is_dir() else p.parent)
        if not tm:
            raise Dllm2recError(f"{p}: no teacher metrics recorded (no metrics.json, no manifest 'metrics' or "
                                "'teacher_valid'/'teacher_test')")
        flat = {k: float(v) for k, v in flatten(tm).items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        ds = list(datasets)
        man = p / "manifest.json" if p.is_dir() else p
        name = (try_read_json(man) or {}).get("dataset")
        return {str(name or (ds[0] if len(ds) == 1 else "teacher")): flat}
    data = read_json(p, Dllm2recError, "teacher metrics file not found")
    if not isinstance(data, dict):
        raise Dllm2recError(f"{p}: top level must be an object")
    if "metrics" in data and isinstance(data["metrics"], dict):
        data = {**data["metrics"], **({"dataset": data["dataset"]} if "dataset" in data else {})}
    if data and all(isinstance(v, dict) for v in data.values()) and not ({"test", "valid"} & set(data)):
        return {str(k): {kk: vv for kk, vv in flatten(v).items() if isinstance(vv, (int, float))}
                for k, v in data.items()}
    flat = {k: v for k, v in flatten(data).items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    ds = list(datasets)
    name = data.get("dataset") or (ds[0] if len(ds) == 1 else "teacher")
    return {str(name): flat}
