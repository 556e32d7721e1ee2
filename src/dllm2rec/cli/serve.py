"""CLI: ``dllm2rec export``, ``dllm2rec serve``, ``dllm2rec bench`` (registered on the top-level app)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from dllm2rec.errors import Dllm2recError, MissingDependencyError


def export(
    source: Path = typer.Argument(..., help="Run directory (uses best/, else last/) or a checkpoint directory."),
    dataset: Optional[str] = typer.Option(None, "--data", "--dataset", "-d",
                                          help="Prepared dataset dir or preset the model was trained on (titles); "
                                               "default: the one recorded in the checkpoint's config."),
    out: Path = typer.Option(..., "--out", help="Bundle directory to write (replaced atomically)."),
    onnx: bool = typer.Option(False, "--onnx", help="Also export model.onnx (encoder+scorer) and check parity."),
    which: str = typer.Option("best", "--which", help="For a run directory: best or last checkpoint."),
    verify_dataset: bool = typer.Option(True, "--verify-dataset/--no-verify-dataset",
                                        help="Require the checkpoint's dataset fingerprint to match --dataset."),
    index: str = typer.Option("auto", "--index",
                              help="Serving index recorded in the manifest: auto (exact up to 200,000 items, IVF "
                                   "above), exact, hnsw, ivf or flat. `serve --index` overrides it."),
) -> None:
    """Export a trained student as a self-contained serving bundle (hooks folded; no teacher files, no LLM)."""
    from dllm2rec.serving.bundle import export_bundle

    if which not in ("best", "last"):
        raise Dllm2recError(f"--which must be 'best' or 'last', got {which!r}")
    m = export_bundle(source, dataset, out, which=which, onnx=onnx, verify_dataset=verify_dataset, index=index)
    mod = m["model"]
    typer.echo(f"bundle {out}: {mod['name']} (N={mod['n_items']}, L={mod['max_len']}, d={mod['dim']}) from "
               f"{m['source']['checkpoint']}; dataset {m['dataset']['name']} {m['dataset']['fingerprint']}")
    if m["folded_hooks"]:
        typer.echo(f"  folded hooks: {', '.join(sorted(m['folded_hooks']))}")
    if m["selected"]["metrics"]:
        mets = m["selected"]["metrics"]
        # every K the run evaluated (selection may use NDCG@20; the first six keys stopped at @10)
        keyed = sorted(mets.items(), key=lambda kv: (kv[0].rsplit("@", 1)[0], int(kv[0].rsplit("@", 1)[1])
                                                     if kv[0].rsplit("@", 1)[-1].isdigit() else 0))
        shown = ", ".join(f"{k.split('/')[-1]}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                          for k, v in keyed if "/" not in k or k.split("/")[-1].split("@")[0] in ("HR", "NDCG"))
        typer.echo(f"  selected on validation ({next(iter(mets)).split('/')[1] if '/' in next(iter(mets)) else ''}): "
                   f"{shown}")
    if m.get("raw_ids"):
        typer.echo(f"  raw item ids: {m['raw_ids']['file']} ({m['raw_ids']['count']:,} ids; requests may send "
                   f"them with id_type=raw)")
    else:
        typer.echo(f"  raw item ids: none ({m.get('raw_ids_skipped') or 'the dataset has no meta.item_raw_ids'}); "
                   f"requests use internal ids or titles")
    ix = m["index"]
    params = ", ".join(f"{k}={v}" for k, v in ix["params"].items())
    typer.echo(f"  index: {ix['kind']}{f' ({params})' if params else ''}, built {ix['built']}; why: {ix['reason']}")
    if m["onnx"]:
        typer.echo(f"  model.onnx: parity max |eager - onnxruntime| = {m['onnx']['parity_max_abs_diff']:.2e}")
    files = ", ".join(f"{n} ({r['bytes']:,} B)" for n, r in m["files"].items())
    typer.echo(f"  files: {files}")


def serve(
    bundle: Path = typer.Argument(..., help="Bundle directory written by `dllm2rec export`."),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to bind (default: loopback only)."),
    port: int = typer.Option(8000, "--port", help="TCP port."),
    backend: str = typer.Option("torch", "--backend", help="torch, torchscript, compile or onnx."),
    max_batch: int = typer.Option(256, "--max-batch", help="Largest batch accepted by POST /recommend."),
    threads: Optional[int] = typer.Option(1, "--threads",
                                          help="torch/onnxruntime intra-op threads (1 = lowest latency per request)."),
    index: str = typer.Option("auto", "--index",
                              help="auto (the index the bundle's manifest chose at export; exact for old bundles), "
                                   "exact, hnsw, ivf or flat (faiss; needs dllm2rec[faiss])."),
    index_param: list[str] = typer.Option([], "--index-param",
                                          help="KEY=INT for the index, repeatable: hnsw M, ef_construction, "
                                               "ef_search; ivf nlist, nprobe, train_size."),
    max_body_bytes: int = typer.Option(1 << 20, "--max-body-bytes",
                                       help="Largest request body read; a bigger one is answered 413 unparsed."),
    max_concurrency: int = typer.Option(32, "--max-concurrency",
                                        help="/recommend requests in flight (scoring or queued); more get 503."),
    workers: int = typer.Option(2, "--workers", help="Threads that parse and score requests (off the event loop)."),
    log_level: str = typer.Option("info", "--log-level", help="uvicorn log level."),
    access_log: bool = typer.Option(False, "--access-log/--no-access-log", help="Log every request."),
) -> None:
    """Serve a bundle over HTTP: POST /recommend, GET /healthz, GET /metadata, OpenAPI docs at /docs."""
    try:
        import uvicorn

        from dllm2rec.serving.app import create_app
    except ImportError as e:
        raise MissingDependencyError(f"serving needs fastapi and uvicorn ({e.name} missing): "
                                     f"pip install 'dllm2rec[serve]'") from None
    from dllm2rec.serving.recommender import BACKENDS, INDEX_CHOICES

    if backend not in BACKENDS:
        raise Dllm2recError(f"--backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if max_batch < 1:
        raise Dllm2recError(f"--max-batch must be >= 1, got {max_batch}")
    if index not in INDEX_CHOICES:
        raise Dllm2recError(f"--index must be one of {', '.join(INDEX_CHOICES)}, got {index!r}")
    params = {}
    for kv in index_param:
        key, _, v = kv.partition("=")
        if not key or not v.strip().isdigit():
            raise Dllm2recError(f"--index-param: expected KEY=INT (e.g. nprobe=64), got {kv!r}")
        params[key.strip()] = int(v)
    for opt, v, lo in (("--max-body-bytes", max_body_bytes, 0), ("--max-concurrency", max_concurrency, 1),
                       ("--workers", workers, 1)):
        if v < lo:
            raise Dllm2recError(f"{opt} must be >= {lo}, got {v}")
    app = create_app(bundle, backend=backend, max_batch=max_batch, threads=threads, index=index,
                     index_params=params or None, max_body_bytes=max_body_bytes, max_concurrency=max_concurrency, workers=workers)
    ix = app.state.recommender.index_info
    typer.echo(f"index: {ix['kind']} ({ix['source']}) {ix['params'] or ''} built in {ix['build_s']:.1f} s", err=True)
    typer.echo(f"serving {bundle} ({backend}) on http://{host}:{port}  (docs: http://{host}:{port}/docs)", err=True)
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=access_log)


def bench(
    bundle: Optional[Path] = typer.Argument(None, help="Bundle to time; default: a synthetic one (--n-items...)."),
    n_items: int = typer.Option(17_000, "--n-items", help="Synthetic catalogue size."),
    student: str = typer.Option("sasrec", "--student", help="Synthetic student: sasrec, gru4rec or caser."),
    max_len: int = typer.Option(10, "--max-len", help="Synthetic history length L."),
    dim: int = typer.Option(64, "--dim", help="Synthetic embedding size."),
    backends: str = typer.Option("torch,torchscript,onnx", "--backends",
                                 help="Comma-separated: torch, torchscript, compile (slow to compile), onnx."),
    iters: int = typer.Option(2000, "--iters", help="Batch-1 requests per backend."),
    batch: int = typer.Option(256, "--batch", help="Throughput batch size."),
    batch_iters: int = typer.Option(30, "--batch-iters", help="Timed batches per backend."),
    k: int = typer.Option(10, "--k", help="Top-k."),
    threads: int = typer.Option(1, "--threads", help="torch intra-op threads (0 = leave the default)."),
    http: bool = typer.Option(True, "--http/--no-http", help="Run the loopback HTTP load test."),
    requests: int = typer.Option(10_000, "--requests", help="HTTP load test: total requests."),
    concurrency: int = typer.Option(8, "--concurrency", help="HTTP load test: concurrent clients."),
    http_backend: str = typer.Option("torch", "--http-backend", help="Backend of the server under load."),
    teacher_model: Optional[Path] = typer.Option(None, "--teacher-model",
                                                 help="Local causal-LM directory to time generate() on (optional)."),
    teacher_requests: int = typer.Option(3, "--teacher-requests", help="Teacher generate calls to time."),
    teacher_max_new_tokens: int = typer.Option(32, "--teacher-max-new-tokens", help="Tokens per teacher call."),
    teacher_beams: int = typer.Option(1, "--teacher-beams", help="Beams per teacher call (1 = greedy, a lower bound)."),
    json_out: Optional[Path] = typer.Option(None, "--json-out", help="Also write the results as JSON."),
) -> None:
    """Latency/throughput of the student (eager, TorchScript, ONNX) vs the matmul+topk floor, the teacher, and HTTP."""
    from dllm2rec.serving.bench import dump, run_bench
    from dllm2rec.serving.recommender import BACKENDS

    bl = tuple(b.strip() for b in backends.split(",") if b.strip())
    bad = [b for b in bl + (http_backend,) if b not in BACKENDS]
    if bad:
        raise Dllm2recError(f"--backends/--http-backend: unknown backend {bad[0]!r} (choose from {', '.join(BACKENDS)})")
    for name, v in (("--n-items", n_items), ("--iters", iters), ("--batch", batch), ("--batch-iters", batch_iters),
                    ("--k", k), ("--requests", requests), ("--concurrency", concurrency)):
        if v < 1:
            raise Dllm2recError(f"{name} must be >= 1, got {v}")
    res = run_bench(bundle, backends=bl, n_items=n_items, student=student, max_len=max_len, dim=dim, iters=iters,
                    batch=batch, batch_iters=batch_iters, k=k, threads=threads or None, http=http,
                    requests=requests, concurrency=concurrency, http_backend=http_backend,
                    teacher_model=teacher_model, teacher_requests=teacher_requests,
                    teacher_max_new_tokens=teacher_max_new_tokens, teacher_beams=teacher_beams, echo=typer.echo)
    if json_out:
        dump(res, json_out)
        typer.echo(f"wrote {json_out}")


def register(app: typer.Typer) -> None:
    app.command("export")(export)
    app.command("serve")(serve)
    app.command("bench")(bench)
