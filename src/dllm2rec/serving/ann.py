"""Top-k over the item matrix for serving: exact, or an approximate faiss index (HNSW, IVF-Flat) for big catalogues.

A student scores item i as ``h · w_i + b_i = [h, 1] · [w_i, b_i]``: the output bias is folded in as one extra
dimension, so every index here is a plain inner-product (MIPS) index over the ``[N, d+1]`` matrix, and its scores
are the model's scores (not a proxy such as cosine).

* ``exact``: ``addmm`` + ``topk`` in torch (rows chunked so a ``[rows, N]`` block stays under ~256 MB). No faiss.
* ``flat``: faiss ``IndexFlatIP``, also exact (a faiss reference; the Recommender's exact path is torch).
* ``hnsw``: ``IndexHNSWFlat`` (``M``, ``ef_construction``, ``ef_search``), inner product.
* ``ivf``: ``IndexIVFFlat`` with an inner-product coarse quantizer (``nlist``, ``nprobe``), trained (k-means) on
  a seeded sample of ``train_size`` items.

History exclusion (:func:`topk_excluding`): the ANN is asked for ``k + |set(history)|`` results, history items are
dropped, and the first k kept. An ANN can still come back short (IVF: the probed lists hold too few items; HNSW: the
graph search returns -1 padding). A row that has fewer than ``min(k, N - |history|)`` results is answered by the
exact scan instead, and counted (``Recommender.metadata()["index"]["exact_fallbacks"]``), so a request never gets
fewer than k items while the catalogue has k candidates left.

Safety: indexes are **built at load time** from the bundle's hash-checked weights; a bundle never carries a faiss
index file, because ``faiss.read_index`` parses a binary format in C++ that is not hardened against crafted input
(and an index file could silently disagree with the weights). The cost is the build at load: seconds for IVF,
minutes for HNSW at 10^6 items (see benchmarks/bench_ann.py).

faiss is imported lazily (``pip install 'dllm2rec[faiss]'``); ``threads`` is applied with
``faiss.omp_set_num_threads`` before every build and search, because faiss's OpenMP pool is not torch's.
"""
from __future__ import annotations

import math
import time
from typing import Any, Sequence

import numpy as np
import torch

from dllm2rec.errors import Dllm2recError, MissingDependencyError

__all__ = ["ANN_KINDS", "EXACT_MAX_ITEMS", "INDEX_KINDS", "ExactIndex", "FaissIndex", "build_index",
           "check_params", "choose_index", "chosen_index", "default_params", "topk_excluding"]

INDEX_KINDS = ("exact", "flat", "hnsw", "ivf")
ANN_KINDS = ("hnsw", "ivf")
# Exact scan is the default up to this many items. Why 200,000: the exact batch-1 cost grows with N (one [1, N]
# GEMV + topk; memory-bound once the matrix leaves the cache). benchmarks/bench_ann.py's sweep, 1 thread, on the
# loaded shared 2-core machine (2026-12-01, two runs, to be rerun quiet): p50 1.1-1.3 ms at 10^5, 2.5-4.4 ms at
# 2*10^5, 6-22 ms at 5*10^5, 12-51 ms at 10^6. At 2*10^5 the scan is still a few ms (the order of the rest of a request over HTTP) with
# recall 1; beyond it the scan dominates, while IVF answers in < 1 ms at 10^6 (recall@20 ~0.96, synthetic vectors).
EXACT_MAX_ITEMS = 200_000
_MAX_BLOCK = 1 << 26  # scores per exact block (256 MB float32)


def _sqrt_nlist(n: int) -> int:
    # ~sqrt(N) lists (1,000 at 10^6): k-means on a sample stays seconds at one thread; at least 1, at most N
    return max(1, min(n, int(round(math.sqrt(n)))))


def default_params(kind: str, n_items: int) -> dict[str, int]:
    """Default parameters of an index kind for a catalogue of ``n_items`` (tuned with benchmarks/bench_ann.py)."""
    if kind == "hnsw":
        # ef_search 256: recall@20 0.96 at 10^6 (synthetic, bench_ann); 128 gave 0.935 at half the latency
        return {"M": 32, "ef_construction": 80, "ef_search": 256}
    if kind == "ivf":
        nlist = _sqrt_nlist(n_items)
        # faiss wants >= 39 training points per list; 64 per list keeps k-means a few seconds at 10^6
        # nprobe 64 of 1,000 lists: recall@20 0.96 at 10^6 (synthetic, bench_ann); 32 gave 0.94
        return {"nlist": nlist, "nprobe": min(nlist, 64), "train_size": min(n_items, max(64 * nlist, 10_000))}
    if kind in ("exact", "flat"):
        return {}
    raise Dllm2recError(f"unknown index kind {kind!r} (choose one of {', '.join(INDEX_KINDS)})")


_PARAM_KEYS = {"exact": (), "flat": (), "hnsw": ("M", "ef_construction", "ef_search"),
               "ivf": ("nlist", "nprobe", "train_size")}


