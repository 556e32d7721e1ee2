"""``dllm2rec data prepare|import|stats|export``. Heavy imports (numpy, pandas) happen inside the commands."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
                     for r in rows)


RECIPE_NAMES = {"bigrec": "temporal-global", "leave_one_out": "leave-one-out"}  # names before --recipe existed
RECIPE_HELP = {"temporal-global": "BIGRec: per-user time order, last-L windows, global sort by target time, 80/10/10",
               "leave-one-out": "per user: last item test, second last valid, earlier positions train",
               "file": "the source's own split (its train/valid/test files)"}


def recipe_line(ds) -> str:
    r = ds.meta.get("recipe")
    if r is None:
        return "? (not recorded)"
    r = RECIPE_NAMES.get(r, r)
    return f"{r} ({RECIPE_HELP[r]})" if r in RECIPE_HELP else r


def dataset_warnings(ds) -> list[str]:
    from dllm2rec.data.quality import split_warnings

    return split_warnings(ds)


def format_stats(ds, warnings: list[str] | None = None) -> str:
    """Header lines (name, fingerprint, recipe, users/items/interactions, titles) + one row per split + warnings."""
    import numpy as np

    from dllm2rec.data.quality import titles_report

    st = ds.stats()
    head = [["dataset", ds.name], ["fingerprint", st["fingerprint"]], ["recipe", recipe_line(ds)],
            ["items", f"{ds.n_items:,}"],
            ["users", "?" if st.get("users") is None else f"{st['users']:,}"],
            ["interactions", f"{st['interactions']:,}" if "interactions" in st else "? (not recorded)"],
            ["max_len (L)", str(ds.max_len)], ["titles", titles_report(ds)]]
    if "duplicate_interactions" in ds.meta:
        n, dropped = ds.meta["duplicate_interactions"], ds.meta.get("duplicates_dropped", 0)
        head.append(["duplicates", f"{n:,} rows repeat an earlier (user, item, timestamp)"
                     + ("" if not n else " (dropped)" if dropped else " (kept; --drop-duplicates drops them)")])
    rows = [["split", "rows", "users", "distinct targets", "mean len", "empty hist"]]
    for name, s in ds.splits.items():
        rows.append([name, f"{len(s):,}", "?" if s.user is None else f"{len(np.unique(s.user)):,}",
                     f"{len(np.unique(s.target)):,}", f"{s.len.mean():.2f}", f"{int((s.len == 0).sum()):,}"])
    warn = dataset_warnings(ds) if warnings is None else warnings
    w = max(len(k) for k, _ in head)
    return "\n".join(f"{k.ljust(w)}  {v}" for k, v in head) + "\n\n" + _table(rows) + "".join(f"\nwarning: {w}" for w in warn)


def register(app: typer.Typer) -> None:
    @app.command("prepare")
    def prepare_cmd(
        name: str = typer.Argument(..., help="Preset: ml-100k, lastfm, toys."),
        source: Optional[Path] = typer.Option(None, "--source", help="Raw data directory (default: the preset's)."),
        out: Optional[Path] = typer.Option(None, "--out", help="Output directory (default: prepared/<name>)."),
        max_len: int = typer.Option(10, "--max-len", min=1, help="History length L."),
        allow_pickle: bool = typer.Option(False, "--allow-pickle",
                                          help="Load the source's pandas pickles (*.df; the lastfm preset). Pickles "
                                               "can run arbitrary code: only for directories you trust."),
    ) -> None:
        """Prepare a named dataset preset into the canonical format (atomic; replaces an older copy)."""
        from dllm2rec.data.registry import PREPARED_ROOT, prepare

        t0 = time.perf_counter()
        ds = prepare(name, source=source, out=out, max_len=max_len, allow_pickle=allow_pickle)
        dest = out if out is not None else PREPARED_ROOT / name
        typer.echo(format_stats(ds))
        typer.echo(f"\nwrote {dest} in {time.perf_counter() - t0:.1f}s")

    @app.command("import")
    def import_cmd(
        fmt: str = typer.Argument(..., metavar="FORMAT", help="movielens, recbole, official, amazon, p5 or auto."),
        source: Path = typer.Argument(..., help="Source directory (or .inter file)."),
        out: Path = typer.Option(..., "--out", help="Output directory."),
        name: Optional[str] = typer.Option(None, "--name", help="Dataset name (default: source directory name)."),
        max_len: int = typer.Option(10, "--max-len", min=1, help="History length L."),
        allow_pickle: bool = typer.Option(False, "--allow-pickle",
                                          help="Load pandas pickles (*.df) of the official layout. Pickles can run "
                                               "arbitrary code: only for directories you trust."),
        splits: Optional[str] = typer.Option(None, "--splits",
                                             help="Official format: comma-separated splits to import, e.g. valid,test."),
        recipe: str = typer.Option("auto", "--recipe",
                                   help="Split recipe: auto (the source's own split if it has one, else "
                                        "temporal-global with timestamps, else leave-one-out), temporal-global "
                                        "(BIGRec), leave-one-out, or file (the source's train/valid/test files)."),
        drop_duplicates: bool = typer.Option(False, "--drop-duplicates",
                                             help="Drop interactions repeating an earlier (user, item, timestamp)."),
    ) -> None:
        """Import a dataset from a raw or official source into the canonical format."""
        from dllm2rec.data.registry import import_dataset

        t0 = time.perf_counter()
        split_list = [s.strip() for s in splits.split(",") if s.strip()] if splits else None
        ds = import_dataset(fmt, source, name=name or out.name, max_len=max_len, allow_pickle=allow_pickle,
                            splits=split_list, recipe=recipe, drop_duplicates=drop_duplicates)
        ds.save(out)
        warn = ds.meta.get("split_warnings", [])
        typer.echo(format_stats(ds, warnings=[]))
        for w in warn:
            typer.echo(f"warning: {w}", err=True)
        typer.echo(f"\nwrote {out} in {time.perf_counter() - t0:.1f}s")

    @app.command("stats")
    def stats_cmd(path: Path = typer.Argument(..., help="Prepared dataset directory or preset name.")) -> None:
        """Print users / items / interactions and rows per split of a prepared dataset."""
        from dllm2rec.data.registry import PREPARED_ROOT
        from dllm2rec.data.schema import SeqDataset

        p = path if (path / "manifest.json").is_file() or path.exists() else PREPARED_ROOT / str(path)
        typer.echo(format_stats(SeqDataset.load(p)))

    @app.command("export")
    def export_cmd(
        path: Path = typer.Argument(..., help="Prepared dataset directory."),
        fmt: str = typer.Option("official", "--format", help="Target layout (only 'official')."),
        out: Path = typer.Option(..., "--out", help="Output directory."),
    ) -> None:
        """Export a prepared dataset to the official DLLM2Rec layout (train_data.df, val/test CSV, ...)."""
        from dllm2rec.data.official import export_official
        from dllm2rec.data.schema import SeqDataset
        from dllm2rec.errors import DataError

        if fmt != "official":
            raise DataError(f"{out}: unknown export format '{fmt}' (only 'official')")
        export_official(SeqDataset.load(path), out)
        typer.echo(f"wrote {out} (official DLLM2Rec layout)")
