"""Turn finished runs (``results.json`` + ``log.jsonl``) into a Markdown results table and PNG plots.

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

import glob
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from dllm2rec.errors import Dllm2recError

PROTOCOL_CAPTION = "full ranking over all items, valid-selected, test at selected epoch"
PROTOCOL_NAMES = {"full": "full ranking over all items, history not masked",
                  "full-excl": "full ranking over all items, history masked"}
CONTROL_LABEL = "random-teacher control"
# display order of known method labels; anything else follows alphabetically
METHOD_ORDER = ["none", CONTROL_LABEL, "rd", "hint", "dllm2rec"]

# ablation switches of the dllm2rec strategy: param -> label suffix when the switch is off
_ABLATION_FLAGS = {
    "use_position": "wo-position",
    "use_confidence": "wo-confidence",
    "use_consistency": "wo-consistency",
    "use_ranking": "wo-ranking",
    "use_embedding": "wo-embedding",
    "offset": "wo-offset",
}


# ---------------------------------------------------------------------------------------------------- statistics
def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularised incomplete beta function (Numerical Recipes 6.4)."""
    tiny, eps = 1e-300, 3e-16
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            break
    return h


def _betai(a: float, b: float, x: float) -> float:
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    lbt = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(lbt) * _betacf(a, b, x) / a
    return 1.0 - math.exp(lbt) * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, dof: float) -> float:
    """CDF of Student's t distribution."""
    x = dof / (dof + t * t)
    tail = 0.5 * _betai(dof / 2.0, 0.5, x)
    return 1.0 - tail if t >= 0 else tail


def t_ppf(p: float, dof: float) -> float:
    """Quantile of Student's t (bisection on :func:`t_cdf`; exact to ~1e-10). ``t_ppf(0.975, 2) = 4.3027``."""
    if not 0.0 < p < 1.0 or dof <= 0:
        raise ValueError("t_ppf needs 0 < p < 1 and dof > 0")
    if p < 0.5:
        return -t_ppf(1.0 - p, dof)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, dof) < p:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, dof) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12:
            break
    return 0.5 * (lo + hi)


@dataclass
class Stat:
    n: int
    mean: float
    std: float       # sample std (ddof=1); nan for n == 1
    ci95: float      # half-width of the 95 % Student-t interval; nan for n == 1

    @classmethod
    def of(cls, values: Iterable[float]) -> "Stat":
        v = [float(x) for x in values if x is not None and not (isinstance(x, float) and math.isnan(x))]
        n = len(v)
        if n == 0:
            return cls(0, math.nan, math.nan, math.nan)
        mean = sum(v) / n
        if n == 1:
            return cls(1, mean, math.nan, math.nan)
        std = math.sqrt(sum((x - mean) ** 2 for x in v) / (n - 1))
        return cls(n, mean, std, t_ppf(0.975, n - 1) * std / math.sqrt(n))

    def fmt(self, kind: str = "ci", digits: int = 4) -> str:
        if self.n == 0:
            return "–"
        spread = self.ci95 if kind == "ci" else self.std
        if math.isnan(spread):
            return f"{self.mean:.{digits}f}"
        return f"{self.mean:.{digits}f} ± {spread:.{digits}f}"

    def to_dict(self) -> dict[str, float | None]:
        """JSON-safe: an undefined spread (n < 2) or mean (n = 0) is null, never NaN (not JSON)."""
        def num(x: float) -> float | None:
            return None if math.isnan(x) else x

        return {"n": self.n, "mean": num(self.mean), "std": num(self.std), "ci95": num(self.ci95)}


