"""Million-item catalogue benchmark: streaming full-ranking evaluation, streaming top-k, sampled-BCE training.

    python benchmarks/bench_large_catalogue.py                       # 1,000,000 items, 100,000 eval users
    python benchmarks/bench_large_catalogue.py --items 200000 --rows 10000 --train-rows 5000   # quick look

Everything is synthetic (random histories, a randomly initialised SASRec with dim 64), because only sizes matter
here. Each phase runs in its own subprocess so that its peak RSS (``resource.getrusage(...).ru_maxrss``) is its
own:

- ``eval``  — ``rank_targets(..., item_chunk=C)``: every row's target is ranked against all N items (full ranking,
  no sampling) without ever holding a [rows, N] or [batch, N] matrix: memory is O(batch × C).
- ``topk``  — ``protocol.top_k(..., item_chunk=C)``: running top-k merged over item chunks (recommendations).
- ``train`` — ``Trainer.train_epoch`` with the paper's sampled BCE (1 negative). ``score_all`` is replaced by a
  function that raises, which proves the step never materialises a [batch, N] score matrix. The item embedding
  and the output layer are dense N×d parameters; with their gradients and Adam's two moments they dominate memory
  (reported as ``param_bytes`` and ``expected_state_bytes``).

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


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


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
    return build_student(a.model, a.items, max_len=a.max_len, dim=a.dim)


def phase_eval(a) -> dict:
    import torch

    from dllm2rec.evaluation.metrics import sum_metrics_from_ranks
    from dllm2rec.evaluation.protocol import rank_targets

    split = _rand_split(a.rows, a.items, a.max_len, 1)
    model = _student(a).eval()
    base = peak_rss_bytes()
    t0 = time.perf_counter()
    ranks = []
    step = max(a.eval_batch * 2, 1)
    for s in range(0, a.rows, step):  # progress lines (the ranking itself is rank_targets, batch by batch)
        import numpy as np

        ranks.append(rank_targets(model, split, a.eval_batch, False, "cpu", a.item_chunk,
                                  rows=np.arange(s, min(s + step, a.rows))))
        done = min(s + step, a.rows)
        el = time.perf_counter() - t0
        print(f"  eval {done}/{a.rows} rows  {done / el:.0f} rows/s  eta {el / done * (a.rows - done):.0f}s",
              file=sys.stderr, flush=True)
    dt = time.perf_counter() - t0
    r = torch.cat(ranks)
    m = sum_metrics_from_ranks(r, [10, 20])
    return {"phase": "eval", "items": a.items, "rows": a.rows, "eval_batch": a.eval_batch,
            "item_chunk": a.item_chunk, "seconds": round(dt, 2), "rows_per_s": round(a.rows / dt, 1),
            "item_scores_per_s": round(a.rows * a.items / dt), "peak_rss_gib": round(peak_rss_bytes() / GiB, 3),
            "rss_before_ranking_gib": round(base / GiB, 3),
            "chunk_buffer_gib": round(a.eval_batch * a.item_chunk * 5 / GiB, 3),  # float scores + bool mask
            "random_model_HR@20": round(m["HR@20"] / a.rows, 6), "threads": __import__("torch").get_num_threads()}


def phase_topk(a) -> dict:
    import torch

    from dllm2rec.evaluation.protocol import top_k

    split = _rand_split(a.topk_rows, a.items, a.max_len, 2)
    model = _student(a).eval()
    seq, lens = torch.from_numpy(split.seq), torch.from_numpy(split.len)
    t0 = time.perf_counter()
    for s in range(0, len(seq), a.eval_batch):
        ids, _ = top_k(model, seq[s:s + a.eval_batch], lens[s:s + a.eval_batch], a.k, a.item_chunk)
    dt = time.perf_counter() - t0
    return {"phase": "topk", "items": a.items, "rows": a.topk_rows, "k": a.k, "item_chunk": a.item_chunk,
            "seconds": round(dt, 2), "rows_per_s": round(a.topk_rows / dt, 1),
            "peak_rss_gib": round(peak_rss_bytes() / GiB, 3)}


def phase_train(a) -> dict:
    import torch

    from dllm2rec.config import load_config
    from dllm2rec.data.schema import SeqDataset
    from dllm2rec.training.trainer import Trainer

    splits = {"train": _rand_split(a.train_rows, a.items, a.max_len, 3),
              "valid": _rand_split(10, a.items, a.max_len, 4), "test": _rand_split(10, a.items, a.max_len, 5)}
    ds = SeqDataset("large-synthetic", a.items, a.max_len, [f"item {i}" for i in range(a.items)], splits)
    cfg = load_config(None, [f"model.name={a.model}", f"model.dim={a.dim}", f"train.batch_size={a.batch}",
                             "loss.kind=bce", "loss.n_neg=1", "out_dir=/tmp/dllm2rec-bench-large"])
    tr = Trainer(cfg, ds, "/tmp/dllm2rec-bench-large/run", quiet=True)

    def no_full(*_a, **_k):
        raise AssertionError("score_all called: a [batch, N] matrix would be materialised")

    tr.model.score_all = no_full  # the sampled-BCE step must only score the target and the negatives
    n_par = sum(p.numel() for p in tr.model.parameters())
    big = sum(p.numel() for n, p in tr.model.named_parameters() if n in ("item_emb.weight", "out.weight"))
    rss0 = peak_rss_bytes()
    t0 = time.perf_counter()
    rec = tr.train_epoch(1)
    dt = time.perf_counter() - t0
    return {"phase": "train", "items": a.items, "train_rows": a.train_rows, "batch": a.batch,
            "loss": "sampled BCE, 1 negative (paper)", "seconds": round(dt, 2),
            "samples_per_s": round(a.train_rows / dt, 1), "train/loss": round(rec["train/loss"], 4),
            "score_all_called": False, "params": n_par, "N_x_d_params": big,
            "param_bytes_gib": round(n_par * 4 / GiB, 3),
            "expected_state_bytes_gib": round(n_par * 4 * 4 / GiB, 3),  # params + grads + Adam m, v
            "peak_rss_before_training_gib": round(rss0 / GiB, 3),
            "peak_rss_gib": round(peak_rss_bytes() / GiB, 3),
            "full_scores_would_need_gib": round(a.batch * a.items * 4 * 3 / GiB, 3)}  # scores, grad, softmax


PHASES = {"eval": phase_eval, "topk": phase_topk, "train": phase_train}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--rows", type=int, default=100_000, help="evaluation rows (users)")
    ap.add_argument("--topk-rows", type=int, default=10_000)
    ap.add_argument("--train-rows", type=int, default=20_480)
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--model", default="sasrec")
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--max-len", type=int, default=10)
    ap.add_argument("--eval-batch", type=int, default=1024)
    ap.add_argument("--item-chunk", type=int, default=65_536)
    ap.add_argument("--batch", type=int, default=256, help="training batch")
    ap.add_argument("--phases", default="eval,topk,train")
    ap.add_argument("--phase", help=argparse.SUPPRESS)
    ap.add_argument("--json", help="write all results to this file")
    a = ap.parse_args(argv)
    if a.phase:
        print(json.dumps(PHASES[a.phase](a)), flush=True)
        return 0
    results = []
    args = [x for x in (argv if argv is not None else sys.argv[1:])]
    for ph in a.phases.split(","):
        t0 = time.time()
        p = subprocess.run([sys.executable, os.path.abspath(__file__), *args, "--phase", ph],
                           stdout=subprocess.PIPE, text=True)
        if p.returncode != 0:
            print(f"phase {ph} failed (exit {p.returncode})", file=sys.stderr)
            return p.returncode
        res = json.loads(p.stdout.strip().splitlines()[-1])
        res["wall_s"] = round(time.time() - t0, 1)
        print(json.dumps(res), flush=True)
        results.append(res)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"argv": args, "results": results}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
