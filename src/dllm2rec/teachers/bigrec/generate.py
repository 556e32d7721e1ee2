"""Sharded, resumable, multi-worker BIGRec generation.

Layout of an output directory (one per split)::

    plan.json         split, selected row positions, shard size, decoding settings, model id, dataset fingerprint
    shard-00000.json  the finished beams of selected rows [0, S) (written atomically when the shard finishes)
    shard-00000.lock  present while a worker owns the shard (O_CREAT|O_EXCL; heartbeat = mtime)

Rerunning skips finished shards, so an interruption loses at most the shards in flight. Several independent worker
processes (``--num-workers N --worker-id i``, or simply N processes with the defaults) can share one directory:
a worker only generates a shard after creating its lock file exclusively; a lock whose mtime is older than
``lock_timeout`` seconds (a worker died) is broken by renaming it away (only one breaker wins) and re-claimed.

Two engines share the plan, the shard files and the per-shard code (``generate_shard``): this module's lock-file
workers (``run_generation``, ``--engine local``) and Ray tasks (``ray_engine.run_generation_ray``, ``--engine ray``).

Row selection (``select_rows``): all rows of the split, or ``rows`` = "START:END" (positions), or ``budget`` N rows —
the first N (``select="first"``) or a seeded uniform random N (``select="random"``, sorted). The plan stores the
positions, so every worker and every rerun agrees on them.
"""
from __future__ import annotations

import json
import os
import socket
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from dllm2rec.errors import ConfigError, Dllm2recError, MissingDependencyError
from dllm2rec.teachers.bigrec.beam import beam_search, build_title_trie
from dllm2rec.teachers.bigrec.prompts import row_prompts
from dllm2rec.utils.io import atomic_write_text, read_json
from dllm2rec.utils.progress import progress

PLAN = "plan.json"


@dataclass
class GenConfig:
    num_beams: int = 4
    max_new_tokens: int = 64          # BIGRec used 128; titles are far shorter
    constrained: bool = False         # catalogue-constrained beams (prefix trie over titles)
    batch_size: int = 8
    length_penalty: float | None = None  # None: 1.0 (HF default) free, 0.0 constrained (rank items by log p)
    reuse_prompt_cache: bool = True   # encode the prompt once, copy its KV cache to the beams
    share_prefix: bool = True         # encode the template prefix common to a batch once
    max_history: int = 10
    domain: str = "generic"
    dtype: str = "float32"
    backend: str = "hf"

    def __post_init__(self) -> None:
        if self.length_penalty is None:
            # constrained beams are an n-best list of items: rank them by their total log-probability (d = -log p)
            self.length_penalty = 0.0 if self.constrained else 1.0

    def decoding(self) -> dict:
        return {"num_beams": self.num_beams, "max_new_tokens": self.max_new_tokens, "constrained": self.constrained,
                "length_penalty": self.length_penalty, "max_history": self.max_history, "domain": self.domain,
                "search": "beam" if self.num_beams > 1 else "greedy"}


def select_rows(n_rows: int, rows: str | None = None, budget: int | None = None, select: str = "first",
                seed: int = 0) -> np.ndarray:
    """Positions (0-based, within the split) to generate; see the module docstring."""
    pos = np.arange(n_rows, dtype=np.int64)
    if rows:
        try:
            a, _, b = rows.partition(":")
            pos = pos[int(a or 0): int(b) if b else n_rows]
        except ValueError:
            raise ConfigError(f"--rows must look like START:END, got {rows!r}") from None
    if budget is not None and budget < len(pos):
        if select == "first":
            pos = pos[:budget]
        elif select == "random":
            pos = np.sort(np.random.default_rng(seed).choice(pos, size=budget, replace=False))
        else:
            raise ConfigError(f"--select must be 'first' or 'random', got {select!r}")
    return pos


@dataclass
class RowBeams:
    texts: list[str]
    scores: list[float]
    logprobs: list[float]
    items: list[list[int]] | None = None


