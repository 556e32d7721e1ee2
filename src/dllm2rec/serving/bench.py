"""Serving benchmarks (``dllm2rec bench``, ``benchmarks/bench_serving.py``).

* student: end-to-end ``Recommender.recommend`` (ids in -> ids, titles, scores out, history excluded) latency
  p50/p99 at batch 1 and throughput at batch 256, per backend (eager torch, TorchScript, optional torch.compile,
  ONNX Runtime);
* the floor: a bare ``addmm`` of a [B, d] state with the same [N, d] item matrix (+ bias) followed by ``topk``,
  into preallocated buffers — what any model that scores the whole catalogue pays at least; ratios to it;
* optional teacher: a handful of ``generate`` calls of a local causal LM (``--teacher-model PATH``) on prompts
  built from the same histories, and the speed-up of the student over it;
* a bounded loopback HTTP load test: ``dllm2rec serve`` in a subprocess on a free port, N requests from C
  concurrent httpx clients, then it is stopped; throughput, p50/p99 and errors (plus a 1-client p50).

Without a bundle a synthetic one is built (random weights, ``--n-items`` items, titles ``item <i>``): timing
does not depend on the weights.
"""
from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from dllm2rec.data import SeqDataset, make_split
from dllm2rec.errors import ArtifactError
from dllm2rec.serving.bundle import export_bundle
from dllm2rec.serving.recommender import Recommender
from dllm2rec.students import build_student
from dllm2rec.students.checkpoint import save_student
from dllm2rec.teachers.bigrec.prompts import build_prompt
from dllm2rec.utils.io import atomic_write_text


# --------------------------------------------------------------------------------------------- helpers
def synthetic_bundle(out: str | Path, n_items: int = 17_000, student: str = "sasrec", max_len: int = 10,
                     dim: int = 64, onnx: bool = True, seed: int = 0) -> Path:

    torch.manual_seed(seed)
    out = Path(out)
    hs = synthetic_histories(n_items, max_len, 32, seed)
    sp = make_split(hs, [h[-1] for h in hs], n_items, max_len)
    ds = SeqDataset("synthetic", n_items, max_len, [f"item {i}" for i in range(n_items)],
                    {"train": sp, "valid": sp, "test": sp})
    model = build_student(student, n_items, max_len=max_len, dim=dim)
    with torch.no_grad():  # realistic magnitudes instead of N(0, 0.01)
        model.item_emb.weight.normal_(0, 0.5)
    ckpt = out.parent / f".{out.name}.ckpt"
    save_student(model, ckpt, meta={"dataset": ds.name, "dataset_fingerprint": ds.fingerprint(),
                                    "metrics": {}, "note": "synthetic, random weights (for timing only)"})
    try:
        export_bundle(ckpt, ds, out, onnx=onnx)
    finally:
        import shutil

        shutil.rmtree(ckpt, ignore_errors=True)
    return out


def synthetic_histories(n_items: int, max_len: int, count: int, seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, n_items, int(rng.integers(1, max_len + 1))).tolist() for _ in range(count)]


def time_calls(fn: Callable[[int], Any], iters: int, warmup: int = 5, max_seconds: float | None = None) -> np.ndarray:
    """Per-call wall times (s) of ``fn(i)``; stops early after ``max_seconds`` (at least 5 calls)."""
    for i in range(warmup):
        fn(i)
    out = []
    start = time.perf_counter()
    for i in range(iters):
        t = time.perf_counter()
        fn(i)
        out.append(time.perf_counter() - t)
        if max_seconds is not None and len(out) >= 5 and time.perf_counter() - start > max_seconds:
            break
    return np.asarray(out)


def _pct(a: np.ndarray, q: float) -> float:
    return float(np.percentile(a, q)) * 1e3 if len(a) else float("nan")


