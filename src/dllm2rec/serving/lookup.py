"""Item lookup for requests: internal ids, the dataset's own (raw) ids, and exact or loose titles.

``id_type`` says what a request's history items are:

* ``"auto"`` (default, the behaviour before ``id_type`` existed): an int is an internal id (0..N-1), a string an
  item title;
* ``"internal"``: every item is an internal id (int);
* ``"raw"``: every item is one of the dataset's own item ids (MovieLens ids, ASINs, ... as strings; an int is
  taken as its decimal string, so ``1`` and ``"1"`` are the same raw id); needs a bundle with ``raw_ids.json``;
* ``"title"``: every item is an item title (string).

``title_match`` says how a title is compared: ``"exact"`` (default; case-sensitive, whole string) or ``"loose"``:
an exact match still wins, else both sides are reduced to :func:`loose_key` (Unicode NFKC, casefold, accents
dropped, apostrophes dropped, every other punctuation character turned into a space, runs of whitespace collapsed
to one, trimmed) and compared. A year in the title is kept, not stripped: ``"toy story"`` does not match
``"Toy Story (1995)"`` but ``"toy story 1995"`` and ``"TOY STORY (1995)"`` do (the error then points at the title
with the year). A loose key shared by several items is refused, listing a few of them.
"""
from __future__ import annotations

import re
import threading
import unicodedata
from typing import Any, Sequence

import numpy as np

ID_TYPES = ("auto", "internal", "raw", "title")
TITLE_MATCHES = ("exact", "loose")
_APOSTROPHES = frozenset("'\u2019\u2018\u02bc`")
_YEAR = re.compile(r"\s*\(\d{4}\)\s*$")
_SHOWN = 5  # items listed in an "ambiguous title" error


def _short(x: Any, limit: int = 60) -> str:
    """``repr`` of a client-supplied value, cut to ``limit`` characters (a huge id stays one short line)."""
    if isinstance(x, int) and abs(x) >= 1 << 63:
        return f"{'-' if x < 0 else ''}<{abs(x).bit_length()}-bit integer>"
    r = repr(x)
    return r if len(r) <= limit else r[:limit] + "…"