# ---------------------------------------------------------------------------------------------------- runs
@dataclass
class Run:
    path: Path                      # run directory
    dataset: str
    student: str
    label: str
    seed: int
    best_epoch: int
    epochs_run: int | None
    epoch_cap: int | None
    patience: int | None
    valid: dict[str, float]
    test: dict[str, float]
    strategy: dict[str, Any]
    teacher: str | None
    seconds_per_epoch: float | None
    results: dict[str, Any] = field(repr=False, default_factory=dict)
    _log: list[dict[str, Any]] | None = field(default=None, repr=False)

    @property
    def log(self) -> list[dict[str, Any]]:
        if self._log is None:
            self._log = []
            f = self.path / "log.jsonl"
            if f.is_file():
                for line in f.read_text(encoding="utf-8").splitlines():
                    if line.strip():
                        try:
                            self._log.append(json.loads(line))
                        except json.JSONDecodeError:
                            break  # a torn last line of a killed run
        return self._log

    @property
    def hit_cap(self) -> bool:
        """True when training stopped at the epoch cap rather than by early stopping (may be unconverged)."""
        if self.epoch_cap is None or self.epochs_run is None:
            return False
        if self.epochs_run < self.epoch_cap:
            return False
        return self.patience is None or (self.epochs_run - self.best_epoch) < self.patience


def _get_dotted(d: dict[str, Any], key: str) -> Any:
    cur: Any = d
    for part in key.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return cur


def teacher_kind(teacher: str | None) -> str | None:
    """'random' / 'synthetic' for the controls, the directory name for real artifacts, None without a teacher."""
    if not teacher:
        return None
    t = str(teacher)
    for ctl in ("random", "synthetic"):
        if t == ctl or t.startswith(ctl + ":"):
            return ctl
    return Path(t.rstrip("/")).name or t


def derive_label(results: dict[str, Any], label_from: str | None = None) -> str:
    """Method label from strategy + teacher (+ ablation switches, + ``label_from``)."""
    strat = dict(results.get("strategy") or {})
    name = str(strat.pop("strategy", "none"))
    cfg = results.get("config") or {}
    teacher = _get_dotted(cfg, "distill.teacher")
    params = {**(_get_dotted(cfg, "distill.params") or {}), **strat}
    tk = teacher_kind(teacher)
    if name == "none":
        label = "none"
    elif tk == "random":
        label = CONTROL_LABEL if name == "dllm2rec" else f"{name} (random teacher)"
    else:
        label = name
        offs = [suffix for flag, suffix in _ABLATION_FLAGS.items() if params.get(flag) is False]
        if offs:
            label += "-" + "-".join(offs)
        if tk == "synthetic":
            label += " (synthetic teacher)"
    if label_from:
        val = params.get(label_from) if "." not in label_from else _get_dotted(cfg, label_from)
        if val is None and "." not in label_from:
            val = _get_dotted(cfg, label_from)
        label += f" [{label_from.rsplit('.', 1)[-1]}={val}]"
    return label


def _find_results(patterns: Iterable[str | Path]) -> list[Path]:
    found: dict[str, Path] = {}
    for pat in patterns:
        pat = str(pat)
        matches = glob.glob(pat, recursive=True) if glob.has_magic(pat) else [pat]
        for m in matches:
            p = Path(m)
            if p.is_file() and p.name == "results.json":
                found[os.path.realpath(p)] = p
            elif p.is_dir():
                for r in p.rglob("results.json"):
                    found[os.path.realpath(r)] = r
    return sorted(found.values())


