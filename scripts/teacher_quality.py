"""Quality of the LLM-embedding sequential teacher (``llm-emb``) vs popularity vs a plain SASRec student.

Per dataset it prints: popularity (most popular training targets), the teacher (valid + test HR@20/NDCG@20, chosen on
validation), a plain SASRec student (no distillation), the share of test rows where the teacher's top-20 and SASRec's
top-20 overlap (any common item) plus the mean overlap fraction, the teacher's training time, and how often the
teacher's top-1 equals the training target with and without K-fold cross-fitting.

    python scripts/teacher_quality.py --datasets ml-100k lastfm [--encoder minilm] [--threads 1]

Datasets come from ``prepared/<name>`` (``dllm2rec data prepare``); ``--data-root`` overrides it. When a prepared
directory is missing, a fallback builds the same recipe from ../shared/data into a temporary directory (ML-100K:
per-user time sort, windows of the last 10 items, global sort by target time, 80/10/10; LastFM: the LLaRA pickles).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from dllm2rec.data.schema import SeqDataset, make_split

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


# ---------------------------------------------------------------------------------------------- fallback loaders
def _ml100k(src: Path, max_len: int = 10) -> SeqDataset:
    import pandas as pd

    r = pd.read_csv(src / "u.data", sep="\t", names=["u", "i", "r", "t"])
    items = pd.read_csv(src / "u.item", sep="|", header=None, encoding="latin-1")
    n_items = int(items[0].max())
    titles = [""] * n_items
    for mid, title in zip(items[0], items[1]):
        titles[int(mid) - 1] = str(title)
    r = r.sort_values(["u", "t", "i"], kind="stable")
    hist, tgt, tim, usr = [], [], [], []
    for u, g in r.groupby("u", sort=True):
        its = (g["i"].to_numpy() - 1).tolist()
        ts = g["t"].to_numpy().tolist()
        for k in range(min(max_len, len(its) - 1), len(its)):
            hist.append(its[max(k - max_len, 0):k])
            tgt.append(its[k])
            tim.append(ts[k])
            usr.append(int(u))
    order = np.argsort(np.asarray(tim), kind="stable")
    n = len(order)
    cuts = [0, int(0.8 * n), int(0.9 * n), n]
    splits = {}
    for name, a, b in zip(("train", "valid", "test"), cuts[:-1], cuts[1:]):
        idx = order[a:b]
        splits[name] = make_split([hist[i] for i in idx], [tgt[i] for i in idx], n_items, max_len,
                                  users=[usr[i] for i in idx], times=[tim[i] for i in idx])
    return SeqDataset("ml-100k", n_items, max_len, titles, splits,
                      {"source": "fallback (scripts/teacher_quality.py)"})


def _lastfm(src: Path, max_len: int = 10) -> SeqDataset:
    import pandas as pd

    titles = {}
    for line in (src / "id2name.txt").read_text(encoding="utf-8").splitlines():
        if "::" in line:
            i, name = line.split("::", 1)
            titles[int(i)] = name
    n_items = max(titles) + 1
    splits = {}
    for name, f in (("train", "train_data.df"), ("valid", "Val_data.df"), ("test", "Test_data.df")):
        df = pd.read_pickle(src / f)
        hs = [[int(x) for x in s if int(x) != n_items] for s in df["seq"]]
        splits[name] = make_split(hs, df["next"].astype(int).tolist(), n_items, max_len)
    return SeqDataset("lastfm", n_items, max_len, [titles.get(i, f"item {i}") for i in range(n_items)], splits,
                      {"source": "fallback (scripts/teacher_quality.py)"})


def load_dataset(name: str, data_root: Path | None = None) -> SeqDataset:
    root = data_root or ROOT / "prepared"
    p = root / name
    if (p / "manifest.json").is_file():
        return SeqDataset.load(p)
    fb = Path("/tmp/dllm2rec-fallback") / name
    if (fb / "manifest.json").is_file():
        return SeqDataset.load(fb)
    ds = {"ml-100k": lambda: _ml100k(SHARED / "movielens-100k"),
          "lastfm": lambda: _lastfm(SHARED / "lastfm-llara")}[name]()
    ds.save(fb)
    return SeqDataset.load(fb)


# ---------------------------------------------------------------------------------------------- measurements
def _metrics(ranks) -> dict:
    from dllm2rec.evaluation.metrics import metrics_from_ranks

    m = metrics_from_ranks(ranks, ks=(20,))
    return {"HR@20": round(m["full/HR@20"], 4), "NDCG@20": round(m["full/NDCG@20"], 4)}


def popularity(ds, split: str, mask: bool) -> tuple[dict, np.ndarray]:
    """Most-popular-in-train baseline with the same metric code (ties pessimistic); returns metrics and top-20."""
    import torch

    from dllm2rec.evaluation.metrics import target_ranks
    from dllm2rec.teachers.llmemb import history_mask

    sp = ds[split]
    sc = torch.tensor(ds.item_counts("train"), dtype=torch.float64).expand(len(sp), -1).clone()
    if mask:
        sc = sc.masked_fill(history_mask(torch.from_numpy(sp.seq), ds.n_items, torch.from_numpy(sp.target)), -1.0)
    r = target_ranks(sc, torch.from_numpy(sp.target)).numpy()
    return _metrics(r), sc.topk(20, dim=1).indices.numpy()


def student_topk(model, split, n: int = 20, batch: int = 1024) -> np.ndarray:
    """A student's top-n per row, unmasked (what DLLM2Rec's consistency weight compares against)."""
    import torch

    model.eval()
    out = []
    with torch.inference_mode():
        for s in range(0, len(split), batch):
            seq = torch.from_numpy(split.seq[s:s + batch])
            lens = torch.from_numpy(split.len[s:s + batch])
            out.append(model(seq, lens).topk(n, dim=1).indices.numpy())
    return np.concatenate(out)


def overlap(a: np.ndarray, b: np.ndarray) -> dict:
    """Mean |A ∩ B| / n over rows (the paper's overlap), and the share of rows with any common item."""
    n = a.shape[1]
    inter = np.asarray([len(set(x.tolist()) & set(y.tolist())) for x, y in zip(a, b)])
    return {"mean_overlap_pct": round(100 * float(inter.mean()) / n, 2),
            "rows_any_overlap_pct": round(100 * float((inter > 0).mean()), 2),
            "rows_overlap_ge_20pct_pct": round(100 * float((inter >= 0.2 * n).mean()), 2)}


def sasrec(ds, run_dir: Path, threads: int):
    """Plain SASRec (no distillation), configs/sasrec-<ds>.yaml, via the project trainer; reuses a finished run."""
    from dllm2rec.config import load_config
    from dllm2rec.students.checkpoint import load_student
    from dllm2rec.training.trainer import Trainer

    t0 = time.time()
    res_path = run_dir / "results.json"
    if not res_path.is_file():
        cfg_file = ROOT / "configs" / f"sasrec-{ds.name.replace('-', '')}.yaml"
        cfg = load_config(cfg_file, [f"train.num_threads={threads}"])
        Trainer(cfg, ds, run_dir, quiet=True).fit()
    res = json.loads(res_path.read_text())
    hashes = {s: ds.split_hash(s) for s in ds.splits}
    if res.get("split_hashes", hashes) != hashes:
        raise SystemExit(f"{run_dir}: SASRec was trained on other splits ({res.get('split_hashes')} vs {hashes})")
    model, _ = load_student(run_dir / "best")
    return model, res, time.time() - t0


def run(name: str, args) -> dict:
    import torch

    from dllm2rec.teachers.llmemb import LLMEmbConfig, LLMEmbTeacher, _eval_ranks

    torch.set_num_threads(args.threads)
    ds = load_dataset(name, args.data_root)
    out: dict = {"dataset": name, "fingerprint": ds.fingerprint(),
                 "rows": {s: len(ds[s]) for s in ("train", "valid", "test")}}
    for mask in (False, True):
        tag = "popularity" + ("-excl-history" if mask else "")
        out[tag] = {s: popularity(ds, s, mask)[0] for s in ("valid", "test")}
    # teacher: a saved full model (from `dllm2rec teacher fit-llmemb --model-dir`) or train one now
    mdir = Path(args.teacher_model.format(ds=name)) if args.teacher_model else None
    if mdir is not None and (mdir / "teacher.json").is_file():
        teacher = LLMEmbTeacher.load_model(mdir, ds)
        train_s = teacher.info.get("fit_seconds")
    else:
        t0 = time.time()
        teacher = LLMEmbTeacher(LLMEmbConfig(encoder=args.encoder, threads=args.threads)).fit(
            ds, log=lambda m: print(m, flush=True))
        train_s = round(time.time() - t0, 1)
    tinfo = {"encoder": teacher.cfg.encoder, "id_emb": teacher.cfg.id_emb, "mask_history": teacher.mask,
             "train_seconds": train_s, "best_epoch": teacher.info.get("best_epoch")}
    for s in ("valid", "test"):
        tinfo[s] = _metrics(_eval_ranks(teacher.model, ds[s], teacher.mask, 1024))
    out["teacher"] = tinfo
    pop_test = out["popularity"]["test"]["HR@20"]
    out["teacher_vs_popularity_test_HR@20"] = round(tinfo["test"]["HR@20"] / max(pop_test, 1e-9), 2)
    # plain SASRec
    if not args.no_sasrec:
        rd = Path(args.sasrec_run.format(ds=name)) if args.sasrec_run else Path("/tmp/dllm2rec-sasrec") / name
        model, res, secs = sasrec(ds, rd, args.threads)
        proto = "full"
        out["sasrec"] = {"run": str(rd), "best_epoch": res["best_epoch"], "seconds": round(secs, 1),
                         **{s: {k: round(res[s][f"{s}/{proto}/{k}"], 4) for k in ("HR@20", "NDCG@20")}
                            for s in ("valid", "test")}}
        from dllm2rec.evaluation.protocol import rank_targets

        for s in ("valid", "test"):  # the same student with history items masked (the teacher's protocol)
            out["sasrec"][f"{s}-excl-history"] = _metrics(rank_targets(model, ds[s], exclude_history=True).numpy())
        t_top = teacher.topk(ds, "test", n=20)
        s_top = student_topk(model, ds["test"], 20)
        out["overlap_teacher_vs_sasrec_test"] = overlap(t_top, s_top)
        out["overlap_popularity_vs_sasrec_test"] = overlap(popularity(ds, "test", False)[1], s_top)
    # training-row statistics recorded in the shipped artifacts (in-sample vs cross-fitted)
    man = ROOT / "artifacts" / "teachers" / name / "manifest.json"
    if man.is_file():
        m = json.loads(man.read_text())
        out["artifacts_train_row_stats"] = m.get("train_row_stats")
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", nargs="+", default=["ml-100k", "lastfm"])
    ap.add_argument("--data-root", type=Path, default=None)
    ap.add_argument("--encoder", default="minilm")
    ap.add_argument("--teacher-model", default=None,
                    help="saved teacher model dir (fit-llmemb --model-dir); '{ds}' is replaced by the dataset name")
    ap.add_argument("--sasrec-run", default=None, help="plain SASRec run dir ('{ds}' replaced); trained if missing")
    ap.add_argument("--no-sasrec", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args(argv)
    results = []
    for name in args.datasets:
        r = run(name, args)
        results.append(r)
        print(json.dumps(r, indent=1), flush=True)
    print("\n| dataset | popularity test HR@20 / NDCG@20 | teacher valid HR@20 / NDCG@20 "
          "| teacher test HR@20 / NDCG@20 "
          "| teacher / pop (test HR@20) | SASRec test HR@20 / NDCG@20 | top-20 overlap teacher∩SASRec (mean %) "
          "| teacher train s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        p, t = r["popularity"]["test"], r["teacher"]
        s = r.get("sasrec", {}).get("test", {})
        ov = r.get("overlap_teacher_vs_sasrec_test", {}).get("mean_overlap_pct", "-")
        print(f"| {r['dataset']} | {p['HR@20']:.4f} / {p['NDCG@20']:.4f} | {t['valid']['HR@20']:.4f} / "
              f"{t['valid']['NDCG@20']:.4f} | {t['test']['HR@20']:.4f} / {t['test']['NDCG@20']:.4f} | "
              f"{r['teacher_vs_popularity_test_HR@20']}x | {s.get('HR@20', float('nan')):.4f} / "
              f"{s.get('NDCG@20', float('nan')):.4f} | {ov} | {t['train_seconds']} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
