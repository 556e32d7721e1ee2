"""``Recommender``: load a bundle and answer top-k requests in-process (the server is a thin layer over it).

    rec = Recommender.load("bundle/")          # backend="torch" | "torchscript" | "compile" | "onnx"
    rec.recommend([[12, 7, 3], ["Toy Story", "Heat"]], k=10)  # -> [Recommendation(ids, titles, scores, raw_ids)]
    rec.recommend([["1", "50"]], id_type="raw")   # the dataset's own item ids (raw_ids.json in the bundle)

Histories are item ids (ints) or titles (strings; mixed is fine) by default; ``id_type`` ("internal", "raw",
"title") and ``title_match`` ("exact", "loose") are resolved by serving/lookup.py. Longer than the student's
``max_len`` L: only the last L items are encoded, as in training. ``exclude_history`` removes every item of the (whole) given history
from the candidates. ``index``: ``"auto"`` (default) uses the index the bundle's manifest chose at export (exact
scan for old bundles and catalogues up to 2*10^5 items); ``"exact"``, ``"hnsw"``, ``"ivf"`` or ``"flat"`` override
it (``index_params`` tunes it, e.g. ``{"nprobe": 64}``). ANN indexes live in serving/ann.py and are built here, at
load, from the hash-checked weights; a row an ANN answers short is answered exactly instead (and counted).

Latency: inputs go into preallocated numpy/torch buffers, scores into a reused [B, N] buffer (grown on demand; batches
are chunked so it stays under ~256 MB even for million-item catalogues), the
folded item matrix is cached, and everything runs under ``torch.inference_mode()``; a lock makes the shared
buffers safe when a Recommender is called from several threads.
"""
from __future__ import annotations

import threading
from dataclasses import asdict, dataclass
from dataclasses import field as _dc_field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from dllm2rec.serving.ann import INDEX_KINDS, ExactIndex, build_index, check_params, topk_excluding
from dllm2rec.serving.bundle import fold_hooks, load_bundle, read_onnx
from dllm2rec.serving.lookup import ID_TYPES, TITLE_MATCHES, ItemLookup, RequestError, _short, check_mode
from dllm2rec.serving.onnx_export import EncoderScorer, OnnxScorer, example_inputs, onnx_bytes
from dllm2rec.serving.raw_ids import read_raw_ids
from dllm2rec.students.base import SequentialStudent

__all__ = ["BACKENDS", "ID_TYPES", "INDEX_CHOICES", "TITLE_MATCHES", "Recommendation", "Recommender", "RequestError"]

BACKENDS = ("torch", "torchscript", "compile", "onnx")
INDEX_CHOICES = ("auto",) + INDEX_KINDS + ("faiss",)  # auto: the bundle's choice; faiss: legacy (faiss_kind)
_NEG_INF = float("-inf")


