"""``dllm2rec teacher list|import|export|validate|stats`` — the registered teacher families; artifacts on disk."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from dllm2rec.data.registry import load_or_prepare


def _dataset(path: str):
    return load_or_prepare(path)  # the one resolver: a prepared dir or a preset name


def _default(v) -> str:
    return "(required)" if repr(v) == "PydanticUndefined" else repr(v)


def register(app: typer.Typer) -> None:
    @app.command("list")
    def list_cmd(
        as_json: bool = typer.Option(False, "--json", help="Print the listing as JSON."),
    ) -> None:
        """Registered teacher families (dllm2rec.registry): stages and typed config fields."""
        from dllm2rec.registry import available, get_teacher

        fams = [get_teacher(n).describe() for n in available("teacher")]
        if as_json:
            typer.echo(json.dumps(fams, indent=1, default=repr))
            return
        for f in fams:
            typer.echo(f"{f['name']}  (kind {f['kind']}): {f['label']}")
            typer.echo(f"  stages: {' -> '.join(f['stages'])}")
            for c in f["config"]:
                typer.echo(f"  {c['name']}: {c['type']} = {_default(c['default'])}"
                           + (f"  # {c['description']}" if c["description"] else ""))

    @app.command("import")
    def import_cmd(
        source: Path = typer.Argument(..., help="Directory with all_embeddings.pt, myrank_train.txt, "
                                                "confidence_train.txt (the official DLLM2Rec teacher files)."),
        dataset: str = typer.Option(..., "--data", "--dataset", help="Prepared dataset directory or preset the files "
                                                            "were made for (rows = its training rows, in order)."),
        out: Path = typer.Option(..., "--out", help="Output teacher-artifacts directory."),
        top_n: Optional[int] = typer.Option(None, "--top-n", min=1, help="Keep only the first n ranked items."),
        teacher: str = typer.Option("bigrec (official files)", "--teacher", help="Teacher model id for the manifest."),
    ) -> None:
        """Import the official teacher files into validated, pickle-free teacher artifacts."""
        from dllm2rec.teachers.official_io import import_official

        ds = _dataset(dataset)
        art = import_official(source, ds, top_n=top_n, teacher=teacher)
        art.save(out, ds)
        typer.echo(json.dumps(art.stats(), indent=2))
        typer.echo(f"wrote {out}")

    @app.command("export")
    def export_cmd(
        artifacts: Path = typer.Argument(..., help="Teacher-artifacts directory."),
        out: Path = typer.Option(..., "--out", help="Directory for the three official files."),
        dataset: Optional[str] = typer.Option(None, "--data", "--dataset", help="Validate against this dataset first."),
        allow_partial: bool = typer.Option(False, "--allow-partial",
                                           help="Write unanswered rows as -1/nan (the official script cannot read them)."),
        pad_to: Optional[int] = typer.Option(None, "--pad-to",
                                             help="Zero-pad the embeddings to this width; the official script "
                                                  "needs 4096 (its projector is Linear(4096, 64)). Same model."),
    ) -> None:
        """Export teacher artifacts as the official all_embeddings.pt / myrank_train.txt / confidence_train.txt."""
        from dllm2rec.teachers.artifacts import TeacherArtifacts
        from dllm2rec.teachers.official_io import export_official

        art = TeacherArtifacts.load(artifacts, _dataset(dataset) if dataset else None)
        export_official(art, out, allow_partial=allow_partial, pad_to=pad_to)
        typer.echo(f"wrote {out}")

    @app.command("validate")
    def validate_cmd(
        artifacts: Path = typer.Argument(..., help="Teacher-artifacts directory."),
        dataset: str = typer.Option(..., "--data", "--dataset", help="Prepared dataset directory or preset."),
    ) -> None:
        """Check artifacts against a dataset (rows, ids, NaN/inf, duplicates, dataset hash); exit 2 on a mismatch."""
        from dllm2rec.teachers.artifacts import TeacherArtifacts

        art = TeacherArtifacts.load(artifacts, _dataset(dataset))
        typer.echo(f"ok: {artifacts} matches dataset '{art.manifest.get('dataset', dataset)}' "
                   f"({art.n_rows} rows, {art.n_items} items, D={art.dim}, top-{art.top_n}, "
                   f"coverage {art.coverage:.1%})")

    @app.command("stats")
    def stats_cmd(
        artifacts: Path = typer.Argument(..., help="Teacher-artifacts directory."),
        dataset: Optional[str] = typer.Option(None, "--data", "--dataset",
                                              help="Also report the teacher's HR@n/HR@10 on the training rows."),
    ) -> None:
        """Shapes, coverage, distance range; with --dataset, how often the true target is in the teacher's list."""
        import numpy as np

        from dllm2rec.teachers.artifacts import TeacherArtifacts

        ds = _dataset(dataset) if dataset else None
        art = TeacherArtifacts.load(artifacts, ds)
        st = art.stats()
        if ds is not None:
            tr = ds["train"]
            tgt = np.zeros(art.n_rows, dtype=np.int64)
            tgt[tr.row_id] = tr.target
            cov = art.covered
            hit = art.topk_ids[cov] == tgt[cov][:, None]
            st[f"train_HR@{art.top_n}"] = round(float(hit.any(1).mean()), 4) if cov.any() else None
            st["train_HR@10"] = round(float(hit[:, :10].any(1).mean()), 4) if cov.any() else None
        typer.echo(json.dumps(st, indent=2))
