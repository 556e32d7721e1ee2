"""BIGRec generation as Ray tasks (``dllm2rec teacher generate --engine ray``; docs/ray.md).

The driver (this process) writes or checks the same ``plan.json`` as the local lock-file engine (generate.py),
computes the pending shards (those without a finished ``shard-NNNNN.json``) and submits one Ray task per shard.
Each task runs the local engine's own ``generate_shard`` with a backend built by the same factory as the local path
and cached per Ray worker process (a worker that runs several shards loads the model once). So the plan, the shard
files and everything ``teacher ground`` reads are the same whichever engine wrote them.

Failure and resuming:

* ``max_retries``: a worker process that dies (killed, OOM, segfault) has its shard rerun by Ray on another worker.
  Exceptions raised by our code (bad input) are not retried: they stop the run and are reported in one line.
* Shard files are written atomically (``write_shard``: temp file + rename), so a partial write never counts. The
  task writes the shard itself when it sees the driver's plan in ``out`` (same machine or a shared filesystem): the
  shard is then on disk even if the driver dies before collecting it. It also returns the record, and the driver
  writes it if the file is not there yet, so ``out`` need not be shared between the nodes of a cluster.
* A rerun computes the pending shards again: finished shards are skipped, and with nothing pending Ray is not even
  started (nor the model loaded).

Ray tasks take no lock files: do not point a Ray run and local lock-file workers at one directory at the same time
(it stays correct — the writes are atomic and the records the same — but the shards in flight are generated twice).

GPUs: ``num_gpus_per_task=1`` gives each task one GPU (Ray sets ``CUDA_VISIBLE_DEVICES``); with ``--backend vllm``
each GPU worker holds one vLLM engine for all the shards it runs. Ray's default for GPU tasks is to end the worker
after every task (``max_calls=1``), which would reload the model per shard, so the tasks are declared with
``max_calls=0`` (no limit). Ray Data's LLM processor is not used: it drives vLLM's sampling engine, and BIGRec needs
beam search (``vllm.LLM.beam_search``), which the processor does not offer. The GPU path is untested here (the test
machines have no GPU); ``tests/integration/test_ray_engine.py`` covers the CPU path with the ``hf`` backend.
"""
from __future__ import annotations

import logging
import time
import uuid
from pathlib import Path

import numpy as np

from dllm2rec.errors import ConfigError, Dllm2recError, MissingDependencyError
from dllm2rec.teachers.bigrec.generate import (
    PLAN,
    GenConfig,
    Plan,
    finished_shards,
    generate_shard,
    pending_shards,
    prepare_plan,
    shard_path,
    write_shard,
)
from dllm2rec.utils.io import try_read_json
from dllm2rec.utils.progress import progress

# per Ray worker process: run token -> [dataset, backend factory, backend or None]. One run at a time: a worker
# that starts a shard of another run drops the previous model first (two LLMs would not fit on one GPU).
_WORKER_STATE: dict[str, list] = {}


def import_ray():
    try:
        import ray
    except ImportError:
        raise MissingDependencyError("--engine ray needs Ray: pip install 'dllm2rec[ray]'") from None
    return ray


def _worker_state(token: str, payload: list) -> list:
    state = _WORKER_STATE.get(token)
    if state is None:
        import ray

        _WORKER_STATE.clear()
        # the refs come wrapped in a list, so Ray does not resolve them per task: the dataset and the factory are
        # fetched and unpickled once per worker process, not once per shard
        state = _WORKER_STATE[token] = [ray.get(payload[0]), ray.get(payload[1]), None]
    return state


def _sees_plan(out: Path, plan: Plan) -> bool:
    """True when this process sees the driver's plan in ``out`` (same machine or a shared filesystem)."""
    try:
        return Plan(**try_read_json(out / PLAN)).key() == plan.key()
    except (ValueError, TypeError):
        return False


def _shard_task(token: str, payload: list, plan: Plan, i: int, cfg: GenConfig, out: str) -> dict:
    """One Ray task: shard ``i`` through the local engine's ``generate_shard``; the record goes back to the driver."""
    state = _worker_state(token, payload)
    if state[2] is None:
        state[2] = state[1]()  # the same backend factory as the local engine, called once per worker process
    rec = generate_shard(state[0], plan, i, state[2], cfg)
    out_dir = Path(out)
    if not shard_path(out_dir, i).is_file() and _sees_plan(out_dir, plan):
        write_shard(out_dir, i, rec)
    return rec


