"""Million-item catalogue benchmark: full-ranking evaluation and top-k against the GEMM roofline, training, ANN.

    python benchmarks/bench_large_catalogue.py --json bench-large.json     # 1,000,000 items, all phases
    python benchmarks/bench_large_catalogue.py --items 100000 --users 2000 --phases eval,topk   # quick look

Everything is synthetic (random histories, a randomly initialised SASRec with dim 64), because only sizes matter
here. Each phase runs in its own subprocess so that its peak RSS (``resource.getrusage(...).ru_maxrss``) is its
own, and every rate is printed next to the limit it is measured against *in the same process*:

- ``eval``  — ``rank_targets(..., item_chunk=C)``: every row's target ranked against all N items (full ranking).
  Limit: a bare ``torch.mm`` of the same [rows, d] × [d, N] product into a preallocated buffer, timed just before
  and just after the ranking (the faster of the two; the machine may be shared), once in the ranking's own blocks
  (``protocol.ROW_BLOCK`` × ``ITEM_BLOCK``) and once as [eval_batch, d] × [d, C] — the ratio is against the
  faster of all of them.
- ``topk``  — ``protocol.top_k(..., item_chunk=C)``: running top-k over item blocks, against the same limit.
- ``train`` — ``Trainer.train_epoch`` with the paper's sampled BCE (1 negative), ``--train-set KEY=VAL`` passed to
  the config. Where the config has ``optim.sparse`` it defaults to true here, and ``train_dense`` runs the dense
  update on ``--dense-train-rows`` samples for comparison. ``score_all`` is replaced by a function that raises,
  which proves the step never materialises a [batch, N] score matrix. Memory: the N×d tables × (1 + grads + 2 Adam
  moments) next to the peak RSS.
- ``ann``   — ``benchmarks/bench_ann.py``'s ``run_ann(n_items, dim, ...)`` (exact / HNSW / IVF search), if present.

Prints one JSON object per phase and a summary; ``--json PATH`` writes them all.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

GiB = 1024**3
HERE = os.path.dirname(os.path.abspath(__file__))


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def _log(msg: str) -> None:
    if not os.environ.get("CI"):
        print(msg, file=sys.stderr, flush=True)


def _cpu() -> dict:
    import torch

    from dllm2rec.utils.cpu import cpu_name, describe

    return {"cpu": cpu_name(), "cpu_isa": describe(), "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "threads": torch.get_num_threads()}


def _rand_split(n_rows: int, n_items: int, max_len: int, seed: int):
    import numpy as np

    from dllm2rec.data.schema import Split

    rng = np.random.default_rng(seed)
    lens = rng.integers(1, max_len + 1, n_rows)
    seq = rng.integers(0, n_items, (n_rows, max_len))
    seq[np.arange(max_len)[None, :] >= lens[:, None]] = n_items  # right-padded with PAD = N
    return Split(seq, lens, rng.integers(0, n_items, n_rows), np.arange(n_rows))


def _student(a):
    import torch

    from dllm2rec.students.base import build_student

    torch.manual_seed(0)
    return build_student(a.model, a.items, max_len=a.max_len, dim=a.dim).eval()


def _mm_rate(w, rows: int, rb: int, ib: int) -> float:
    """Item scores/s of a bare torch.mm [rows, d] × [d, N] in rb × ib blocks into one preallocated buffer."""
    import torch

    state = torch.randn(rows, w.shape[1])
    out = torch.empty(min(rb, rows) * min(ib, w.shape[0]))
    t0 = time.perf_counter()
    for r in range(0, rows, rb):
        s = state[r:r + rb]
        for c in range(0, w.shape[0], ib):
            wc = w[c:c + ib]
            torch.mm(s, wc.t(), out=out[:s.shape[0] * wc.shape[0]].view(s.shape[0], wc.shape[0]))
    return rows * w.shape[0] / (time.perf_counter() - t0)


def _roofline(model, a) -> dict:
    """The bare-mm limits (scores/s) for this model's output table, in the ranking's blocks and the chunk shape."""
    import torch

    from dllm2rec.evaluation import protocol

    with torch.inference_mode():
        w = model.output_weight().detach().contiguous()
    rows = max(min(a.users, a.mm_rows), 1)
    return {"blocked": _mm_rate(w, rows, protocol.ROW_BLOCK, protocol.ITEM_BLOCK),
            "chunk": _mm_rate(w, rows, a.eval_batch, a.item_chunk)}


def _limits(before: dict, after: dict, rate: float) -> dict:
    best = {k: max(before[k], after[k]) for k in before}
    lim = max(best.values())
    return {"mm_scores_per_s_blocked": round(best["blocked"]), "mm_scores_per_s_chunk_shape": round(best["chunk"]),
            "mm_scores_per_s": round(lim), "ratio_to_mm": round(rate / lim, 3),
            "mm_spread_before_after": round(min(before["blocked"], after["blocked"]) / max(before["blocked"],
                                                                                         after["blocked"]), 3)}


def phase_eval(a) -> dict:
    import numpy as np
    import torch

    from dllm2rec.evaluation import protocol
    from dllm2rec.evaluation.metrics import sum_metrics_from_ranks

    split = _rand_split(a.users, a.items, a.max_len, 1)
    model = _student(a)
    base = peak_rss_bytes()
    lim0 = _roofline(model, a)
    t0 = time.perf_counter()
    ranks = []
    step = max(a.eval_batch * 2, 1)
    for s in range(0, a.users, step):  # progress lines (the ranking itself is rank_targets, batch by batch)
        ranks.append(protocol.rank_targets(model, split, a.eval_batch, a.exclude_history, "cpu", a.item_chunk,
                                           rows=np.arange(s, min(s + step, a.users))))
        done = min(s + step, a.users)
        el = time.perf_counter() - t0
        _log(f"  eval {done}/{a.users} rows  {done / el:.1f} rows/s  eta {el / done * (a.users - done):.0f}s")
    dt = time.perf_counter() - t0
    lim1 = _roofline(model, a)
    r = torch.cat(ranks)
    m = sum_metrics_from_ranks(r, [10, 20])
    rate = a.users * a.items / dt
    return {"phase": "eval", "items": a.items, "users": a.users, "eval_batch": a.eval_batch,
            "item_chunk": a.item_chunk, "exclude_history": a.exclude_history,
            "blocks": f"{protocol.ROW_BLOCK} x {protocol.ITEM_BLOCK}", "seconds": round(dt, 2),
            "rows_per_s": round(a.users / dt, 1), "item_scores_per_s": round(rate), **_limits(lim0, lim1, rate),
            "mm_rows_per_s": round(max(lim0["blocked"], lim1["blocked"], lim0["chunk"], lim1["chunk"]) / a.items, 1),
            "peak_rss_gib": round(peak_rss_bytes() / GiB, 3), "rss_before_ranking_gib": round(base / GiB, 3),
            "random_model_HR@20": round(m["HR@20"] / max(a.users, 1), 6), **_cpu()}


def phase_topk(a) -> dict:
    import torch

    from dllm2rec.evaluation.protocol import top_k

    split = _rand_split(a.topk_users, a.items, a.max_len, 2)
    model = _student(a)
    seq, lens = torch.from_numpy(split.seq), torch.from_numpy(split.len)
    lim0 = _roofline(model, a)
    t0 = time.perf_counter()
    for s in range(0, len(seq), a.eval_batch):
        top_k(model, seq[s:s + a.eval_batch], lens[s:s + a.eval_batch], a.k, a.item_chunk, a.exclude_history)
        done = min(s + a.eval_batch, len(seq))
        _log(f"  topk {done}/{len(seq)} rows  {done / (time.perf_counter() - t0):.1f} rows/s")
    dt = time.perf_counter() - t0
    lim1 = _roofline(model, a)
    rate = a.topk_users * a.items / dt
    return {"phase": "topk", "items": a.items, "users": a.topk_users, "k": a.k, "item_chunk": a.item_chunk,
            "exclude_history": a.exclude_history, "seconds": round(dt, 2), "rows_per_s": round(a.topk_users / dt, 1),
            "item_scores_per_s": round(rate), **_limits(lim0, lim1, rate),
            "peak_rss_gib": round(peak_rss_bytes() / GiB, 3), **_cpu()}


def _has_sparse() -> bool:
    from dllm2rec.config import OptimConfig

    return "sparse" in OptimConfig.model_fields


def _train(a, rows: int, extra: list[str], name: str) -> dict:
    from dllm2rec.config import load_config
    from dllm2rec.data.schema import SeqDataset
    from dllm2rec.training.trainer import Trainer

    splits = {"train": _rand_split(rows, a.items, a.max_len, 3),
              "valid": _rand_split(10, a.items, a.max_len, 4), "test": _rand_split(10, a.items, a.max_len, 5)}
    ds = SeqDataset("large-synthetic", a.items, a.max_len, [f"item {i}" for i in range(a.items)], splits)
    sets = [f"model.name={a.model}", f"model.dim={a.dim}", f"train.batch_size={a.batch}", "loss.kind=bce",
            "loss.n_neg=1", "out_dir=/tmp/dllm2rec-bench-large", *extra]
    cfg = load_config(None, sets)
    tr = Trainer(cfg, ds, "/tmp/dllm2rec-bench-large/run", quiet=True)

    def no_full(*_a, **_k):
        raise AssertionError("score_all called: a [batch, N] matrix would be materialised")

    tr.model.score_all = no_full  # the sampled-BCE step must only score the target and the negatives
    n_par = sum(p.numel() for p in tr.model.parameters())
    tables = sum(p.numel() for n, p in tr.model.named_parameters() if n in ("item_emb.weight", "out.weight"))
    rss0 = peak_rss_bytes()
    t0 = time.perf_counter()
    rec = tr.train_epoch(1)
    dt = time.perf_counter() - t0
    return {"phase": name, "items": a.items, "train_rows": rows, "batch": a.batch, "set": sets[6:],
            "loss": "sampled BCE, 1 negative (paper)", "seconds": round(dt, 2),
            "samples_per_s": round(rows / dt, 1), "train/loss": round(rec["train/loss"], 4),
            "score_all_called": False, "params": n_par, "N_x_d_params": tables,
            "tables_gib": round(tables * 4 / GiB, 3),
            "tables_with_grads_and_adam_gib": round(tables * 4 * 4 / GiB, 3),  # params + grads + Adam m, v
            "all_params_with_grads_and_adam_gib": round(n_par * 4 * 4 / GiB, 3),
            "peak_rss_before_training_gib": round(rss0 / GiB, 3), "peak_rss_gib": round(peak_rss_bytes() / GiB, 3),
            "full_scores_would_need_gib": round(a.batch * a.items * 4 * 3 / GiB, 3), **_cpu()}  # scores, grad, softmax


def phase_train(a) -> dict:
    default = ["optim.sparse=true"] if _has_sparse() and not any(s.startswith("optim.sparse=") for s in a.train_set) \
        else []
    return _train(a, a.train_rows, default + a.train_set, "train")


def phase_train_dense(a) -> dict:
    if not _has_sparse():
        return {"phase": "train_dense", "skipped": "the config has no optim.sparse yet: phase train is the dense one"}
    return _train(a, a.dense_train_rows, [s for s in a.train_set if not s.startswith("optim.sparse=")]
                  + ["optim.sparse=false"], "train_dense")


def phase_ann(a) -> dict:
    sys.path.insert(0, HERE)
    try:  # bench_ann.py is owned by the ANN benchmark; imported lazily, it may not exist yet
        from bench_ann import run_ann
    except ImportError as e:
        return {"phase": "ann", "skipped": f"benchmarks/bench_ann.py with run_ann() not available ({e})"}
    return {"phase": "ann", **run_ann(a.items, a.dim, n_queries=a.ann_queries, k=a.k, threads=a.threads)}


PHASES = {"eval": phase_eval, "topk": phase_topk, "train": phase_train, "train_dense": phase_train_dense,
          "ann": phase_ann}


def _summary(res: dict) -> str:
    p = res["phase"]
    if "skipped" in res:
        return f"{p:11s} skipped: {res['skipped']}"
    if p in ("eval", "topk"):
        return (f"{p:11s} {res['rows_per_s']:>9.1f} rows/s  {res['item_scores_per_s'] / 1e6:8.1f} M scores/s   "
                f"bare mm {res['mm_scores_per_s'] / 1e6:8.1f} M scores/s   ratio {res['ratio_to_mm']:.3f}   "
                f"peak RSS {res['peak_rss_gib']:.2f} GiB")
    if p.startswith("train"):
        return (f"{p:11s} {res['samples_per_s']:>9.1f} samples/s  ({', '.join(res['set']) or 'defaults'})   "
                f"tables x (1 + grad + 2 Adam) {res['tables_with_grads_and_adam_gib']:.2f} GiB   "
                f"peak RSS {res['peak_rss_gib']:.2f} GiB")
    if p == "ann" and isinstance(res.get("indexes"), dict):
        return f"{p:11s} " + "   ".join(
            f"{kind}: recall@{res.get('k')} {r.get('recall')}, 1-query p50 {r.get('b1_p50_ms')} ms, "
            f"{r.get('rows_per_s')} rows/s batched" for kind, r in res["indexes"].items() if isinstance(r, dict))
    return f"{p:11s} " + json.dumps({k: v for k, v in res.items() if not isinstance(v, (dict, list))})[:300]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--users", "--rows", dest="users", type=int, default=100_000, help="evaluation rows (users)")
    ap.add_argument("--topk-users", "--topk-rows", dest="topk_users", type=int, default=None,
                    help="top-k rows (default: --users, at most 10,000)")
    ap.add_argument("--train-rows", type=int, default=20_480)
    ap.add_argument("--dense-train-rows", type=int, default=None, help="train_dense samples (default train-rows/4)")
    ap.add_argument("--train-set", action="append", default=[], metavar="KEY=VAL",
                    help="config override for the train phases (repeatable), e.g. optim.sparse=false")
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--model", default="sasrec")
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--max-len", type=int, default=10)
    ap.add_argument("--eval-batch", type=int, default=1024)
    ap.add_argument("--item-chunk", type=int, default=65_536)
    ap.add_argument("--exclude-history", action="store_true", help="rank/top-k with the history excluded")
    ap.add_argument("--mm-rows", type=int, default=1024, help="rows of the bare-mm limit measurement")
    ap.add_argument("--batch", type=int, default=256, help="training batch")
    ap.add_argument("--ann-queries", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=1, help="torch threads in every phase")
    ap.add_argument("--phases", default="eval,topk,train,train_dense,ann")
    ap.add_argument("--phase", help=argparse.SUPPRESS)
    ap.add_argument("--json", help="write all results to this file")
    a = ap.parse_args(argv)
    a.topk_users = a.topk_users if a.topk_users is not None else min(a.users, 10_000)
    a.dense_train_rows = a.dense_train_rows if a.dense_train_rows is not None else max(a.train_rows // 4, a.batch)
    if a.phase:
        import torch

        torch.set_num_threads(a.threads)
        print(json.dumps(PHASES[a.phase](a)), flush=True)
        return 0
    unknown = [p for p in a.phases.split(",") if p not in PHASES]
    if unknown:
        ap.error(f"--phases: unknown {', '.join(unknown)} (choose from {', '.join(PHASES)})")
    results = []
    args = list(argv if argv is not None else sys.argv[1:])
    env = {**os.environ, "OMP_NUM_THREADS": str(a.threads)}
    for ph in a.phases.split(","):
        t0 = time.time()
        p = subprocess.run([sys.executable, os.path.abspath(__file__), *args, "--phase", ph],
                           stdout=subprocess.PIPE, text=True, env=env, check=False)
        if p.returncode != 0:
            print(f"phase {ph} failed (exit {p.returncode})", file=sys.stderr)
            return p.returncode
        res = json.loads(p.stdout.strip().splitlines()[-1])
        res["wall_s"] = round(time.time() - t0, 1)
        print(json.dumps(res), flush=True)
        results.append(res)
    print("\nsummary (each rate next to its limit measured in the same process):")
    cpu = _cpu()
    print(f"  cpu: {cpu['cpu']}  [{cpu['cpu_isa']}; torch {cpu['torch_cpu_capability']}], {a.threads} thread(s)")
    for res in results:
        print("  " + _summary(res))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"argv": args, "results": results}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
