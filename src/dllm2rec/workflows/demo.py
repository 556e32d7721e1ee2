"""The demo's teacher: the shipped artifacts for a dataset, checked against it — never a silent substitute."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from dllm2rec.errors import ArtifactError
from dllm2rec.evaluation.teacher_metrics import flatten
from dllm2rec.teachers.artifacts import TeacherArtifacts

SHIPPED_TEACHERS = Path("artifacts/teachers")  # in the checkout; also looked up next to an editable install


def shipped_teacher_dir(dataset_name: str) -> Path:
    """artifacts/teachers/<dataset> in the working directory, else in the source checkout (editable install)."""
    here = SHIPPED_TEACHERS / dataset_name
    if (here / "manifest.json").is_file():
        return here
    repo = Path(__file__).resolve().parents[3] / SHIPPED_TEACHERS / dataset_name
    return repo if (repo / "manifest.json").is_file() else here


def find_teacher(dataset_name: str, teacher: str | None, dataset=None) -> tuple[str, str]:
    """(teacher spec, human description) for the demo.

    ``teacher`` given: used as is (``random``/``synthetic`` are labelled as the controls they are). Otherwise the
    shipped artifacts for the dataset, checked against it (ids, interactions, splits; other title strings are
    reported, not refused). No silent substitute: without matching artifacts this raises a one-line error naming
    the fix — the synthetic oracle is a test fixture, never the demo's default.
    """
    if teacher:
        kind = "random" if teacher.startswith("random") else "synthetic" if teacher.startswith("synthetic") else None
        if kind == "random":
            return teacher, "RANDOM teacher (control: random embeddings and rankings, no knowledge)"
        if kind == "synthetic":
            return teacher, ("SYNTHETIC teacher (a noisy oracle that knows the true next item; NOT an LLM — it "
                             "shows that the mechanism works, not what an LLM teacher gives)")
        return teacher, f"teacher artifacts {teacher}"
    shipped = shipped_teacher_dir(dataset_name)
    fix = ("fit one with `dllm2rec teacher fit-llmemb DATASET --out DIR` and pass `--teacher DIR` "
           "(or `--teacher synthetic` for a labelled oracle smoke test)")
    if not (shipped / "manifest.json").is_file():
        raise ArtifactError(f"{shipped}: no shipped teacher artifacts for dataset '{dataset_name}'; {fix}")
    try:  # one read: the validated artifacts carry the manifest (label) and the notes (e.g. other titles)
        art = TeacherArtifacts.load(shipped, dataset)
    except ArtifactError as e:
        raise ArtifactError(f"{e}; {fix}") from None
    what = art.manifest.get("label") or art.manifest.get("teacher") or "LLM teacher"
    desc = f"shipped teacher artifacts {shipped} ({what})"
    return str(shipped), desc + "".join(f"\n      note: {n}" for n in art.notes)


def load_teacher_metrics_dict(raw: dict[str, Any], dataset: str) -> dict[str, dict[str, float]]:

    if not raw:
        return {}
    flat = {k: float(v) for k, v in flatten(raw).items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return {dataset: flat} if flat else {}