def _connect(ray, address: str | None, num_cpus: int | None) -> bool:
    """Join ``address`` (``auto``, ``HOST:PORT``, ``ray://HOST:10001``) or start a local Ray; True if started here."""
    if ray.is_initialized():  # the caller (a notebook, a test) already connected: use that Ray as it is
        return False
    if address in (None, "", "local"):
        # address="local" always starts a fresh instance; None would join whatever RAY_ADDRESS or the last
        # `ray start` on this machine points at, which is what --ray-address auto is for
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, logging_level=logging.WARNING)
        return True
    if num_cpus is not None:
        raise ConfigError("--ray-num-cpus only applies to a Ray started here (no --ray-address); a cluster's nodes "
                          "declare their CPUs with `ray start --num-cpus`")
    try:
        ray.init(address=address, logging_level=logging.WARNING)
    except (ConnectionError, ValueError, RuntimeError) as e:
        raise ConfigError(f"--ray-address {address}: cannot connect to a Ray cluster "
                          f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    return True


def _check_resources(ray, cpus_per_task: float, gpus_per_task: float) -> None:
    """A task asking for more than the cluster has would stay pending forever: refuse it at once."""
    have = ray.cluster_resources()
    for name, need, flag in (("CPU", cpus_per_task, "--threads"), ("GPU", gpus_per_task, "--ray-num-gpus-per-task")):
        if need > have.get(name, 0.0):
            raise ConfigError(f"{flag} {need:g}: each Ray task asks for {need:g} {name}(s) but the Ray cluster has "
                              f"{have.get(name, 0.0):g}")


def _task_failure(ray, e: Exception, i: int, max_retries: int) -> Exception:
    """The error to raise for shard ``i``: ours in one line, a dead worker in one line, anything else as Ray has it."""
    cause = getattr(e, "cause", None)
    if isinstance(cause, Dllm2recError):
        return cause
    if isinstance(e, (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError,
                      ray.exceptions.ObjectLostError)):
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return Dllm2recError(f"shard {i}: its Ray worker died and the {max_retries} rerun(s) of --ray-max-retries are "
                             f"used up ({first}); finished shards are kept, rerun the command to resume")
    return e


def run_generation_ray(dataset, split: str, out: str | Path, backend_factory, cfg: GenConfig, model_id: str,
                       adapter: str | None = None, positions: np.ndarray | None = None, shard_size: int = 64,
                       extra: dict | None = None, *, address: str | None = None, num_cpus: int | None = None,
                       num_gpus_per_task: float = 0.0, cpus_per_task: float = 1.0, max_retries: int = 3) -> dict:
    """Generate every pending shard of ``out`` as Ray tasks; same arguments and plan as ``run_generation``.

    ``backend_factory`` must be picklable (cloudpickle: closures are fine) and is called in the Ray workers, so the
    model path it loads must exist on every node. ``address``: None starts a local Ray (``num_cpus`` CPUs, default
    all), ``"auto"`` joins the cluster of this machine, ``"HOST:PORT"`` a given one. A Ray already initialised by
    the caller is used as it is (and not shut down)."""
    if max_retries < 0:
        raise ConfigError(f"--ray-max-retries must be >= 0, got {max_retries}")
    if num_gpus_per_task < 0 or cpus_per_task <= 0:
        raise ConfigError("--ray-num-gpus-per-task must be >= 0 and --threads > 0")
    out = Path(out)
    plan = prepare_plan(dataset, split, out, cfg, model_id, adapter, positions, shard_size, extra)
    todo = pending_shards(out, plan)
    done_now, rows_now, secs, wall = 0, 0, 0.0, 0.0
    if todo:
        ray = import_ray()
        started = _connect(ray, address, num_cpus)
        try:
            _check_resources(ray, cpus_per_task, num_gpus_per_task)
            task = ray.remote(num_cpus=cpus_per_task, num_gpus=num_gpus_per_task, max_retries=max_retries,
                              retry_exceptions=False, max_calls=0)(_shard_task)
            token = uuid.uuid4().hex
            payload = [ray.put(dataset), ray.put(backend_factory)]
            t0 = time.perf_counter()
            pending = {task.remote(token, payload, plan, i, cfg, str(out)): i for i in todo}
            bar = progress(total=sum(len(plan.shard_positions(i)) for i in todo), desc=f"generate {split} (ray)",
                           unit="row")
            try:
                while pending:
                    ready, _ = ray.wait(list(pending), num_returns=1)
                    for ref in ready:
                        i = pending.pop(ref)
                        try:
                            rec = ray.get(ref)
                        except Exception as e:  # noqa: BLE001 — mapped to one line or re-raised as is
                            raise _task_failure(ray, e, i, max_retries) from None
                        if rec.get("shard") != i:
                            raise Dllm2recError(f"shard {i}: a Ray task returned shard {rec.get('shard')}")
                        if not shard_path(out, i).is_file():  # the task could not see `out` (no shared filesystem)
                            write_shard(out, i, rec)
                        done_now += 1
                        rows_now += len(rec["positions"])
                        secs += rec["seconds"]
                        bar.update(len(rec["positions"]))
            except BaseException:
                # a failed shard or Ctrl-C: stop the other tasks too (a Ray the caller started outlives this call);
                # the shards finished so far stay on disk for the rerun
                for other in pending:
                    ray.cancel(other)
                raise
            finally:
                bar.close()
            wall = time.perf_counter() - t0
        finally:
            if started:
                ray.shutdown()
    n_fin = len(finished_shards(out, plan))
    # rows_per_s as the local engine reports it (rows over the summed generation time of the shards: one worker's
    # throughput); wall_rows_per_s is the whole run's, with every task in parallel
    return {"out": str(out), "split": split, "shards": plan.n_shards, "finished": n_fin, "generated_now": done_now,
            "rows_now": rows_now, "rows_per_s": round(rows_now / secs, 3) if secs else None,
            "wall_rows_per_s": round(rows_now / wall, 3) if wall else None, "complete": n_fin == plan.n_shards,
            "engine": "ray"}