# --------------------------------------------------------------------------------------------- student
def floor_fns(weight: torch.Tensor, bias: torch.Tensor, batch: int, k: int = 10, seed: int = 0):
    """(f1(i), fb(i)): bare addmm + topk over the item matrix for a [1, d] / [batch, d] state, preallocated out."""
    g = torch.Generator().manual_seed(seed)
    d = weight.shape[1]
    wt = weight.t()
    s1 = torch.randn(64, 1, d, generator=g)
    sb = torch.randn(batch, d, generator=g)
    buf = torch.empty(batch, weight.shape[0])

    def f1(i: int):
        with torch.inference_mode():
            return torch.topk(torch.addmm(bias, s1[i % 64], wt, out=buf[:1]), k)

    def fb(i: int):
        with torch.inference_mode():
            return torch.topk(torch.addmm(bias, sb, wt, out=buf), k)

    return f1, fb


def time_paired(fa: Callable[[int], Any], fb: Callable[[int], Any], iters: int, warmup: int = 3):
    """Alternate fa, fb call by call, so both see the same background load (shared machines); two time arrays."""
    for i in range(warmup):
        fa(i)
        fb(i)
    ta, tb = [], []
    for i in range(iters):
        t = time.perf_counter()
        fa(i)
        t1 = time.perf_counter()
        fb(i)
        t2 = time.perf_counter()
        ta.append(t1 - t)
        tb.append(t2 - t1)
    return np.asarray(ta), np.asarray(tb)


def _stats(t1: np.ndarray, tb: np.ndarray, batch: int) -> dict[str, float]:
    return {"b1_p50_ms": _pct(t1, 50), "b1_p99_ms": _pct(t1, 99),
            f"b{batch}_ms": _pct(tb, 50), f"b{batch}_rows_per_s": batch / float(np.median(tb))}


def bench_recommender(rec, histories: list[list[int]], iters: int, batch: int, k: int = 10,
                      batch_iters: int = 30) -> dict[str, Any]:
    """Student end-to-end and the floor over the same item matrix, paired call by call; ratios of the medians."""
    H = len(histories)
    f1, fb = floor_fns(rec.weight, rec.bias, batch, k)
    batches = [[histories[(j * batch + r) % H] for r in range(batch)] for j in range(4)]
    s1, fl1 = time_paired(lambda i: rec.recommend([histories[i % H]], k=k), f1, iters)
    sb, flb = time_paired(lambda i: rec.recommend(batches[i % 4], k=k), fb, batch_iters, warmup=2)
    out: dict[str, Any] = _stats(s1, sb, batch)
    out["floor"] = _stats(fl1, flb, batch)
    out["b1_ratio_to_floor"] = out["b1_p50_ms"] / out["floor"]["b1_p50_ms"]
    out["throughput_ratio_floor_over_student"] = out[f"b{batch}_ms"] / out["floor"][f"b{batch}_ms"]
    return out


# --------------------------------------------------------------------------------------------- teacher
def bench_teacher(model_path: str | Path, histories: list[list[int]], titles: list[str], n: int = 3,
                  max_new_tokens: int = 32, num_beams: int = 1) -> dict[str, Any]:
    """Time ``n`` generate calls of a local causal LM on BIGRec prompts; {'skipped': why} if not possible.

    Greedy (``num_beams=1``) is a lower bound on the teacher's cost: BIGRec decodes with beams and then grounds
    the generated title against every item title's embedding.
    """
    path = Path(model_path)
    if not path.exists():
        return {"skipped": f"{path}: not found"}
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError:
        return {"skipped": "transformers is not installed (pip install 'dllm2rec[teacher]')"}
    try:
        tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        lm = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True).float()
    except Exception as e:  # noqa: BLE001 - any loading problem just skips the teacher timing
        return {"skipped": f"could not load {path}: {type(e).__name__}: {str(e)[:200]}"}
    lm.eval()
    if tok.pad_token_id is None and tok.eos_token_id is not None:
        tok.pad_token = tok.eos_token
    times = []
    for i in range(n):
        h = histories[i % len(histories)]
        prompt = _teacher_prompt([titles[j] for j in h])
        enc = tok(prompt, return_tensors="pt")
        t = time.perf_counter()
        with torch.inference_mode():
            lm.generate(**enc, max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens, do_sample=False,
                        num_beams=num_beams, pad_token_id=tok.pad_token_id)
        times.append(time.perf_counter() - t)
    a = np.asarray(times)
    return {"model": str(path), "requests": n, "max_new_tokens": max_new_tokens, "num_beams": num_beams,
            "p50_ms": _pct(a, 50), "mean_ms": float(a.mean() * 1e3)}


