"""Finished runs on disk (``results.json`` + ``log.jsonl``) as :class:`Run` records, their method labels, and
their aggregation over seeds into :class:`Group` rows.

The method label of a run is, in order of preference: the ``method`` field of ``experiment.json`` written by the
grid runner (:mod:`dllm2rec.experiments`), ``results.json['label']``, or one derived from the strategy name, its
teacher (``random`` → ``random-teacher control``) and its ablation switches; ``label_from`` appends the value of one
strategy parameter or dotted config key (``lam`` or ``distill.params.lam``).
"""
from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from dllm2rec.distill.strategies import ABLATION_SWITCHES
from dllm2rec.errors import Dllm2recError
from dllm2rec.evaluation.stats import Stat
from dllm2rec.utils.io import read_json, try_read_json

CONTROL_LABEL = "random-teacher control"
# display order of known method labels; anything else follows alphabetically
METHOD_ORDER = ["none", CONTROL_LABEL, "rd", "hint", "dllm2rec"]





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
        offs = [suffix for flag, suffix in ABLATION_SWITCHES.items() if params.get(flag) is False]
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
        res = read_json(rpath, Dllm2recError)
        run_dir = rpath.parent
        label = (try_read_json(run_dir / "experiment.json") or {}).get("label") or res.get("label")
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


