"""Control teachers: same shapes as a real teacher, no LLM.

``make_control(spec, dataset, seed)`` with spec

- ``random`` / ``random:D`` — the **random-teacher control** (a first-class run type): Gaussian item embeddings
  [N, D] (D = 64 by default; ``random:4096`` matches LLaMA-7B), a random top-n ranking per training row (no
  duplicates, not conditioned on anything), random ascending distances, random target distances. A real teacher's
  gain counts only as its gain over this control: the trainable projection of fixed random vectors alone already
  speeds early training.
- ``synthetic`` / ``synthetic:p`` / ``synthetic:p:coverage`` — an *informative* synthetic teacher for tests: for each
  training row it knows the true target with probability p (default 0.8) and puts it at a uniformly random rank of
  its top-n; the rest are random items. Its embeddings carry item-identity signal: Fourier features of the item id
  on the ring 0..N-1 (the structure of ``data.synthetic.make_synthetic``'s walks, where the next item is prev+1..3)
  plus small noise. Rows where it knows the target get a small target distance. ``coverage`` < 1 marks a random
  subset of rows as unanswered (partial-coverage tests).

Both are also registered teachers (``RandomTeacher`` "random", ``SyntheticTeacher`` "synthetic": typed configs,
``fit`` learns nothing, ``artifacts`` calls the functions below), so the contract tests and ``teacher list`` cover them
and a manifest's ``config`` rebuilds them; ``make_control`` is the spec-string way in (run configs, tests).
"""
from __future__ import annotations

import numpy as np
from pydantic import Field

from dllm2rec.errors import ConfigError
from dllm2rec.registry import register_teacher
from dllm2rec.teachers.artifacts import TeacherArtifacts
from dllm2rec.teachers.base import Teacher, TeacherConfig, dataset_identity, keep_rows

TOP_N = 20


def _parse(spec: str) -> tuple[str, list[str]]:
    kind, *args = spec.split(":")
    return kind.strip().lower(), [a.strip() for a in args if a.strip()]


def _random_topn(rng: np.random.Generator, R: int, N: int, n: int, forbid: np.ndarray | None = None) -> np.ndarray:
    """[R, n] uniform item ids without duplicates in a row (and != forbid[r] if given); rejection, vectorised."""
    if n > N - (forbid is not None):
        raise ConfigError(f"cannot draw {n} distinct items out of {N}")
    ids = rng.integers(0, N, size=(R, n))
    for _ in range(1000):
        s = np.sort(ids, axis=1)
        order = np.argsort(ids, axis=1, kind="stable")
        dup_sorted = np.zeros_like(ids, dtype=bool)
        dup_sorted[:, 1:] = s[:, 1:] == s[:, :-1]
        bad = np.zeros_like(dup_sorted)
        np.put_along_axis(bad, order, dup_sorted, axis=1)
        if forbid is not None:
            bad |= ids == forbid[:, None]
        if not bad.any():
            return ids
        ids[bad] = rng.integers(0, N, size=int(bad.sum()))
    raise ConfigError("could not draw distinct random rankings")


def _manifest(dataset, kind: str, config: dict, **extra) -> dict:
    m = {"teacher": kind, "kind": kind, "control": True, "distance": "synthetic", "pooling": "none"}
    if dataset is not None:
        m.update(dataset=dataset.name, dataset_fingerprint=dataset.fingerprint(),
                 train_split_hash=dataset.split_hash("train"))
    m.update(extra)
    if dataset is not None:  # the rest of the identity, in the order TeacherArtifacts.save would append it
        for k, v in dataset_identity(dataset).items():
            m.setdefault(k, v)
    m["config"] = config  # rebuilds the control: dllm2rec.teachers.base.from_manifest
    return m


def random_teacher(dataset, dim: int = 64, top_n: int = TOP_N, seed: int = 0) -> TeacherArtifacts:
    config = {"dim": dim, "top_n": top_n, "seed": seed}
    rng = np.random.default_rng([seed, 7919])
    N, R = dataset.n_items, len(dataset["train"])
    top_n = min(top_n, N)
    emb = rng.standard_normal((N, dim)).astype(np.float32)
    ids = _random_topn(rng, R, N, top_n)
    dist = np.sort(rng.uniform(0.5, 1.5, size=(R, top_n)), axis=1).astype(np.float32)
    tdist = rng.uniform(0.5, 1.5, size=R).astype(np.float32)
    return TeacherArtifacts.from_rankings(emb, ids, dist, np.ones(R, bool), tdist,
                                          **_manifest(dataset, "random", config, dim=dim, seed=seed)).validate(dataset)