def load_runs(patterns: Iterable[str | Path], label_from: str | None = None) -> list[Run]:
    """Every ``results.json`` under/at the given paths or globs, as :class:`Run` records."""
    runs = []
    for rpath in _find_results(patterns):
        try:
            res = json.loads(rpath.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise Dllm2recError(f"{rpath}: unreadable results file ({e})") from None
        run_dir = rpath.parent
        label = None
        exp = run_dir / "experiment.json"
        if exp.is_file():
            try:
                label = json.loads(exp.read_text(encoding="utf-8")).get("label")
            except json.JSONDecodeError:
                label = None
        label = label or res.get("label")
        if label and label_from:
            label = f"{label} [{label_from.rsplit('.', 1)[-1]}={_label_value(res, label_from)}]"
        label = label or derive_label(res, label_from)
        cfg = res.get("config") or {}
        runs.append(Run(
            path=run_dir,
            dataset=str(res.get("dataset", "?")),
            student=str(res.get("student", _get_dotted(cfg, "model.name") or "?")),
            label=label,
            seed=int(res.get("seed", _get_dotted(cfg, "train.seed") or 0)),
            best_epoch=int(res.get("best_epoch", -1)),
            epochs_run=res.get("epochs_run"),
            epoch_cap=_get_dotted(cfg, "train.epochs"),
            patience=_get_dotted(cfg, "train.patience"),
            valid=dict(res.get("valid") or {}),
            test=dict(res.get("test") or {}),
            strategy=dict(res.get("strategy") or {}),
            teacher=_get_dotted(cfg, "distill.teacher"),
            seconds_per_epoch=res.get("seconds_per_epoch"),
            results=res,
        ))
    return runs


def _label_value(res: dict[str, Any], key: str) -> Any:
    strat = res.get("strategy") or {}
    if "." not in key and key in strat:
        return strat[key]
    return _get_dotted(res.get("config") or {}, key if "." in key else f"distill.params.{key}")


# ---------------------------------------------------------------------------------------------------- aggregation
@dataclass
class Group:
    dataset: str
    student: str
    label: str
    runs: list[Run]
    stats: dict[str, Stat]

    @property
    def n(self) -> int:
        return len(self.runs)

    @property
    def seeds(self) -> list[int]:
        return sorted(r.seed for r in self.runs)


def _metric_key(runs: list[Run], split: str, metric: str) -> str:
    """``<split>/<protocol>/<metric>``; the protocol is read from the runs (``full`` unless history excluded)."""
    for r in runs:
        d = r.valid if split == "valid" else r.test
        for k in d:
            parts = k.split("/")
            if len(parts) == 3 and parts[2] == metric:
                return k
    return f"{split}/full/{metric}"


def method_sort_key(label: str) -> tuple[int, str]:
    base = label.split(" [")[0]
    if base in METHOD_ORDER:
        return (METHOD_ORDER.index(base), label)
    if base.startswith("dllm2rec-"):
        return (len(METHOD_ORDER), label)
    return (len(METHOD_ORDER) + 1, label)


def aggregate(runs: list[Run], metrics: Iterable[str] = ("HR@20", "NDCG@20")) -> list[Group]:
    """Group runs by (dataset, student, label); mean/std/CI of test and valid metrics and of the selected epoch.

    A seed that appears twice in a group (e.g. the same run found through two globs) is counted once.
    """
    groups: dict[tuple[str, str, str], dict[int, Run]] = {}
    for r in runs:
        groups.setdefault((r.dataset, r.student, r.label), {})[r.seed] = r
    out = []
    for (ds, st, lb), by_seed in groups.items():
        rs = [by_seed[s] for s in sorted(by_seed)]
        stats: dict[str, Stat] = {}
        for m in metrics:
            for split in ("test", "valid"):
                key = _metric_key(rs, split, m)
                vals = [(r.test if split == "test" else r.valid).get(key) for r in rs]
                stats[f"{split}/{m}"] = Stat.of(vals)
        stats["best_epoch"] = Stat.of(r.best_epoch for r in rs)
        stats["seconds_per_epoch"] = Stat.of(r.seconds_per_epoch for r in rs if r.seconds_per_epoch is not None)
        out.append(Group(ds, st, lb, rs, stats))
    student_order = {"sasrec": 0, "gru4rec": 1, "caser": 2}
    out.sort(key=lambda g: (g.dataset, student_order.get(g.student, 9), g.student, method_sort_key(g.label)))
    return out


# ---------------------------------------------------------------------------------------------------- markdown
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
              f"the checkpoint chosen by validation NDCG@20; n = number of seeds; ± = 95 % CI half-width "
              f"(Student-t, n−1 dof) or sample std.", ""]
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
                v = _find_metric(tm, "test", m)
                row += ["–" if v is None else f"{v:.4f}"] + ([] if single else ["–"])
            for m in metrics:
                v = _find_metric(tm, "valid", m)
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


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts -> ``a/b/c`` keys."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}/{k}" if prefix else str(k)
        if isinstance(v, dict):
            out.update(flatten(v, key))
        else:
            out[key] = v
    return out