class Backend(Protocol):
    def generate(self, prompts: list[str]) -> list[RowBeams]: ...


class HFBackend:
    """transformers model + our beam search (beam.py): batched, left-padded, prompt KV reuse, optional trie."""

    def __init__(self, model, tokenizer, cfg: GenConfig, titles: list[str] | None = None):
        self.model, self.tok, self.cfg = model, tokenizer, cfg
        self.trie = build_title_trie(tokenizer, titles) if cfg.constrained else None

    def generate(self, prompts: list[str]) -> list[RowBeams]:
        enc = self.tok(prompts, return_tensors="pt", padding=True)
        res = beam_search(self.model, enc["input_ids"], enc["attention_mask"], self.cfg.num_beams,
                          self.cfg.max_new_tokens, int(self.tok.eos_token_id), int(self.tok.pad_token_id),
                          trie=self.trie, length_penalty=self.cfg.length_penalty,
                          reuse_prompt_cache=self.cfg.reuse_prompt_cache, share_prefix=self.cfg.share_prefix)
        out = []
        for b in range(len(prompts)):
            texts = [self.tok.decode(t, skip_special_tokens=True).strip() for t in res.tokens[b]]
            out.append(RowBeams(texts, res.scores[b], res.logprobs[b], None if res.items is None else res.items[b]))
        return out


class VLLMBackend:
    """vLLM beam search (GPU; optional extra ``vllm``). Unconstrained only; untested here (no GPU in CI).

    Data parallelism across GPUs = one worker process per GPU on a shared output dir, e.g.
    ``CUDA_VISIBLE_DEVICES=i dllm2rec teacher generate ... --backend vllm --worker-id i --num-workers N``, or one
    Ray task per GPU: ``--engine ray --ray-num-gpus-per-task 1`` (ray_engine.py, docs/ray.md).
    """

    def __init__(self, model_path: str, cfg: GenConfig, adapter: str | None = None):
        if cfg.constrained:
            raise ConfigError("--constrained is only implemented for the 'hf' backend")
        try:
            from vllm import LLM
            from vllm.sampling_params import BeamSearchParams
        except ImportError:
            raise MissingDependencyError("the vllm backend needs vLLM and a GPU: pip install -e .[vllm]") from None
        if adapter:  # vLLM serves merged weights most simply; merge the LoRA adapter first
            raise ConfigError("vllm backend: merge the adapter into the base model first "
                              "(`dllm2rec teacher merge --model M --adapter A --out DIR`) and pass --model DIR")
        self.llm = LLM(model=model_path, dtype="bfloat16" if cfg.dtype in ("bf16", "bfloat16") else "auto")
        self.params = BeamSearchParams(beam_width=cfg.num_beams, max_tokens=cfg.max_new_tokens,
                                       length_penalty=cfg.length_penalty)
        self.cfg = cfg

    def generate(self, prompts: list[str]) -> list[RowBeams]:
        outs = self.llm.beam_search([{"prompt": p} for p in prompts], self.params)
        res = []
        for p, o in zip(prompts, outs):
            seqs = o.sequences[: self.cfg.num_beams]
            texts = [s.text[len(p):].strip() if s.text.startswith(p) else s.text.strip() for s in seqs]
            res.append(RowBeams(texts, [float(s.cum_logprob) for s in seqs], [float(s.cum_logprob) for s in seqs]))
        return res


# ----------------------------------------------------------------------------------------------- shards and locks
def shard_path(out: Path, i: int) -> Path:
    return out / f"shard-{i:05d}.json"


def lock_path(out: Path, i: int) -> Path:
    return out / f"shard-{i:05d}.lock"