def synthetic_teacher(dataset, p: float = 0.8, coverage: float = 1.0, dim: int = 64, top_n: int = TOP_N,
                      seed: int = 0) -> TeacherArtifacts:
    if not 0 <= p <= 1 or not 0 < coverage <= 1:
        raise ConfigError(f"synthetic teacher: p must be in [0, 1] and coverage in (0, 1], got {p}, {coverage}")
    config = {"p": p, "coverage": coverage, "dim": dim, "top_n": top_n, "seed": seed}
    rng = np.random.default_rng([seed, 104729])
    N = dataset.n_items
    tr = dataset["train"]
    R = len(tr)
    top_n = min(top_n, N - 1)
    target = np.zeros(R, dtype=np.int64)
    target[tr.row_id] = tr.target  # artifact row r = training row with row_id r
    ids = _random_topn(rng, R, N, top_n, forbid=target)
    knows = rng.random(R) < p
    pos = rng.integers(0, top_n, size=R)
    ids[knows, pos[knows]] = target[knows]
    dist = np.sort(rng.uniform(0.5, 1.5, size=(R, top_n)), axis=1).astype(np.float32)
    tdist = np.where(knows, rng.uniform(0.0, 0.3, R), rng.uniform(0.8, 1.5, R)).astype(np.float32)
    # Fourier features of the id on the ring + noise: neighbours on the ring get similar embeddings
    k = np.arange(1, dim // 2 + 1)
    ang = 2 * np.pi * np.outer(np.arange(N), k) / N
    emb = np.concatenate([np.cos(ang), np.sin(ang)], axis=1)[:, :dim]
    if emb.shape[1] < dim:
        emb = np.pad(emb, ((0, 0), (0, dim - emb.shape[1])))
    emb = (emb + 0.1 * rng.standard_normal(emb.shape)).astype(np.float32)
    covered = np.ones(R, bool) if coverage >= 1 else rng.random(R) < coverage
    ids = np.where(covered[:, None], ids, -1)
    dist = np.where(covered[:, None], dist, np.nan).astype(np.float32)
    tdist = np.where(covered, tdist, np.nan).astype(np.float32)
    return TeacherArtifacts.from_rankings(
        emb, ids, dist, covered, tdist,
        **_manifest(dataset, "synthetic", config, p=p, coverage=coverage, dim=dim, seed=seed)).validate(dataset)


def make_control(spec: str, dataset, seed: int = 0) -> TeacherArtifacts:
    """``random[:D]`` or ``synthetic[:p[:coverage]]`` -> TeacherArtifacts for ``dataset`` (see module doc)."""
    kind, args = _parse(spec)
    try:
        if kind == "random":
            return random_teacher(dataset, dim=int(args[0]) if args else 64, seed=seed)
        if kind == "synthetic":
            p = float(args[0]) if args else 0.8
            cov = float(args[1]) if len(args) > 1 else 1.0
            return synthetic_teacher(dataset, p=p, coverage=cov, seed=seed)
    except ValueError:
        raise ConfigError(f"teacher control '{spec}': malformed arguments (random[:D], synthetic[:p[:coverage]])") \
            from None
    raise ConfigError(f"unknown teacher control '{spec}'; use random[:D] or synthetic[:p[:coverage]]")


# ---------------------------------------------------------------------------------------------------- registered
class RandomConfig(TeacherConfig):
    dim: int = Field(64, ge=1, description="item-embedding width D (4096 matches LLaMA-7B)")
    top_n: int = Field(TOP_N, ge=1, description="items ranked per training row (capped at the catalogue size)")
    seed: int = Field(0, description="the draw depends on this seed and nothing else")


class SyntheticConfig(RandomConfig):
    p: float = Field(0.8, ge=0, le=1, allow_inf_nan=False,
                     description="probability that a row's top-n holds its true target")
    coverage: float = Field(1.0, gt=0, le=1, allow_inf_nan=False, description="share of training rows answered")


def _finish(art: TeacherArtifacts, dataset, rows, extra_manifest: dict) -> TeacherArtifacts:
    if rows is not None:
        art = keep_rows(art, dataset, rows)
        art.manifest["train_rows_scored"] = int(art.covered.sum())
    art.manifest.update(extra_manifest)
    return art.validate(dataset)


@register_teacher("random")
class RandomTeacher(Teacher):
    """Random-teacher control: Gaussian item embeddings, random rankings (what a real teacher must beat)."""

    kind = "random"
    config_cls = RandomConfig
    stages = ("artifacts",)

    def fit(self, dataset, **kwargs) -> "RandomTeacher":
        return self  # nothing to learn: the draw is a function of the seed and the dataset's shape

    def artifacts(self, dataset, rows=None, **extra_manifest) -> TeacherArtifacts:
        c = self.config
        return _finish(random_teacher(dataset, dim=c.dim, top_n=c.top_n, seed=c.seed), dataset, rows, extra_manifest)


@register_teacher("synthetic")
class SyntheticTeacher(Teacher):
    """Informative synthetic control: knows the true target with probability p (tests, partial coverage)."""

    kind = "synthetic"
    config_cls = SyntheticConfig
    stages = ("artifacts",)

    def fit(self, dataset, **kwargs) -> "SyntheticTeacher":
        return self  # it reads the targets when drawing, in artifacts()

    def artifacts(self, dataset, rows=None, **extra_manifest) -> TeacherArtifacts:
        c = self.config
        art = synthetic_teacher(dataset, p=c.p, coverage=c.coverage, dim=c.dim, top_n=c.top_n, seed=c.seed)
        return _finish(art, dataset, rows, extra_manifest)
