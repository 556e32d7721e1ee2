"""One training loop for every student and every distillation strategy.

- An epoch is one full shuffled pass over the training rows (the official code samples batches with replacement).
- Batches are sliced from tensors built once; no pandas in the hot loop; negatives are sampled vectorised.
- After every ``eval_every`` epochs the student is ranked on VALIDATION only; the best epoch by validation
  ``select_metric`` is kept (``best/``), training stops after ``patience`` evaluations without improvement, and
  the test split is evaluated exactly once, with the selected checkpoint.
- ``last/`` holds model + optimiser + RNG + early-stopping state after every epoch, written as one atomic unit
  (see students/checkpoint.py): ``resume=True`` continues a killed run and reproduces the uninterrupted run exactly
  (same seeds, same order); a kill at any instant loses at most the epoch in flight. An incomplete or inconsistent
  run directory is refused in one line, never restarted from epoch 1; a changed config is refused unless the change
  is documented-safe (``config.resume_changes``), and applied changes are recorded in ``results.json``.
- ``log.jsonl`` has one line per epoch; ``results.json`` names dataset hash, split hashes, protocol, config, seed.
"""
from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dllm2rec import losses
from dllm2rec.config import RunConfig
from dllm2rec.data.registry import load_or_prepare
from dllm2rec.data.schema import SeqDataset
from dllm2rec.distill.base import StepContext, Strategy
from dllm2rec.errors import Dllm2recError
from dllm2rec.evaluation.metrics import ALL_METRICS
from dllm2rec.evaluation.protocol import evaluate, protocol_name
from dllm2rec.registry import get_strategy
from dllm2rec.students import checkpoint as ckpt
from dllm2rec.students.base import SequentialStudent, build_student
from dllm2rec.students.checkpoint import load_student, save_student
from dllm2rec.teachers import controls
from dllm2rec.teachers.artifacts import TeacherArtifacts
from dllm2rec.training import distributed as dist_
from dllm2rec.training import optim
from dllm2rec.utils.io import atomic_write_text, disk_errors, fsync_dir
from dllm2rec.utils.progress import progress


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def load_teacher(cfg: RunConfig, dataset: SeqDataset):
    """TeacherArtifacts for cfg.distill.teacher (a directory, or the controls 'random' / 'synthetic')."""
    spec = cfg.distill.teacher
    if spec is None:
        return None
    if spec in ("random", "synthetic") or spec.startswith(("random:", "synthetic:")):
        return controls.make_control(spec, dataset, seed=cfg.train.seed)

    if dist_.is_distributed():  # N processes share one memory-mapped copy of the teacher matrix
        return dist_.load_teacher_shared(spec, dataset)
    return TeacherArtifacts.load(spec, dataset)


VALID_FULL_UP_TO = 20_000   # validation splits up to this size are ranked whole every epoch
VALID_SAMPLE = 10_000       # above it, this many rows (fixed seed) select the epoch
VALID_SAMPLE_SEED = 0


