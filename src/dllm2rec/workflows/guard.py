"""Distillation that never silently harms: a pre-flight check and a validation-only guard.

Why: DLLM2Rec's consistency weight is meant to filter unreliable knowledge, but with a teacher weaker than the plain
student (LastFM: the shipped teacher's HR@20 .268 against SASRec's .416) the distilled student ends up 15-22 %
*below* plain, and nothing tells the user. Two tools, both reading validation only:

* :func:`preflight` — before any distilled training: a short plain student against the teacher. Validation HR@K
  of each (the teacher's from its manifest, where recorded), their top-K overlap and the share of rows the teacher
  gets right and the student wrong (the knowledge distillation can add), on teacher-covered train rows.
  Prints a verdict: ``likely to help`` / ``uncertain`` / ``likely to harm``.
* :func:`guarded_distill` — an optuna search (TPE, median pruning on the per-epoch validation curve) over
  λ (``lam``), ``ed_weight`` and ``K`` that *starts* with λ = 0, ed_weight = 0 (the plain student) and the
  paper's setting, so the selected setting is never below plain on validation. Test is computed once per trial
  run by the trainer (for the record) and never read by the search.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable

from dllm2rec.config import RunConfig, load_config
from dllm2rec.data.registry import load_or_prepare
from dllm2rec.errors import ConfigError, MissingDependencyError
from dllm2rec.evaluation.analysis import teacher_student_analysis
from dllm2rec.evaluation.runs import load_runs
from dllm2rec.evaluation.teacher_metrics import find_metric, teacher_metrics_from_dir, teacher_protocol
from dllm2rec.teachers.artifacts import TeacherArtifacts
from dllm2rec.training.trainer import Trainer
from dllm2rec.utils.io import atomic_write_text, read_json

#: the plain student, expressed in the guard's space (λ = 0 and ed_weight = 0 switch both DLLM2Rec terms off)
PLAIN = {"lam": 0.0, "ed_weight": 0.0}
#: thresholds of the pre-flight verdict (teacher HR / student HR on validation)
HELP_RATIO, HARM_RATIO = 1.0, 0.75
#: a teacher whose train-row HR@K is within this factor of chance (K / N) carries no ranking knowledge
CHANCE_FACTOR = 2.0


def _valid(res: dict[str, Any], metric: str) -> float | None:
    for k, v in res.get("valid", {}).items():
        if k.split("/")[-1].lower() == metric.lower():
            return float(v)
    return None


def _proto(res: dict[str, Any]) -> str:
    """The ranking protocol of a run's validation metrics (``full``: history not masked; ``full-excl``: masked)."""
    return next((k.split("/")[1] for k in res.get("valid", {}) if k.count("/") == 2), "?")


def _run(cfg: RunConfig, ds, run_dir: Path, quiet: bool = True) -> dict[str, Any]:
    """Train (or reuse a finished) run; returns its results.json content."""
    res_path = run_dir / "results.json"
    if res_path.is_file():
        return read_json(res_path)
    return Trainer(cfg, ds, run_dir, quiet=quiet).fit()