_SPLITS = ("train", "valid", "test")


def _split_of(part: str) -> str | None:
    """'test', 'teacher_test', 'test_metrics' → 'test'; a key part that names no split → None."""
    for sp in _SPLITS:
        if part == sp or part.startswith(sp + "_") or part.endswith("_" + sp):
            return sp
    return None


def _find_metric(d: dict[str, Any], split: str, metric: str) -> float | None:
    """``<split>/.../<metric>`` in a (possibly nested) metrics dict. A key counts for ``split`` only if one of its
    parts names that split (``test``, ``teacher_test``); a key naming no split at all counts as test."""
    flat = flatten(d)
    nums = {k: float(v) for k, v in flat.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    unsplit = None
    for k, v in nums.items():
        parts = k.split("/")
        if parts[-1].lower() != metric.lower():
            continue
        named = {_split_of(p) for p in parts[:-1]} - {None}
        if named == {split}:
            return v
        if not named and unsplit is None:
            unsplit = v
    return unsplit if split == "test" else None


def teacher_protocol(d: dict[str, Any]) -> str | None:
    """The ranking protocol named in a teacher's metric keys (``full-excl`` = history masked), if any."""
    for k in flatten(d):
        for p in k.split("/")[:-1]:
            if p.startswith("full") or p.startswith("sampled"):
                return p
    return None


def teacher_metrics_from_dir(teacher_dir: str | Path | None) -> dict[str, Any]:
    """The teacher's own metrics recorded next to its artifacts (``manifest.json['metrics']`` or ``metrics.json``)."""
    if not teacher_dir:
        return {}
    d = Path(teacher_dir)
    for name in ("metrics.json", "eval.json", "test_metrics.json"):
        f = d / name
        if f.is_file():
            try:
                data = json.loads(f.read_text(encoding="utf-8"))
            except json.JSONDecodeError:
                continue
            if isinstance(data, dict):
                return data
    m = d / "manifest.json"
    if m.is_file():
        try:
            man = json.loads(m.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            return {}
        for key in ("metrics", "eval", "evaluation"):
            if isinstance(man.get(key), dict):
                return man[key]
        # llm-emb teacher: teacher_valid / teacher_test
        split_metrics = {sp: man[f"teacher_{sp}"] for sp in ("valid", "test")
                         if isinstance(man.get(f"teacher_{sp}"), dict)}
        if split_metrics:
            return split_metrics
    return {}


def load_teacher_metrics(path: str | Path | None, datasets: Iterable[str] = ()) -> dict[str, dict[str, float]]:
    """``{dataset: {"test/full/NDCG@20": ...}}`` from a JSON file that is either keyed by dataset or flat.

    A flat file applies to the single dataset in ``datasets`` (or to the one named by its ``dataset`` field).
    """
    if path is None:
        return {}
    p = Path(path)
    if p.is_dir() or (p.name == "manifest.json" and p.is_file()):  # a teacher-artifacts dir or its manifest
        tm = teacher_metrics_from_dir(p if p.is_dir() else p.parent)
        if not tm:
            raise Dllm2recError(f"{p}: no teacher metrics recorded (no metrics.json, no manifest 'metrics' or "
                                "'teacher_valid'/'teacher_test')")
        flat = {k: float(v) for k, v in flatten(tm).items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        ds = list(datasets)
        man = p / "manifest.json" if p.is_dir() else p
        try:
            name = json.loads(man.read_text(encoding="utf-8")).get("dataset") if man.is_file() else None
        except json.JSONDecodeError:
            name = None
        return {str(name or (ds[0] if len(ds) == 1 else "teacher")): flat}
    if not p.is_file():
        raise Dllm2recError(f"{p}: teacher metrics file not found")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise Dllm2recError(f"{p}: malformed JSON ({e})") from None
    if not isinstance(data, dict):
        raise Dllm2recError(f"{p}: top level must be an object")
    if "metrics" in data and isinstance(data["metrics"], dict):
        data = {**data["metrics"], **({"dataset": data["dataset"]} if "dataset" in data else {})}
    if data and all(isinstance(v, dict) for v in data.values()) and not ({"test", "valid"} & set(data)):
        return {str(k): {kk: vv for kk, vv in flatten(v).items() if isinstance(vv, (int, float))}
                for k, v in data.items()}
    flat = {k: v for k, v in flatten(data).items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    ds = list(datasets)
    name = data.get("dataset") or (ds[0] if len(ds) == 1 else "teacher")
    return {str(name): flat}


# ---------------------------------------------------------------------------------------------------- plots
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


def plot_curves(groups: list[Group], path: str | Path, metric: str = "NDCG@20") -> Path:
    """Validation ``metric`` per epoch, one line per method (mean over the seeds that reached that epoch)."""
    plt, panels, fig, axes = _panel_grid(groups, height=3.8)
    for ax, (ds, st) in zip(axes.flat, panels):
        for g in [g for g in groups if (g.dataset, g.student) == (ds, st)]:
            key = None
            per_epoch: dict[int, list[float]] = {}
            for r in g.runs:
                for rec in r.log:
                    if key is None:
                        key = next((k for k in rec if k.startswith("valid/") and k.endswith("/" + metric)), None)
                    if key and key in rec:
                        per_epoch.setdefault(int(rec["epoch"]), []).append(float(rec[key]))
            if not per_epoch:
                continue
            xs = sorted(per_epoch)
            ys = [sum(per_epoch[x]) / len(per_epoch[x]) for x in xs]
            style = "--" if g.label == CONTROL_LABEL else ":" if g.label == "none" else "-"
            ax.plot(xs, ys, style, label=f"{g.label} (n={g.n})", linewidth=1.6)
        ax.set_title(f"{ds} · {st}")
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"valid {metric}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(f"Training curves: validation {metric} (mean over seeds)", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


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
        tv = _find_metric((teacher_metrics or {}).get(ds, {}), "test", metric)
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
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(f"Test {metric}: student vs distilled vs teacher\n"
                 "(valid-selected epoch; error bars: 95% CI over seeds)", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------------- entry point
def summary_dict(groups: list[Group]) -> list[dict[str, Any]]:
    return [{"dataset": g.dataset, "student": g.student, "method": g.label, "n": g.n, "seeds": g.seeds,
             "runs": [str(r.path) for r in g.runs], "hit_epoch_cap": any(r.hit_cap for r in g.runs),
             "stats": {k: s.to_dict() for k, s in g.stats.items()}} for g in groups]


def build_report(patterns: Iterable[str | Path], out: str | Path, label_from: str | None = None,
                 teacher_metrics: str | Path | dict | None = None, title: str | None = None,
                 plots: bool = True) -> dict[str, Any]:
    """Collect runs, write ``report.md``, ``summary.json`` and (``plots``) ``curves.png`` / ``bars.png`` to ``out``."""
    from dllm2rec.utils.io import atomic_write_text

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


# ---------------------------------------------------------------------------------------------------- why (not)
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

    from dllm2rec.training.checkpoint import load_student

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
        s_top = []
        with torch.inference_mode():
            for s in range(0, len(idx), batch):
                b = idx[s:s + batch]
                st = model.encode(torch.from_numpy(tr.seq[b]), torch.from_numpy(tr.len[b]))
                s_top.append(model.score_all(st).topk(kk, dim=1).indices.numpy())
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
