"""``fit-llmemb`` cost against catalogue size: title encoding, one training epoch (full vs sampled softmax),
validation and training-row scoring, at 1.7k (ML-100K), 4.6k (LastFM), 11.9k (Amazon Toys), 17.4k and 100k items.

    dllm2rec data prepare ml-100k --out /tmp/llmemb-scale/data/ml-100k
    dllm2rec data prepare lastfm  --out /tmp/llmemb-scale/data/lastfm --allow-pickle
    dllm2rec data prepare toys    --out /tmp/llmemb-scale/data/toys
    OMP_NUM_THREADS=1 python benchmarks/bench_llmemb_scale.py --data-root /tmp/llmemb-scale/data \\
        --json /tmp/llmemb-scale/bench.json

Bounded on purpose (a few minutes on one thread): every number is measured on a slice and reported per 1k units,
then extrapolated to the dataset's size (the "epoch" column = seconds per 1k training rows × training rows / 1k):

- ``encode``  — all-MiniLM-L6-v2 (``encoders.encode_minilm``, batches of 128, no cache) over ``--encode-titles``
  of the dataset's own titles, model loading excluded (reported apart once);
- ``train``   — ``--train-batches`` optimiser steps (batch 256, after one warm-up step) of the shipped recipe
  (MLP adapter, d = 64, 2 layers × 2 heads, AdamW) with the full softmax (``item_loss=full``: the adapter over
  all N titles every step) and with the sampled softmax (``item_loss=sampled``, 2,048 negatives);
- ``valid``   — early-stopping validation (full ranking over all N items, history masked) on ``--eval-rows`` rows;
- ``score``   — training-row scoring for the artifacts (top-20 + distances over all N items) on ``--eval-rows``.

Datasets: the three prepared ones found under ``--data-root`` (Toys has ASINs, not titles: its encoding row
encodes ASIN strings), plus two synthetic catalogues (``make_synthetic``) whose titles are the real Video Games
titles of ``dllm2rec-game/id2name.txt`` (17,408 titles; cycled with a " #k" suffix for 100k) when that file is
present, so their encoding cost is that of real titles.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

from dllm2rec.utils.cpu import cpu_name  # noqa: E402  (after the thread default: it must precede torch)


SYNTHETIC = {"synthetic-17k": 17_408, "synthetic-100k": 100_000}


def game_titles(root: Path) -> list[str] | None:
    f = root / "dllm2rec-game" / "id2name.txt"
    if not f.is_file():
        return None
    return [line.rsplit("\t", 1)[0] for line in f.read_text(encoding="utf-8").splitlines() if "\t" in line]


def datasets(data_root: Path, shared: Path, which: list[str]):
    from dllm2rec.data.schema import SeqDataset
    from dllm2rec.data.synthetic import make_synthetic

    titles = game_titles(shared)
    for name in which:
        if name in SYNTHETIC:
            n = SYNTHETIC[name]
            ds = make_synthetic(n_items=n, n_users=4000, seq_len=40, max_len=10, seed=0, name=name)
            if titles:
                ds.titles = [titles[i % len(titles)] + (f" #{i // len(titles)}" if i >= len(titles) else "")
                             for i in range(n)]
            yield name, ds, "synthetic interactions" + (", Video Games titles" if titles else ", 'Item i' titles")
        elif (data_root / name / "manifest.json").is_file():
            yield name, SeqDataset.load(data_root / name), "prepared" + (" (ASIN titles)" if name == "toys" else "")
        else:
            print(f"skip {name}: no prepared dataset under {data_root}")


def bench_encode(titles: list[str], n: int) -> float:
    from dllm2rec.teachers.encoders import encode_minilm

    sub = titles[:n]
    t = time.perf_counter()
    encode_minilm(sub)
    return (time.perf_counter() - t) / len(sub) * 1000


def bench_train(ds, title_emb, mode: str, batches: int, batch: int = 256) -> float:
    import numpy as np
    import torch

    from dllm2rec.teachers.llmemb_fit import full_loss, label_shares, sampled_loss
    from dllm2rec.teachers.llmemb_model import LLMEmbConfig, LLMEmbSeqModel

    cfg = LLMEmbConfig(item_loss=mode, batch_size=batch)
    train = ds["train"]
    torch.manual_seed(0)
    model = LLMEmbSeqModel(title_emb, ds.max_len, cfg.dim, cfg.n_layers, cfg.n_heads, cfg.dropout, cfg.id_emb,
                           cfg.item_bias, cfg.adapter).train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(0)
    p = label_shares(train, np.arange(len(train)), ds.n_items, False)
    perm = torch.from_numpy(np.random.default_rng(0).permutation(len(train)))
    seq_all, len_all, tgt_all = (torch.from_numpy(a) for a in (train.seq, train.len, train.target))
    t = None
    for i in range(batches + 1):
        if i == 1:
            t = time.perf_counter()  # step 0 is a warm-up
        b = perm[(i * batch) % len(perm):][:batch]
        seq, lens, tgt = seq_all[b], len_all[b], tgt_all[b]
        if mode == "sampled":
            loss = sampled_loss(model, seq, lens, tgt, cfg, ds.n_items, gen, p)
        else:
            loss = full_loss(model, seq, lens, tgt, cfg, ds.n_items)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return (time.perf_counter() - t) / (batches * batch) * 1000


def bench_eval(ds, title_emb, rows: int) -> tuple[float, float]:
    import numpy as np
    import torch

    from dllm2rec.evaluation.protocol import rank_targets
    from dllm2rec.teachers.llmemb_model import LLMEmbSeqModel, score_rows

    torch.manual_seed(0)
    model = LLMEmbSeqModel(title_emb, ds.max_len, 64, 2, 2, 0.2, False, True, "mlp").eval()
    v = ds["valid"]
    r = np.arange(min(rows, len(v)))
    t = time.perf_counter()
    rank_targets(model, v, batch=1024, exclude_history=True, rows=r)
    t_valid = (time.perf_counter() - t) / len(r) * 1000
    tr = ds["train"]
    r = np.arange(min(rows, len(tr)))
    t = time.perf_counter()
    score_rows(model, tr, rows=r, mask=True, top_n=20, batch=1024)
    return t_valid, (time.perf_counter() - t) / len(r) * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-root", type=Path, default=Path("prepared"))
    ap.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    ap.add_argument("--datasets", default="ml-100k,lastfm,toys,synthetic-17k,synthetic-100k")
    ap.add_argument("--encode-titles", type=int, default=1000)
    ap.add_argument("--train-batches", type=int, default=6)
    ap.add_argument("--eval-rows", type=int, default=2048)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()

    import numpy as np
    import torch

    from dllm2rec.teachers.encoders import encode_minilm
    from dllm2rec.teachers.llmemb_model import LLMEmbConfig

    torch.set_num_threads(a.threads)
    env = {"cpu": cpu_name(), "cpu_capability": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__,
           "threads": torch.get_num_threads(), "os_cpus": os.cpu_count(),
           "loadavg_start": [round(x, 2) for x in os.getloadavg()]}
    print(f"CPU: {env['cpu']} | torch {env['torch']} capability {env['cpu_capability']} | "
          f"{env['threads']} torch thread(s), {env['os_cpus']} CPUs visible | load average {env['loadavg_start']}")
    t = time.perf_counter()
    encode_minilm(["warm up the encoder"])  # loads the model once (file cache warm for the timed runs)
    env["encoder_load_seconds"] = round(time.perf_counter() - t, 1)
    rows = []
    for name, ds, kind in datasets(a.data_root, a.shared, a.datasets.split(",")):
        t0 = time.perf_counter()
        enc_1k = bench_encode(ds.titles, a.encode_titles)
        # the training cost does not depend on the embedding values: a seeded table of the encoder's width
        emb = np.random.default_rng(0).standard_normal((ds.n_items, 384)).astype(np.float32)
        full_1k = bench_train(ds, emb, "full", a.train_batches)
        samp_1k = bench_train(ds, emb, "sampled", a.train_batches)
        valid_1k, score_1k = bench_eval(ds, emb, a.eval_rows)
        R, V = len(ds["train"]), len(ds["valid"])
        row = {"dataset": name, "kind": kind, "items": ds.n_items, "train_rows": R, "valid_rows": V,
               "encode_s_per_1k_titles": round(enc_1k, 2), "encode_s_catalogue": round(enc_1k * ds.n_items / 1000, 1),
               "full_s_per_1k_rows": round(full_1k, 3), "full_s_epoch": round(full_1k * R / 1000, 1),
               "sampled_s_per_1k_rows": round(samp_1k, 3), "sampled_s_epoch": round(samp_1k * R / 1000, 1),
               "valid_s_per_1k_rows": round(valid_1k, 3), "valid_s_epoch": round(valid_1k * V / 1000, 1),
               "score_s_per_1k_rows": round(score_1k, 3), "score_s_all_rows": round(score_1k * R / 1000, 1),
               "auto_item_loss": LLMEmbConfig().resolve_item_loss(ds.n_items)[0],
               "bench_seconds": round(time.perf_counter() - t0, 1)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    print("\n| dataset | items | train rows | encode s / 1k titles (catalogue) | full softmax s / 1k rows (epoch) "
          "| sampled s / 1k rows (epoch) | speed-up | valid s / 1k rows (per epoch) | score s / 1k rows (all) "
          "| auto |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['dataset']} | {r['items']:,} | {r['train_rows']:,} | {r['encode_s_per_1k_titles']:.1f} "
              f"({r['encode_s_catalogue']:,.0f} s) | {r['full_s_per_1k_rows']:.2f} ({r['full_s_epoch']:,.0f} s) "
              f"| {r['sampled_s_per_1k_rows']:.2f} ({r['sampled_s_epoch']:,.0f} s) "
              f"| {r['full_s_per_1k_rows'] / r['sampled_s_per_1k_rows']:.1f}× "
              f"| {r['valid_s_per_1k_rows']:.2f} ({r['valid_s_epoch']:,.0f} s) "
              f"| {r['score_s_per_1k_rows']:.2f} ({r['score_s_all_rows']:,.0f} s) | {r['auto_item_loss']} |")
    env["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    print(f"load average at the end: {env['loadavg_end']}")
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps({"env": env, "args": {k: str(v) for k, v in vars(a).items()}, "rows": rows},
                                     indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
