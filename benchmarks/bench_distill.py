"""Step time of SASRec on LastFM: full DLLM2Rec (λ 0.7, ed 0.3) against the plain student with the SAME loss
settings (sampled BCE + DROS α, default 0.5, on both sides). Target (issue 15): full / plain ≤ 1.5×.

    python benchmarks/bench_distill.py --steps 60 --threads 1          # quick, on a shared machine
    python benchmarks/bench_distill.py                                 # one full epoch of each
    python benchmarks/bench_distill.py --teacher random --breakdown    # dense 4096-d teacher; rank/embed parts

Teachers (``--teacher``):

- ``padded`` (default): the shipped LastFM teacher (``artifacts/teachers/lastfm``, 384-d) zero-padded to 4096 — the
  very table ``dllm2rec teacher export --pad-to 4096`` writes for the official script, and what
  ``benchmarks/bench_vs_official.py`` trains both sides on.
- ``random``: a dense random 4096-d table (the shapes of a LLaMA-7B teacher; no zero columns).

``--breakdown`` also times ``rank-only`` (ed_weight 0) and ``embed-only`` (λ 0), each with the same loss, so the
extra time splits into ranking distillation and the collaborative-embedding projection.

The variants take turns (``--chunk`` steps each), and both wall and process CPU time are reported: on a shared,
overloaded machine the CPU-time ratio (with ``--threads 1``) is the trustworthy one.
"""
from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import numpy as np
import torch

from dllm2rec.config import RunConfig
from dllm2rec.data.schema import SeqDataset
from dllm2rec.teachers.controls import make_control
from dllm2rec.training.trainer import Trainer
from dllm2rec.utils.cpu import describe

ROOT = Path(__file__).resolve().parents[1]
TARGET = 1.5  # full / plain step time, same loss settings (issue 15)


def load_lastfm() -> SeqDataset:
    p = ROOT / "prepared" / "lastfm"
    if (p / "manifest.json").is_file():
        return SeqDataset.load(p)
    from dllm2rec.data.official import (
        import_official,  # the LLaRA pickles (trusted, shared data)
    )

    return import_official(ROOT.parent / "shared" / "data" / "lastfm-llara", name="lastfm", allow_pickle=True)


def load_teacher(kind: str, ds: SeqDataset, dim: int = 4096):
    if kind == "random":
        return make_control(f"random:{dim}", ds, seed=0)
    from dllm2rec.teachers.artifacts import TeacherArtifacts

    art = TeacherArtifacts.load(ROOT / "artifacts" / "teachers" / "lastfm", ds)
    if art.dim < dim:  # what `teacher export --pad-to 4096` writes: zero columns, the same model
        art.item_emb = np.pad(np.asarray(art.item_emb, dtype=np.float32), ((0, 0), (0, dim - art.dim)))
    return art


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
    ap.add_argument("--chunk", type=int, default=10, help="steps per turn; the variants take turns, so a machine "
                    "whose load changes during the run affects all alike")
    ap.add_argument("--teacher", choices=("padded", "random"), default="padded",
                    help="padded: the shipped teacher zero-padded to 4096 (the official files); random: dense 4096-d")
    ap.add_argument("--alpha", type=float, default=0.5, help="DROS α of the student loss, on every variant")
    ap.add_argument("--ed-precision", default="auto", choices=("auto", "float32", "bfloat16"))
    ap.add_argument("--breakdown", action="store_true", help="also time rank-only and embed-only")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()
    ds = load_lastfm()
    print(f"dataset {ds.name}: {len(ds['train'])} train rows, {ds.n_items} items; torch threads "
          f"{a.threads or torch.get_num_threads()}; device {a.device}; CPU {describe()}")
    base = {"model": {"name": "sasrec"}, "loss": {"dros_alpha": a.alpha},
            "train": {"num_threads": a.threads, "device": a.device, "batch_size": 256}}
    t0 = time.perf_counter()
    teacher = load_teacher(a.teacher, ds)
    nz = int((np.abs(np.asarray(teacher.item_emb)).sum(0) != 0).sum())
    print(f"teacher '{a.teacher}' {tuple(teacher.item_emb.shape)} ({nz} non-zero columns) ready in "
          f"{time.perf_counter() - t0:.1f}s; loss on every variant: BCE + DROS α {a.alpha}")
    kd = {"lam": 0.7, "ed_weight": 0.3, "ed_precision": a.ed_precision}
    variants = [("plain", {"strategy": "none"}), ("dllm2rec", {"strategy": "dllm2rec", "params": kd})]
    if a.breakdown:
        variants += [("rank-only", {"strategy": "dllm2rec", "params": {**kd, "ed_weight": 0.0}}),
                     ("embed-only", {"strategy": "dllm2rec", "params": {**kd, "lam": 0.0}})]
    runs = {}
    for label, distill in variants:
        cfg = RunConfig.model_validate({**base, "distill": distill})
        tr = Trainer(cfg, ds, run_dir="/tmp/bench_distill", teacher=teacher if label != "plain" else None, quiet=True)
        off = getattr(tr.model, "input_offset", None)
        if off is not None and label == "dllm2rec":
            print(f"teacher table {str(off.teacher_emb.dtype).replace('torch.', '')} (ed_precision {a.ed_precision})")
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
    n = len(ds["train"])
    pw, pc = runs["plain"][1], runs["plain"][2]
    for label, r in runs.items():
        print(f"{label:10s} {r[1] * steps / todo:6.1f} s/epoch wall ({n * todo / steps / r[1]:7,.0f} samples/s), "
              f"{r[2] * steps / todo:6.1f} s/epoch CPU  = {r[1] / pw:.2f}x / {r[2] / pc:.2f}x plain "
              f"({todo}/{steps} steps timed)")
    print(f"peak RSS (all trainers + teacher) {rss:.0f} MB")
    fw, fc = runs["dllm2rec"][1] / pw, runs["dllm2rec"][2] / pc
    print(f"full/plain (same loss: BCE + DROS α {a.alpha}) = {fw:.2f}x wall, {fc:.2f}x CPU time  "
          f"(target <= {TARGET}x: {'met' if fc <= TARGET else 'NOT met'} on CPU time)")


if __name__ == "__main__":
    main()
