"""Typed run configuration: YAML files + dotted command-line overrides (``-o train.lr=3e-4``).

Every field has a documented default equal to the official DLLM2Rec/DROS setting unless noted. The resolved config
is written next to each run (``config.yaml``) so a run can always be repeated.

Values are validated when the config is loaded, before anything is written to a run directory: sizes and counts
are >= 1, ``lr`` > 0 and finite, ``weight_decay`` >= 0, ``dropout`` in [0, 1), ``select_metric`` is one of
HR@K / NDCG@K / Recall@K / MRR@K (any case, e.g. RecBole's ``ndcg@10``; stored in canonical spelling), and a
``cuda`` device needs CUDA. A selection K missing from ``train.ks`` is evaluated anyway (``TrainConfig.eval_ks``:
valid and test report it too); ``ks`` itself is kept as written, so config.yaml records what the user set.

``--resume`` with a changed config: see :func:`resume_changes` (which fields may change, which refuse).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from dllm2rec.errors import ConfigError

METRIC_NAMES = ("HR", "NDCG", "Recall", "MRR")
_METRIC_ALIASES = {"hr": "HR", "hit": "HR", "ndcg": "NDCG", "recall": "Recall", "mrr": "MRR"}
_METRIC_RE = re.compile(r"^\s*([A-Za-z]+)\s*@\s*(\d+)\s*$")
PosInt = Annotated[int, Field(ge=1)]


def parse_metric(name: str) -> tuple[str, int]:
    """``"ndcg@10"`` -> ``("NDCG", 10)``; HR (alias Hit), NDCG, Recall, MRR in any case. ValueError otherwise."""
    m = _METRIC_RE.match(str(name))
    canon = _METRIC_ALIASES.get(m.group(1).lower()) if m else None
    if canon is None or int(m.group(2)) < 1:
        raise ValueError(f"'{name}' is not a metric; use HR@K, NDCG@K, Recall@K or MRR@K (K >= 1, any case)")
    return canon, int(m.group(2))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataConfig(_Strict):
    path: str = Field("ml-100k", description="prepared dataset directory or preset name (ml-100k, lastfm)")


class ModelConfig(_Strict):
    name: str = Field("sasrec", description="registered student: sasrec | gru4rec | caser")
    dim: int = Field(64, ge=1, description="item embedding / hidden size (paper: 64)")
    dropout: float = Field(0.1, ge=0.0, lt=1.0, allow_inf_nan=False, description="dropout in [0, 1) (paper: 0.1)")
    n_layers: int | None = Field(None, ge=1, description="SASRec blocks / GRU layers (official: 1)")
    n_heads: int | None = Field(None, ge=1, description="SASRec heads (official: 1)")
    options: dict[str, Any] = Field(default_factory=dict, description="extra student-specific kwargs")

    def kwargs(self, max_len: int) -> dict[str, Any]:
        kw: dict[str, Any] = {"max_len": max_len, "dim": self.dim, "dropout": self.dropout, **self.options}
        if self.n_layers is not None:
            kw["n_layers"] = self.n_layers
        if self.n_heads is not None:
            kw["n_heads"] = self.n_heads
        return kw


class LossConfig(_Strict):
    kind: Literal["bce", "ce", "sampled_softmax"] = Field(
        "bce", description="bce: sampled BCE over target + n_neg negatives (paper: 1); ce: full softmax over all N "
        "items; sampled_softmax: softmax over target + n_neg uniform negatives (touches only those output rows; "
        "the logQ correction of uniform sampling is a constant and cancels)")
    n_neg: int = Field(1, ge=1, description="sampled negatives per row for bce / sampled_softmax (paper: 1)")
    dros_alpha: float = Field(0.0, ge=0.0, allow_inf_nan=False,
                              description="weight of the DROS robust term; >0 turns SASRec into DROS")
    dros_beta: float = Field(1.0, allow_inf_nan=False, description="DROS robust radius beta (official --beta)")
    dros_power: float = Field(0.05, allow_inf_nan=False, description="propensity power of DROS item frequencies")


class OptimConfig(_Strict):
    name: Literal["adam", "adamw"] = "adam"
    lr: float = Field(1e-3, gt=0.0, allow_inf_nan=False, description="learning rate (> 0, finite)")
    weight_decay: float = Field(0.0, ge=0.0, allow_inf_nan=False)
    eps: float = Field(1e-8, gt=0.0, allow_inf_nan=False)
    fused: bool | None = Field(None, description="fused Adam/AdamW kernel (one pass over all parameters; ~10x "
                               "cheaper steps on CPU for these small models). None: on when every parameter is "
                               "a floating tensor on a CPU/CUDA device; same updates as the default loop")
    sparse: bool = Field(False, description="row-sparse training for large catalogues: the item-embedding table "
                         "and the output layer (weight, bias) get gradients only on the rows a batch touches and "
                         "are stepped by a lazy row-wise Adam (a row's moments decay, and the row moves, only on "
                         "steps that touch it), every other parameter by Adam as usual. Needs a sampled loss (bce, "
                         "sampled_softmax), no DROS, weight_decay 0, one process (no DDP). Off: every result is "
                         "unchanged")


class TrainConfig(_Strict):
    epochs: int = Field(200, ge=1, description="maximum number of full shuffled passes over the training split")
    batch_size: int = Field(256, ge=1)
    patience: int = Field(10, ge=1, description="early stopping: epochs without validation improvement")
    select_metric: str = Field("NDCG@20", description="validation metric that selects the best epoch: HR@K, "
                               "NDCG@K, Recall@K or MRR@K, any case (ndcg@10 -> NDCG@10); its K is evaluated "
                               "even if ks lacks it. With one target per row Recall@K equals HR@K")
    ks: list[PosInt] = Field(default_factory=lambda: [1, 5, 10, 20], min_length=1,
                             description="cut-offs K of the reported metrics (non-empty, each >= 1)")
    eval_every: int = Field(1, ge=1)
    eval_batch: int = Field(1024, ge=1)
    eval_item_chunk: int | None = Field(None, ge=1, description="stream ranking over item chunks of this size "
                                        "(bounded memory for huge catalogues; None: score all items at once)")
    valid_sample: int | None = Field(None, ge=0, description="rows of the validation split ranked each epoch for "
                                     "model selection: None = all rows up to 20,000, else a fixed sample of "
                                     "10,000 (seeded, the same for every run); 0 = always all; N = a fixed "
                                     "sample of N. The selected checkpoint is always ranked on ALL validation "
                                     "rows at the end (results.json: valid = full, valid_selection = the sample)")
    exclude_history: bool = Field(False, description="mask history items when ranking (official: no)")
    seed: int = 2024
    num_threads: int | None = Field(None, ge=1, description="torch intra-op threads (None: torch default)")
    device: str = Field("cpu", description="cpu | cuda | cuda:N | mps (checked to exist when the config loads)")
    min_epochs: int = Field(1, ge=0)

    @field_validator("select_metric")
    @classmethod
    def _canonical_metric(cls, v: str) -> str:
        name, k = parse_metric(v)
        return f"{name}@{k}"

    @field_validator("device")
    @classmethod
    def _device_exists(cls, v: str) -> str:
        v = v.strip()
        if v == "cpu":
            return v
        import torch

        try:
            d = torch.device(v)
        except (RuntimeError, ValueError, TypeError):
            raise ValueError(f"'{v}' is not a torch device (cpu, cuda, cuda:N, mps)") from None
        if d.type == "cuda":
            if not torch.cuda.is_available():
                why = "this torch is built without CUDA" if torch.version.cuda is None else "no GPU is visible"
                raise ValueError(f"'{v}' but CUDA is not available ({why}); use train.device=cpu")
            if d.index is not None and d.index >= torch.cuda.device_count():
                raise ValueError(f"'{v}' but only {torch.cuda.device_count()} CUDA device(s) are visible")
        elif d.type == "mps" and not torch.backends.mps.is_available():
            raise ValueError(f"'{v}' but MPS is not available on this machine; use train.device=cpu")
        return v

    @property
    def eval_ks(self) -> list[int]:
        """Cut-offs evaluated: ``ks``, plus the selection metric's K when ``ks`` lacks it (so it can select)."""
        k = int(self.select_metric.split("@")[1])
        return list(self.ks) if k in self.ks else [*self.ks, k]


