"""Data-parallel training with PyTorch DDP, launched by ``torchrun`` (one node or many).

    torchrun --standalone --nproc_per_node 4 -m dllm2rec train -c configs/x.yaml -o train.device=cuda

Nothing here runs for single-process users: every helper is a no-op unless ``WORLD_SIZE`` > 1.

Design (see docs/scaling.md):

- **Process group**: ``init_from_env`` reads the torchrun variables (``WORLD_SIZE``/``RANK``/``LOCAL_RANK``) and
  initialises ``nccl`` when training on CUDA (each process on ``cuda:LOCAL_RANK``), ``gloo`` on CPU.
- **Sampler**: every rank draws the *same* global permutation per epoch from the trainer's seeded generator and
  takes a contiguous slice of each *global* batch (``shard``). ``train.batch_size`` stays the global batch, so the
  optimiser sees the same batches, in the same order, as a single-process run with the same seed. Negatives are
  drawn for the whole global batch from the same shared generator (identical on every rank, so the generator
  stays in lock-step) and each rank keeps its slice: the negatives also equal the single-process ones.
- **Gradient sync**: by DDP. The student's training forward is not ``forward()`` (the trainer calls
  ``encode``/``score_items`` and strategies call ``ctx.model.score_all``), so DDP wraps a thin ``StepModule``
  whose ``forward`` runs the trainer's whole ``step_loss`` on the *unwrapped* student (which is a submodule of the
  StepModule, so its parameters are the ones DDP registered). Everything that produces the loss therefore runs
  inside DDP's forward, DDP's autograd hooks all-reduce (average) the gradients during ``backward``, and
  strategies keep seeing the plain student. ``find_unused_parameters=True`` because some strategy parameters are
  only used on some steps; ``broadcast_buffers=False`` because buffers are constants (a teacher embedding buffer
  can be gigabytes).
- **Exact global mean**: each rank's loss is scaled by ``W·b_r/B`` (its rows b_r of the global batch B, W ranks)
  so that DDP's average equals the mean over the global batch even for the last, short batch; a rank whose slice
  is empty runs one dummy row with weight 0 so it still joins the all-reduce.
- **Rank 0** evaluates, selects, early-stops, writes checkpoints and logs; the decision
  (best metric/epoch, bad evaluations) is broadcast. RNG states of all ranks are saved in ``last/`` so
  ``--resume`` under DDP continues exactly.
- **Shared memory**: ``load_dataset_shared`` / ``load_teacher_shared`` are ``SeqDataset.load`` /
  ``TeacherArtifacts.load`` with ``mmap=True`` (``utils/mmap.py``): split arrays and safetensors tensors are
  memory-mapped, so N processes on a node share one page-cache copy of the data instead of N private copies.
"""
from __future__ import annotations

import datetime
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import nn

from dllm2rec.data.registry import load_or_prepare
from dllm2rec.data.schema import SeqDataset
from dllm2rec.errors import Dllm2recError
from dllm2rec.teachers.artifacts import TeacherArtifacts


# ---------------------------------------------------------------------------------------------- process group
def env_world_size() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def device_for(device: str) -> torch.device:
    """The device this process trains on: ``cuda`` becomes ``cuda:LOCAL_RANK`` under DDP."""
    d = torch.device(device)
    if is_distributed() and d.type == "cuda":
        return torch.device("cuda", local_rank())  # one GPU per process, whatever index the config names
    return d


def init_from_env(device: str = "cpu", timeout_min: float | None = None) -> bool:
    """Initialise the default process group when launched by torchrun with WORLD_SIZE > 1.

    Returns True when running distributed. ``nccl`` for CUDA devices, ``gloo`` otherwise
    (``DLLM2REC_DIST_BACKEND`` overrides). The timeout (default 60 min, ``DLLM2REC_DIST_TIMEOUT_MIN``) bounds how
    long ranks wait for rank 0's evaluation.
    """
    if env_world_size() <= 1:
        return False
    if dist.is_initialized():
        return is_distributed()
    cuda = torch.device(device).type == "cuda"
    backend = os.environ.get("DLLM2REC_DIST_BACKEND") or ("nccl" if cuda else "gloo")
    if cuda:
        torch.cuda.set_device(local_rank())
    minutes = timeout_min if timeout_min is not None else float(os.environ.get("DLLM2REC_DIST_TIMEOUT_MIN", "60"))
    dist.init_process_group(backend, timeout=datetime.timedelta(minutes=minutes))
    return True