def check_params(kind: str, params: dict[str, Any] | None, n_items: int, where: str = "index.params") -> dict[str, int]:
    """Defaults for ``kind`` updated with ``params``; Dllm2recError naming ``where.KEY`` on a bad key or value."""
    out = default_params(kind, n_items)
    for key, v in (params or {}).items():
        if key not in _PARAM_KEYS[kind]:
            raise Dllm2recError(f"{where}.{key}: not a parameter of the {kind} index "
                                f"(expected {', '.join(_PARAM_KEYS[kind]) or 'none'})")
        if type(v) is not int or v < 1:
            raise Dllm2recError(f"{where}.{key}: must be a positive integer, got {v!r}")
        out[key] = v
    if kind == "ivf":
        out["nlist"] = min(out["nlist"], n_items)
        out["nprobe"] = min(out["nprobe"], out["nlist"])
        out["train_size"] = min(max(out["train_size"], out["nlist"]), n_items)
    return out


def choose_index(n_items: int, dim: int | None = None) -> dict[str, Any]:
    """The default index for a catalogue: ``{"kind", "params", "reason", "built"}`` (recorded by ``export``)."""
    if n_items <= EXACT_MAX_ITEMS:
        return {"kind": "exact", "params": {}, "built": "nothing to build",
                "reason": f"{n_items:,} items <= {EXACT_MAX_ITEMS:,}: an exact scan (one [1, N] product + top-k) "
                          f"costs a few ms per request at this size and has recall 1"}
    p = default_params("ivf", n_items)
    return {"kind": "ivf", "params": p, "built": "at load time from the hash-checked weights (no index file)",
            "reason": f"{n_items:,} items > {EXACT_MAX_ITEMS:,}: the exact scan grows linearly with N; IVF-Flat "
                      f"(nlist={p['nlist']}, nprobe={p['nprobe']}) scans ~nprobe/nlist of the items, and builds in "
                      f"seconds at load (HNSW is similar per request but takes minutes to build)"}


def chosen_index(index: str, n_items: int) -> dict[str, Any]:
    """The manifest's ``index`` record: the default for ``n_items`` (``"auto"``) or the kind the user named."""
    if index == "auto":
        return choose_index(n_items)
    if index not in INDEX_KINDS:
        raise Dllm2recError(f"--index must be auto or one of {', '.join(INDEX_KINDS)}, got {index!r}")
    return {"kind": index, "params": default_params(index, n_items), "reason": f"chosen at export (--index {index})",
            "built": "nothing to build" if index == "exact" else "at load time from the hash-checked weights"}


def _faiss():
    try:
        import faiss
    except ImportError:
        raise MissingDependencyError("an ANN index (hnsw, ivf, flat) needs faiss: pip install 'dllm2rec[faiss]'") \
            from None
    return faiss


def folded_items(weight: torch.Tensor, bias: torch.Tensor) -> np.ndarray:
    """``[N, d+1]`` float32 C-contiguous: each item's output weight with its bias appended."""
    return torch.cat([weight, bias[:, None]], dim=1).detach().float().contiguous().numpy()


def folded_queries(state: torch.Tensor | np.ndarray) -> np.ndarray:
    """``[B, d+1]`` float32: each encoder state with a 1 appended (so the last dimension adds the bias)."""
    s = torch.as_tensor(state).detach().float()
    return torch.cat([s, torch.ones(s.shape[0], 1)], dim=1).contiguous().numpy()