class DistillConfig(_Strict):
    strategy: str = Field("none", description="registered strategy: none | dllm2rec | rd | hint | ...")
    teacher: str | None = Field(None, description="TeacherArtifacts directory (or 'random'/'synthetic' where supported)")
    params: dict[str, Any] = Field(default_factory=dict, description="strategy parameters")


class RunConfig(_Strict):
    name: str | None = None
    out_dir: str = "runs"
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    distill: DistillConfig = Field(default_factory=DistillConfig)

    def run_name(self) -> str:
        if self.name:
            return self.name
        ds = Path(self.data.path).name
        return f"{ds}-{self.model.name}-{self.distill.strategy}-s{self.train.seed}"

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(), sort_keys=False)


def _parse_value(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(data: dict, overrides: list[str] | None) -> dict:
    """Apply ``a.b.c=value`` overrides (value parsed as YAML) to a nested dict."""
    for ov in overrides or []:
        if "=" not in ov:
            raise ConfigError(f"override '{ov}' must look like section.field=value")
        key, val = ov.split("=", 1)
        parts = key.strip().split(".")
        cur = data
        for p in parts[:-1]:
            nxt = cur.setdefault(p, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"override '{ov}': '{p}' is not a section")
            cur = nxt
        cur[parts[-1]] = _parse_value(val)
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    data: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"{p}: config file not found")
        try:
            data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: malformed YAML ({str(e).splitlines()[0]})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{p}: top level must be a mapping")
    data = apply_overrides(data, overrides)
    src = f"{path}: " if path else ""
    return validate_config(data, src)


