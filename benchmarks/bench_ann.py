"""Serving a 1,000,000-item catalogue: exact scan vs faiss HNSW vs faiss IVF-Flat (serving/ann.py).

    python benchmarks/bench_ann.py                                   # 1M items, d=64, 1 thread, + real students
    python benchmarks/bench_ann.py --items 100000 --queries 500      # quick look
    python benchmarks/bench_ann.py --real-run runs/x/best --real-data ml-100k   # recall on your own student

For each index: build time, index memory (from the index's own arrays, and the process RSS growth), batch-1
latency (p50/p99 of single-query searches: encoder state in, top-k ids out; the encoder itself is not timed — it is
the same for every index), batch throughput (rows/s at ``--batch``), and recall@k against the exact top-k on
held-out query vectors. A sweep of ef_search (HNSW) / nprobe (IVF) shows the recall/latency trade-off, and a sweep of
the exact scan's batch-1 p50 over N is the measurement behind ``EXACT_MAX_ITEMS`` (the export default).

Which vectors (printed next to every figure):

* ``synthetic``: a trained SASRec at 10^6 items is out of reach here, so item vectors are a mixture of Gaussians
  (~sqrt(N) clusters of Zipf-skewed sizes) whose norms and output biases grow with a Zipf item popularity, as a
  trained student's do (popular items score high for everyone); queries are held-out "user states" drawn near a
  popularity-weighted mix of 1-3 cluster centres. Not i.i.d. noise: on i.i.d. noise every ANN looks bad and the
  exact top-k is mostly popularity.
* ``real``: a trained student's item matrix (output weight + bias, hooks folded) and its encoder states of the
  dataset's held-out **test** histories (ML-100K / LastFM at their own N of a few thousand items), with and without
  history exclusion through ``topk_excluding`` (the serving path, exact fallback counted).

``run_ann(...)`` returns a dict (benchmarks/bench_large_catalogue.py runs it as its ``ann`` phase); ``--json PATH``
writes it. Speed figures from a shared machine are upper bounds; the lead reruns on a quiet one.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

DEFAULT_REAL = (("runs/preflight/ml100k/preflight-plain", None), ("runs/preflight/lastfm/preflight-plain", None))


def _rss() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0


def _log(msg: str) -> None:
    if not os.environ.get("CI"):
        print(msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------ vectors
def synth_items(n_items: int, dim: int, seed: int = 0):
    """(weight [N, d], bias [N], centres [C, d], cluster popularity [C]) — see the module docstring."""
    import torch

    rng = np.random.default_rng(seed)
    C = max(16, int(round(np.sqrt(n_items))))
    size_w = 1.0 / np.arange(1, C + 1) ** 0.7
    size_w /= size_w.sum()
    cluster = rng.choice(C, n_items, p=size_w)
    centres = rng.standard_normal((C, dim)).astype(np.float32)
    w = centres[cluster] + 0.6 * rng.standard_normal((n_items, dim)).astype(np.float32)
    rank = rng.permutation(n_items) + 1  # popularity rank of each item (1 = most popular)
    logpop = -1.05 * np.log(rank)  # Zipf(1.05)
    w *= ((1.0 + 0.08 * (logpop - logpop.min())) / np.sqrt(dim)).astype(np.float32)[:, None]
    bias = (0.15 * (logpop - logpop.mean())).astype(np.float32)
    cpop = np.bincount(cluster, weights=np.exp(logpop), minlength=C)
    return torch.from_numpy(w), torch.from_numpy(bias), centres, cpop / cpop.sum()


def synth_queries(centres: np.ndarray, cpop: np.ndarray, n: int, seed: int = 1) -> np.ndarray:
    """Held-out user states: a popularity-weighted mix of 1-3 cluster centres plus noise, [n, d] float32."""
    rng = np.random.default_rng(seed)
    C, d = centres.shape
    q = np.zeros((n, d), np.float32)
    for r in range(n):
        m = rng.integers(1, 4)
        cs = rng.choice(C, m, p=cpop)
        q[r] = rng.dirichlet(np.ones(m)) @ centres[cs]
    q += 0.5 * rng.standard_normal((n, d)).astype(np.float32)
    return (q * 2.0 / np.sqrt(d)).astype(np.float32)


# ------------------------------------------------------------------------------------------------ timing
def _pct(ms: Sequence[float]) -> tuple[float, float]:
    a = np.asarray(ms)
    return float(np.percentile(a, 50)), float(np.percentile(a, 99))


def batch1(search: Callable, q: np.ndarray, k: int, n: int) -> dict[str, float]:
    """p50/p99 ms of ``n`` single-query searches (cycling through the held-out queries)."""
    from dllm2rec.utils.progress import progress

    for i in range(min(5, len(q))):  # warm-up
        search(q[i:i + 1], k)
    ms = []
    for i in progress(range(n), desc="batch-1", total=n):
        j = i % len(q)
        t0 = time.perf_counter()
        search(q[j:j + 1], k)
        ms.append((time.perf_counter() - t0) * 1e3)
    p50, p99 = _pct(ms)
    return {"b1_p50_ms": round(p50, 4), "b1_p99_ms": round(p99, 4), "b1_calls": n}


def batched(search: Callable, q: np.ndarray, k: int, batch: int, n_batches: int) -> dict[str, float]:
    t = []
    for b in range(n_batches):
        s = (b * batch) % max(len(q) - batch + 1, 1)
        t0 = time.perf_counter()
        search(q[s:s + batch], k)
        t.append(time.perf_counter() - t0)
    med = float(np.median(t))
    return {"batch": batch, "batch_ms": round(med * 1e3, 2), "rows_per_s": round(batch / med, 1)}


def recall_at(ids: np.ndarray, truth: np.ndarray, k: int) -> float:
    return float(np.mean([len(set(a[:k].tolist()) & set(b[:k].tolist())) / k for a, b in zip(ids, truth)]))


# ------------------------------------------------------------------------------------------------ phases
def _sweep_exact(weight, bias, q, k, sizes, calls) -> list[dict[str, Any]]:
    from dllm2rec.serving.ann import ExactIndex

    out = []
    for n in sizes:
        ex = ExactIndex(weight[:n], bias[:n])
        r = {"n_items": n, **batch1(ex.search, q, k, calls)}
        _log(f"  exact sweep N={n:>9,}: b1 p50 {r['b1_p50_ms']:.3f} ms  p99 {r['b1_p99_ms']:.3f} ms")
        out.append(r)
    return out


def run_ann(n_items: int = 1_000_000, dim: int = 64, n_queries: int = 1000, k: int = 20, threads: int = 1,
            kinds: Sequence[str] = ("exact", "hnsw", "ivf"), batch: int = 256, n_batches: int = 3,
            b1_calls: int = 300, hnsw: dict | None = None, ivf: dict | None = None,
            ef_sweep: Sequence[int] = (64, 128, 256, 512), nprobe_sweep: Sequence[int] = (16, 32, 64, 128),
            exact_sweep: Sequence[int] = (10_000, 50_000, 100_000, 200_000, 500_000, 1_000_000),
            real: Sequence[tuple[str, str | None]] = (), seed: int = 0) -> dict[str, Any]:
    """Exact / HNSW / IVF on a synthetic clustered N x d catalogue (+ recall on real students for ``real``)."""
    import torch

    from dllm2rec.serving.ann import FaissIndex, build_index, default_params
    from dllm2rec.utils.cpu import describe

    torch.set_num_threads(int(threads))
    res: dict[str, Any] = {"cpu": describe(), "threads": int(threads), "n_items": n_items, "dim": dim, "k": k,
                           "n_queries": n_queries,
                           "vectors": "synthetic: clustered item vectors (mixture of Gaussians, Zipf popularity in "
                                      "norms and biases), held-out query states drawn near them",
                           "latency": "index search only (state -> top-k), no encoder, no history exclusion"}
    _log(f"ann bench: N={n_items:,} d={dim} k={k} threads={threads} queries={n_queries}  cpu: {res['cpu']}")
    t0 = time.perf_counter()
    weight, bias, centres, cpop = synth_items(n_items, dim, seed)
    q = synth_queries(centres, cpop, n_queries, seed + 1)
    res["synth_s"] = round(time.perf_counter() - t0, 2)
    exact = build_index("exact", weight, bias)
    _log("  exact ground truth for the held-out queries ...")
    _, truth = exact.search(q, k)
    res["indexes"] = {}
    for kind in kinds:
        params = {"hnsw": hnsw, "ivf": ivf}.get(kind)
        rss0 = _rss()
        if kind != "exact":
            _log(f"  building {kind} {default_params(kind, n_items) | (params or {})} (HNSW: minutes at 10^6) ...")
        ix = exact if kind == "exact" else build_index(kind, weight, bias, params, threads)
        qq = q if kind == "exact" else np.concatenate([q, np.ones((len(q), 1), np.float32)], 1)
        r: dict[str, Any] = {"params": ix.params, "build_s": round(ix.build_s, 2),
                             "memory_bytes": int(ix.memory_bytes()), "rss_growth_bytes": max(_rss() - rss0, 0)}
        _, ids = ix.search(qq, k)
        r["recall"] = round(recall_at(ids, truth, k), 4)
        r.update(batch1(ix.search, qq, k, b1_calls))
        r.update(batched(ix.search, qq, k, batch, n_batches))
        sweep_key, sweep = {"hnsw": ("ef_search", ef_sweep), "ivf": ("nprobe", nprobe_sweep)}.get(kind, (None, ()))
        if sweep and isinstance(ix, FaissIndex):
            r["sweep"] = []
            for v in sweep:
                if kind == "hnsw":
                    ix.index.hnsw.efSearch = v
                else:
                    ix.index.nprobe = min(v, ix.params["nlist"])
                _, ids = ix.search(qq, k)
                s = {sweep_key: v, "recall": round(recall_at(ids, truth, k), 4),
                     **batch1(ix.search, qq, k, max(b1_calls // 3, 20))}
                r["sweep"].append(s)
                _log(f"    {kind} {sweep_key}={v:<4} recall@{k} {s['recall']:.4f}  b1 p50 {s['b1_p50_ms']:.3f} ms")
            if kind == "hnsw":
                ix.index.hnsw.efSearch = ix.params["ef_search"]
            else:
                ix.index.nprobe = ix.params["nprobe"]
        res["indexes"][kind] = r
        _log(f"  {kind:<5} build {r['build_s']:.1f} s  mem {r['memory_bytes'] / 2**20:.0f} MiB  recall@{k} "
             f"{r['recall']:.4f}  b1 p50 {r['b1_p50_ms']:.3f} p99 {r['b1_p99_ms']:.3f} ms  "
             f"b{batch} {r['rows_per_s']:.0f} rows/s")
        if ix is not exact:
            del ix
    if exact_sweep:
        _log("  exact scan batch-1 p50 over N (the basis of EXACT_MAX_ITEMS):")
        res["exact_sweep"] = _sweep_exact(weight, bias, q, k, [n for n in exact_sweep if n <= n_items],
                                          max(b1_calls // 2, 50))
    if real:
        res["real"] = [run_real(path, data, k=k, threads=threads) for path, data in real]
    return res


def run_real(run: str, data: str | None = None, k: int = 20, threads: int = 1) -> dict[str, Any]:
    """Recall@k of HNSW / IVF (default parameters for the dataset's N) against exact on a trained student's
    encoded held-out test histories."""
    import torch

    from dllm2rec.data.registry import load_or_prepare
    from dllm2rec.serving.ann import ExactIndex, build_index, topk_excluding
    from dllm2rec.serving.bundle import fold_hooks, resolve_checkpoint
    from dllm2rec.students.checkpoint import load_student

    if not Path(run).exists():
        _log(f"  real: {run} not found; skipped (train one: dllm2rec train ..., then --real-run RUN)")
        return {"run": run, "skipped": "not found"}
    ckpt, _ = resolve_checkpoint(run)
    model, info = load_student(ckpt)
    fold_hooks(model)
    model.eval()
    data = data or ((info.get("meta") or {}).get("config") or {}).get("data", {}).get("path")
    ds = load_or_prepare(str(data))
    test = ds.splits["test"]
    with torch.inference_mode():
        seq, lens = torch.from_numpy(test.seq), torch.from_numpy(test.len)
        h = torch.cat([model.encode(seq[s:s + 1024], lens[s:s + 1024]) for s in range(0, len(seq), 1024)])
        w, b = model.output_weight().detach(), model.output_bias().detach()
    exact = ExactIndex(w, b)
    hist = [row[:n].tolist() for row, n in zip(test.seq, test.len)]
    _, truth = exact.search(h, k)
    _, etruth, _ = topk_excluding(exact, exact, h, hist, k, True)
    out: dict[str, Any] = {"run": str(ckpt), "dataset": ds.name, "n_items": ds.n_items, "rows": len(hist),
                           "vectors": f"real: {model.registry_name} item matrix + encoded held-out test histories"}
    for kind in ("hnsw", "ivf"):
        ix = build_index(kind, w, b, None, threads)
        _, ids = ix.search(h, k)
        vals, eids, fb = topk_excluding(ix, exact, h, hist, k, True)
        out[kind] = {"params": ix.params, "recall": round(recall_at(ids, truth, k), 4),
                     "recall_excluding_history": round(recall_at(np.array(eids), np.array(etruth), k), 4),
                     "exact_fallbacks": fb}
        _log(f"  real {ds.name} (N={ds.n_items:,}, {len(hist):,} test histories): {kind} {ix.params} recall@{k} "
             f"{out[kind]['recall']:.4f}, with history excluded {out[kind]['recall_excluding_history']:.4f} "
             f"(exact fallbacks {fb})")
    return out


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--queries", type=int, default=1000, help="held-out query vectors (recall, latency)")
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1, help="torch and faiss threads")
    ap.add_argument("--kinds", default="exact,hnsw,ivf")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--b1-calls", type=int, default=300)
    ap.add_argument("--no-sweep", action="store_true", help="skip the ef_search/nprobe and exact-over-N sweeps")
    ap.add_argument("--real-run", action="append", default=None,
                    help="run or checkpoint dir of a trained student (repeatable); default: the preflight runs")
    ap.add_argument("--real-data", action="append", default=None, help="its dataset (default: from its config)")
    ap.add_argument("--no-real", action="store_true")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(a.threads))
    if a.no_real:
        real: list = []
    elif a.real_run:
        data = (a.real_data or []) + [None] * len(a.real_run)
        real = list(zip(a.real_run, data))
    else:
        real = list(DEFAULT_REAL)
    sweep = {} if not a.no_sweep else {"ef_sweep": (), "nprobe_sweep": (), "exact_sweep": ()}
    res = run_ann(a.items, a.dim, a.queries, a.k, a.threads, kinds=tuple(a.kinds.split(",")), batch=a.batch,
                  b1_calls=a.b1_calls, real=real, **sweep)
    print(json.dumps(res, indent=1))
    if a.json:
        a.json.write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
