"""Training speed paired against the official DLLM2Rec script: same data, same 4096-d teacher files, one run.

    python benchmarks/bench_vs_official.py --official /path/to/DLLM2Rec            # one epoch each, 2 pairs
    python benchmarks/bench_vs_official.py --official DIR --batches 40 --threads 1  # quick: 40 batches each

``DIR`` is a checkout of github.com/istarryn/DLLM2Rec at commit b78cc65 (``main.py``, ``utility.py``,
``SASRecModules_ori.py``). Nothing of it is copied into this repository; this script runs it from a temp dir.

What is measured, for (a) plain SASRec (no DROS, no distillation: official ``--alpha 0 --lam 0 --ed_weight 0``) and
(b) full DLLM2Rec (official ``--lam 0.7 --ed_weight 0.3 --alpha 0.5``; ours ``dllm2rec`` with ``lam 0.7, ed_weight
0.3``, ``loss.dros_alpha 0.5``, ``confidence_norm raw`` = the official exp(-d)):

- **Data.** LastFM in the official DROS pickle layout (``--data``, default ``../shared/data/lastfm-llara``): a temp
  ``data/lastfm/`` gets ``train_data.df`` and the ``data_statis.df`` the official script reads (seq_size 10,
  item_num 4606). Ours reads the same ``train_data.df`` (``data.official.import_official``).
- **Teacher.** The shipped teacher artifacts (``--teacher``, default ``artifacts/teachers/lastfm``) are exported
  with ``dllm2rec teacher export ... --pad-to 4096`` into ``tocf/lastfm/`` (``all_embeddings.pt``,
  ``myrank_train.txt``, ``confidence_train.txt``); the official script reads those three files and ours imports the
  very same files back (``teachers.official_io.import_official``), so both project 4096-d embeddings.
- **Official loop, training only.** The checkout's ``main.py`` is copied to the temp dir and patched as text (each
  anchor must match exactly once, else exit 2): ``torch.set_num_threads(T)`` at the start of ``__main__``;
  ``num_batches`` = ``--batches`` (default: its own epoch, ``int(rows / 256)`` = 198); the clock starts before the
  first batch and stops after the last ``optimizer.step()`` of epoch 1, where the script would start its per-epoch
  evaluation — the patch writes the timing there and exits instead. ``--epoch 1 --cuda -1`` (CPU).
- **Our loop.** ``Trainer.train_epoch(1)`` — the loop ``dllm2rec train`` runs — timed the same way; with
  ``--batches N`` the trainer's training tensors are cut to N·256 rows (a seeded random subset, their row ids kept,
  so the teacher rows still match) so it runs exactly N batches.
- **Pairs.** Each measurement is a fresh process (same thread count, ``OMP_NUM_THREADS`` set too), run official,
  ours, official, ours, ... (``--pairs``, >= 2), so a change of machine load hits both; the ratio is printed pair by
  pair. samples/s = rows trained / loop wall seconds; CPU seconds of the loop are printed too (on a shared machine
  run ``--threads 1`` and read the CPU figures).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OFFICIAL_FILES = ("main.py", "utility.py", "SASRecModules_ori.py")
GET_IT = ("git clone https://github.com/istarryn/DLLM2Rec DIR && git -C DIR checkout b78cc65")
BATCH = 256
CONFIGS = {
    # label: (official flags, our loss.dros_alpha, our distill section)
    "plain": (["--alpha", "0", "--lam", "0", "--ed_weight", "0"], 0.0, {"strategy": "none"}),
    "full": (["--alpha", "0.5", "--lam", "0.7", "--ed_weight", "0.3"], 0.5,
             {"strategy": "dllm2rec", "params": {"lam": 0.7, "ed_weight": 0.3, "K": 10, "confidence_norm": "raw"}}),
}

# (anchor in the official main.py, replacement); each anchor must occur exactly once
PATCHES = [
    ("    s = time.time()\n    set_seed(2024)\n",
     "    s = time.time()\n    torch.set_num_threads(int(os.environ['BENCH_THREADS']))\n    set_seed(2024)\n"),
    ("    num_batches = int(num_rows / args.batch_size)\n",
     "    num_batches = int(os.environ.get('BENCH_BATCHES') or int(num_rows / args.batch_size))\n"),
    ("        for j in range(num_batches):\n",
     ("        _bench_t0, _bench_c0 = time.perf_counter(), time.process_time()\n"
      "        for j in range(num_batches):\n")),
    ("        if True:\n            step = i + 1\n",
     ("        _bench_dt, _bench_cpu = time.perf_counter() - _bench_t0, time.process_time() - _bench_c0\n"
      "        import json as _bench_json\n"
      "        with open(os.environ['BENCH_OUT'], 'w') as _f:\n"
      "            _bench_json.dump({'seconds': _bench_dt, 'cpu_seconds': _bench_cpu,\n"
      "                              'samples': num_batches * args.batch_size, 'loss': float(loss_all)}, _f)\n"
      "        exit(0)\n"
      "        if True:\n            step = i + 1\n")),
]


def fail(msg: str) -> None:
    print(msg, file=sys.stderr)
    sys.exit(2)


def patched_main(official: Path) -> str:
    text = (official / "main.py").read_text(encoding="utf-8")
    for anchor, new in PATCHES:
        n = text.count(anchor)
        if n != 1:
            fail(f"{official / 'main.py'}: expected the b78cc65 version (the line {anchor.strip()!r} occurs {n} "
                 f"times, expected once); get it with: {GET_IT}")
        text = text.replace(anchor, new)
    return text


def prepare(a, work: Path) -> None:
    """The official layout under ``work`` (data/lastfm, tocf/lastfm, the patched script) + our prepared copy."""
    import pandas as pd

    from dllm2rec.data.official import (
        import_official,  # trusted, shared data (the LLaRA pickles)
    )

    for f in OFFICIAL_FILES[1:]:
        shutil.copy(a.official / f, work / f)
    (work / "main.py").write_text(patched_main(a.official), encoding="utf-8")
    data = work / "data" / "lastfm"
    data.mkdir(parents=True)
    train = pd.read_pickle(a.data / "train_data.df")
    train.to_pickle(data / "train_data.df")
    pd.DataFrame({"seq_size": [len(train["seq"].iloc[0])], "item_num": [4606]}).to_pickle(data / "data_statis.df")
    ds = import_official(a.data, name="lastfm", allow_pickle=True)
    if ds.n_items != 4606 or len(ds["train"]) != len(train):
        fail(f"{a.data}: expected the LastFM data (4606 items), got {ds.n_items} items / {len(ds['train'])} rows")
    ds.save(work / "prepared")
    tocf = work / "tocf" / "lastfm"
    cmd = [sys.executable, "-m", "dllm2rec", "teacher", "export", str(a.teacher), "--out", str(tocf),
           "--data", str(work / "prepared"), "--pad-to", "4096"]
    r = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if r.returncode:
        fail(f"teacher export failed ({' '.join(cmd)}): {(r.stderr or r.stdout).strip().splitlines()[-1:]}")


def run_official(a, work: Path, label: str) -> dict:
    out = work / f"official-{label}.json"
    env = {**os.environ, "BENCH_THREADS": str(a.threads), "OMP_NUM_THREADS": str(a.threads),
           "BENCH_OUT": str(out), "BENCH_BATCHES": str(a.batches or "")}
    cmd = [sys.executable, "main.py", "--model_name", "SASRec", "--data", "lastfm", "--epoch", "1", "--cuda", "-1",
           "--batch_size", str(BATCH), "--hidden_factor", "64", "--dropout_rate", "0.1", "--lr", "0.001",
           "--candidate_topk", "10", *CONFIGS[label][0]]
    r = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, check=False)
    if r.returncode or not out.is_file():
        fail(f"official script failed (exit {r.returncode}): {(r.stderr or r.stdout).strip()[-400:]}")
    return json.loads(out.read_text())


def run_ours(a, work: Path, label: str) -> dict:
    out = work / f"ours-{label}.json"
    env = {**os.environ, "OMP_NUM_THREADS": str(a.threads), "CI": "true"}
    cmd = [sys.executable, __file__, "--_ours", label, "--_work", str(work), "--threads", str(a.threads),
           "--ed-precision", a.ed_precision, "--_out", str(out)] + (["--batches", str(a.batches)] if a.batches else [])
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if r.returncode or not out.is_file():
        fail(f"our training loop failed (exit {r.returncode}): {(r.stderr or r.stdout).strip()[-400:]}")
    return json.loads(out.read_text())


def ours_child(a) -> None:
    """One timed epoch of our Trainer on the prepared copy and the imported official teacher files."""
    import torch

    from dllm2rec.config import RunConfig
    from dllm2rec.data.schema import SeqDataset
    from dllm2rec.teachers.official_io import import_official
    from dllm2rec.training.trainer import Trainer

    torch.set_num_threads(a.threads)
    work = Path(a._work)
    ds = SeqDataset.load(work / "prepared")
    _, alpha, distill = CONFIGS[a._ours]
    teacher = None
    if distill["strategy"] != "none":
        teacher = import_official(work / "tocf" / "lastfm", ds)  # the files the official script reads
        distill = {**distill, "params": {**distill["params"], "ed_precision": a.ed_precision}}
    cfg = RunConfig.model_validate({
        "model": {"name": "sasrec", "dim": 64, "dropout": 0.1},
        "loss": {"kind": "bce", "n_neg": 1, "dros_alpha": alpha},
        "optim": {"lr": 1e-3},
        "train": {"batch_size": BATCH, "num_threads": a.threads, "device": "cpu"},
        "distill": distill})
    tr = Trainer(cfg, ds, run_dir=work / "run", teacher=teacher, quiet=True)
    if a.batches:  # exactly N batches: a seeded subset of the rows, row ids kept (they index the teacher rows)
        keep = torch.randperm(len(tr.train_tgt), generator=torch.Generator().manual_seed(0))[: a.batches * BATCH]
        tr.train_seq, tr.train_len, tr.train_tgt, tr.train_row = (
            t[keep] for t in (tr.train_seq, tr.train_len, tr.train_tgt, tr.train_row))
    t0, c0 = time.perf_counter(), time.process_time()
    logs = tr.train_epoch(1)
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    prec = getattr(getattr(tr.model, "input_offset", None), "teacher_emb", None)
    Path(a._out).write_text(json.dumps({"seconds": dt, "cpu_seconds": cpu, "samples": len(tr.train_tgt),
                                        "loss": logs["train/loss"],
                                        "ed_table": None if prec is None else str(prec.dtype).replace("torch.", "")}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--official", type=Path, help="checkout of github.com/istarryn/DLLM2Rec at b78cc65")
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "lastfm-llara",
                    help="LastFM in the official DROS pickle layout (train_data.df, ...)")
    ap.add_argument("--teacher", type=Path, default=ROOT / "artifacts" / "teachers" / "lastfm",
                    help="teacher-artifacts directory, exported with --pad-to 4096 for both sides")
    ap.add_argument("--pairs", type=int, default=2, help="official/ours pairs per configuration (>= 2)")
    ap.add_argument("--batches", type=int, default=None, help="batches per measurement (default: one epoch each)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads for both (default: torch's default)")
    ap.add_argument("--configs", default="plain,full", help="comma-separated: plain, full")
    ap.add_argument("--ed-precision", default="auto", choices=("auto", "float32", "bfloat16"),
                    help="our teacher table precision (auto: bfloat16 only where the CPU has native bf16)")
    ap.add_argument("--_ours", help=argparse.SUPPRESS)
    ap.add_argument("--_work", help=argparse.SUPPRESS)
    ap.add_argument("--_out", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a._ours:
        return ours_child(a)
    import torch

    from dllm2rec.utils.cpu import describe

    if a.official is None or not all((a.official / f).is_file() for f in OFFICIAL_FILES):
        fail(f"official DLLM2Rec checkout not found at {a.official or '(no --official DIR)'} (needs "
             f"{', '.join(OFFICIAL_FILES)}); get it with: {GET_IT}")
    if not (a.data / "train_data.df").is_file():
        fail(f"{a.data / 'train_data.df'}: missing (--data: LastFM in the official DROS pickle layout)")
    if not (a.teacher / "manifest.json").is_file():
        fail(f"{a.teacher / 'manifest.json'}: missing (--teacher: a teacher-artifacts directory)")
    labels = [c.strip() for c in a.configs.split(",") if c.strip()]
    bad = [c for c in labels if c not in CONFIGS]
    if bad or not labels:
        fail(f"--configs: unknown {', '.join(bad) or '(none given)'}; choose from {', '.join(CONFIGS)}")
    if a.pairs < 2:
        fail("--pairs must be >= 2 (pairs alternate official and ours so that load changes hit both)")
    a.official = a.official.resolve()
    a.threads = a.threads or torch.get_num_threads()
    print(f"CPU: {describe()}; torch {torch.__version__}; threads {a.threads} (both sides)")
    print(f"batches per measurement: {a.batches or 'one epoch'} x {BATCH}; {a.pairs} pairs, official first")
    with tempfile.TemporaryDirectory(prefix="bench_vs_official_") as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        prepare(a, work)
        print(f"prepared the official layout + teacher export (--pad-to 4096) in {time.perf_counter() - t0:.0f}s")
        summary = []
        for label in labels:
            ratios, cpu_ratios = [], []
            print(f"\n[{label}] official {' '.join(CONFIGS[label][0])}")
            for i in range(a.pairs):
                off = run_official(a, work, label)
                ours = run_ours(a, work, label)
                so, su = off["samples"] / off["seconds"], ours["samples"] / ours["seconds"]
                co, cu = off["samples"] / off["cpu_seconds"], ours["samples"] / ours["cpu_seconds"]
                ratios.append(su / so)
                cpu_ratios.append(cu / co)
                extra = f"; our teacher table {ours['ed_table']}" if ours.get("ed_table") else ""
                print(f"  pair {i + 1}: official {so:8,.0f} samples/s ({off['samples']} in {off['seconds']:.1f}s, "
                      f"CPU {off['cpu_seconds']:.1f}s) | ours {su:8,.0f} samples/s ({ours['samples']} in "
                      f"{ours['seconds']:.1f}s, CPU {ours['cpu_seconds']:.1f}s) | ours/official {su / so:5.2f}x wall, "
                      f"{cu / co:5.2f}x CPU{extra}")
            summary.append((label, ratios, cpu_ratios))
    print("\nsummary (ours / official samples/s, pair by pair; target >= 10x on both):")
    for label, ratios, cpu_ratios in summary:
        print(f"  {label:5s} wall {', '.join(f'{r:.2f}x' for r in ratios)} (median {statistics.median(ratios):.2f}x)"
              f"; CPU {', '.join(f'{r:.2f}x' for r in cpu_ratios)} (median {statistics.median(cpu_ratios):.2f}x)")


if __name__ == "__main__":
    main()
