"""The dataset's own item ids in a bundle (``raw_ids.json``): written by ``export`` when the dataset has
``meta.item_raw_ids`` (MovieLens ids, ASINs, ...), read back, listed and hash-checked like ``items.json``.

``raw_ids.json`` (written by ``export_bundle``, see ``bundle.dataset_raw_ids``) is a JSON list of N distinct
strings, index = internal item id. It is optional: a bundle exported from a dataset without raw ids, or by a
dllm2rec before raw ids, has none and still loads (responses then carry ``raw_ids`` of nulls and
``id_type="raw"`` requests are refused with a clear error).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from dllm2rec.errors import ArtifactError
from dllm2rec.serving.bundle import RAW_IDS, _json_bytes, optional_member, read_member

__all__ = ["RAW_IDS", "read_raw_ids"]


def read_raw_ids(bundle: str | Path, manifest: dict[str, Any], n_items: int, verify: bool = True) -> list[str] | None:
    """The bundle's raw item ids (list of ``n_items`` distinct strings, index = item id) from verified bytes, or
    None for a bundle without them (exported before raw ids, or from a dataset without ``meta.item_raw_ids``). A
    ``raw_ids.json`` on disk that the manifest does not list is refused, never loaded."""
    bundle = Path(bundle)
    name = optional_member(bundle, manifest, "raw_ids", RAW_IDS, "unverified raw item ids (re-export the bundle)")
    if name is None:
        return None
    path = bundle / name
    raw = _json_bytes(read_member(bundle, manifest, name, verify), path)
    if not isinstance(raw, list) or len(raw) != n_items:
        raise ArtifactError(f"{path}: expected a list of {n_items} raw item ids, "
                            f"got {len(raw) if isinstance(raw, list) else type(raw).__name__}")
    seen: dict[str, int] = {}
    for i, r in enumerate(raw):
        if type(r) is not str:
            raise ArtifactError(f"{path}: entry {i} is {type(r).__name__}, expected a string raw item id")
        if r in seen:
            raise ArtifactError(f"{path}: raw item id {r[:40]!r} is given to items {seen[r]} and {i}")
        seen[r] = i
    try:
        "\n".join(raw).encode("utf-8")
    except UnicodeEncodeError as e:
        raise ArtifactError(f"{path}: a raw item id is not valid Unicode (character {e.start})") from None
    return raw
