"""Training and evaluation throughput of each student on LastFM with the official hyper-parameters.

    python benchmarks/bench_students.py [--data lastfm] [--epochs 2] [--threads N]

Batch 256, dim 64, dropout 0.1, 1 sampled negative, Adam 1e-3; with and without DROS (alpha 1.0 as the official
default). Each configuration runs in its own subprocess so its peak RSS is its own. Yardstick (issue 2): the
official script trains SASRec on LastFM at ~3,500 samples/s on this 2-core machine (GRU4Rec ~4,600), peak RSS
~1.1 GB; the printed ratio is against 3,500 samples/s.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

OFFICIAL_SAMPLES_PER_S = 3500.0


def one(data: str, model: str, dros: float, epochs: int, threads: int | None) -> dict:
    import torch

    from dllm2rec.config import load_config
    from dllm2rec.training.trainer import Trainer, resolve_dataset

    if threads:
        torch.set_num_threads(threads)
    ds = resolve_dataset(data)
    cfg = load_config(None, [f"model.name={model}", f"loss.dros_alpha={dros}", "out_dir=/tmp/dllm2rec-bench"])
    tr = Trainer(cfg, ds, f"/tmp/dllm2rec-bench/{model}-{dros}", quiet=True)
    tr.train_epoch(0)  # warm-up (allocator, first-call overheads)
    sps = []
    for e in range(epochs):
        sps.append(tr.train_epoch(e + 1)["train/samples_per_s"])
    t = time.perf_counter()
    tr.evaluate_split("valid")
    ev = len(ds["valid"]) / (time.perf_counter() - t)
    return {"model": model, "dros_alpha": dros, "train_samples_per_s": max(sps), "eval_rows_per_s": ev,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "rows": len(ds["train"]),
            "threads": torch.get_num_threads()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="lastfm")
    ap.add_argument("--models", default="sasrec,gru4rec,caser")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        model, dros = a.child.split(":")
        print(json.dumps(one(a.data, model, float(dros), a.epochs, a.threads)))
        return
    rows = []
    for model in a.models.split(","):
        for dros in (0.0, 1.0):
            cmd = [sys.executable, __file__, "--data", a.data, "--epochs", str(a.epochs), "--child", f"{model}:{dros}"]
            if a.threads:
                cmd += ["--threads", str(a.threads)]
            out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "CI": "1"})
            if out.returncode:
                print(out.stderr, file=sys.stderr)
                raise SystemExit(out.returncode)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"dataset {a.data}: {rows[0]['rows']} training rows, batch 256, dim 64, 1 negative, "
          f"{rows[0]['threads']} torch threads")
    print(f"{'student':8} {'DROS':>5} {'train samples/s':>16} {'x official':>10} {'eval rows/s':>12} {'peak RSS MB':>12}")
    for r in rows:
        print(f"{r['model']:8} {r['dros_alpha']:>5.1f} {r['train_samples_per_s']:>16,.0f} "
              f"{r['train_samples_per_s'] / OFFICIAL_SAMPLES_PER_S:>9.1f}x {r['eval_rows_per_s']:>12,.0f} "
              f"{r['peak_rss_mb']:>12,.0f}")
    print(f"(ratio against the official script's ~{OFFICIAL_SAMPLES_PER_S:,.0f} samples/s for SASRec on LastFM; "
          "official peak RSS ~1,100 MB)")


if __name__ == "__main__":
    main()
