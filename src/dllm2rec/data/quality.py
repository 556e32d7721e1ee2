"""What an import should tell the user about the dataset it made: placeholder titles and degenerate splits.

* Placeholder titles: items whose "title" is not a title — missing (filled with ``item <raw id>``), empty,
  ``unknown``, the raw id itself, or an Amazon ASIN/ISBN-10 (P5's ``datamaps.json`` ``id2item`` holds ASINs, not
  names). Importers store ``meta["placeholder_titles"]`` (count) and ``meta["placeholder_title_ids"]`` (sorted
  dense item ids); text-based teachers read them (:func:`placeholder_title_ids` also works on datasets prepared
  before these keys existed).
* Split warnings (:func:`split_warnings`): a split that is missing or empty, valid/test rows drawn from fewer
  than 10 % of the users, or more than half of the test targets never seen in training. They are printed on
  import (stderr) and by ``data stats``, and stored in ``meta["split_warnings"]``.
"""
from __future__ import annotations

import re
from typing import Iterable, Mapping, Sequence

import numpy as np

from dllm2rec.data.schema import SPLITS

# Amazon ASINs of products are "B0" + 8 alphanumerics; books use their ISBN-10 (9 digits + digit or X)
ASIN_RE = re.compile(r"^(?:B0[0-9A-Z]{8}|[0-9]{9}[0-9X])$")
PLACEHOLDER = "item {}"
MIN_USER_SHARE = 0.10
MAX_UNSEEN_TEST = 0.50


def is_placeholder_title(title: str, raw_id: object | None = None) -> bool:
    """True when ``title`` names no item: empty, 'unknown', the raw id, 'item <raw id>' or an ASIN-like id."""
    t = str(title).strip()
    if not t or t.lower() == "unknown" or ASIN_RE.match(t):
        return True
    return raw_id is not None and t in (str(raw_id), PLACEHOLDER.format(raw_id))


def titles_for(vocab: Sequence, title_of: Mapping[str, str]) -> tuple[list[str], list[int]]:
    """Titles in dense-id order (missing ones → ``item <raw id>``) and the dense ids of the placeholders."""
    titles, ids = [], []
    for i, raw in enumerate(vocab):
        t = title_of.get(str(raw))
        if t is None or is_placeholder_title(t, raw):
            ids.append(i)
        titles.append(PLACEHOLDER.format(raw) if t is None else t)
    return titles, ids


def record_placeholders(meta: dict, ids: Iterable[int]) -> dict:
    ids = sorted(int(i) for i in ids)
    meta["placeholder_titles"] = len(ids)
    meta["placeholder_title_ids"] = ids
    return meta


def placeholder_title_ids(ds) -> list[int]:
    """Dense ids of the items of ``ds`` without a real title (from meta, else recomputed from the titles)."""
    if "placeholder_title_ids" in ds.meta:
        return list(ds.meta["placeholder_title_ids"])
    raw = ds.meta.get("item_raw_ids") or list(range(ds.n_items))
    return [i for i, (t, r) in enumerate(zip(ds.titles, raw)) if is_placeholder_title(t, r)]


def titles_report(ds) -> str:
    """One line: how many items have a real title."""
    n = len(placeholder_title_ids(ds))
    if n == 0:
        return f"all {ds.n_items:,} items have a title"
    return f"{n:,} of {ds.n_items:,} items have no real title (missing, placeholder or an id such as an ASIN)"


def split_warnings(ds) -> list[str]:
    """One-line warnings about a degenerate split (see module doc); empty when the split looks sound."""
    out: list[str] = []
    for s in SPLITS:
        if s not in ds.splits:
            out.append(f"split '{s}' is missing")
        elif len(ds.splits[s]) == 0:
            out.append(f"split '{s}' is empty")
    have = [ds.splits[s] for s in SPLITS if s in ds.splits]
    if have and all(sp.user is not None for sp in have):
        total = len(np.unique(np.concatenate([sp.user for sp in have])))
    else:
        total = int(ds.meta.get("users") or 0)
    for s in ("valid", "test"):
        sp = ds.splits.get(s)
        if sp is None or sp.user is None or not total or len(sp) == 0:
            continue
        k = len(np.unique(sp.user))
        if k < MIN_USER_SHARE * total:
            out.append(f"{s} rows come from {k:,} of {total:,} users ({k / total:.1%} < {MIN_USER_SHARE:.0%}): "
                       f"the split evaluates a few users only (recipe {ds.meta.get('recipe', '?')}; "
                       f"try --recipe leave-one-out)")
    tr, te = ds.splits.get("train"), ds.splits.get("test")
    if tr is not None and te is not None and len(tr) and len(te):
        seen = np.zeros(ds.n_items + 1, dtype=bool)
        seen[tr.target] = True
        seen[tr.seq.ravel()] = True  # PAD lands in the spare slot n_items
        unseen = float((~seen[te.target]).mean())
        if unseen > MAX_UNSEEN_TEST:
            out.append(f"{unseen:.0%} of test targets never occur in train (> {MAX_UNSEEN_TEST:.0%}): "
                       f"a model cannot learn them")
    return out
