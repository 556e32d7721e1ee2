"""The ``Teacher`` base class: one ABC for every teacher family (as ``implicit`` has one per role), each with a typed
config (as ``peft`` registers methods with typed configs).

Adding a teacher family = one module with a ``Teacher`` subclass decorated ``@register_teacher("name")`` plus its
import in ``teachers/registry_entries.py``; ``tests/contracts/test_teachers.py`` then runs on it. The contract:

- ``config_cls``: a pydantic model (:class:`TeacherConfig`, unknown fields refused). ``from_config(dict)`` validates
  it; a bad value is one line (ConfigError) naming the field.
- ``fit(dataset, ...) -> self``: whatever the family learns or reads (llm-emb trains; BIGRec grounds a finished
  generation of its earlier stages; the controls learn nothing).
- ``artifacts(dataset, rows=None, **extra_manifest) -> TeacherArtifacts``: validated against ``dataset``; ``rows``
  (training-row positions) leaves every other row uncovered. The manifest is built here, by the teacher, with
  :meth:`Teacher.manifest`: ``teacher``/``kind`` + the family's own keys + the dataset identity + ``config`` —
  enough to rebuild the teacher: :func:`from_manifest`.
- ``evaluate(dataset, split)``, ``save``/``load``: where they make sense; the defaults raise a one-line ConfigError.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from dllm2rec.errors import ConfigError
from dllm2rec.registry import get_teacher
from dllm2rec.teachers.artifacts import TeacherArtifacts

#: keys every teacher's manifest carries (the contract tests check them)
REQUIRED_MANIFEST_KEYS = ("teacher", "kind", "distance", "config", "dataset", "dataset_fingerprint",
                          "dataset_interactions_fingerprint", "titles_hash", "train_split_hash")


class TeacherConfig(BaseModel):
    """Base of every teacher's typed config: unknown fields are an error, not silently ignored."""

    model_config = ConfigDict(extra="forbid")


def config_error(e: ValidationError, what: str) -> ConfigError:
    """The first problem of a pydantic error as one line naming the field (and the value given)."""
    err = e.errors()[0]
    loc = ".".join(str(x) for x in err["loc"]) or "?"
    msg = err["msg"]
    if err.get("type") == "value_error":
        msg = msg.removeprefix("Value error, ")
    elif "input" in err and not isinstance(err["input"], (dict, list)) and err.get("type") not in ("missing",
                                                                                                   "extra_forbidden"):
        msg += f" (got {err['input']!r})"
    return ConfigError(f"{what}field '{loc}': {msg}".replace("\n", " "))


def dataset_identity(dataset) -> dict:
    """What ties artifacts to a dataset, in the order ``TeacherArtifacts.save`` fills it in (so a manifest built
    here writes the same bytes as one completed by ``save``)."""
    return {"dataset_fingerprint": dataset.fingerprint(),
            "dataset_interactions_fingerprint": dataset.interactions_fingerprint(),
            "titles_hash": dataset.titles_hash(), "train_split_hash": dataset.split_hash("train"),
            "dataset": dataset.name}


def _type_name(a: Any) -> str:
    return getattr(a, "__name__", None) if isinstance(a, type) else str(a).replace("typing.", "")


