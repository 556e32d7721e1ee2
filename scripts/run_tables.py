"""Run the README results tables through the grid runner, then write their reports.

(a) issue 2 — plain students: SASRec / GRU4Rec / Caser × ML-100K / LastFM × 3 seeds, no distillation.
(b) issue 5 — distillation with the shipped LLM teacher (``artifacts/teachers/<dataset>``): on each dataset
    SASRec / GRU4Rec / Caser × {none, random-teacher control, rd, dllm2rec}, plus SASRec × the six ablations;
    3 seeds.

    python scripts/run_tables.py --table a                      # issue-2 table
    python scripts/run_tables.py --table b --jobs 2             # issue-5 table (needs the teacher artifacts)
    python scripts/run_tables.py --table all --dry-run          # list runs and their state

Every cell is one run directory ``<out>/<dataset>/<student>/<method>/s<seed>``; finished runs are skipped and killed
ones continue from their last epoch, so the script can be stopped and restarted at will. Both tables share the
``none`` runs when they use the same ``--out`` and caps. Reports go to ``<out>/report-a`` and ``<out>/report-b``
(``report.md``, ``curves.png``, ``bars.png``, ``summary.json``).

Budget on the 2-core development machine (one run at a time, ``train.num_threads=1``, other jobs on the machine):
one epoch incl. validation takes ~6-9 s for SASRec / Caser on ML-100K (72 k training rows), ~4-6 s on LastFM
(51 k rows), GRU4Rec ~30 % less. Measured: table (a) = 18 runs in 72 min (ML-100K runs stop early after 20-45
epochs, 2.5-4.5 min each; LastFM runs need 45-100 epochs, 4-10 min each); table (b) is 2 × (12 + 18) = 60 runs, DLLM2Rec epochs cost up to 2× a plain one: ≈ 6-10 h. The epoch
cap (``--epochs``, default 100) and patience (10, as the official script) are printed in each table's caption.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from dllm2rec.evaluation.report import build_report
from dllm2rec.experiments import ABLATIONS, GridSpec, run_grid

STUDENTS = ["sasrec", "gru4rec", "caser"]
KD_METHODS = ["none", "random", "rd", "dllm2rec"]


def grids(table: str, datasets: list[str], seeds: list[int], out: Path, overrides: list[str], teacher_root: Path,
          jobs: int) -> list[tuple[str, GridSpec]]:
    g: list[tuple[str, GridSpec]] = []
    if table in ("a", "all"):
        g.append(("a", GridSpec(data=datasets, students=STUDENTS, methods=["none"], seeds=seeds, out=out,
                                overrides=overrides, resume=True, jobs=jobs)))
    if table in ("b", "all"):
        for ds in datasets:
            teacher = teacher_root / Path(ds).name
            if not (teacher / "manifest.json").is_file():
                print(f"table b: no teacher artifacts at {teacher} — skipping {ds} "
                      f"(produce them with `dllm2rec teacher ...` or pass --teacher-root)", file=sys.stderr)
                continue
            g.append(("b", GridSpec(data=[ds], students=STUDENTS, methods=KD_METHODS, seeds=seeds, out=out,
                                    teacher=str(teacher), overrides=overrides, resume=True, jobs=jobs)))
            g.append(("b", GridSpec(data=[ds], students=["sasrec"], methods=ABLATIONS, seeds=seeds, out=out,
                                    teacher=str(teacher), overrides=overrides, resume=True, jobs=jobs)))
    return g


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--table", choices=["a", "b", "all"], default="a")
    ap.add_argument("--datasets", default="ml-100k,lastfm", help="presets or prepared dataset dirs")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--epochs", type=int, default=100, help="epoch cap (official: 1000)")
    ap.add_argument("--patience", type=int, default=10, help="early-stopping patience on validation NDCG@20")
    ap.add_argument("--out", type=Path, default=Path("runs/tables"))
    ap.add_argument("--teacher-root", type=Path, default=Path("artifacts/teachers"))
    ap.add_argument("--jobs", type=int, default=1, help="parallel subprocesses (each with 1 thread)")
    ap.add_argument("-o", "--set", dest="overrides", action="append", default=[], help="extra dotted override")
    ap.add_argument("--dry-run", action="store_true")
    ap.add_argument("--allow-pickle", action="store_true",
                    help="prepare pickle-sourced presets (lastfm) first; pickles can run code: trusted files only")
    ap.add_argument("--report-only", action="store_true", help="write the reports from finished runs; train nothing")
    args = ap.parse_args(argv)

    datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    overrides = [f"train.epochs={args.epochs}", f"train.patience={args.patience}", "train.num_threads=1",
                 *args.overrides]
    if args.allow_pickle:
        from dllm2rec.data.registry import load_or_prepare

        for d in datasets:
            load_or_prepare(d, allow_pickle=True)
    todo = grids(args.table, datasets, seeds, args.out, overrides, args.teacher_root, args.jobs)
    if args.dry_run:
        for name, grid in todo:
            for s in grid.runs():
                state = "done" if s.done else "partial" if s.started else "todo"
                print(f"({name}) {state:8s} {s.run_dir}")
        return 0
    t0 = time.perf_counter()
    dirs: dict[str, list[Path]] = {}
    failed = 0
    for name, grid in todo:
        if not args.report_only:
            res = run_grid(grid)
            failed += len(res["failed"])
        dirs.setdefault(name, []).extend(s.run_dir for s in grid.runs() if s.done)
    cmd_args = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--report-only"]
    caption = (f"epoch cap {args.epochs}, patience {args.patience} on validation NDCG@20, one run at a time with "
               f"train.num_threads=1 on a shared 2-core CPU (s/epoch includes contention); seeds "
               f"{','.join(map(str, seeds))}; command: `python scripts/run_tables.py {' '.join(cmd_args)}`")
    titles = {"a": "Table (a): plain students, no distillation (issue 2)",
              "b": "Table (b): distillation with the shipped LLM teacher (issue 5)"}
    for name, ds in dirs.items():
        if not ds:
            continue
        rep = build_report(ds, args.out / f"report-{name}", title=titles[name])
        md_path = rep["files"]["report"]
        md_path.write_text(rep["markdown"].replace("\nSeeds:", f"\nSetting: {caption}.\nSeeds:", 1),
                           encoding="utf-8")
        print(rep["markdown"].split("\n![")[0])
        print(f"wrote {md_path}")
    print(f"total {time.perf_counter() - t0:.0f}s; {failed} failed run(s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