class Trainer:
    def __init__(self, cfg: RunConfig, dataset: SeqDataset, run_dir: str | Path | None = None,
                 teacher=None, strategy: Strategy | None = None, quiet: bool | None = None):
        self.cfg = cfg
        self.ds = dataset
        self.run_dir = Path(run_dir or Path(cfg.out_dir) / cfg.run_name())
        # DDP (launched by torchrun; see training/distributed.py): rank/world are 0/1 in a single process
        self.rank, self.world = dist_.rank(), dist_.world_size()
        self.device = dist_.device_for(cfg.train.device)
        if cfg.train.num_threads:
            torch.set_num_threads(cfg.train.num_threads)
        set_seed(cfg.train.seed)
        self.model: SequentialStudent = build_student(cfg.model.name, dataset.n_items,
                                                      **cfg.model.kwargs(dataset.max_len))
        if strategy is None:
            strat_cls = get_strategy(cfg.distill.strategy)
            if teacher is None and getattr(strat_cls, "needs_teacher", False):
                teacher = load_teacher(cfg, dataset)
                if teacher is None:
                    raise Dllm2recError(f"strategy '{cfg.distill.strategy}' needs distill.teacher "
                                        "(a teacher-artifacts directory, or 'random' for the control)")
            strategy = strat_cls(cfg.distill.params, dataset, teacher)
        self.strategy = strategy
        if hasattr(strategy, "configure"):  # e.g. dllm2rec inherits loss.dros_* for its DROS term (official)
            strategy.configure(cfg)
        self.strategy.attach(self.model)
        self.model.to(self.device)
        if cfg.optim.sparse:  # row-sparse tables + lazy row-wise Adam (training/optim.py); refused where wrong
            dist_.refuse_sparse(self.world)
            optim.check_sparse(cfg, self.strategy)
            self.model.set_sparse(True)
        self.optimizer = optim.build_optimizer(cfg, self.model, self.strategy.extra_parameters())
        self.ddp = None
        if self.world > 1:
            self.ddp = dist_.wrap(self.model, self.strategy.extra_parameters(), self.step_loss, self.device)
            if self.rank:
                torch.manual_seed(dist_.rank_seed(cfg.train.seed, self.rank))  # own dropout stream per rank
            quiet = True if self.rank else quiet
        tr = dataset["train"]
        # as_tensor: on CPU a (memory-mapped) int64 split is used in place, not copied
        self.train_seq = torch.as_tensor(tr.seq, device=self.device)
        self.train_len = torch.as_tensor(tr.len, device=self.device)
        self.train_tgt = torch.as_tensor(tr.target, device=self.device)
        self.train_row = torch.as_tensor(tr.row_id, device=self.device)
        self.ps = None
        if cfg.loss.dros_alpha:
            counts = torch.from_numpy(dataset.item_counts("train"))
            self.ps = losses.dros_propensity(counts, cfg.loss.dros_power).to(self.device)
        self.gen = torch.Generator(device="cpu").manual_seed(cfg.train.seed)
        self.epoch = 0
        self.best_metric = -math.inf
        self.best_epoch = -1
        self.bad_evals = 0
        self.history: list[dict[str, Any]] = []
        self.config_changes: list[dict[str, Any]] = []  # safe changes applied on --resume (results.json)
        self.quiet = quiet
        self.proto = protocol_name(cfg.train.exclude_history)
        self.select_key = f"valid/{self.proto}/{cfg.train.select_metric}"
        self._sel_rows = self.selection_rows()  # None: every validation row each epoch

    # ------------------------------------------------------------------ one step
    def step_loss(self, idx: torch.Tensor, epoch: int, step: int,
                  neg: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        seq, lens, tgt = self.train_seq[idx], self.train_len[idx], self.train_tgt[idx]
        if neg is None:  # drawn on the CPU from the CPU generator (a no-op .cpu() when training on the CPU)
            neg = losses.sample_negatives(seq.cpu(), tgt.cpu(), self.ds.n_items, cfg.loss.n_neg,
                                          self.gen).to(self.device)
        state = self.model.encode(seq, lens)
        ctx = StepContext(self.model, state, seq, lens, tgt, self.train_row[idx], neg, epoch, step)
        terms: dict[str, torch.Tensor] = {}
        if cfg.loss.kind == "bce":
            # one gather for target + negatives: its backward zero-fills the [N, H] output-layer gradient once
            s = self.model.score_items(state, torch.cat([tgt[:, None], neg], dim=1))
            pos_s, neg_s = s[:, 0], s[:, 1:]
            terms["bce"] = losses.bce_loss(pos_s, neg_s)
        elif cfg.loss.kind == "sampled_softmax":
            s = self.model.score_items(state, torch.cat([tgt[:, None], neg], dim=1))
            terms["sampled_softmax"] = losses.sampled_softmax_loss(s[:, 0], s[:, 1:])
        else:
            terms["ce"] = losses.ce_loss(ctx.full_scores, tgt)
        if self.ps is not None:
            terms["dros"] = cfg.loss.dros_alpha * ctx.dros(self.ps, cfg.loss.dros_beta)[0].mean()
        for k, v in self.strategy.loss(ctx).items():
            terms[k] = v
        return terms

    def train_epoch(self, epoch: int) -> dict[str, float]:
        self.model.train()
        n = len(self.train_tgt)
        bs = self.cfg.train.batch_size
        perm = torch.randperm(n, generator=self.gen).to(self.device)
        sums: dict[str, float] = {}
        steps = 0
        t0 = time.perf_counter()
        # quiet silences the bar; otherwise progress() decides (off with CI=true, DLLM2REC_PROGRESS=0, no terminal)
        bar = progress(range(0, n, bs), desc=f"epoch {epoch}", unit="batch", **({"disable": True} if self.quiet else {}))
        for step, s in enumerate(bar):
            idx = perm[s:s + bs]
            if self.ddp is None:
                terms = self.step_loss(idx, epoch, step)
                loss = sum(terms.values())
                w = 1.0
            else:  # this rank's slice of the global batch; its loss weighted so DDP's average is the global mean
                gneg = losses.sample_negatives(self.train_seq[idx].cpu(), self.train_tgt[idx].cpu(),
                                               self.ds.n_items, self.cfg.loss.n_neg, self.gen).to(self.device)
                idx, w = dist_.shard(idx, self.rank, self.world)
                neg = dist_.shard(gneg, self.rank, self.world)[0]
                terms = self.ddp(idx, epoch, step, neg)
                loss = sum(terms.values()) * (w * self.world)
            if not torch.isfinite(loss):
                raise Dllm2recError(f"non-finite loss at epoch {epoch} step {step}: "
                                    + ", ".join(f"{k}={float(v):.4g}" for k, v in terms.items()))
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach()) * w
            sums["loss"] = sums.get("loss", 0.0) + float(loss.detach()) / (self.world if self.ddp else 1)
            steps += 1
        sums = dist_.all_reduce_sums(sums, self.device)  # DDP: per-batch global means, as in one process
        dt = time.perf_counter() - t0
        out = {f"train/{k}": v / max(steps, 1) for k, v in sums.items()}
        out["train/seconds"] = dt
        out["train/samples_per_s"] = n / dt if dt > 0 else float("nan")
        return out

    # ------------------------------------------------------------------ evaluation
    def evaluate_split(self, split: str, model: SequentialStudent | None = None,
                       rows: np.ndarray | None = None) -> dict[str, float]:
        m = evaluate(model or self.model, self.ds[split], self.cfg.train.eval_ks, self.cfg.train.eval_batch,
                     self.cfg.train.exclude_history, str(self.device), self.cfg.train.eval_item_chunk, rows)
        return {f"{split}/{k}": v for k, v in m.items()}

    def selection_rows(self) -> np.ndarray | None:
        """The validation rows ranked each epoch (None = all). Why a sample: at 17k items one epoch spent ~35 s
        ranking 50k validation rows; a fixed 10k sample bounds that, and the final full ranking keeps the number
        honest. Seeded by a constant, so every run (seed, method) selects on the same rows."""
        n, vs = len(self.ds["valid"]), self.cfg.train.valid_sample
        size = (None if n <= VALID_FULL_UP_TO else VALID_SAMPLE) if vs is None else (None if vs == 0 else vs)
        if size is None or size >= n:
            return None
        return np.sort(np.random.default_rng(VALID_SAMPLE_SEED).choice(n, size, replace=False))

    # ------------------------------------------------------------------ checkpoints
    def _meta(self, metrics: dict[str, float] | None = None) -> dict[str, Any]:
        return {
            "dataset": self.ds.name,
            "dataset_fingerprint": self.ds.fingerprint(),
            "epoch": self.epoch,
            "metrics": metrics or {},
            "strategy": self.strategy.describe(),
            "config": self.cfg.model_dump(),
        }

    def save_last(self) -> None:
        rngs = dist_.all_gather_object(torch.get_rng_state()) if self.world > 1 else None
        if self.rank:
            return  # DDP: rank 0 writes; every rank's dropout RNG state is in trainer_state.pt
        state = {
            "epoch": self.epoch,
            "best_metric": self.best_metric,
            "best_epoch": self.best_epoch,
            "bad_evals": self.bad_evals,
            "optimizer": self.optimizer.state_dict(),
            # parameters that live outside the student (e.g. Hint's regressor) resume too
            "extra_params": [p.detach().cpu().clone() for p in self.strategy.extra_parameters()],
            "gen": self.gen.get_state(),
            "torch_rng": torch.get_rng_state(),
            "history_len": len(self.history),
            "config_changes": json.dumps(self.config_changes),  # a string: the state stays tensors + plain data
        }
        if rngs is not None:
            state["torch_rng_ranks"] = rngs
        ckpt.save_checkpoint(self.run_dir / "last", self.model, self._meta(), state)

    def _save_best(self, rec: dict[str, Any]) -> None:
        save_student(self.model, self.run_dir / "best",
                     self._meta({k: v for k, v in rec.items() if k.startswith("valid/")}))
        ckpt.save_hook(self.epoch, "best:committed")

    def _append_log(self, rec: dict[str, Any]) -> None:
        log = self.run_dir / "log.jsonl"
        with disk_errors(log), open(log, "a", encoding="utf-8") as f:
            f.write(json.dumps(rec) + "\n")
            f.flush()
            os.fsync(f.fileno())  # on disk before last/ of this epoch says it exists

    def _fresh_start(self) -> None:
        """A new run in this directory: the previous run's files go (checkpoints first, the log last)."""
        for name in ("last", "best"):
            d = self.run_dir / name
            if d.exists():
                old = self.run_dir / f".{name}.{os.getpid()}.old"
                os.replace(d, old)
                shutil.rmtree(old, ignore_errors=True)
        for f in ("results.json", "log.jsonl"):
            (self.run_dir / f).unlink(missing_ok=True)
        fsync_dir(self.run_dir)

    def try_resume(self) -> bool:
        """Load ``last/``; False only when no epoch ever completed. Refuses (Dllm2recError) an inconsistent run."""
        plan = ckpt.plan_resume(self.run_dir, self.cfg, self.ds.fingerprint(), notify=self.rank == 0,
                                **({"map_location": "cpu"} if self.world > 1 else {}))
        if plan is None:
            return False
        last, run, st, epoch, changed = self.run_dir / "last", self.run_dir, plan.state, plan.epoch, plan.changed
        # every check passed: load, then repair what the kill left (nothing was written before this point)
        model, _ = load_student(last, map_location=str(self.device))
        self.model.load_state_dict(model.state_dict())
        self.optimizer.load_state_dict(st["optimizer"])
        with torch.no_grad():
            for p, v in zip(self.strategy.extra_parameters(), st.get("extra_params", [])):
                p.copy_(v)
        self.gen.set_state(st["gen"])
        torch.set_rng_state(st["torch_rng"])
        if self.world > 1:
            ranks = st.get("torch_rng_ranks")
            if ranks is not None and len(ranks) == self.world:
                torch.set_rng_state(ranks[self.rank])
            elif self.rank:  # resumed with another world size: data order is kept, dropout streams are new
                torch.manual_seed(dist_.rank_seed(self.cfg.train.seed, self.rank) + epoch)
        self.epoch = epoch
        self.best_metric = float(st["best_metric"])
        self.best_epoch = int(st["best_epoch"])
        self.bad_evals = int(st["bad_evals"])
        self.history = plan.history
        self.config_changes = json.loads(st.get("config_changes", "[]"))
        if changed:
            self.config_changes.append({"epoch": epoch, "changed": {k: {"old": o, "new": n}
                                                                    for k, (o, n) in changed.items()}})
            if self.rank == 0:
                ckpt.notice(f"{run}: resuming at epoch {epoch} with " + ", ".join(
                    f"{k} {o!r} -> {n!r}" for k, (o, n) in changed.items()) + " (recorded in results.json)")
        if self.rank == 0:
            log = run / "log.jsonl"
            if len(log.read_text(encoding="utf-8").splitlines()) != epoch:  # lines of the epoch in flight go
                with disk_errors(log):
                    atomic_write_text(log, "".join(x + "\n" for x in plan.lines))
            if plan.rebuild_best:
                self._save_best(self.history[self.best_epoch - 1])
        return True

    # ------------------------------------------------------------------ main loop
    def fit(self, resume: bool = False, max_epochs_this_call: int | None = None) -> dict[str, Any]:
        """Train with validation-only early stopping, then test the selected checkpoint once."""
        cfg = self.cfg.train
        main = self.rank == 0
        if main:
            with disk_errors(self.run_dir):
                self.run_dir.mkdir(parents=True, exist_ok=True)
            for msg in ckpt.recover_run_dir(self.run_dir):
                if msg.startswith("restored"):
                    ckpt.notice(msg)
        if self.world > 1:
            dist_.broadcast_object(None)  # rank 0 has recovered last/ before any rank reads it
        resumed = resume and self.try_resume()
        if self.world > 1 and len(set(dist_.all_gather_object(resumed))) > 1:
            raise Dllm2recError(f"{self.run_dir}/last: visible to some ranks only; under DDP the run directory "
                                "must be on a filesystem every node sees")
        if main and not resumed:
            self._fresh_start()  # also --resume killed before the first last/ was written: epoch 1 again
        if main:
            with disk_errors(self.run_dir / "config.yaml"):
                atomic_write_text(self.run_dir / "config.yaml", self.cfg.to_yaml())
        done_now = 0
        stopped = False
        while self.epoch < cfg.epochs:
            if self.bad_evals >= cfg.patience and self.epoch >= cfg.min_epochs:
                stopped = True
                break
            if max_epochs_this_call is not None and done_now >= max_epochs_this_call:
                break
            epoch = self.epoch + 1
            rec: dict[str, Any] = {"epoch": epoch}
            rec.update(self.train_epoch(epoch))
            improved = False
            if (epoch % cfg.eval_every == 0 or epoch == cfg.epochs) and main:  # DDP: rank 0 evaluates
                rec.update(self.evaluate_split("valid", rows=self._sel_rows))
                cur = rec[self.select_key]
                if cur > self.best_metric:
                    self.best_metric, self.best_epoch, self.bad_evals = cur, epoch, 0
                    improved = True
                else:
                    self.bad_evals += 1
            self.epoch = epoch
            self.history.append(rec)
            if main:
                self._append_log(rec)
                ckpt.save_hook(epoch, "log:appended")
            self.save_last()
            if improved:  # after last/: a kill in between is repaired on --resume (best/ rebuilt from last/)
                self._save_best(rec)
            if self.world > 1:  # rank 0's selection / early-stopping state decides for every rank
                self.best_metric, self.best_epoch, self.bad_evals = dist_.broadcast_object(
                    (self.best_metric, self.best_epoch, self.bad_evals))
            done_now += 1
            if not self.quiet and os.environ.get("DLLM2REC_LOG_EPOCHS", "1") != "0":
                sel = rec.get(self.select_key)
                # at most this many epochs remain: the cap, or patience running out with no new best
                left = max(0, min(cfg.epochs - epoch, cfg.patience - self.bad_evals))
                print(f"epoch {epoch:3d}  loss {rec['train/loss']:.4f}  "
                      f"{rec['train/samples_per_s']:.0f} samples/s"
                      + (f"  {self.select_key} {sel:.4f}" if sel is not None else "")
                      + ("  *" if self.best_epoch == epoch else "")
                      + f"  ETA ≤ {left * rec.get('train/seconds', 0.0):.0f}s ({left} epochs at most)", flush=True)
        else:
            stopped = True
        if self.bad_evals >= cfg.patience:
            stopped = True
        if not stopped:
            return {"status": "paused", "epoch": self.epoch}
        return self.finish()

    def finish(self) -> dict[str, Any]:
        if self.world > 1:  # DDP: rank 0 tests the selected checkpoint; every rank returns its results
            out: Any = None
            if self.rank == 0:
                try:
                    out = self._finish_local()
                except Exception as e:  # tell the other ranks instead of leaving them waiting
                    dist_.broadcast_object(("error", f"{type(e).__name__}: {e}"))
                    raise
            out = dist_.broadcast_object(out)
            if isinstance(out, tuple) and out[:1] == ("error",):
                raise Dllm2recError(f"rank 0 failed: {out[1]}")
            return out
        return self._finish_local()

    def _finish_local(self) -> dict[str, Any]:
        if self.best_epoch < 0:
            raise Dllm2recError(f"{self.run_dir}: no evaluated epoch; nothing to select")
        best, info = load_student(self.run_dir / "best", map_location=str(self.device))
        if info["meta"].get("epoch", self.best_epoch) != self.best_epoch:
            raise Dllm2recError(f"{self.run_dir / 'best'}: holds epoch {info['meta'].get('epoch')}, but epoch "
                                f"{self.best_epoch} was selected; the run directory is inconsistent")
        valid = {k: v for k, v in info["meta"]["metrics"].items()}
        selection = None
        if self._sel_rows is not None:  # selected on a fixed sample: report the checkpoint on every validation row
            selection = {"rows": int(len(self._sel_rows)), "of": len(self.ds["valid"]), "seed": VALID_SAMPLE_SEED,
                         "metrics": valid}
            valid = self.evaluate_split("valid", best)
        test = self.evaluate_split("test", best)
        secs = [h["train/seconds"] for h in self.history if "train/seconds" in h]
        results = {
            "dataset": self.ds.name,
            "dataset_fingerprint": self.ds.fingerprint(),
            "split_hashes": {s: self.ds.split_hash(s) for s in self.ds.splits},
            "protocol": {
                "ranking": f"full ranking over all {self.ds.n_items} items",
                "exclude_history": self.cfg.train.exclude_history,
                "ties": "pessimistic (equal scores rank above the target)",
                "selection": f"best epoch by {self.select_key}; test evaluated once at that epoch",
                "metrics": [f"{m}@{k}" for k in self.cfg.train.eval_ks for m in ALL_METRICS],
                "recall": "Recall@K = HR@K (one relevant item per row)",
            },
            "student": self.cfg.model.name,
            "strategy": self.strategy.describe(),
            "seed": self.cfg.train.seed,
            "best_epoch": self.best_epoch,
            "epochs_run": self.epoch,
            "seconds_per_epoch": float(np.mean(secs)) if secs else None,
            "valid": valid,
            "test": test,
            "config": self.cfg.model_dump(),
        }
        if selection is not None:
            results["valid_selection"] = selection
            results["protocol"]["selection"] += (f"; epochs compared on a fixed sample of {selection['rows']:,} of "
                                                 f"{selection['of']:,} validation rows (valid_selection), 'valid' "
                                                 "is the selected checkpoint on all of them")
        if self.config_changes:  # --resume applied documented-safe changes: which, and from which epoch on
            results["config_changes"] = self.config_changes
        with disk_errors(self.run_dir / "results.json"):
            atomic_write_text(self.run_dir / "results.json", json.dumps(results, indent=2))
        return results


def run_training(cfg: RunConfig, dataset: SeqDataset | None = None, resume: bool = False,
                 run_dir: str | Path | None = None, quiet: bool | None = None) -> dict[str, Any]:
    if dataset is None:
        dataset = load_or_prepare(cfg.data.path)
    tr = Trainer(cfg, dataset, run_dir, quiet=quiet)
    return tr.fit(resume=resume)