class ExactIndex:
    """Exact top-k by ``addmm`` + ``topk`` (torch), over blocks of rows so memory stays bounded."""

    kind = "exact"

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, params: dict[str, Any] | None = None,
                 threads: int | None = None):
        self.weight = weight.detach().float().contiguous()
        self.bias = bias.detach().float().contiguous()
        self._wt = self.weight.t()
        self.n_items = int(self.weight.shape[0])
        self.params: dict[str, int] = {}
        self.build_s = 0.0
        self._rows = max(1, _MAX_BLOCK // max(self.n_items, 1))

    def memory_bytes(self) -> int:
        return self.n_items * (self.weight.shape[1] + 1) * 4

    @torch.inference_mode()
    def search(self, state: torch.Tensor | np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        s = torch.as_tensor(state).float()
        k = min(int(k), self.n_items)
        vals, idx = [], []
        for a in range(0, s.shape[0], self._rows):
            v, i = torch.topk(torch.addmm(self.bias, s[a:a + self._rows], self._wt), k, dim=1, sorted=True)
            vals.append(v)
            idx.append(i)
        return torch.cat(vals).numpy(), torch.cat(idx).numpy()

    @torch.inference_mode()
    def search_row(self, h: torch.Tensor, exclude: Sequence[int], k: int) -> tuple[list[float], list[int]]:
        """Exact top-k of one state ``h [d]`` with the items ``exclude`` removed (fewer only if fewer remain)."""
        sc = torch.addmv(self.bias, self.weight, torch.as_tensor(h).float())
        if len(exclude):
            sc[torch.as_tensor(list(exclude), dtype=torch.long)] = float("-inf")
        n = min(int(k), self.n_items - len(set(exclude)))
        v, i = torch.topk(sc, max(n, 0), sorted=True)
        return v.tolist(), i.tolist()


class FaissIndex:
    """A faiss inner-product index (``flat``, ``hnsw`` or ``ivf``) over the bias-folded item matrix."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, kind: str = "flat",
                 params: dict[str, Any] | None = None, threads: int | None = None, seed: int = 0):
        faiss = _faiss()
        if kind not in ("flat", "hnsw", "ivf"):
            raise ValueError(f"unknown faiss index kind {kind!r} (flat, hnsw or ivf)")
        self.kind = kind
        self.threads = int(threads) if threads else None
        mat = folded_items(weight, bias)
        self.n_items, d = mat.shape
        self.dim = d
        self.params = check_params(kind, params, self.n_items)
        p = self.params
        self._set_threads()
        t0 = time.perf_counter()
        if kind == "flat":
            index = faiss.IndexFlatIP(d)
        elif kind == "hnsw":
            index = faiss.IndexHNSWFlat(d, p["M"], faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = p["ef_construction"]
        else:
            self._quantizer = faiss.IndexFlatIP(d)  # kept referenced: the IVF index does not own it
            index = faiss.IndexIVFFlat(self._quantizer, d, p["nlist"], faiss.METRIC_INNER_PRODUCT)
            index.cp.seed = seed
            # a seeded sample, sorted so the training read is sequential; the k-means cost is sample x nlist x d
            rows = np.sort(np.random.default_rng(seed).choice(self.n_items, p["train_size"], replace=False))
            index.train(mat[rows])
        index.add(mat)
        if kind == "hnsw":
            index.hnsw.efSearch = p["ef_search"]
        elif kind == "ivf":
            index.nprobe = p["nprobe"]
        self.build_s = time.perf_counter() - t0
        self.index = index

    def _set_threads(self) -> None:
        if self.threads:
            _faiss().omp_set_num_threads(self.threads)

    def memory_bytes(self) -> int:
        """Bytes the index holds (vectors + graph links / inverted lists + centroids), from its own arrays."""
        n, d = self.n_items, self.dim
        vec = n * d * 4
        if self.kind == "hnsw":
            h = self.index.hnsw
            return vec + h.neighbors.size() * 4 + h.offsets.size() * 8 + h.levels.size() * 4
        if self.kind == "ivf":
            return vec + n * 8 + self.params["nlist"] * d * 4  # codes + ids + centroids
        return vec

    def search(self, state: torch.Tensor | np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores [B, k'], ids [B, k']) best first, k' = min(k, N); id -1 (score -inf / -FLT_MAX) pads a short row."""
        q = state if isinstance(state, np.ndarray) and state.shape[1] == self.dim else folded_queries(state)
        self._set_threads()
        return self.index.search(np.ascontiguousarray(q, dtype=np.float32), min(int(k), self.n_items))


def build_index(kind: str, weight: torch.Tensor, bias: torch.Tensor, params: dict[str, Any] | None = None,
                threads: int | None = None) -> ExactIndex | FaissIndex:
    if kind == "exact":
        return ExactIndex(weight, bias, params, threads)
    if kind not in INDEX_KINDS:
        raise ValueError(f"unknown index {kind!r} (choose one of {', '.join(INDEX_KINDS)})")
    return FaissIndex(weight, bias, kind, params, threads)


def topk_excluding(index: ExactIndex | FaissIndex, exact: ExactIndex, state: torch.Tensor,
                   rows: Sequence[Sequence[int]], k: int, exclude: bool) -> tuple[list, list, int]:
    """Top-k per row from ``index``; with ``exclude``, each row's history items removed (over-fetch, filter).

    Returns (scores, ids, exact_fallbacks): a row the index answered with fewer than ``min(k, N - |history|)``
    items is recomputed by ``exact`` (the count of such rows is the third value)."""
    n = index.n_items
    hist = [set(r) for r in rows] if exclude else [set()] * len(rows)
    extra = max((len(h) for h in hist), default=0)  # one search per batch: the longest history sets the over-fetch
    D, I = index.search(state, min(k + extra, n))
    vals, idx, fallbacks = [], [], 0
    for j, (drow, irow, seen) in enumerate(zip(D.tolist(), I.tolist(), hist)):
        keep = [(d, i) for d, i in zip(drow, irow) if i >= 0 and i not in seen][:k]
        if len(keep) < min(k, n - len(seen)):  # the ANN came back short: answer this row exactly
            fallbacks += 1
            v, i = exact.search_row(state[j], sorted(seen), k)
            keep = list(zip(v, i))
        vals.append([d for d, _ in keep])
        idx.append([i for _, i in keep])
    return vals, idx, fallbacks
