"""Serving cost of each teacher next to the student: one request (batch 1, a 10-item history) -> top-20.

    OMP_NUM_THREADS=1 python benchmarks/bench_teacher_latency.py [--items 1682 17000] [--requests 300]

- student: SASRec, d=64 (the distilled model a user serves; hooks folded, so the same cost as plain);
- llm-emb teacher: the shipped recipe's model (frozen 384-d title embeddings -> MLP adapter -> 2-layer causal
  transformer, d=64, item bias), item representations cached after the first call (eval mode), as a server would;
- BIGRec generator: SmolLM2-135M, one greedy 32-token generation of the next title (the figure quoted in README,
  measured by `dllm2rec bench --teacher-model ...`, serving/bench.py:bench_teacher); not re-run here.
Weights are random: latency does not depend on training. Prints p50/p99 and the ratio to the student.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from dllm2rec.evaluation.protocol import top_k
from dllm2rec.students.base import build_student
from dllm2rec.teachers.llmemb_model import LLMEmbSeqModel
from dllm2rec.utils.cpu import describe


def _time(fn, n: int) -> tuple[float, float]:
    for _ in range(10):
        fn()
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t0) * 1e3)
    ts.sort()
    return statistics.median(ts), ts[int(0.99 * (len(ts) - 1))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--items", type=int, nargs="+", default=[1682, 17000])
    ap.add_argument("--requests", type=int, default=300)
    a = ap.parse_args()
    print(f"cpu: {describe()}; torch threads {torch.get_num_threads()}")
    L = 10
    for n in a.items:
        rng = np.random.default_rng(0)
        seq = torch.from_numpy(rng.integers(0, n, (1, L)))
        lens = torch.tensor([L])
        student = build_student("sasrec", n, max_len=L, dim=64).eval()
        teacher = LLMEmbSeqModel(rng.standard_normal((n, 384)).astype(np.float32), max_len=L, dim=64, n_layers=2,
                                 n_heads=2, id_emb=False, item_bias=True).eval()

        @torch.inference_mode()
        def teach():
            s = teacher.score_all(teacher.encode(seq, lens))
            return s.topk(20, dim=1)

        s50, s99 = _time(lambda: top_k(student, seq, lens, 20), a.requests)
        t50, t99 = _time(teach, a.requests)
        print(f"N={n:,}: student SASRec p50 {s50:.3f} ms p99 {s99:.3f} ms | llm-emb teacher p50 {t50:.3f} ms "
              f"p99 {t99:.3f} ms ({t50 / s50:.1f}x the student)")


if __name__ == "__main__":
    main()