def _teacher_prompt(history_titles: list[str]) -> str:
    """The BIGRec prompt of the teacher being timed (teachers.bigrec.prompts, generic domain)."""
    return build_prompt("generic", history_titles)


# --------------------------------------------------------------------------------------------- HTTP
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bench_asgi(app, histories: list[list[int]], iters: int = 1000, k: int = 10) -> dict[str, float]:
    """POST /recommend straight into the ASGI app (no socket, no HTTP client): the framework's own overhead."""
    bodies = [json.dumps({"history": h, "k": k}).encode() for h in histories]

    async def call(i: int) -> int:
        body = bodies[i % len(bodies)]
        msgs = [{"type": "http.request", "body": body, "more_body": False}]
        status = []

        async def receive():
            return msgs.pop() if msgs else {"type": "http.disconnect"}

        async def send(m):
            if m["type"] == "http.response.start":
                status.append(m["status"])

        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
                 "scheme": "http", "path": "/recommend", "raw_path": b"/recommend", "query_string": b"",
                 "root_path": "", "headers": [(b"content-type", b"application/json"),
                                              (b"content-length", str(len(body)).encode())],
                 "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}
        await app(scope, receive, send)
        return status[0]

    async def run() -> tuple[np.ndarray, int]:
        for i in range(20):
            await call(i)
        ts, bad = [], 0
        for i in range(iters):
            t = time.perf_counter()
            bad += await call(i) != 200
            ts.append(time.perf_counter() - t)
        return np.asarray(ts), bad

    ts, bad = asyncio.run(run())
    return {"p50_ms": _pct(ts, 50), "p99_ms": _pct(ts, 99), "errors": bad, "requests": iters}


