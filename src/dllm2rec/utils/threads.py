"""The default number of intra-op threads: never more than the cores that are free.

Why: torch's default is one thread per logical CPU. On a shared 2-core machine with another job running, that
oversubscribes the cores and was measured 2-10x *slower* than one thread (the demo: 145-956 samples/s with the
default, 1.5k-7.3k with one thread, at the same time). So, unless the user chose (``OMP_NUM_THREADS``,
``DLLM2REC_NUM_THREADS`` or ``train.num_threads``), we take the physical cores this process may run on, minus the
ones the 1-minute load average says are busy, at least 1 and at most 8 (these models gain little beyond that).
"""
from __future__ import annotations

import os

MAX_DEFAULT_THREADS = 8


def physical_cores() -> int:
    """Physical cores in this process's affinity mask (SMT siblings counted once; Linux), else logical CPUs."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
    cores = set()
    for c in cpus:
        try:
            with open(f"/sys/devices/system/cpu/cpu{c}/topology/core_id") as f:
                core = f.read().strip()
            with open(f"/sys/devices/system/cpu/cpu{c}/topology/physical_package_id") as f:
                pkg = f.read().strip()
            cores.add((pkg, core))
        except OSError:
            cores.add(("?", str(c)))
    return max(1, len(cores))


def default_threads(load: float | None = None, cores: int | None = None) -> int:
    """Threads to use when the user did not say: free physical cores, clamped to 1..MAX_DEFAULT_THREADS."""
    for var in ("DLLM2REC_NUM_THREADS", "OMP_NUM_THREADS"):
        v = os.environ.get(var, "").strip()
        if v.isdigit() and int(v) > 0:
            return int(v)
    cores = physical_cores() if cores is None else cores
    if load is None:
        try:
            load = os.getloadavg()[0]
        except (AttributeError, OSError):
            load = 0.0
    free = int(cores - load + 0.5)  # round half up: 1.4 busy of 2 cores leaves 1
    return max(1, min(cores, free, MAX_DEFAULT_THREADS))


def apply_default_threads() -> int:
    """Set OMP_NUM_THREADS (read by torch when it is first imported) unless the user set it; returns the value."""
    n = default_threads()
    os.environ.setdefault("OMP_NUM_THREADS", str(n))
    return int(os.environ["OMP_NUM_THREADS"])
