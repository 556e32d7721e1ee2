"""Training curves and test bars (matplotlib, Agg backend) for a results report."""
from __future__ import annotations

import math
from pathlib import Path

from dllm2rec.evaluation.runs import CONTROL_LABEL, Group
from dllm2rec.evaluation.teacher_metrics import find_metric


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _panel_grid(groups: list[Group], height: float):
    """One subplot per (dataset, student), at most 3 per row: (plt, panels, fig, axes)."""
    plt = _plt()
    panels = sorted({(g.dataset, g.student) for g in groups})
    ncol = min(3, len(panels)) or 1
    nrow = math.ceil(len(panels) / ncol) or 1
    fig, axes = plt.subplots(nrow, ncol, figsize=(5.2 * ncol, height * nrow), squeeze=False)
    return plt, panels, fig, axes


def _finish(plt, fig, axes, n_panels: int, path: str | Path, title: str) -> Path:
    """Blank the unused panels, title, save (dpi 110), close."""
    for ax in list(axes.flat)[n_panels:]:
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _mean_per_epoch(runs, key_of) -> dict[int, float]:
    per_epoch: dict[int, list[float]] = {}
    for r in runs:
        for rec in r.log:
            k = key_of(rec)
            if k and k in rec:
                per_epoch.setdefault(int(rec["epoch"]), []).append(float(rec[k]))
    return {e: sum(v) / len(v) for e, v in sorted(per_epoch.items())}


def plot_curves(groups: list[Group], path: str | Path, metric: str = "NDCG@20") -> Path:
    """Validation ``metric`` per epoch, one line per method (mean over the seeds that reached that epoch), each
    run's selected epoch marked (★), and the training loss (thin lines, right axis)."""
    plt, panels, fig, axes = _panel_grid(groups, height=3.8)
    for ax, (ds, st) in zip(axes.flat, panels):
        loss_ax = ax.twinx()
        for g in [g for g in groups if (g.dataset, g.student) == (ds, st)]:
            vkey = next((k for r in g.runs for rec in r.log for k in rec
                         if k.startswith("valid/") and k.endswith("/" + metric)), None)
            curve = _mean_per_epoch(g.runs, lambda rec: vkey)
            if not curve:
                continue
            style = "--" if g.label == CONTROL_LABEL else ":" if g.label == "none" else "-"
            (line,) = ax.plot(list(curve), list(curve.values()), style, label=f"{g.label} (n={g.n})", linewidth=1.6)
            sel = [(r.best_epoch, float(rec[vkey])) for r in g.runs for rec in r.log
                   if int(rec.get("epoch", -1)) == r.best_epoch and vkey in rec]
            if sel:
                ax.scatter(*zip(*sel), marker="*", s=70, color=line.get_color(), zorder=3, edgecolors="black",
                           linewidths=0.4)
            loss = _mean_per_epoch(g.runs, lambda rec: "train/loss")
            if loss:
                loss_ax.plot(list(loss), list(loss.values()), style, color=line.get_color(), linewidth=0.8,
                             alpha=0.45)
        ax.set_title(f"{ds} · {st}")
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"valid {metric} (★ selected epoch)")
        loss_ax.set_ylabel("train loss (thin)", fontsize=8)
        loss_ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _finish(plt, fig, axes, len(panels), path,
                   f"Training curves: validation {metric} and training loss (mean over seeds)")


def plot_bars(groups: list[Group], path: str | Path, metric: str = "NDCG@20",
              teacher_metrics: dict[str, dict[str, float]] | None = None) -> Path:
    """Test ``metric`` per method (error bar = 95 % CI) for each (dataset, student), with the teacher's bar."""
    plt, panels, fig, axes = _panel_grid(groups, height=4.0)
    for ax, (ds, st) in zip(axes.flat, panels):
        gs = [g for g in groups if (g.dataset, g.student) == (ds, st)]
        names, means, errs, colors = [], [], [], []
        for g in gs:
            s = g.stats[f"test/{metric}"]
            names.append(g.label)
            means.append(s.mean)
            errs.append(0.0 if math.isnan(s.ci95) else s.ci95)
            colors.append("#999999" if g.label == "none" else "#d9a441" if g.label == CONTROL_LABEL else "#3b75af")
        tv = find_metric((teacher_metrics or {}).get(ds, {}), "test", metric)
        if tv is not None:
            names.append("teacher")
            means.append(tv)
            errs.append(0.0)
            colors.append("#b04a4a")
        xs = range(len(names))
        bars = ax.bar(xs, means, yerr=errs if any(e > 0 for e in errs) else None, color=colors, capsize=3)
        ax.bar_label(bars, labels=[f"{m:.4f}" for m in means], fontsize=7, padding=2)
        ax.set_ylim(0, max([m for m in means if not math.isnan(m)] or [1.0]) * 1.25)
        ax.set_xticks(list(xs))
        ax.set_xticklabels(names, rotation=35, ha="right", fontsize=7)
        ax.set_title(f"{ds} · {st}")
        ax.set_ylabel(f"test {metric}")
        ax.grid(axis="y", alpha=0.3)
    return _finish(plt, fig, axes, len(panels), path, f"Test {metric}: student vs distilled vs teacher\n"
                   "(valid-selected epoch; error bars: 95% CI over seeds)")
