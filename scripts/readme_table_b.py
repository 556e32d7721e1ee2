"""The README's compact table (b) from a `dllm2rec report` summary.json (+ the teachers' own test metrics).

    dllm2rec report 'runs/table-a/ml-100k/**' 'runs/table-a/lastfm/**' --out runs/table-b-report
    python scripts/readme_table_b.py runs/table-b-report/summary.json --write README.md

Prints the Markdown rows; with ``--write`` the block between ``<!-- table-b:start -->`` and ``<!-- table-b:end -->``
in that file is replaced (atomically), so the README table is regenerated, never hand-edited.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from dllm2rec.evaluation.runs import CONTROL_LABEL
from dllm2rec.evaluation.teacher_metrics import teacher_metrics_from_dir
from dllm2rec.utils.io import atomic_write_text

DATASETS = {"ml-100k": "ML-100K", "lastfm": "LastFM"}
STUDENTS = {"sasrec": "SASRec", "gru4rec": "GRU4Rec", "caser": "Caser"}
METHODS = {"none": "none", CONTROL_LABEL: f"**{CONTROL_LABEL}**", "rd": "RD", "dllm2rec": "**DLLM2Rec**",
           "dllm2rec-wo-position": "w/o position weight", "dllm2rec-wo-confidence": "w/o confidence weight",
           "dllm2rec-wo-consistency": "w/o consistency weight", "dllm2rec-wo-ranking": "w/o ranking distillation",
           "dllm2rec-wo-embedding": "w/o embedding distillation", "dllm2rec-wo-offset": "w/o offset (e = g(z))"}
START, END = "<!-- table-b:start -->", "<!-- table-b:end -->"
HEADER = ("| dataset | student | method | n | test NDCG@20 | test HR@20 | Δ NDCG@20 vs none | Δ vs control |\n"
          "|---|---|---|---:|---:|---:|---:|---:|")


def num(x: float) -> str:
    """.0572 style (no leading zero), as the paper's tables."""
    return f"{x:.4f}".replace("0.", ".", 1)


def pct(x: float, ref: float) -> str:
    d = 100.0 * (x / ref - 1.0)
    return f"{'+' if d >= 0 else '−'}{abs(d):.1f} %"


def teacher_test(root: Path, dataset: str) -> tuple[float, float, str] | None:
    """(NDCG@20, HR@20, protocol) of the shipped teacher, from the metrics recorded with its artifacts, or None."""
    test = teacher_metrics_from_dir(root / dataset).get("test", {})
    by_metric = {k.split("/")[-1]: (v, k.split("/")[0]) for k, v in test.items()}  # "full-excl/NDCG@20" -> ...
    if "NDCG@20" not in by_metric or "HR@20" not in by_metric:
        return None
    return by_metric["NDCG@20"][0], by_metric["HR@20"][0], by_metric["NDCG@20"][1]


def mean_ci(s: dict, n: int) -> str:
    return f"{num(s['mean'])} ± {num(s['ci95'])}" if n > 1 else num(s["mean"])


def rows(summary: dict, teacher_root: Path) -> list[str]:
    groups = {(g["dataset"], g["student"], g["method"]): g for g in summary["groups"]}
    out = []
    for ds, ds_label in DATASETS.items():
        for st, st_label in STUDENTS.items():
            base = groups.get((ds, st, "none"))
            ctl = groups.get((ds, st, CONTROL_LABEL))
            for m, m_label in METHODS.items():
                g = groups.get((ds, st, m))
                if g is None:
                    continue
                nd, hr = g["stats"]["test/NDCG@20"], g["stats"]["test/HR@20"]
                dag = " †" if g["hit_epoch_cap"] else ""
                d_none = "–" if m == "none" or base is None else pct(nd["mean"], base["stats"]["test/NDCG@20"]["mean"])
                d_ctl = "–" if m == CONTROL_LABEL or ctl is None else pct(nd["mean"],
                                                                           ctl["stats"]["test/NDCG@20"]["mean"])
                out.append(f"| {ds_label} | {st_label} | {m_label}{dag} | {g['n']} | {mean_ci(nd, g['n'])} | {mean_ci(hr, g['n'])} | "
                           f"{d_none} | {d_ctl} |")
        t = teacher_test(teacher_root, ds)
        if t is not None and any(k[0] == ds for k in groups):
            out.append(f"| {ds_label} | teacher (llm-emb, its own ranking, `{t[2]}`) | | 1 | {num(t[0])} | {num(t[1])} "
                       f"| | |")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("summary", type=Path, help="summary.json written by `dllm2rec report`")
    ap.add_argument("--teachers", type=Path, default=Path("artifacts/teachers"), help="<root>/<dataset>/manifest.json")
    ap.add_argument("--write", type=Path, default=None, help="replace the marked block in this Markdown file")
    a = ap.parse_args(argv)
    table = HEADER + "\n" + "\n".join(rows(json.loads(a.summary.read_text(encoding="utf-8")), a.teachers))
    if a.write is None:
        print(table)
        return 0
    text = a.write.read_text(encoding="utf-8")
    if text.count(START) != 1 or text.count(END) != 1:
        print(f"{a.write}: needs exactly one {START} and one {END} marker", file=sys.stderr)
        return 2
    head, rest = text.split(START)
    _, tail = rest.split(END)
    atomic_write_text(a.write, f"{head}{START}\n{table}\n{END}{tail}")
    print(f"{a.write}: table (b) replaced ({table.count(chr(10)) - 1} rows)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