def try_claim(out: Path, i: int, lock_timeout: float) -> bool:
    """Create the shard's lock exclusively; break it first if its owner stopped heart-beating."""
    lp = lock_path(out, i)
    for _ in range(2):
        try:
            fd = os.open(lp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                age = time.time() - lp.stat().st_mtime
            except FileNotFoundError:
                continue  # released meanwhile: retry
            if age < lock_timeout:
                return False
            stale = lp.with_name(f"{lp.name}.stale-{uuid.uuid4().hex[:8]}")
            try:
                os.replace(lp, stale)  # atomic; a concurrent breaker gets FileNotFoundError
                os.unlink(stale)
            except FileNotFoundError:
                pass
            continue
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "time": time.time()}))
        return True
    return False


def release(out: Path, i: int) -> None:
    try:
        os.unlink(lock_path(out, i))
    except FileNotFoundError:
        pass


def heartbeat(out: Path, i: int) -> None:
    try:
        os.utime(lock_path(out, i))
    except FileNotFoundError:
        pass


# ----------------------------------------------------------------------------------------------- plan
@dataclass
class Plan:
    split: str
    positions: list[int]
    shard_size: int
    dataset_fingerprint: str
    model_id: str
    adapter: str | None
    decoding: dict
    extra: dict = field(default_factory=dict)

    @property
    def n_shards(self) -> int:
        return (len(self.positions) + self.shard_size - 1) // self.shard_size

    def shard_positions(self, i: int) -> list[int]:
        return self.positions[i * self.shard_size:(i + 1) * self.shard_size]

    def key(self) -> dict:
        d = asdict(self)
        d.pop("extra")
        return d


def load_plan(out: Path) -> Plan:
    p = Path(out) / PLAN
    if not p.is_file():
        raise Dllm2recError(f"{p}: missing (not a generation directory; run `dllm2rec teacher generate`)")
    return Plan(**read_json(p))


def write_or_check_plan(out: Path, plan: Plan) -> Plan:
    """A new dir gets the plan; an existing one must hold the same plan (else mixing two runs would corrupt it)."""
    p = out / PLAN
    if p.is_file():
        old = load_plan(out)
        if old.key() != plan.key():
            diff = [k for k in plan.key() if plan.key()[k] != old.key()[k]]
            raise ConfigError(f"{p}: this directory holds another generation run (differs in: {', '.join(diff)}); "
                              "use a new --out directory or the same settings")
        return old
    atomic_write_text(p, json.dumps(asdict(plan), indent=1))
    return plan


def finished_shards(out: Path, plan: Plan) -> list[int]:
    return [i for i in range(plan.n_shards) if shard_path(out, i).is_file()]


def read_shards(out: Path) -> tuple[Plan, list[dict]]:
    plan = load_plan(out)
    shards = []
    for i in range(plan.n_shards):
        sp = shard_path(out, i)
        if sp.is_file():
            shards.append(read_json(sp))
    return plan, shards


# ----------------------------------------------------------------------------------------------- one shard
def pending_shards(out: Path, plan: Plan) -> list[int]:
    """Shards without a finished shard file: what any engine still has to generate."""
    return [i for i in range(plan.n_shards) if not shard_path(out, i).is_file()]