def cleanup() -> None:
    """Leave the process group; a final barrier first, so no rank exits while a peer still talks to it."""
    if dist.is_available() and dist.is_initialized():
        if sys.exc_info()[0] is None:
            dist.barrier()
        dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` of rank ``src`` on every rank (pickled; for small control state only)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj: Any) -> list[Any]:
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def all_reduce_sums(sums: dict[str, float], device: torch.device) -> dict[str, float]:
    """Element-wise sum over ranks of a dict of floats (same keys on every rank)."""
    if not is_distributed() or not sums:
        return sums
    keys = sorted(sums)
    dev = device if dist.get_backend() == "nccl" else torch.device("cpu")
    t = torch.tensor([sums[k] for k in keys], dtype=torch.float64, device=dev)
    dist.all_reduce(t)
    return dict(zip(keys, t.cpu().tolist()))


# ---------------------------------------------------------------------------------------------- sampler + DDP
def shard(idx: torch.Tensor, r: int, w: int) -> tuple[torch.Tensor, float]:
    """This rank's contiguous slice of a global batch and its weight b_r / B.

    An empty slice (global batch shorter than the world) becomes the batch's first row with weight 0, so the rank
    still runs forward/backward and joins the gradient all-reduce without changing the result.
    """
    part = torch.tensor_split(idx, w)[r]
    if len(part) == 0:
        return idx[:1], 0.0
    return part, len(part) / len(idx)


class StepModule(nn.Module):
    """What DDP wraps: the student (+ strategy parameters living outside it); forward = the trainer's step."""

    def __init__(self, student: nn.Module, extra: list[nn.Parameter], step_fn: Callable[..., dict]):
        super().__init__()
        self.student = student
        self.extra = nn.ParameterList(extra)
        object.__setattr__(self, "_step_fn", step_fn)  # a plain attribute, not a submodule

    def forward(self, *args, **kwargs) -> dict[str, torch.Tensor]:
        return self._step_fn(*args, **kwargs)


def refuse_sparse(world: int) -> None:
    """``optim.sparse`` is single-process: DDP's gradient all-reduce is untested here with sparse COO gradients
    (and ``find_unused_parameters`` bucketing assumes dense ones), so it is refused rather than trusted."""
    world = max(int(world), env_world_size())
    if world > 1:
        raise Dllm2recError(f"optim.sparse=true is not supported under DDP (WORLD_SIZE={world}); "
                            "train with one process or set optim.sparse=false")


def wrap(student: nn.Module, extra: list[nn.Parameter], step_fn: Callable[..., dict],
         device: torch.device) -> nn.Module:
    """DDP around a StepModule (parameters of rank 0 are broadcast once, at construction)."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    mod = StepModule(student, list(extra), step_fn)
    ids = [device.index] if device.type == "cuda" else None
    with warnings.catch_warnings():  # newer torch deprecates broadcast_buffers, but it is the one switch that
        warnings.simplefilter("ignore", FutureWarning)  # also skips syncing (possibly huge) buffers at init
        return DDP(mod, device_ids=ids, output_device=ids[0] if ids else None,
                   broadcast_buffers=False, find_unused_parameters=True)


def rank_seed(seed: int, r: int) -> int:
    """Dropout RNG seed of rank r (rank 0 keeps the single-process stream)."""
    return seed + 1_000_003 * r


# ---------------------------------------------------------------------------------------------- shared data
def load_dataset_shared(path: str | Path, verify: bool = True):
    """``SeqDataset.load`` with the split arrays memory-mapped (one page-cache copy per node)."""
    return SeqDataset.load(path, verify=verify, mmap=True)


def load_teacher_shared(path: str | Path, dataset=None):
    """``TeacherArtifacts.load`` with the [N, D] teacher matrix memory-mapped (one page-cache copy per node)."""
    return TeacherArtifacts.load(path, dataset, mmap=True)


def resolve_dataset_shared(path_or_name: str):
    """Dataset for a DDP run: prepared directories memory-mapped; presets prepared once, by rank 0."""
    p = Path(path_or_name)
    if (p / "manifest.json").is_file():
        return load_dataset_shared(p)
    ds = load_or_prepare(path_or_name) if is_main() else None
    barrier()  # rank 0 prepared (and cached) the preset; the others now only read it
    return ds if ds is not None else load_or_prepare(path_or_name)


