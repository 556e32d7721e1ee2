"""Typed run configuration: YAML files + dotted command-line overrides (``-o train.lr=3e-4``).

Every field has a documented default equal to the official DLLM2Rec/DROS setting unless noted. The resolved config
is written next to each run (``config.yaml``) so a run can always be repeated.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from dllm2rec.errors import ConfigError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataConfig(_Strict):
    path: str = Field("ml-100k", description="prepared dataset directory or preset name (ml-100k, lastfm)")


class ModelConfig(_Strict):
    name: str = Field("sasrec", description="registered student: sasrec | gru4rec | caser")
    dim: int = Field(64, description="item embedding / hidden size (paper: 64)")
    dropout: float = Field(0.1, description="dropout (paper: 0.1)")
    n_layers: int | None = Field(None, description="SASRec blocks / GRU layers (official: 1)")
    n_heads: int | None = Field(None, description="SASRec heads (official: 1)")
    options: dict[str, Any] = Field(default_factory=dict, description="extra student-specific kwargs")

    def kwargs(self, max_len: int) -> dict[str, Any]:
        kw: dict[str, Any] = {"max_len": max_len, "dim": self.dim, "dropout": self.dropout, **self.options}
        if self.n_layers is not None:
            kw["n_layers"] = self.n_layers
        if self.n_heads is not None:
            kw["n_heads"] = self.n_heads
        return kw


class LossConfig(_Strict):
    kind: Literal["bce", "ce"] = Field("bce", description="bce: 1 sampled negative (paper); ce: full softmax")
    n_neg: int = Field(1, description="sampled negatives per row for bce (paper: 1)")
    dros_alpha: float = Field(0.0, description="weight of the DROS robust term; >0 turns SASRec into DROS")
    dros_beta: float = Field(1.0, description="DROS robust radius beta (official --beta)")
    dros_power: float = Field(0.05, description="propensity power of DROS item frequencies")


class OptimConfig(_Strict):
    name: Literal["adam", "adamw"] = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    eps: float = 1e-8
    fused: bool | None = Field(None, description="fused Adam/AdamW kernel (one pass over all parameters; ~10x "
                               "cheaper steps on CPU for these small models). None: on when every parameter is "
                               "a floating tensor on a CPU/CUDA device; same updates as the default loop")


class TrainConfig(_Strict):
    epochs: int = Field(200, description="maximum number of full shuffled passes over the training split")
    batch_size: int = 256
    patience: int = Field(10, description="early stopping: epochs without validation improvement")
    select_metric: str = Field("NDCG@20", description="validation metric that selects the best epoch")
    ks: list[int] = Field(default_factory=lambda: [1, 5, 10, 20])
    eval_every: int = 1
    eval_batch: int = 1024
    eval_item_chunk: int | None = Field(None, description="stream ranking over item chunks of this size "
                                        "(bounded memory for huge catalogues; None: score all items at once)")
    exclude_history: bool = Field(False, description="mask history items when ranking (official: no)")
    seed: int = 2024
    num_threads: int | None = Field(None, description="torch intra-op threads (None: torch default)")
    device: str = "cpu"
    min_epochs: int = 1


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
    try:
        return RunConfig.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(x) for x in err["loc"])
        src = f"{path}: " if path else ""
        raise ConfigError(f"{src}field '{loc}': {err['msg']}") from None