def _proc_cpu_s(pid: int) -> float | None:
    """user+system CPU seconds of a process (Linux /proc), None elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with status {proc.returncode} before it was ready")
        try:
            if httpx.get(url + "/healthz", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"server at {url} not ready after {timeout:.0f}s")


async def _drive(url: str, payloads: list[dict], total: int, concurrency: int) -> tuple[np.ndarray, int, float, list]:
    import httpx

    lat: list[float] = []
    errors: list[str] = []
    counter = iter(range(total))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30.0) as client:
        async def worker() -> None:
            for i in counter:
                t = time.perf_counter()
                try:
                    r = await client.post("/recommend", json=payloads[i % len(payloads)])
                    ok = r.status_code == 200
                    if not ok:
                        errors.append(f"{r.status_code}: {r.text[:200]}")
                except httpx.HTTPError as e:
                    errors.append(f"{type(e).__name__}: {e}")
                    ok = False
                if ok:
                    lat.append(time.perf_counter() - t)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    return np.asarray(lat), len(errors), wall, errors[:5]


def load_test(bundle: str | Path, histories: list[list[int]], requests: int = 10_000, concurrency: int = 8,
              backend: str = "torch", k: int = 10, threads: int = 1, single_client: int = 500,
              port: int | None = None) -> dict[str, Any]:
    """Start ``dllm2rec serve`` on a free loopback port, fire ``requests`` requests, stop it."""
    try:
        import httpx  # noqa: F401
    except ImportError:
        return {"skipped": "httpx is not installed (pip install 'dllm2rec[serve]')"}
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "dllm2rec", "serve", str(bundle), "--host", "127.0.0.1", "--port", str(port),
           "--backend", backend, "--threads", str(threads), "--log-level", "warning"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_ready(url, proc)
        payloads = [{"history": h, "k": k} for h in histories]
        lat1, err1, _, _ = asyncio.run(_drive(url, payloads, single_client, 1)) if single_client else \
            (np.asarray([]), 0, 0.0, [])
        cpu0 = _proc_cpu_s(proc.pid)
        lat, errs, wall, samples = asyncio.run(_drive(url, payloads, requests, concurrency))
        cpu1 = _proc_cpu_s(proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return {"requests": requests, "concurrency": concurrency, "errors": errs + err1, "error_samples": samples,
            "throughput_rps": requests / wall if wall else float("nan"), "wall_s": wall,
            "p50_ms": _pct(lat, 50), "p99_ms": _pct(lat, 99),
            "single_client_requests": single_client, "single_client_p50_ms": _pct(lat1, 50),
            "single_client_p99_ms": _pct(lat1, 99), "server_backend": backend,
            "server_cpu_ms_per_request": (cpu1 - cpu0) * 1e3 / requests if cpu0 is not None and cpu1 is not None
            else None}


# --------------------------------------------------------------------------------------------- driver
def run_bench(bundle: str | Path | None = None, *, backends: tuple[str, ...] = ("torch", "torchscript", "onnx"),
              n_items: int = 17_000, student: str = "sasrec", max_len: int = 10, dim: int = 64,
              iters: int = 2000, batch: int = 256, batch_iters: int = 30, k: int = 10, threads: int | None = 1,
              http: bool = True, requests: int = 10_000, concurrency: int = 8, http_backend: str = "torch",
              teacher_model: str | Path | None = None, teacher_requests: int = 3, teacher_max_new_tokens: int = 32,
              teacher_beams: int = 1, echo: Callable[[str], None] = print) -> dict[str, Any]:
    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    tmp = None
    if bundle is None:
        tmp = tempfile.TemporaryDirectory(prefix="dllm2rec-bench-")
        echo(f"building a synthetic {student} bundle: {n_items} items, L={max_len}, d={dim} ...")
        bundle = synthetic_bundle(Path(tmp.name) / "bundle", n_items, student, max_len, dim,
                                  onnx="onnx" in backends)
    try:
        return _run(Path(bundle), backends, iters, batch, batch_iters, k, threads, http, requests, concurrency,
                    http_backend, teacher_model, teacher_requests, teacher_max_new_tokens, teacher_beams, echo,
                    Recommender)
    finally:
        torch.set_num_threads(old_threads)
        if tmp is not None:
            tmp.cleanup()


def _run(bundle, backends, iters, batch, batch_iters, k, threads, http, requests, concurrency, http_backend,
         teacher_model, teacher_requests, teacher_max_new_tokens, teacher_beams, echo, Recommender) -> dict[str, Any]:
    import platform

    base = Recommender.load(bundle, backend="torch", max_batch=batch)
    m = base.manifest.get("model", {})
    hist = synthetic_histories(base.n_items, base.max_len, 512, seed=1)
    res: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                    "python": platform.python_version(), "processor": platform.processor() or platform.machine()},
        "model": {"name": m.get("name"), "n_items": base.n_items, "max_len": base.max_len, "dim": m.get("dim")},
        "k": k, "batch": batch, "student": {}, "floor": None, "teacher": None, "http": None,
    }
    echo(f"model {m.get('name')}  N={base.n_items}  L={base.max_len}  d={m.get('dim')}  k={k}  "
         f"torch threads={torch.get_num_threads()}  cpus={os.cpu_count()}")
    bkey, tkey = f"b{batch}_ms", f"b{batch}_rows_per_s"
    echo("each backend is timed call by call alternating with the floor (paired: same background load);")
    echo("ratios are of medians: b1/floor = p50 / floor p50, floor/thr = floor rows/s / student rows/s")
    echo(f"{'path':<28}{'b1 p50 ms':>10}{'b1 p99 ms':>10}{f'b{batch} ms':>10}{'rows/s':>10}"
         f"{'b1/floor':>10}{'floor/thr':>10}")
    del base
    for be in backends:
        try:
            t = time.perf_counter()
            rec = Recommender.load(bundle, backend=be, max_batch=batch, threads=threads)
            setup = time.perf_counter() - t
        except ArtifactError:  # a tampered bundle or a refused file is the user's problem: one line, exit 2
            raise
        except Exception as e:  # noqa: BLE001 - a backend that does not work here is reported, not fatal
            res["student"][be] = {"skipped": f"{type(e).__name__}: {str(e)[:200]}"}
            echo(f"{'student ' + be:<28}skipped: {type(e).__name__}: {str(e)[:120]}")
            continue
        r = bench_recommender(rec, hist, iters, batch, k, batch_iters)
        r["setup_s"] = setup
        res["student"][be] = r
        fl = r["floor"]
        echo(f"{'  floor (addmm+topk)':<28}{fl['b1_p50_ms']:>10.3f}{fl['b1_p99_ms']:>10.3f}{fl[bkey]:>10.2f}"
             f"{fl[tkey]:>10.0f}")
        echo(f"{'  student ' + be:<28}{r['b1_p50_ms']:>10.3f}{r['b1_p99_ms']:>10.3f}{r[bkey]:>10.2f}"
             f"{r[tkey]:>10.0f}{r['b1_ratio_to_floor']:>10.2f}{r['throughput_ratio_floor_over_student']:>10.2f}")
        del rec
    floors = [v["floor"] for v in res["student"].values() if "floor" in v]
    if floors:
        res["floor"] = {key: float(np.median([f[key] for f in floors])) for key in floors[0]}
    ok = {b: v for b, v in res["student"].items() if "b1_p50_ms" in v}
    if ok:
        best = min(ok, key=lambda b: ok[b]["b1_p50_ms"])
        res["best_backend"] = best
        echo(f"targets: best student p50 {ok[best]['b1_p50_ms']:.3f} ms ({best}) <= 1 ms: "
             f"{'yes' if ok[best]['b1_p50_ms'] <= 1.0 else 'NO'};  batch-{batch} throughput within 2x of floor: "
             + ", ".join(f"{b} {v['throughput_ratio_floor_over_student']:.2f}x" for b, v in ok.items()))
    if teacher_model:
        titles = Recommender.load(bundle, backend="torch", max_batch=1).titles
        tr = bench_teacher(teacher_model, hist, titles, teacher_requests, teacher_max_new_tokens, teacher_beams)
        res["teacher"] = tr
        if "skipped" in tr:
            echo(f"teacher: skipped ({tr['skipped']})")
        else:
            ref = ok.get("torch") or (ok[res["best_backend"]] if ok else None)
            sp = tr["p50_ms"] / ref["b1_p50_ms"] if ref else float("nan")
            tr["speedup_vs_student_eager"] = sp
            echo(f"teacher {Path(str(teacher_model)).name}: {tr['requests']} generate calls "
                 f"(max_new_tokens={tr['max_new_tokens']}, beams={tr['num_beams']}) p50 {tr['p50_ms']:.1f} ms -> student is {sp:,.0f}x faster")
    if http:
        try:
            from dllm2rec.serving.app import create_app

            a = bench_asgi(create_app(bundle, max_batch=batch), hist, min(iters, 2000), k)
            res["asgi"] = a
            echo(f"app in-process (ASGI, no socket): p50 {a['p50_ms']:.3f} ms  p99 {a['p99_ms']:.3f} ms  "
                 f"errors {a['errors']}/{a['requests']}")
        except ImportError as e:
            echo(f"app in-process: skipped ({e})")
        echo(f"HTTP load test: {requests} requests, {concurrency} concurrent clients, backend {http_backend} ...")
        h = load_test(bundle, hist, requests, concurrency, http_backend, k, threads or 1,
                      single_client=min(500, requests))
        res["http"] = h
        if "skipped" in h:
            echo(f"http: skipped ({h['skipped']})")
        else:
            echo(f"http 1 client:  p50 {h['single_client_p50_ms']:.2f} ms  p99 {h['single_client_p99_ms']:.2f} ms "
                 f"({h['single_client_requests']} requests)")
            echo(f"http {concurrency} clients: {h['throughput_rps']:.0f} req/s  p50 {h['p50_ms']:.2f} ms  "
                 f"p99 {h['p99_ms']:.2f} ms  errors {h['errors']}/{h['requests'] + h['single_client_requests']}")
            if h.get("server_cpu_ms_per_request") is not None:
                echo(f"server process CPU per request: {h['server_cpu_ms_per_request']:.2f} ms "
                     f"(uvicorn + FastAPI + model; the httpx clients run in this process)")
            for s in h["error_samples"]:
                echo(f"  error: {s}")
    return res


def dump(res: dict[str, Any], path: str | Path) -> None:
    atomic_write_text(path, json.dumps(res, indent=2, default=float))
