"""``dllm2rec report``, ``analyze``, ``tune``, ``experiment`` and ``demo``: options in, workflows called.

The logic lives in ``workflows/`` (tune, demo teacher lookup, guard) and ``experiments.py`` (the grid runner);
heavy imports (torch, matplotlib, optuna) happen inside the commands so ``dllm2rec --help`` stays fast.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        from dllm2rec.errors import ConfigError

        raise ConfigError(f"'{text}': expected a comma-separated list of integers") from None


def _strs(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


# ------------------------------------------------------------------------------------------------ tune helpers
def register(app: typer.Typer) -> None:
    @app.command()
    def report(
        runs: list[str] = typer.Argument(..., help="run dirs, results.json files or globs (quoted ** works)"),
        out: Path = typer.Option(Path("runs/report"), "--out", help="output directory (report.md, *.png)"),
        label_from: Optional[str] = typer.Option(None, "--label-from",
                                                 help="append this strategy param / dotted config key to labels"),
        teacher_metrics: Optional[Path] = typer.Option(None, "--teacher-metrics",
                                                       help="JSON with the teacher's own metrics "
                                                            "(keys like test/full/NDCG@20; flat or per dataset)"),
        title: Optional[str] = typer.Option(None, "--title"),
        no_plots: bool = typer.Option(False, "--no-plots"),
    ) -> None:
        """Aggregate runs over seeds (mean ± 95% CI, mean ± std) into report.md + training-curve and bar PNGs."""
        from dllm2rec.evaluation.report import build_report

        rep = build_report(runs, out, label_from=label_from, teacher_metrics=teacher_metrics, title=title,
                           plots=not no_plots)
        typer.echo(rep["markdown"].split("\n![")[0].rstrip())
        typer.echo("\nwrote " + ", ".join(str(p) for p in rep["files"].values()))

    @app.command()
    def analyze(
        runs: list[str] = typer.Argument(..., help="run dirs / globs (their best/ checkpoints are loaded)"),
        data: str = typer.Option(..., "--data", help="the runs' dataset (preset or prepared dir)"),
        teacher: str = typer.Option(..., "--teacher", help="teacher-artifacts dir (or random / synthetic)"),
        k: int = typer.Option(20, "--k"),
        rows: int = typer.Option(20000, "--rows", help="sample at most this many covered train rows (0: all)"),
        out: Optional[Path] = typer.Option(None, "--out", help="also write the table (Markdown) + JSON here"),
    ) -> None:
        """Why distillation helps or not: teacher HR@K, student-teacher top-K overlap, gain on teacher-right rows."""
        from dllm2rec.config import load_config
        from dllm2rec.data.registry import load_or_prepare
        from dllm2rec.evaluation.analysis import (
            analysis_markdown,
            teacher_student_analysis,
        )
        from dllm2rec.evaluation.runs import load_runs
        from dllm2rec.training.trainer import load_teacher
        from dllm2rec.utils.io import atomic_write_text

        ds = load_or_prepare(data)
        t = load_teacher(load_config(None, [f"distill.teacher={teacher}"]), ds)
        found = load_runs(runs)
        if not found:
            from dllm2rec.errors import Dllm2recError

            raise Dllm2recError(f"no finished runs under {', '.join(runs)}")
        res = teacher_student_analysis(ds, t, found, k=k, max_rows=rows or None)
        md = analysis_markdown(res)
        typer.echo(md)
        if out is not None:
            atomic_write_text(out.with_suffix(".md"), md)
            atomic_write_text(out.with_suffix(".json"), json.dumps(res, indent=2))
            typer.echo(f"wrote {out.with_suffix('.md')}, {out.with_suffix('.json')}")

    @app.command()
    def tune(
        config: Optional[Path] = typer.Option(None, "--config", "-c", help="base YAML config"),
        override: list[str] = typer.Option([], "--set", "-o", help="dotted override for every trial"),
        space: list[str] = typer.Option(..., "--space",
                                        help="search dimension: key=lo:hi, key=lo:hi:log or key=a,b,c "
                                             "(e.g. distill.params.lam=0.1:1.0)"),
        trials: int = typer.Option(20, "--trials", min=1),
        out: Path = typer.Option(Path("runs/tune"), "--out", help="trial run dirs + tune.json"),
        seed: int = typer.Option(0, "--sampler-seed", help="seed of the TPE sampler"),
    ) -> None:
        """Optuna search over strategy/trainer parameters on the VALIDATION select metric; writes tune.json."""
        from dllm2rec.workflows.tune import parse_space, run_tune

        sp = parse_space(space)
        res = run_tune(config, list(override), sp, trials, out, seed, echo=typer.echo)
        typer.echo(f"\nbest {res['objective']}: {res['best_value']:.4f}")
        typer.echo("best params: " + " ".join(f"-o {x}" for x in res["best_overrides"]))
        typer.echo(f"wrote {out / 'tune.json'}")

    @app.command()
    def experiment(
        data: str = typer.Option(..., "--data", help="comma list of prepared dataset dirs or presets"),
        students: str = typer.Option("sasrec,gru4rec,caser", "--students"),
        methods: str = typer.Option("none", "--methods",
                                    help="comma list: none, random (random-teacher control), rd, hint, dllm2rec, "
                                         "dllm2rec-paper, dllm2rec-wo-{position,confidence,consistency,ranking,"
                                         "embedding,offset}, or 'ablations'"),
        seeds: str = typer.Option("0,1,2", "--seeds"),
        teacher: Optional[str] = typer.Option(None, "--teacher", help="teacher-artifacts dir (rd/hint/dllm2rec)"),
        out: Path = typer.Option(Path("runs/exp"), "--out"),
        config: Optional[Path] = typer.Option(None, "--config", "-c", help="base YAML config"),
        override: list[str] = typer.Option([], "--set", "-o", help="dotted override for every run"),
        resume: bool = typer.Option(False, "--resume", help="continue killed runs from their last checkpoint, and runs "
                                    "that stopped at a smaller epoch cap"),
        jobs: int = typer.Option(1, "--jobs", min=1, help="parallel subprocesses (each train.num_threads=1)"),
        dry_run: bool = typer.Option(False, "--dry-run", help="list the runs and their state, train nothing"),
        no_report: bool = typer.Option(False, "--no-report", help="skip the report at the end"),
        allow_pickle: bool = typer.Option(False, "--allow-pickle",
                                          help="let presets whose source is a pickle (lastfm) be prepared; pickles "
                                               "can run code, pass it only for files you trust"),
    ) -> None:
        """Run a datasets × students × methods × seeds grid (finished runs are skipped), then report it."""
        from dllm2rec.data.registry import load_or_prepare
        from dllm2rec.experiments import GridSpec, parse_methods, run_grid

        if allow_pickle:  # prepare now, once: the runs then read the pickle-free prepared copy
            for d in _strs(data):
                load_or_prepare(d, allow_pickle=allow_pickle)

        grid = GridSpec(data=_strs(data), students=_strs(students), methods=parse_methods(methods),
                        seeds=_ints(seeds), out=out, teacher=teacher, config=config, overrides=list(override),
                        resume=resume, jobs=jobs)
        if dry_run:
            for s in grid.runs():
                state = "done" if s.done else "partial" if s.started else "todo"
                typer.echo(f"{state:8s} {s.run_dir}  " + " ".join(f"-o {o}" for o in s.overrides))
            return
        res = run_grid(grid, log=typer.echo, quiet=False)  # per-run and per-epoch lines
        if not no_report and res["finished"]:
            from dllm2rec.evaluation.report import build_report

            rep = build_report([out], out, title=f"Experiment {out}")
            typer.echo("\n" + rep["markdown"].split("\n![")[0].rstrip())
            typer.echo(f"\nwrote {out / 'report.md'}")
        if res["failed"]:
            from dllm2rec.errors import Dllm2recError

            raise Dllm2recError(f"{len(res['failed'])} run(s) failed, first: {res['failed'][0][0]}: "
                                f"{res['failed'][0][1]}")

    @app.command()
    def demo(
        data: str = typer.Option("ml-100k", "--data", help="preset name or prepared dataset dir"),
        source: Optional[Path] = typer.Option(None, "--source",
                                              help="raw source of the preset (e.g. a dir with u.data + u.item or "
                                                   "RecBole ml-100k.inter/.item); default: the preset's lookup"),
        teacher: Optional[str] = typer.Option(None, "--teacher",
                                              help="teacher-artifacts dir (default: the shipped "
                                                   "artifacts/teachers/<dataset>, checked against the data; "
                                                   "stops if they do not match)"),
        student: str = typer.Option("sasrec", "--student"),
        out: Path = typer.Option(Path("runs/demo"), "--out"),
        seed: int = typer.Option(0, "--seed"),
        epochs: int = typer.Option(60, "--epochs", help="epoch cap (early stopping on validation, patience 10)"),
        quick: bool = typer.Option(False, "--quick", help="smoke run: 2 epochs"),
        control: bool = typer.Option(True, "--control/--no-control", help="also run the random-teacher control"),
        override: list[str] = typer.Option([], "--set", "-o", help="dotted override for every run"),
    ) -> None:
        """The whole product on the embedded default: dataset -> teacher -> baseline vs distilled -> table + plot."""
        from dllm2rec.workflows.demo import find_teacher, load_teacher_metrics_dict
        from dllm2rec.data.registry import load_or_prepare
        from dllm2rec.evaluation.report import build_report
        from dllm2rec.evaluation.teacher_metrics import teacher_metrics_from_dir
        from dllm2rec.experiments import GridSpec, run_grid

        if source is not None:
            from dllm2rec.data.registry import PRESETS, prepare

            if data not in PRESETS:
                from dllm2rec.errors import ConfigError

                raise ConfigError(f"--source needs a preset --data ({', '.join(PRESETS)}), got '{data}'")
            prepare(data, source=source)
        ds = load_or_prepare(data)
        src = ds.meta.get("source")
        typer.echo(f"[1/4] dataset {ds.name}: {ds.n_items} items, "
                   f"{len(ds['train'])}/{len(ds['valid'])}/{len(ds['test'])} train/valid/test rows"
                   + (f" (from {src})" if src else ""))
        spec, desc = find_teacher(ds.name, teacher, ds)
        typer.echo(f"[2/4] teacher: {desc}")
        methods = ["none"] + (["random"] if control and not spec.startswith("random") else []) + ["dllm2rec"]
        ov = [f"train.epochs={2 if quick else epochs}", "train.patience=10"] + list(override)
        grid = GridSpec(data=[data], students=[student], methods=methods, seeds=[seed], out=out,
                        teacher=spec, overrides=ov, resume=True)
        typer.echo(f"[3/4] training {student}: " + ", ".join(methods) + f" (epoch cap {2 if quick else epochs}; "
                   f"finished runs in {out} are reused)")
        res = run_grid(grid, log=lambda m: typer.echo("      " + m), quiet=False)  # a line per epoch (+ bar on a tty)
        if res["failed"]:
            from dllm2rec.errors import Dllm2recError

            raise Dllm2recError(f"demo run failed: {res['failed'][0][0]}: {res['failed'][0][1]}")
        tm_raw = teacher_metrics_from_dir(spec) if Path(spec).is_dir() else {}
        tm = load_teacher_metrics_dict(tm_raw, ds.name)
        dirs = [s.run_dir for s in grid.runs()]
        short = desc.split(" (")[0].split(" —")[0]
        rep = build_report(dirs, out, teacher_metrics=tm,
                           title=f"DLLM2Rec demo on {ds.name} ({student}; teacher: {short})")
        typer.echo("[4/4] results\n")
        typer.echo(rep["markdown"].split("\n![")[0].rstrip())
        if not tm:
            typer.echo("(no teacher metrics recorded with the teacher artifacts)")
        typer.echo(f"\nwrote {out / 'report.md'}, {out / 'curves.png'}, {out / 'bars.png'}")