def prepare_plan(dataset, split: str, out: str | Path, cfg: GenConfig, model_id: str, adapter: str | None = None,
                 positions: np.ndarray | None = None, shard_size: int = 64, extra: dict | None = None) -> Plan:
    """Write the plan of a new directory, or check that an existing one holds the same plan (every engine)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if positions is None:
        positions = np.arange(len(dataset[split]))
    return write_or_check_plan(out, Plan(split, [int(p) for p in positions], int(shard_size), dataset.fingerprint(),
                                         model_id, None if adapter is None else str(adapter), cfg.decoding(),
                                         dict(extra or {})))


def generate_shard(dataset, plan: Plan, i: int, backend: Backend, cfg: GenConfig, on_batch=None) -> dict:
    """The record of shard ``i`` (what ``shard-NNNNN.json`` holds). The one generation code of every engine: the
    local lock-file workers and the Ray tasks (ray_engine.py) both call it. ``on_batch(rows)`` after each batch."""

    pos = plan.shard_positions(i)
    prompts = row_prompts(dataset, plan.split, pos, cfg.domain, cfg.max_history)
    rec: dict = {"shard": i, "positions": pos, "row_id": dataset[plan.split].row_id[pos].tolist(),
                 "texts": [], "scores": [], "logprobs": [], "items": [] if cfg.constrained else None,
                 "batch_seconds": [], "batch_rows": []}
    # batch prompts of similar length together (less left padding), write results in row order
    order = sorted(range(len(pos)), key=lambda j: len(prompts[j]))
    results: dict[int, RowBeams] = {}
    for s in range(0, len(pos), cfg.batch_size):
        idx = order[s:s + cfg.batch_size]
        t0 = time.perf_counter()
        beams = backend.generate([prompts[j] for j in idx])
        dt = time.perf_counter() - t0
        rec["batch_seconds"].append(round(dt, 4))
        rec["batch_rows"].append(len(beams))
        results.update(zip(idx, beams))
        if on_batch is not None:
            on_batch(len(beams))
    for j in range(len(pos)):
        rb = results[j]
        rec["texts"].append(rb.texts)
        rec["scores"].append(rb.scores)
        rec["logprobs"].append(rb.logprobs)
        if cfg.constrained:
            rec["items"].append(rb.items)
    rec["seconds"] = round(sum(rec["batch_seconds"]), 4)
    rec["worker"] = f"{socket.gethostname()}:{os.getpid()}"
    return rec


def write_shard(out: Path, i: int, rec: dict) -> None:
    """Atomic (temp file + rename): a process killed mid-write leaves no shard file, so a partial shard never
    counts as finished."""
    atomic_write_text(shard_path(out, i), json.dumps(rec))


# ----------------------------------------------------------------------------------------------- the run
def run_generation(dataset, split: str, out: str | Path, backend_factory, cfg: GenConfig, model_id: str,
                   adapter: str | None = None, positions: np.ndarray | None = None, shard_size: int = 64,
                   worker_id: int = 0, num_workers: int = 1, lock_timeout: float = 1800.0,
                   max_shards: int | None = None, extra: dict | None = None) -> dict:
    """Generate every unfinished shard this worker can claim (the local lock-file engine). ``backend_factory()`` is
    called only if there is work (a rerun over a finished directory never loads the model). ``max_shards`` stops
    after that many shards (tests use it to simulate an interruption)."""
    out = Path(out)
    if not 0 <= worker_id < num_workers:
        raise ConfigError(f"--worker-id must be in 0..{num_workers - 1}, got {worker_id}")
    plan = prepare_plan(dataset, split, out, cfg, model_id, adapter, positions, shard_size, extra)
    todo = [i for i in pending_shards(out, plan) if i % num_workers == worker_id]
    backend = None
    done_now, skipped_locked, rows_now, secs = 0, 0, 0, 0.0
    bar = progress(total=sum(len(plan.shard_positions(i)) for i in todo), desc=f"generate {split}", unit="row")
    try:
        for i in todo:
            if max_shards is not None and done_now >= max_shards:
                break
            if not try_claim(out, i, lock_timeout):
                skipped_locked += 1
                continue
            try:
                if shard_path(out, i).is_file():  # finished by another worker just before we claimed it
                    continue
                if backend is None:
                    backend = backend_factory()

                def on_batch(rows: int, i: int = i) -> None:
                    heartbeat(out, i)
                    bar.update(rows)

                rec = generate_shard(dataset, plan, i, backend, cfg, on_batch)
                write_shard(out, i, rec)
                done_now += 1
                rows_now += len(rec["positions"])
                secs += rec["seconds"]
            finally:
                release(out, i)
    finally:
        bar.close()
    n_fin = len(finished_shards(out, plan))
    return {"out": str(out), "split": split, "shards": plan.n_shards, "finished": n_fin,
            "generated_now": done_now, "rows_now": rows_now, "locked_by_others": skipped_locked,
            "rows_per_s": round(rows_now / secs, 3) if secs else None, "complete": n_fin == plan.n_shards}