def preflight(config: Path | None, overrides: list[str], out: Path, ds=None, epochs: int = 50, k: int = 20,
              patience: int = 3,
              max_rows: int | None = 20000, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Teacher vs a short plain student, on validation (and teacher-covered train rows); writes ``preflight.json``."""

    base = load_config(config, overrides)
    teacher_dir = base.distill.teacher
    if not teacher_dir or teacher_dir.split(":")[0] in ("random", "synthetic"):
        raise ConfigError("preflight needs real teacher artifacts: set distill.teacher=DIR")
    ds = ds if ds is not None else load_or_prepare(base.data.path)
    teacher = TeacherArtifacts.load(teacher_dir, ds)
    plain = base.model_copy(deep=True)
    plain.distill.strategy, plain.distill.teacher, plain.distill.params = "none", None, {}
    # Why not 5 epochs: a student far from converged makes any teacher look strong (LastFM: HR@20 .09 after 5
    # epochs, .42 converged). Early stopping with a short patience gets close at a fraction of a full run.
    plain.train.epochs = min(plain.train.epochs, epochs)
    plain.train.patience = min(plain.train.patience, patience)
    run_dir = Path(out) / "preflight-plain"
    echo(f"preflight: a plain {plain.model.name} on {ds.name} (patience {plain.train.patience}, cap "
         f"{plain.train.epochs} epochs) -> {run_dir}")
    res = _run(plain, ds, run_dir)
    metric = f"HR@{k}"
    s_valid = _valid(res, metric)
    t_metrics = teacher_metrics_from_dir(teacher_dir)
    t_valid = find_metric(t_metrics, "valid", metric)
    t_proto = teacher_protocol(t_metrics) or "?"
    ana = teacher_student_analysis(ds, teacher, load_runs([run_dir]), k=k, max_rows=max_rows)
    r = ana["runs"][0]
    t_hr, s_hr = ana["teacher_hr"], r["hr"]
    # teacher right & student wrong = P(t) - P(t & s); P(t & s) = P(s | t) P(t)
    both = r["hr_teacher_right"] * t_hr if not math.isnan(r["hr_teacher_right"]) else 0.0
    trsw, srtw = t_hr - both, s_hr - both
    if t_valid is not None and s_valid:
        ratio, basis = t_valid / s_valid, (f"validation {metric} (teacher {t_valid:.4f} [{t_proto}] vs student "
                                           f"{s_valid:.4f} [{_proto(res)}])")
    else:
        ratio, basis = (t_hr / s_hr if s_hr else math.inf), f"train-row {metric} (teacher {t_hr:.4f} vs {s_hr:.4f})"
    chance = ana["k"] / ds.n_items                  # HR@K of a ranking that knows nothing
    if t_hr <= CHANCE_FACTOR * chance:
        verdict, basis = "likely to harm", basis + f"; teacher at chance level on train rows ({t_hr:.4f} vs {chance:.4f})"
    elif ratio >= HELP_RATIO:
        verdict = "likely to help"
    elif ratio < HARM_RATIO and trsw < srtw:
        verdict = "likely to harm"
    else:
        verdict = "uncertain"
    out_d = {
        "verdict": verdict, "ratio": ratio, "basis": basis, "k": ana["k"], "rows": ana["rows"],
        "teacher_valid": t_valid, "student_valid": s_valid, "student_epochs": res.get("epochs_run"),
        "teacher_hr_train_rows": t_hr, "student_hr_train_rows": s_hr, "overlap": r["overlap"],
        "teacher_right_student_wrong": trsw, "student_right_teacher_wrong": srtw,
        "note": ("train rows: teacher-covered training rows, which the plain student was trained on (and an "
                 "in-sample teacher too); the validation ratio is the cleaner signal where recorded"),
    }
    Path(out).mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(out) / "preflight.json", json.dumps(out_d, indent=2))
    echo(f"preflight: {basis}: ratio {ratio:.2f}; top-{ana['k']} overlap {r['overlap']:.1%}; teacher right & "
         f"student wrong on {trsw:.1%} of {ana['rows']} train rows (student right & teacher wrong {srtw:.1%})")
    advice = {"likely to help": "distil (the guard keeps it only if validation agrees)",
              "uncertain": "run the guard (`dllm2rec distill auto`): it includes lam=0, ed_weight=0",
              "likely to harm": "the teacher is weaker than a plain student; expect the guard to pick lam=0"}
    echo(f"preflight: distillation {verdict.upper()} — {advice[verdict]}")
    return out_d


def _trial_overrides(params: dict[str, Any]) -> list[str]:
    """λ = 0 and ed_weight = 0 is the plain student: trained as strategy none (same model, no teacher cost)."""
    if params.get("lam", 1) == 0 and params.get("ed_weight", 1) == 0:
        return ["distill.strategy=none", "distill.teacher=null"]
    ov = [f"distill.params.{k}={v}" for k, v in params.items()]
    if params.get("lam", 1) == 0:
        ov.append("distill.params.use_ranking=false")
    if params.get("ed_weight", 1) == 0:
        ov.append("distill.params.use_embedding=false")
    return ov


def guarded_distill(config: Path | None, overrides: list[str], out: Path, trials: int = 8, seed: int = 0,
                    ks: tuple[int, ...] = (10, 20), chunk: int = 5, prune: bool = True, ds=None,
                    echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Budgeted validation-only search over lam, ed_weight, K; trial 0 = plain, trial 1 = the paper's setting."""
    try:
        import optuna
    except ImportError:
        raise MissingDependencyError("the guard needs optuna: pip install 'dllm2rec[hpo]'") from None

    base = load_config(config, overrides)
    if base.distill.strategy != "dllm2rec" or not base.distill.teacher:
        raise ConfigError("the guard searches DLLM2Rec's weights: set distill.strategy=dllm2rec and distill.teacher")
    if trials < 2:
        raise ConfigError("--trials must be >= 2 (plain and the paper's setting are always tried)")
    ds = ds if ds is not None else load_or_prepare(base.data.path)
    top_n = TeacherArtifacts.load(base.distill.teacher, ds).top_n
    ks = tuple(k for k in ks if k <= top_n) or (top_n,)
    metric_name = base.train.select_metric
    records: list[dict[str, Any]] = []
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    def objective(trial) -> float:
        params = {"lam": trial.suggest_float("lam", 0.0, 1.0, step=0.1),
                  "ed_weight": trial.suggest_float("ed_weight", 0.0, 0.5, step=0.1),
                  "K": trial.suggest_categorical("K", list(ks))}
        params = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in params.items()}
        is_plain = params["lam"] == 0 and params["ed_weight"] == 0
        cfg = load_config(config, list(overrides) + _trial_overrides(params) + [f"name=trial-{trial.number:04d}"])
        run_dir = out / f"trial-{trial.number:04d}"
        tr = Trainer(cfg, ds, run_dir, quiet=True)
        res = tr.fit(max_epochs_this_call=chunk)
        while res.get("status") == "paused":
            trial.report(tr.best_metric, tr.epoch)
            if prune and trial.should_prune():
                records.append({"trial": trial.number, "params": params, "plain": is_plain, "pruned": True,
                                "value": tr.best_metric, "epoch": tr.epoch, "run_dir": str(run_dir)})
                echo(f"trial {trial.number}: {params} pruned at epoch {tr.epoch} ({tr.best_metric:.4f})")
                raise optuna.TrialPruned()
            res = tr.fit(resume=True, max_epochs_this_call=chunk)
        value = float(res["valid"][tr.select_key])     # validation only: res["test"] is never read here
        records.append({"trial": trial.number, "params": params, "plain": is_plain, "pruned": False, "value": value,
                        "best_epoch": res["best_epoch"], "run_dir": str(run_dir)})
        echo(f"trial {trial.number}: lam={params['lam']} ed_weight={params['ed_weight']} K={params['K']}"
             f"{' (plain)' if is_plain else ''} -> valid {metric_name} {value:.4f} (epoch {res['best_epoch']})")
        return value

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # Warm-up: distilled curves rise later than plain ones (LastFM: best epoch 70 vs 43), so an early median
    # (which includes the plain trial) would prune distillation for being slow, not for being worse.
    pruner = optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=max(3 * chunk, 15)) if prune else \
        optuna.pruners.NopPruner()
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed), pruner=pruner)
    study.enqueue_trial({**PLAIN, "K": ks[0]})
    d = base.distill.params
    study.enqueue_trial({"lam": float(d.get("lam", 0.7)), "ed_weight": float(d.get("ed_weight", 0.3)),
                         "K": int(d.get("K", 10)) if int(d.get("K", 10)) in ks else ks[0]})
    study.optimize(objective, n_trials=trials)
    best = next(r for r in records if r["trial"] == study.best_trial.number)
    plain = next(r for r in records if r["plain"])
    kept = not best["plain"]
    result = {
        "objective": f"valid {metric_name} (validation only; the search never reads test)",
        "chosen": best["params"], "chosen_run_dir": best["run_dir"], "chosen_value": best["value"],
        "plain_value": plain["value"], "distillation_kept": kept,
        "decision": (f"distillation kept: lam={best['params']['lam']}, ed_weight={best['params']['ed_weight']}, "
                     f"K={best['params']['K']} (valid {best['value']:.4f} vs plain {plain['value']:.4f})"
                     if kept else
                     f"lam = 0 and ed_weight = 0 chosen: no setting beat the plain student on validation "
                     f"({plain['value']:.4f}); the teacher is not distilled"),
        "trials": records, "base_config": None if config is None else str(config),
        "base_overrides": list(overrides),
    }
    atomic_write_text(out / "guard.json", json.dumps(result, indent=2))
    echo("guard: " + result["decision"])
    return result
