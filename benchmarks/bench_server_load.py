"""Loopback load test of ``dllm2rec serve`` (127.0.0.1 only; bounded request count and wall time).

    python benchmarks/bench_server_load.py [--requests 10000] [--concurrency 8] [--max-seconds 300]

1. Builds a bundle from the tiny fixture dataset (tests/fixtures/tiny-movielens, L=3; a SASRec student, d=64,
   as initialised: latency does not depend on training) — or ``--n-items N`` for a synthetic catalogue of N items.
2. Starts ``python -m dllm2rec serve`` in a subprocess on a random free loopback port (1 torch thread).
3. Phase 1: ``--requests`` POST /recommend (one history each) from ``--concurrency`` concurrent httpx async
   clients: errors (anything but 200), p50/p99 latency, server RSS before/after.
4. Phase 2: the same light load from concurrency-1 clients while one client sends heavy batches back to back
   (``--heavy-rows`` histories of ``--heavy-items`` items, the largest body under the default 1 MB cap), and a
   probe GETs /healthz every 10 ms: light p50/p99, heavy batch latency, /healthz p50/p99/max, RSS after.
Prints the CPU model and ``torch.backends.cpu.get_cpu_capability()``. Exit status 1 if any request failed.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dllm2rec.serving.bench import free_port, wait_ready
from dllm2rec.utils.cpu import cpu_name

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "tiny-movielens"


def build_bundle(out: Path, n_items: int | None, dim: int = 64, max_len: int = 10) -> tuple[Path, int]:
    import torch

    from dllm2rec.serving.bench import synthetic_bundle
    from dllm2rec.serving.bundle import export_bundle
    from dllm2rec.students import build_student
    from dllm2rec.students.checkpoint import save_student

    if n_items:
        return synthetic_bundle(out / "bundle", n_items=n_items, max_len=max_len, dim=dim, onnx=False), n_items
    from dllm2rec.data.registry import import_dataset

    ds = import_dataset("movielens", FIXTURE, name="tiny-movielens", max_len=3)  # the fixture's L (7 windows)
    torch.manual_seed(0)
    model = build_student("sasrec", ds.n_items, max_len=ds.max_len, dim=dim)
    save_student(model, out / "run" / "best", meta={"dataset": ds.name, "dataset_fingerprint": ds.fingerprint()})
    export_bundle(out / "run", ds, out / "bundle")
    return out / "bundle", ds.n_items


def rss_mb(pid: int) -> float:
    try:
        import psutil

        return psutil.Process(pid).memory_info().rss / 2**20
    except ImportError:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, int(round(q / 100 * (len(s) - 1))))]


async def light_clients(url: str, payloads: list[bytes], total: int, clients: int, deadline: float):
    import httpx

    lat: list[float] = []
    errors: list[str] = []
    counter = iter(range(total))
    hdr = {"content-type": "application/json"}

    async def client(c: int) -> None:
        async with httpx.AsyncClient(base_url=url, timeout=60) as http:
            for i in counter:
                if time.monotonic() > deadline:
                    return
                t = time.perf_counter()
                try:
                    r = await http.post("/recommend", content=payloads[i % len(payloads)], headers=hdr)
                    if r.status_code != 200:
                        errors.append(f"HTTP {r.status_code}: {r.text[:80]}")
                except Exception as e:  # noqa: BLE001 - counted, not fatal
                    errors.append(f"{type(e).__name__}: {e}")
                lat.append((time.perf_counter() - t) * 1e3)

    await asyncio.gather(*(client(c) for c in range(clients)))
    return lat, errors


async def phase2(url: str, payloads: list[bytes], heavy: bytes, total: int, clients: int, deadline: float):
    import httpx

    stop = asyncio.Event()
    heavy_lat: list[float] = []
    heavy_err: list[str] = []
    health: list[float] = []
    health_err: list[str] = []

    async def heavy_client() -> None:
        async with httpx.AsyncClient(base_url=url, timeout=120) as http:
            while not stop.is_set() and time.monotonic() < deadline:
                t = time.perf_counter()
                r = await http.post("/recommend", content=heavy, headers={"content-type": "application/json"})
                heavy_lat.append((time.perf_counter() - t) * 1e3)
                if r.status_code != 200:
                    heavy_err.append(f"HTTP {r.status_code}: {r.text[:80]}")

    async def probe() -> None:
        async with httpx.AsyncClient(base_url=url, timeout=60) as http:
            while not stop.is_set() and time.monotonic() < deadline:
                t = time.perf_counter()
                r = await http.get("/healthz")
                health.append((time.perf_counter() - t) * 1e3)
                if r.status_code != 200:
                    health_err.append(f"HTTP {r.status_code}")
                await asyncio.sleep(0.01)

    async def light() -> tuple[list[float], list[str]]:
        while not heavy_lat and time.monotonic() < deadline:  # start once the heavy stream is going
            await asyncio.sleep(0.01)
        try:
            return await light_clients(url, payloads, total, clients, deadline)
        finally:
            stop.set()

    h, p, (lat, errors) = await asyncio.gather(heavy_client(), probe(), light())
    return lat, errors, heavy_lat, heavy_err, health, health_err


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=10_000)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--heavy-rows", type=int, default=256)
    ap.add_argument("--heavy-items", type=int, default=1000)
    ap.add_argument("--n-items", type=int, default=None, help="synthetic catalogue instead of the tiny fixture")
    ap.add_argument("--max-seconds", type=float, default=300.0, help="wall-time cap per phase")
    ap.add_argument("--json-out", type=Path, default=None)
    a = ap.parse_args(argv)

    import torch

    print(f"cpu: {cpu_name()} ({os.cpu_count()} logical cores visible); torch {torch.__version__}, "
          f"cpu capability {torch.backends.cpu.get_cpu_capability()}; python {platform.python_version()}; "
          f"load average {os.getloadavg()[0]:.1f}")
    rng = random.Random(0)
    with tempfile.TemporaryDirectory(prefix="dllm2rec-load-") as tmp:
        bundle, n = build_bundle(Path(tmp), a.n_items)
        payloads = [json.dumps({"history": [rng.randrange(n) for _ in range(rng.randint(1, 10))], "k": min(10, n)
                                }).encode() for _ in range(1000)]
        heavy = json.dumps({"histories": [[rng.randrange(n) for _ in range(a.heavy_items)]
                                          for _ in range(a.heavy_rows)], "k": min(10, n)}).encode()
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        cmd = [sys.executable, "-m", "dllm2rec", "serve", str(bundle), "--host", "127.0.0.1", "--port", str(port),
               "--threads", "1", "--log-level", "warning"]
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            try:
                wait_ready(url, proc)
            except RuntimeError as e:
                raise SystemExit(f"{e}: {proc.stderr.read()[-2000:] if proc.poll() is not None else ''}") from None
            print(f"bundle: {n} items (SASRec d=64), server pid {proc.pid} on {url}; heavy batch "
                  f"{a.heavy_rows}x{a.heavy_items} = {len(heavy) / 1e6:.2f} MB")
            rss0 = rss_mb(proc.pid)
            t = time.perf_counter()
            lat, err = asyncio.run(light_clients(url, payloads, a.requests, a.concurrency,
                                                 time.monotonic() + a.max_seconds))
            wall1 = time.perf_counter() - t
            rss1 = rss_mb(proc.pid)
            print(f"phase 1: {len(lat)} requests, {a.concurrency} clients, {len(err)} errors, "
                  f"{len(lat) / wall1:.0f} req/s, p50 {pct(lat, 50):.2f} ms, p99 {pct(lat, 99):.2f} ms; "
                  f"server RSS {rss0:.1f} -> {rss1:.1f} MB")
            t = time.perf_counter()
            lat2, err2, hl, he, hz, hze = asyncio.run(phase2(url, payloads, heavy, a.requests, a.concurrency - 1,
                                                             time.monotonic() + a.max_seconds))
            wall2 = time.perf_counter() - t
            rss2 = rss_mb(proc.pid)
            print(f"phase 2: {len(lat2)} light requests from {a.concurrency - 1} clients + {len(hl)} heavy batches "
                  f"from 1 client in {wall2:.1f} s; light errors {len(err2)}, p50 {pct(lat2, 50):.2f} ms, "
                  f"p99 {pct(lat2, 99):.2f} ms; heavy errors {len(he)}, p50 {pct(hl, 50):.0f} ms")
            print(f"         /healthz: {len(hz)} probes, {len(hze)} errors, p50 {pct(hz, 50):.2f} ms, "
                  f"p99 {pct(hz, 99):.2f} ms, max {max(hz, default=float('nan')):.2f} ms; server RSS {rss2:.1f} MB")
            for e in (err + err2 + he + hze)[:5]:
                print(f"  error: {e}")
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    res = {"phase1": {"requests": len(lat), "errors": len(err), "p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99),
                      "rss_before_mb": rss0, "rss_after_mb": rss1},
           "phase2": {"light_requests": len(lat2), "light_errors": len(err2), "light_p99_ms": pct(lat2, 99),
                      "heavy_batches": len(hl), "heavy_errors": len(he), "healthz_probes": len(hz),
                      "healthz_p50_ms": pct(hz, 50), "healthz_p99_ms": pct(hz, 99), "rss_after_mb": rss2}}
    if a.json_out:
        a.json_out.write_text(json.dumps(res, indent=2))
    return 1 if (err or err2 or he or hze) else 0


if __name__ == "__main__":
    sys.exit(main())
