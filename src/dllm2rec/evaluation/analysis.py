"""Why distillation helps or not: teacher HR@K, student HR@K split by teacher-right rows, top-K overlap."""
from __future__ import annotations

import math
from typing import Any

from dllm2rec.evaluation.protocol import top_k
from dllm2rec.evaluation.runs import Run, method_sort_key
from dllm2rec.evaluation.stats import Stat
from dllm2rec.students.checkpoint import load_student


def teacher_student_analysis(dataset, teacher, runs: list[Run], k: int = 20, max_rows: int | None = 20000,
                             seed: int = 0, batch: int = 1024) -> dict[str, Any]:
    """Does the student learn what the teacher knows? Measured on the teacher-covered TRAIN rows (the only rows a
    teacher answers; the rows the distillation loss sees), for each run's selected checkpoint:
    - teacher HR@k: the true target inside the teacher's top-k (how informative the distilled ranking is);
    - student HR@k on the same rows, overall and split by whether the teacher got the row right;
    - overlap: mean |student top-k ∩ teacher top-k| / k.

    A distilled student that gains mostly on teacher-right rows, with a higher overlap than the plain student, shows
    the mechanism transfers; a teacher HR@k near the student's own says there is little to transfer. Student
    numbers on train rows are inflated by fitting; compare runs with each other, not with test metrics.
    """
    import numpy as np
    import torch

    tr = dataset["train"]
    covered = np.flatnonzero(np.asarray(teacher.covered, dtype=bool))
    if max_rows is not None and len(covered) > max_rows:
        covered = np.sort(np.random.default_rng(seed).choice(covered, max_rows, replace=False))
    kk = min(k, teacher.top_n)
    # teacher rows are indexed by the train split's row_id
    pos = np.empty(int(tr.row_id.max()) + 1 if len(tr.row_id) else 0, dtype=np.int64)
    pos[tr.row_id] = np.arange(len(tr.row_id))
    idx = pos[covered] if len(covered) else covered
    t_top = np.asarray(teacher.topk_ids)[covered, :kk]
    tgt = tr.target[idx]
    t_hit = (t_top == tgt[:, None]).any(1)
    out: dict[str, Any] = {"rows": int(len(covered)), "k": kk, "teacher_hr": float(t_hit.mean()) if len(t_hit) else
                           math.nan, "teacher_right_rows": int(t_hit.sum()), "runs": []}
    for r in runs:
        model, _ = load_student(r.path / "best")
        s_top = [top_k(model, torch.from_numpy(tr.seq[b]), torch.from_numpy(tr.len[b]), kk)[0].numpy()
                 for b in (idx[s:s + batch] for s in range(0, len(idx), batch))]  # the protocol's one top-k
        top = np.concatenate(s_top) if s_top else np.zeros((0, kk), dtype=np.int64)
        hit = (top == tgt[:, None]).any(1)
        overlap = (top[:, :, None] == t_top[:, None, :]).any(2).sum(1) / kk
        out["runs"].append({
            "label": r.label, "seed": r.seed, "student": r.student, "run": str(r.path),
            "hr": float(hit.mean()), "hr_teacher_right": float(hit[t_hit].mean()) if t_hit.any() else math.nan,
            "hr_teacher_wrong": float(hit[~t_hit].mean()) if (~t_hit).any() else math.nan,
            "overlap": float(overlap.mean()),
        })
    return out


def analysis_markdown(res: dict[str, Any]) -> str:
    k = res["k"]
    lines = [f"Teacher vs student on {res['rows']} teacher-covered train rows (top-{k}); teacher HR@{k} = "
             f"{res['teacher_hr']:.4f} ({res['teacher_right_rows']} rows right).", "",
             f"| student | method | n | HR@{k} | HR@{k} where teacher right | HR@{k} where teacher wrong | "
             f"overlap with teacher top-{k} |", "|---|---|---:|---:|---:|---:|---:|"]
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in res["runs"]:
        groups.setdefault((r["student"], r["label"]), []).append(r)
    for (st, lb), rs in sorted(groups.items(), key=lambda x: (x[0][0], method_sort_key(x[0][1]))):
        cells = [Stat.of(r[m] for r in rs).fmt("std") for m in ("hr", "hr_teacher_right", "hr_teacher_wrong",
                                                                  "overlap")]
        lines.append(f"| {st} | {lb} | {len(rs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
