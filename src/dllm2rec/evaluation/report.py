"""The results report: finished runs → Markdown table (+ ``summary.json``, PNG plots).

Runs are grouped by (dataset, student, method label) and aggregated over seeds:

- mean ± 95 % confidence half-width from Student's t with n−1 degrees of freedom (n = number of seeds),
- mean ± sample standard deviation (ddof = 1),

for the **test** metrics of the checkpoint selected on **validation** (the trainer never looks at test before the
selected epoch is fixed), plus the validation metrics and the selected epochs.

The method label of a run is, in order of preference: the ``method`` field of ``experiment.json`` written by the
grid runner (:mod:`dllm2rec.experiments`), ``results.json['label']``, or one derived from the strategy name, its
teacher (``random`` → ``random-teacher control``) and its ablation switches; ``label_from`` appends the value of one
strategy parameter or dotted config key (``lam`` or ``distill.params.lam``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterable

from dllm2rec.errors import Dllm2recError
from dllm2rec.evaluation.plots import plot_bars, plot_curves
from dllm2rec.evaluation.runs import CONTROL_LABEL, Group, _metric_key, aggregate, load_runs
from dllm2rec.evaluation.teacher_metrics import find_metric, load_teacher_metrics, teacher_protocol
from dllm2rec.utils.io import atomic_write_text

PROTOCOL_CAPTION = "full ranking over all items, valid-selected, test at selected epoch"
PROTOCOL_NAMES = {"full": "full ranking over all items, history not masked",
                  "full-excl": "full ranking over all items, history masked"}


def _delta(g: Group, ref: Group | None, key: str) -> str:
    if ref is None or ref is g or g.stats[key].n == 0 or ref.stats[key].n == 0:
        return "–"
    a, b = g.stats[key].mean, ref.stats[key].mean
    rel = f" ({(a - b) / b * 100:+.1f}%)" if b else ""
    return f"{a - b:+.4f}{rel}"


def markdown_table(groups: list[Group], metrics: tuple[str, ...] = ("NDCG@20", "HR@20"),
                   teacher_metrics: dict[str, dict[str, float]] | None = None, title: str | None = None) -> str:
    """The results table: one row per (dataset, student, method); protocol stated in the caption."""
    lines: list[str] = []
    if title:
        lines += [f"# {title}", ""]
    protos = sorted({_metric_key(g.runs, "test", "NDCG@20").split("/")[1] for g in groups}) or ["full"]
    lines += [f"Protocol: **{PROTOCOL_CAPTION}**. Students: " + "; ".join(PROTOCOL_NAMES.get(p, p) for p in protos)
              + (" (the teacher row names its own)" if teacher_metrics else "") + ". Test metrics are those of "
              "the checkpoint chosen by validation NDCG@20; n = number of seeds; ± = 95 % CI half-width "
              "(Student-t, n−1 dof) or sample std.", ""]
    head = ["dataset", "student", "method", "n"]
    single = all(g.n <= 1 for g in groups)       # one seed each: a spread column would repeat the mean
    for m in metrics:
        head += [f"test {m}"] if single else [f"test {m} (mean ± 95% CI)", f"test {m} (mean ± std)"]
    head += [f"valid {m}" for m in metrics]
    labels_at = {}
    for g in groups:
        labels_at.setdefault((g.dataset, g.student), set()).add(g.label)
    show_base = any("none" in ls and len(ls) > 1 for ls in labels_at.values())
    show_ctl = any(CONTROL_LABEL in ls and len(ls) > 1 for ls in labels_at.values())
    head += (["Δ test NDCG@20 vs none"] if show_base else []) + (["Δ vs random-teacher control"] if show_ctl else [])
    head += ["best epoch", "s/epoch"]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "|".join(["---"] * 3 + ["---:"] * (len(head) - 3)) + "|")
    capped = False
    missing_control: set[tuple[str, str]] = set()
    by_key = {(g.dataset, g.student, g.label): g for g in groups}
    for g in groups:
        base = by_key.get((g.dataset, g.student, "none"))
        ctl = by_key.get((g.dataset, g.student, CONTROL_LABEL))
        if ctl is None and g.label not in ("none", CONTROL_LABEL) and "random teacher" not in g.label:
            missing_control.add((g.dataset, g.student))
        mark = ""
        if any(r.hit_cap for r in g.runs):
            mark, capped = " †", True
        row = [g.dataset, g.student, f"**{g.label}**" if g.label == CONTROL_LABEL else g.label, str(g.n)]
        for m in metrics:
            st = g.stats[f"test/{m}"]
            row += [st.fmt("ci")] if single else [st.fmt("ci"), st.fmt("std")]
        row += [g.stats[f"valid/{m}"].fmt("std") for m in metrics]
        row += ([_delta(g, base, "test/NDCG@20")] if show_base else []) \
            + ([_delta(g, ctl, "test/NDCG@20")] if show_ctl else [])
        be = g.stats["best_epoch"]
        be_mean = f"{be.mean:.0f}" if float(be.mean).is_integer() else f"{be.mean:.1f}"
        row += [be_mean + (f" ± {be.std:.1f}" if not math.isnan(be.std) else "") + mark]
        spe = g.stats["seconds_per_epoch"]
        row += [f"{spe.mean:.1f}" if spe.n else "–"]
        lines.append("| " + " | ".join(row) + " |")
    if teacher_metrics:
        for ds, tm in sorted(teacher_metrics.items()):
            proto = teacher_protocol(tm)
            how = {"full-excl": "full ranking, history masked", "full": "full ranking"}.get(proto or "", proto)
            row = [ds, "teacher", f"LLM teacher (its own ranking{'; ' + how if how else ''})", "1"]
            for m in metrics:
                v = find_metric(tm, "test", m)
                row += ["–" if v is None else f"{v:.4f}"] + ([] if single else ["–"])
            for m in metrics:
                v = find_metric(tm, "valid", m)
                row += ["–" if v is None else f"{v:.4f}"]
            row += ["–"] * (2 + show_base + show_ctl)
            lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    if capped:
        lines.append("† at least one seed stopped at the epoch cap, not by early stopping (may be unconverged).")
    for ds, st in sorted(missing_control):
        lines.append(f"Note: no random-teacher control run for {ds}/{st}; a teacher's gain should be read against it.")
    seeds = sorted({s for g in groups for s in g.seeds})
    lines.append(f"Seeds: {', '.join(map(str, seeds))}. Runs: {sum(g.n for g in groups)}.")
    return "\n".join(lines) + "\n"


def summary_dict(groups: list[Group]) -> list[dict[str, Any]]:
    return [{"dataset": g.dataset, "student": g.student, "method": g.label, "n": g.n, "seeds": g.seeds,
             "runs": [str(r.path) for r in g.runs], "hit_epoch_cap": any(r.hit_cap for r in g.runs),
             "stats": {k: s.to_dict() for k, s in g.stats.items()}} for g in groups]


def build_report(patterns: Iterable[str | Path], out: str | Path, label_from: str | None = None,
                 teacher_metrics: str | Path | dict | None = None, title: str | None = None,
                 plots: bool = True) -> dict[str, Any]:
    """Collect runs, write ``report.md``, ``summary.json`` and (``plots``) ``curves.png`` / ``bars.png`` to ``out``."""

    patterns = list(patterns)
    runs = load_runs(patterns, label_from)
    if not runs:
        raise Dllm2recError(f"no results.json found under {', '.join(map(str, patterns))}")
    groups = aggregate(runs)
    if isinstance(teacher_metrics, dict):
        tm = teacher_metrics
    else:
        tm = load_teacher_metrics(teacher_metrics, {g.dataset for g in groups})
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    md = markdown_table(groups, teacher_metrics=tm, title=title)
    files = {"report": out / "report.md", "summary": out / "summary.json"}
    if plots:
        files["curves"] = plot_curves(groups, out / "curves.png")
        files["bars"] = plot_bars(groups, out / "bars.png", teacher_metrics=tm)
        md += "\n![training curves](curves.png)\n\n![student vs distilled vs teacher](bars.png)\n"
    atomic_write_text(files["report"], md)
    atomic_write_text(files["summary"], json.dumps({"protocol": PROTOCOL_CAPTION, "groups": summary_dict(groups),
                                                    "teacher": tm}, indent=2, default=float,
                                                    allow_nan=False))
    return {"markdown": md, "groups": groups, "files": files, "runs": runs}