class RequestError(ValueError):
    """A bad request; ``field`` names the offending input (e.g. ``histories[0][3]``, ``k``)."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


def loose_key(title: str) -> str:
    """The key of ``title_match="loose"``: NFKC, casefold, accents and apostrophes dropped, other punctuation ->
    space, whitespace collapsed. ``"Schindler's List (1993)"`` -> ``"schindlers list 1993"``."""
    s = unicodedata.normalize("NFKD", unicodedata.normalize("NFKC", title).casefold())
    out = []
    for c in s:
        if c in _APOSTROPHES or unicodedata.combining(c):
            continue
        out.append(" " if unicodedata.category(c).startswith("P") else c)
    return " ".join("".join(out).split())


def _is_int(x: Any) -> bool:
    t = type(x)
    return t is int or (isinstance(x, (int, np.integer)) and t is not bool and not isinstance(x, np.bool_))


def check_mode(id_type: Any, title_match: Any, has_raw: bool) -> None:
    """RequestError (field ``id_type`` / ``title_match``) for an unknown mode, or ``raw`` without raw ids."""
    if id_type not in ID_TYPES or type(id_type) is not str:
        raise RequestError("id_type", f"id_type: must be one of {', '.join(map(repr, ID_TYPES))}, got "
                                      f"{_short(id_type)}")
    if title_match not in TITLE_MATCHES or type(title_match) is not str:
        raise RequestError("title_match", f"title_match: must be 'exact' or 'loose', got {_short(title_match)}")
    if id_type == "raw" and not has_raw:
        raise RequestError("id_type", "id_type: 'raw' needs the dataset's own item ids, but this bundle has none "
                                      "(no raw_ids.json: its dataset had no meta.item_raw_ids, or it was exported "
                                      "by an older dllm2rec); send internal ids or titles, or re-export the bundle")


class ItemLookup:
    """Maps request items to internal ids 0..N-1 (see the module docstring for the modes)."""

    def __init__(self, titles: Sequence[str], raw_ids: Sequence[str] | None = None):
        self.titles = list(titles)
        self.n_items = len(self.titles)
        exact: dict[str, int] = {}
        for i, t in enumerate(self.titles):
            exact[t] = -1 if t in exact else i  # -1 marks an ambiguous title (several ids)
        self.title_to_id = exact
        self.raw_ids: list[str] | None = None
        self.raw_to_id: dict[str, int] = {}
        if raw_ids is not None:
            raw = [str(r) for r in raw_ids]
            if len(raw) != self.n_items:
                raise ValueError(f"raw_ids has {len(raw)} entries but there are {self.n_items} items")
            self.raw_to_id = {r: i for i, r in enumerate(raw)}
            if len(self.raw_to_id) != len(raw):
                seen: dict[str, int] = {}
                for i, r in enumerate(raw):
                    if r in seen:
                        raise ValueError(f"raw_ids: raw id {_short(r)} is given to items {seen[r]} and {i}")
                    seen[r] = i
            self.raw_ids = raw
        self._loose: dict[str, list[int]] | None = None  # built on the first loose lookup
        self._noyear: dict[str, list[int]] | None = None
        self._build_lock = threading.Lock()

    # ------------------------------------------------------------------------------------------- loose keys
    def _loose_maps(self) -> tuple[dict[str, list[int]], dict[str, list[int]]]:
        if self._loose is None:
            with self._build_lock:
                if self._loose is None:
                    loose: dict[str, list[int]] = {}
                    noyear: dict[str, list[int]] = {}
                    for i, t in enumerate(self.titles):
                        loose.setdefault(loose_key(t), []).append(i)
                        if _YEAR.search(t):
                            noyear.setdefault(loose_key(_YEAR.sub("", t)), []).append(i)
                    self._noyear = noyear
                    self._loose = loose
        return self._loose, self._noyear  # type: ignore[return-value]

    def _listing(self, ids: list[int]) -> str:
        shown = ", ".join(f"id {j} ({_short(self.titles[j], 40)})" for j in ids[:_SHOWN])
        return shown + (f", … ({len(ids) - _SHOWN} more)" if len(ids) > _SHOWN else "")

    # ------------------------------------------------------------------------------------------- lookups
    def by_title(self, x: str, field: str, title_match: str = "exact") -> int:
        i = self.title_to_id.get(x)
        if i is not None and i >= 0:
            return i
        if title_match == "loose":
            loose, noyear = self._loose_maps()
            key = loose_key(x)
            ids = loose.get(key, [])
            if len(ids) == 1:
                return ids[0]
            if len(ids) > 1:
                raise RequestError(field, f"{field}: ambiguous title {_short(x)} (title_match='loose') matches "
                                          f"{len(ids)} items: {self._listing(ids)}; pass the exact title or the id")
            hint = ""
            if noyear.get(key):
                hint = f"; the year is part of the title: {self._listing(noyear[key])}"
            raise RequestError(field, f"{field}: unknown item title {_short(x)} (title_match='loose'){hint}")
        if i is not None:  # several items share this exact title
            ids = [j for j, t in enumerate(self.titles) if t == x]
            raise RequestError(field, f"{field}: item title {_short(x)} is ambiguous (ids {ids[:20]}); pass the id")
        hint = ""
        if x.strip().lstrip("-").isdigit():
            hint = "; item ids must be given as integers, not strings"
            if x in self.raw_to_id:
                hint += f" ({_short(x)} is the raw item id of item {self.raw_to_id[x]}: pass id_type='raw')"
        elif x in self.raw_to_id:
            hint = f"; {_short(x)} is the raw item id of item {self.raw_to_id[x]}: pass id_type='raw'"
        raise RequestError(field, f"{field}: unknown item title {_short(x)}{hint}")

    def by_raw(self, x: Any, field: str) -> int:
        if isinstance(x, str):
            key = str(x)
        elif _is_int(x):
            x = int(x)
            if abs(x) >= 10 ** 40:  # no dataset id is that long; str() of a huge int is slow
                raise RequestError(field, f"{field}: unknown raw item id {_short(x)}")
            key = str(x)
        else:
            raise RequestError(field, f"{field}: expected a raw item id (str or int) with id_type='raw', got "
                                      f"{type(x).__name__} {_short(x)}")
        i = self.raw_to_id.get(key)
        if i is None:
            raise RequestError(field, f"{field}: unknown raw item id {_short(x)} (not one of the dataset's "
                                      f"{self.n_items} item ids)")
        return i

    def resolve(self, x: Any, field: str, id_type: str = "auto", title_match: str = "exact") -> int:
        """One request item -> internal id, or a RequestError naming ``field`` and the item."""
        if id_type == "raw":
            return self.by_raw(x, field)
        if _is_int(x):
            if id_type == "title":
                raise RequestError(field, f"{field}: expected an item title (str) with id_type='title', got int "
                                          f"{_short(int(x))}")
            x = int(x)
            if 0 <= x < self.n_items:
                return x
            raise RequestError(field, f"{field}: unknown item id {_short(x)} (valid ids are 0..{self.n_items - 1})")
        if type(x) is str:
            if id_type == "internal":
                raise RequestError(field, f"{field}: expected an internal item id (int) with id_type='internal', "
                                          f"got str {_short(x)}")
            return self.by_title(x, field, title_match)
        want = {"internal": "an internal item id (int)", "title": "an item title (str)"}.get(
            id_type, "an item id (int) or title (str)")
        raise RequestError(field, f"{field}: expected {want}, got {type(x).__name__} {_short(x)}")

    def raw_of(self, ids: list[int]) -> list[str | None]:
        raw = self.raw_ids
        return [None] * len(ids) if raw is None else [raw[j] for j in ids]