class Teacher(ABC):
    """A teacher family; see the module docstring for the contract."""

    name: ClassVar[str] = ""                 # registry name, set by @register_teacher; manifest 'teacher'
    kind: ClassVar[str] = ""                 # manifest 'kind'
    label: ClassVar[str] = ""                # one line for listings and reports
    config_cls: ClassVar[type[TeacherConfig]] = TeacherConfig
    stages: ClassVar[tuple[str, ...]] = ("fit", "artifacts")  # the steps from nothing to artifacts, in order

    def __init__(self, config: TeacherConfig | Mapping | None = None, **kwargs):
        if config is not None and kwargs:
            raise ConfigError(f"teacher '{self.name}': pass a config or keyword fields, not both")
        self.config = self.validate_config(kwargs if config is None else config)

    # ------------------------------------------------------------------ config
    @classmethod
    def validate_config(cls, data: TeacherConfig | Mapping | None = None, source: str = "") -> TeacherConfig:
        """``config_cls`` from a dict (or another config with the same fields); ConfigError naming the field."""
        if isinstance(data, cls.config_cls):
            return data
        if isinstance(data, BaseModel):
            data = data.model_dump()
        if data is None:
            data = {}
        what = f"{source}: " if source else ""
        if not isinstance(data, Mapping):
            raise ConfigError(f"{what}teacher '{cls.name}': config must be a mapping, got {type(data).__name__}")
        try:
            return cls.config_cls.model_validate(dict(data))
        except ValidationError as e:
            raise config_error(e, f"{what}teacher '{cls.name}' config ") from None

    @classmethod
    def from_config(cls, data: TeacherConfig | Mapping | None = None, source: str = "") -> "Teacher":
        return cls(cls.validate_config(data, source))

    def config_dict(self) -> dict:
        """The config as it goes into the manifest (JSON types)."""
        return self.config.model_dump(mode="json")

    @classmethod
    def describe(cls) -> dict:
        """Name, kind, stages and config fields (type, default, description) — what ``teacher list`` prints."""
        fields = [{"name": k, "type": _type_name(f.annotation), "default": f.get_default(call_default_factory=True),
                   "description": f.description or ""} for k, f in cls.config_cls.model_fields.items()]
        doc = (cls.__doc__ or "").strip().splitlines()
        return {"name": cls.name, "kind": cls.kind, "label": cls.label or (doc[0] if doc else ""),
                "stages": list(cls.stages), "config": fields}

    # ------------------------------------------------------------------ the contract
    @abstractmethod
    def fit(self, dataset, **kwargs) -> "Teacher":
        """Learn (or read) what ``artifacts`` needs; returns self."""

    @abstractmethod
    def artifacts(self, dataset, rows: np.ndarray | None = None, **extra_manifest) -> TeacherArtifacts:
        """Validated TeacherArtifacts over ``dataset``'s training rows (only positions ``rows`` covered if given)."""

    def evaluate(self, dataset, split: str = "test", ks=(1, 5, 10, 20)) -> dict:
        raise ConfigError(f"teacher '{self.name}' has no evaluation of its own (it ranks training rows only)")

    def save(self, path, dataset=None) -> None:
        raise ConfigError(f"teacher '{self.name}' has no model to save; its artifacts are what it persists")

    @classmethod
    def load(cls, path, dataset=None) -> "Teacher":
        raise ConfigError(f"teacher '{cls.name}' has no saved model to load; load its artifacts instead")

    # ------------------------------------------------------------------ helpers for subclasses
    def manifest(self, dataset, body: Mapping, **extra) -> dict:
        """``teacher``, ``kind``, then ``body`` and ``extra`` (which may restate them), then the dataset identity
        and ``config`` where the body has none."""
        m = {"teacher": self.name, "kind": self.kind, **body, **extra}
        for k, v in dataset_identity(dataset).items():
            m.setdefault(k, v)
        m.setdefault("config", self.config_dict())
        return m


def train_positions(dataset, rows) -> np.ndarray:
    """Sorted unique training-row positions; ConfigError when one lies outside the train split."""
    R = len(dataset["train"])
    pos = np.unique(np.asarray(rows, dtype=np.int64))
    if len(pos) and (pos[0] < 0 or pos[-1] >= R):
        raise ConfigError(f"training-row positions must lie in 0..{R - 1}")
    return pos


def keep_rows(art: TeacherArtifacts, dataset, rows) -> TeacherArtifacts:
    """Only training-row positions ``rows`` stay covered; the others get ids -1 and NaN distances (as a budgeted
    teacher leaves the rows it never scored)."""
    keep = np.zeros(art.n_rows, bool)
    keep[train_positions(dataset, rows)] = True
    art.covered = art.covered & keep
    art.topk_ids = np.where(art.covered[:, None], art.topk_ids, -1)
    art.topk_dist = np.where(art.covered[:, None], art.topk_dist, np.nan).astype(np.float32)
    if art.target_dist is not None:
        art.target_dist = np.where(art.covered, art.target_dist, np.nan).astype(np.float32)
    return art


def from_manifest(manifest: Mapping, source: str = "manifest") -> Teacher:
    """The (unfitted) teacher that wrote ``manifest``: ``get_teacher(manifest['teacher'])`` with its ``config``."""
    name, cfg = manifest.get("teacher"), manifest.get("config")
    if not isinstance(cfg, Mapping):
        raise ConfigError(f"{source}: field 'config' is missing; the teacher cannot be rebuilt from it")
    return get_teacher(str(name)).from_config(cfg, source)
