"""Epoch time of SASRec on LastFM: plain (DROS α 0.5) vs full DLLM2Rec (λ 0.7, ed 0.3, α 0.5) with a random
4096-d teacher (the shapes of a LLaMA-7B teacher). Target: distilled / plain ≤ 2×.

Reference (official script, issue 5): ~13-15 s/epoch plain, ~74 s/epoch full (5-6×; it recomputes the full DROS sum
once per teacher candidate and builds a [B, 10, 4096] tensor per batch).

    python benchmarks/bench_distill.py                 # one full epoch each
    python benchmarks/bench_distill.py --steps 50      # time 50 steps each, extrapolate to an epoch

Plain and distilled steps take turns (``--chunk``) and both wall and process CPU time are reported: on a shared,
overloaded machine the CPU-time ratio (with ``--threads 1``) is the trustworthy one.
"""
from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import torch

from dllm2rec.config import RunConfig
from dllm2rec.data.schema import SeqDataset
from dllm2rec.teachers.controls import make_control
from dllm2rec.training.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]


def load_lastfm() -> SeqDataset:
    p = ROOT / "prepared" / "lastfm"
    if (p / "manifest.json").is_file():
        return SeqDataset.load(p)
    from dllm2rec.data.official import import_official  # the LLaRA pickles (trusted, shared data)

    return import_official(ROOT.parent / "shared" / "data" / "lastfm-llara", name="lastfm", allow_pickle=True)


def make_stepper(tr: Trainer):
    tr.model.train()
    n = len(tr.train_tgt)
    bs = tr.cfg.train.batch_size
    perm = torch.randperm(n, generator=tr.gen)
    steps = (n + bs - 1) // bs

    def one(step: int) -> None:
        s = step % steps
        terms = tr.step_loss(perm[s * bs:(s + 1) * bs], 1, step)
        loss = sum(terms.values())
        tr.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        tr.optimizer.step()

    return one, steps


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=None,
                    help="time this many steps of each and extrapolate (default: one full epoch of each)")
    ap.add_argument("--chunk", type=int, default=10, help="steps per turn; plain and distilled take turns, so "
                    "a machine whose load changes during the run affects both alike")
    ap.add_argument("--dim", type=int, default=4096, help="random teacher dimension")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()
    ds = load_lastfm()
    print(f"dataset {ds.name}: {len(ds['train'])} train rows, {ds.n_items} items; torch threads "
          f"{a.threads or torch.get_num_threads()}; device {a.device}")
    base = {"model": {"name": "sasrec"}, "loss": {"dros_alpha": 0.5},
            "train": {"num_threads": a.threads, "device": a.device, "batch_size": 256}}
    t0 = time.perf_counter()
    teacher = make_control(f"random:{a.dim}", ds, seed=0)
    print(f"random teacher {teacher.item_emb.shape} built in {time.perf_counter() - t0:.1f}s")
    runs = {}
    for label, distill in [
        ("plain", {"strategy": "none"}),
        ("dllm2rec", {"strategy": "dllm2rec", "params": {"lam": 0.7, "ed_weight": 0.3, "dros_alpha": 0.5}}),
    ]:
        cfg = RunConfig.model_validate({**base, "distill": distill})
        tr = Trainer(cfg, ds, run_dir="/tmp/bench_distill", teacher=teacher if label != "plain" else None, quiet=True)
        one, steps = make_stepper(tr)
        for s in range(3):  # warm-up
            one(s)
        runs[label] = [one, 0.0, 0.0]
    todo = steps if a.steps is None else min(a.steps, steps)
    done = 0
    while done < todo:
        k = min(a.chunk, todo - done)
        for label, r in runs.items():
            t0, c0 = time.perf_counter(), time.process_time()
            for s in range(k):
                r[0](3 + done + s)
            r[1] += time.perf_counter() - t0
            r[2] += time.process_time() - c0
        done += k
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    for label, r in runs.items():
        print(f"{label:9s} {r[1] * steps / todo:7.1f} s/epoch wall, {r[2] * steps / todo:7.1f} s/epoch CPU "
              f"({todo}/{steps} steps timed)")
    print(f"peak RSS (both trainers + teacher) {rss:.0f} MB")
    print(f"ratio dllm2rec/plain = {runs['dllm2rec'][1] / runs['plain'][1]:.2f}x wall, "
          f"{runs['dllm2rec'][2] / runs['plain'][2]:.2f}x CPU time  (target <= 2x; official ~5-6x)")


if __name__ == "__main__":
    main()