def validate_config(data: dict, src: str = "") -> RunConfig:
    """RunConfig from a plain dict; the first problem as a one-line ConfigError naming the field and value."""
    try:
        return RunConfig.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        loc = [str(x) for x in err["loc"]]
        msg = err["msg"]
        if err.get("type") == "value_error":
            msg = msg.removeprefix("Value error, ")
        elif "input" in err and not isinstance(err["input"], (dict, list)) and err.get("type") != "missing":
            msg += f" (got {err['input']!r})"
        raise ConfigError(f"{src}field '{'.'.join(loc)}': {msg}".replace("\n", " ")) from None


# --------------------------------------------------------------------------- --resume with a changed config
#: fields that may differ on --resume: where the run is, how evaluation is batched, how many threads run it.
#: train.epochs and train.patience are checked separately (see resume_changes).
RESUME_SAFE = ("name", "out_dir", "data.path", "train.eval_batch", "train.eval_item_chunk", "train.num_threads")


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict) and (d or not prefix):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: d}


def _evaluated(cap: int, every: int, upto: int) -> set[int]:
    return {e for e in range(1, upto + 1) if e % every == 0 or e == cap}


def resume_changes(old: dict[str, Any], new: RunConfig, epoch: int) -> dict[str, tuple[Any, Any]]:
    """Changed fields ``{dotted: (old, new)}`` between a checkpoint's config and the new one, if all are safe.

    Safe on ``--resume`` (applied, then recorded in results.json ``config_changes``): the fields in
    :data:`RESUME_SAFE` (``data.path`` only while the dataset fingerprint is unchanged, checked by the trainer),
    ``train.patience`` raised, and ``train.epochs`` changed to any cap >= the checkpoint's epoch that evaluates the
    same epochs so far (with ``eval_every`` > 1 the old cap's epoch may have been evaluated off-schedule).
    Any other change (lr, seed, model, loss, strategy, ...) would mix two configs in one run: ConfigError naming
    every changed field with its old and new value.
    """
    try:
        old_cfg = RunConfig.model_validate(old).model_dump()  # old spellings / defaults normalised like the new
    except ValidationError:
        old_cfg = old
    a, b = _flat(old_cfg), _flat(new.model_dump())
    changed = {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}
    bad = []
    for k, (o, n) in changed.items():
        if k in RESUME_SAFE:
            continue
        if k == "train.patience" and isinstance(o, int) and n > o:
            continue
        if k == "train.epochs" and isinstance(o, int) and n >= epoch and \
                _evaluated(o, new.train.eval_every, epoch) == _evaluated(n, new.train.eval_every, epoch):
            continue
        bad.append(f"{k} {o!r} -> {n!r}")
    if bad:
        raise ConfigError(f"cannot --resume with a changed config (checkpoint at epoch {epoch}): "
                          + ", ".join(bad) + "; on --resume only train.epochs (>= the checkpoint's epoch), "
                          "train.patience (raised), eval_batch, eval_item_chunk, num_threads, name, out_dir and "
                          "data.path (same dataset) may change - start a new run for the rest")
    return changed