@dataclass
class Recommendation:
    ids: list[int]
    titles: list[str]
    scores: list[float]
    raw_ids: list[str | None] = _dc_field(default_factory=list)  # the dataset's own ids; None: bundle has none

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Recommender:
    def __init__(self, model: SequentialStudent, titles: Sequence[str], manifest: dict[str, Any] | None = None,
                 backend: str = "torch", max_batch: int = 1024, threads: int | None = None,
                 onnx_model: bytes | str | Path | None = None, index: str = "auto", faiss_kind: str = "flat",
                 raw_ids: Sequence[str] | None = None, index_params: dict[str, Any] | None = None):
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
        if model.input_offset is not None or model.output_offset is not None:
            fold_hooks(model)
        if threads:
            torch.set_num_threads(int(threads))
        self.model = model.eval()
        self.manifest = manifest or {}
        self.backend = backend
        self.n_items = int(model.n_items)
        self.max_len = int(model.max_len)
        self.pad = self.n_items
        if int(max_batch) < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        # rows per model call: at most max_batch, and at most ~64M scores (256 MB float32) per call
        self.max_batch = max(1, min(int(max_batch), (1 << 26) // max(self.n_items, 1)))
        if len(titles) != self.n_items:
            raise ValueError(f"titles has {len(titles)} entries but the student scores {self.n_items} items")
        self.lookup = ItemLookup(titles, raw_ids)  # ValueError: raw_ids of the wrong length or not unique
        self.titles = self.lookup.titles
        self.raw_ids = self.lookup.raw_ids  # the dataset's own item ids (index = internal id), or None
        self._title_to_id = self.lookup.title_to_id
        self._lock = threading.Lock()

        # cached folded item matrix (output side) + preallocated buffers
        with torch.no_grad():
            self.weight = model.output_weight().detach().contiguous()
            self.bias = model.output_bias().detach().contiguous()
        self._weight_t = self.weight.t()
        self._seq_np = np.full((self.max_batch, self.max_len), self.pad, dtype=np.int64)
        self._lens_np = np.ones(self.max_batch, dtype=np.int64)
        self._seq_t = torch.from_numpy(self._seq_np)
        self._lens_t = torch.from_numpy(self._lens_np)
        self._scores = torch.empty(1, self.n_items, dtype=self.weight.dtype)  # grown to the largest batch seen

        self._scripted = None
        self._onnx = None
        if backend == "torchscript":
            self._scripted = _torchscript(model)
        elif backend == "compile":  # torch.compile (inductor; needs a C++ compiler, compiles on first calls)

            self._scripted = torch.compile(EncoderScorer(model).eval(), dynamic=True)
        elif backend == "onnx":
            src = onnx_model if onnx_model is not None else onnx_bytes(model)
            self._onnx = OnnxScorer(src, self.n_items, max_batch=1, threads=threads)  # output buffer grows
        self.index = None  # None: the exact torch path below (no over-fetch needed)
        self.index_info = self._build_index(index, faiss_kind, index_params, threads)
        # warm-up: lazy kernel/thread-pool initialisation (and compilation) happens here, not on request 1
        self.recommend([[0]], k=1)
        if backend == "compile":
            self.recommend([[0], [1, 2]], k=1)

    def _build_index(self, index: str, faiss_kind: str, params: dict[str, Any] | None, threads: int | None):
        if index not in INDEX_CHOICES:
            raise ValueError(f"unknown index {index!r} (choose one of {', '.join(INDEX_CHOICES)})")
        chosen = self.manifest.get("index") or {}
        if index == "auto":
            kind, source = chosen.get("kind", "exact"), "bundle manifest" if chosen else "default (old bundle)"
            if kind != "exact" and self.backend == "onnx":  # the ONNX graph yields scores, not the state
                kind, source = "exact", "onnx backend (an ANN needs the encoder state)"
        else:
            kind, source = (faiss_kind if index == "faiss" else index), "override"
        if kind not in INDEX_KINDS:
            raise ValueError(f"unknown index kind {kind!r} (choose one of {', '.join(INDEX_KINDS)})")
        if kind != "exact" and self.backend == "onnx":
            raise ValueError(f"index {kind!r} needs the encoder state; use backend 'torch' or 'torchscript'")
        if params is None and chosen.get("kind") == kind:
            params = chosen.get("params")
        info: dict[str, Any] = {"kind": kind, "source": source, "params": check_params(kind, params, self.n_items),
                                "build_s": 0.0, "exact_fallbacks": 0}
        if kind != "exact":
            self.index = build_index(kind, self.weight, self.bias, info["params"], threads)
            self._exact = ExactIndex(self.weight, self.bias)
            info["build_s"] = round(self.index.build_s, 3)
        return info

    # ------------------------------------------------------------------------------------------- loading
    @classmethod
    def load(cls, bundle: str | Path, backend: str = "torch", verify: bool = True, **kwargs: Any) -> "Recommender":
        model, titles, manifest = load_bundle(bundle, verify=verify)
        if "raw_ids" not in kwargs:  # raw_ids.json when the manifest lists it (hash-checked), else None
            kwargs["raw_ids"] = read_raw_ids(bundle, manifest, model.n_items, verify=verify)
        if backend == "onnx" and "onnx_model" not in kwargs:
            # only a model.onnx the manifest lists, from the bytes whose sha256 was checked; none: export in-process
            kwargs["onnx_model"] = read_onnx(bundle, manifest, verify=verify)
        return cls(model, titles, manifest, backend=backend, **kwargs)

    # ------------------------------------------------------------------------------------------- metadata
    def metadata(self) -> dict[str, Any]:
        m = self.manifest
        return {
            "model": m.get("model") or {"name": self.model.registry_name, "n_items": self.n_items,
                                        "max_len": self.max_len},
            "dataset": m.get("dataset"),
            "selected": m.get("selected"),
            "folded_hooks": sorted((m.get("folded_hooks") or {}).keys()),
            "created": m.get("created"),
            "backend": self.backend,
            "index": dict(self.index_info),
            "n_items": self.n_items,
            "max_len": self.max_len,
            "raw_ids": self.raw_ids is not None,
            "id_types": list(ID_TYPES) if self.raw_ids is not None else [t for t in ID_TYPES if t != "raw"],
        }

    # ------------------------------------------------------------------------------------------- input
    def item_id(self, x: Any, field: str = "item", id_type: str = "auto", title_match: str = "exact") -> int:
        """A request item -> internal id; RequestError naming ``field`` and the item otherwise.

        ``id_type``: ``"auto"`` (int = internal id, str = title), ``"internal"``, ``"raw"`` (the dataset's own
        ids, str or int) or ``"title"``; ``title_match``: ``"exact"`` or ``"loose"`` (see serving/lookup.py)."""
        check_mode(id_type, title_match, self.raw_ids is not None)
        return self.lookup.resolve(x, field, id_type, title_match)

    def parse_history(self, history: Any, field: str = "history", id_type: str = "auto",
                      title_match: str = "exact") -> list[int]:
        check_mode(id_type, title_match, self.raw_ids is not None)
        if isinstance(history, (np.ndarray, torch.Tensor)):
            history = history.tolist()
        if isinstance(history, (str, bytes)) or not isinstance(history, (list, tuple)):
            raise RequestError(field, f"{field}: expected a list of item ids or titles, got {type(history).__name__}")
        if not history:
            raise RequestError(field, f"{field}: history is empty (need at least one item)")
        resolve = self.lookup.resolve
        out = []
        if id_type == "raw":
            raw = self.lookup.raw_to_id
            for j, x in enumerate(history):
                i = raw.get(x) if type(x) is str else None  # fast path
                out.append(i if i is not None else resolve(x, f"{field}[{j}]", id_type, title_match))
            return out
        N = self.n_items
        ints_ok = id_type != "title"
        for j, x in enumerate(history):
            if ints_ok and type(x) is int and 0 <= x < N:  # fast path
                out.append(x)
            else:
                out.append(resolve(x, f"{field}[{j}]", id_type, title_match))
        return out

    def _check_k(self, k: Any) -> int:
        if type(k) is not int and not isinstance(k, np.integer) or isinstance(k, bool):
            raise RequestError("k", f"k: expected an integer, got {type(k).__name__}")
        if not 1 <= k <= self.n_items:
            raise RequestError("k", f"k: must be between 1 and the number of items ({self.n_items}), got {_short(k)}")
        return int(k)

    # ------------------------------------------------------------------------------------------- scoring
    def _fill(self, rows: list[list[int]], start: int, stop: int) -> int:
        L, seq, lens = self.max_len, self._seq_np, self._lens_np
        for i in range(start, stop):
            ids = rows[i]
            n = len(ids)
            r = i - start
            if n >= L:
                seq[r] = ids[-L:]
                lens[r] = L
            else:
                seq[r, :n] = ids
                seq[r, n:] = self.pad
                lens[r] = n
        return stop - start

    def _score_filled(self, B: int) -> torch.Tensor:
        """Scores [B, N] for the first B rows of the input buffers (into the score buffer)."""
        if self._onnx is not None:
            return torch.from_numpy(self._onnx(self._seq_np[:B], self._lens_np[:B]))
        seq, lens = self._seq_t[:B], self._lens_t[:B]
        if self._scripted is not None:
            return self._scripted(seq, lens)
        h = self.model.encode(seq, lens)
        if B > self._scores.shape[0]:
            self._scores = torch.empty(B, self.n_items, dtype=self.weight.dtype)
        return torch.addmm(self.bias, h, self._weight_t, out=self._scores[:B])

    def scores(self, histories: Iterable[Any], id_type: str = "auto", title_match: str = "exact") -> torch.Tensor:
        """Raw scores [B, N] (a copy) for a batch of histories (no exclusion)."""
        rows = [self.parse_history(h, f"histories[{i}]", id_type, title_match) for i, h in enumerate(histories)]
        outs = []
        with self._lock, torch.inference_mode():
            for s in range(0, len(rows), self.max_batch):
                B = self._fill(rows, s, min(s + self.max_batch, len(rows)))
                outs.append(self._score_filled(B).clone())
        return torch.cat(outs) if outs else torch.empty(0, self.n_items)

    def _topk(self, rows: list[list[int]], k: int, exclude: bool) -> list[Recommendation]:
        res: list[Recommendation] = []
        titles, raw_of = self.titles, self.lookup.raw_of
        with self._lock, torch.inference_mode():
            for s in range(0, len(rows), self.max_batch):
                e = min(s + self.max_batch, len(rows))
                B = self._fill(rows, s, e)
                if self.index is not None:
                    h = self.model.encode(self._seq_t[:B], self._lens_t[:B])
                    vals, idx, fb = topk_excluding(self.index, self._exact, h, rows[s:e], k, exclude)
                    self.index_info["exact_fallbacks"] += fb
                else:
                    scores = self._score_filled(B)
                    if exclude:
                        if B == 1:
                            scores[0, rows[s]] = _NEG_INF
                        else:
                            r = np.repeat(np.arange(B), [len(h) for h in rows[s:e]])
                            c = np.fromiter((x for h in rows[s:e] for x in h), dtype=np.int64, count=len(r))
                            scores[torch.from_numpy(r), torch.from_numpy(c)] = _NEG_INF
                    v, i = torch.topk(scores, k, dim=1, sorted=True)
                    vals, idx = v.tolist(), i.tolist()
                for vr, ir in zip(vals, idx):
                    if exclude and vr and vr[-1] == _NEG_INF:  # fewer than k candidates left
                        n = next(j for j, x in enumerate(vr) if x == _NEG_INF)
                        vr, ir = vr[:n], ir[:n]
                    res.append(Recommendation(ir, [titles[j] for j in ir], vr, raw_of(ir)))
        return res

    # ------------------------------------------------------------------------------------------- public API
    def recommend(self, histories: Iterable[Any], k: int = 10, exclude_history: bool = True,
                  id_type: str = "auto", title_match: str = "exact") -> list[Recommendation]:
        """Top-k for each history in the batch -> one Recommendation (ids, titles, scores, raw_ids) per history.

        ``id_type`` says what the history items are: ``"auto"`` (default: int = internal id, str = exact title),
        ``"internal"``, ``"raw"`` (the dataset's own item ids; needs a bundle with raw ids) or ``"title"``;
        ``title_match="loose"`` compares titles case- and punctuation-insensitively (see serving/lookup.py)."""
        k = self._check_k(k)
        if isinstance(histories, (str, bytes)) or not isinstance(histories, (list, tuple, np.ndarray, torch.Tensor)):
            raise RequestError("histories", f"histories: expected a list of histories, got {type(histories).__name__}")
        check_mode(id_type, title_match, self.raw_ids is not None)
        rows = [self.parse_history(h, f"histories[{i}]", id_type, title_match) for i, h in enumerate(histories)]
        if not rows:
            return []
        return self._topk(rows, k, bool(exclude_history))

    def recommend_one(self, history: Any, k: int = 10, exclude_history: bool = True, id_type: str = "auto",
                      title_match: str = "exact") -> Recommendation:
        k = self._check_k(k)
        return self._topk([self.parse_history(history, "history", id_type, title_match)], k, bool(exclude_history))[0]


def _torchscript(model: SequentialStudent):
    """Traced + frozen encoder+scorer; checked against eager at batch 1 and 3."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.no_grad():
            traced = torch.jit.trace(EncoderScorer(model).eval(), example_inputs(model, 2), check_trace=False)
            frozen = torch.jit.freeze(traced)
            with torch.inference_mode():
                for B in (1, 3):
                    seq, lens = example_inputs(model, B, seed=B)
                    ref = model.score_all(model.encode(seq, lens))
                    got = frozen(seq, lens)
                    if not torch.allclose(ref, got, atol=1e-4, rtol=1e-4):
                        raise RuntimeError("TorchScript trace does not match the eager model")
    return frozen
