"""Training loop of the ``llm-emb`` teacher: full or sampled softmax, progress bars, per-epoch checkpoints, resume.

Softmax over items (``LLMEmbConfig.item_loss``, resolved by ``resolve_item_loss``):

- ``full``: every step runs the adapter over all N titles and takes the cross-entropy over all N scores. Exact, the
  shipped recipe (ML-100K, LastFM), but a step costs O(N) adapter work forward and backward.
- ``sampled``: a step runs the adapter only over the items the batch touches — its history items, its labels and
  ``negatives`` items drawn uniformly (with replacement, shared by the batch) — and takes the cross-entropy over
  C = labels ∪ negatives (in-batch labels act as negatives of the other rows), each score corrected by −log q_c,
  q_c = 1 − (1 − p_c)^{labels} · (1 − 1/N)^{negatives} the probability that item c is in C (p_c = c's share of the
  training labels; the logQ correction of sampled softmax, so the loss estimates the full softmax). The step cost
  depends on the batch, not on N. Validation and all scoring stay full ranking over all N items.

Checkpoints (``ckpt_dir``): after every epoch, ``epoch-NNNN/`` is written atomically (``model.safetensors``,
``best.safetensors`` — both without the frozen title buffer —, ``optim.safetensors`` + ``state.json``: epoch,
best-so-far, patience counter, history, optimizer groups, numpy / torch / sampler RNG states), then the ``LATEST``
file is replaced atomically to name it and older epochs are removed; nothing is pickled. ``resume=True`` restores
all of it and continues with the next epoch, bit-identical to an uninterrupted fit on the same machine and thread
count. ``state.json`` stores a key (config + data + rows + title embeddings); resuming a checkpoint made for
anything else is refused.
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from dllm2rec.errors import ConfigError
from dllm2rec.evaluation.metrics import metrics_from_ranks
from dllm2rec.teachers.llmemb_model import LLMEmbConfig, LLMEmbSeqModel, _eval_ranks
from dllm2rec.utils.io import atomic_dir, atomic_write_text, read_json
from dllm2rec.utils.progress import progress

CKPT_FORMAT = "dllm2rec-llmemb-checkpoint"
CKPT_VERSION = 1
LATEST = "LATEST"


# ---------------------------------------------------------------------------------------------------- losses
def _labels_all_positions(seq, lens, tgt, n_items):
    """[B, L+1] labels: the (j+1)-th history item for j < len, the target at j = len, −100 (ignored) after."""
    B, L = seq.shape
    lab = torch.full((B, L + 1), -100, dtype=torch.long)
    pos = torch.arange(L + 1)[None, :]
    nxt = torch.cat([seq, seq.new_full((B, 1), n_items)], 1)
    lab = torch.where(pos < lens[:, None], nxt, lab)
    lab[torch.arange(B), lens] = tgt
    return lab


def full_loss(model: LLMEmbSeqModel, seq, lens, tgt, cfg: LLMEmbConfig, n_items: int) -> torch.Tensor:
    """Cross-entropy over all N items (the adapter runs over every title)."""
    reps = model.item_reps()
    h = model.hidden(seq, reps)
    if cfg.all_positions:
        lab = _labels_all_positions(seq, lens, tgt, n_items)
        logits = model.score_all(h.reshape(-1, model.dim), reps)
        return F.cross_entropy(logits, lab.reshape(-1), ignore_index=-100)
    state = h[torch.arange(len(tgt)), lens]
    return F.cross_entropy(model.score_all(state, reps), tgt)


def sampled_loss(model: LLMEmbSeqModel, seq, lens, tgt, cfg: LLMEmbConfig, n_items: int, gen: torch.Generator,
                 label_p: torch.Tensor) -> torch.Tensor:
    """Sampled softmax with the logQ correction (module docstring); adapter work ∝ items the batch touches."""
    if cfg.all_positions:
        lab = _labels_all_positions(seq, lens, tgt, n_items).reshape(-1)
        keep = lab >= 0
        lab_items = lab[keep]
    else:
        lab_items = tgt
    negs = torch.randint(n_items, (cfg.negatives,), generator=gen)
    cand = torch.unique(torch.cat([lab_items, negs]))                      # sorted
    used = torch.unique(torch.cat([seq[seq != n_items], cand]))             # sorted: input + output items
    reps = model.reps_for(used)
    local = torch.searchsorted(used, seq.clamp(max=n_items - 1))
    local = local.masked_fill(seq == n_items, len(used))                    # PAD -> the zero row of hidden()
    h = model.hidden(local, reps)
    if cfg.all_positions:
        states = h.reshape(-1, model.dim)[keep]
    else:
        states = h[torch.arange(len(tgt)), lens]
    logq = inclusion_logq(label_p[cand], len(lab_items), cfg.negatives, n_items)
    logits = model.score_items(states, reps[torch.searchsorted(used, cand)], cand) - logq.float()
    return F.cross_entropy(logits, torch.searchsorted(cand, lab_items))


def inclusion_logq(p: torch.Tensor, n_labels: int, negatives: int, n_items: int) -> torch.Tensor:
    """log q_c, q_c = P(item c in labels ∪ negatives) = 1 − (1 − p_c)^n_labels · (1 − 1/N)^negatives."""
    return torch.log1p(-torch.exp(n_labels * torch.log1p(-p) + negatives * np.log1p(-1.0 / n_items)))


def label_shares(train, pool: np.ndarray, n_items: int, all_positions: bool) -> torch.Tensor:
    """p_c: item c's share of the training labels of ``pool`` rows (float64, clipped below 1)."""
    labels = [train.target[pool]]
    if all_positions:
        seq, lens = train.seq[pool], train.len[pool]
        labels.append(seq[np.arange(seq.shape[1])[None, :] < lens[:, None]])
    c = np.bincount(np.concatenate(labels), minlength=n_items).astype(np.float64)
    return torch.from_numpy(np.clip(c / max(c.sum(), 1.0), 0.0, 1.0 - 1e-12))


# ---------------------------------------------------------------------------------------------------- checkpoints
def _no_title(state: dict) -> dict:
    return {k: v.detach().contiguous().clone() for k, v in state.items() if k != "title"}


def has_checkpoint(ckpt_dir) -> bool:
    return ckpt_dir is not None and Path(ckpt_dir).is_dir() and any(Path(ckpt_dir).rglob(LATEST))


def save_checkpoint(ckpt_dir: Path, model, best_state, opt, st: dict, rng, gen) -> Path:
    """Write ``epoch-NNNN/`` atomically, point ``LATEST`` at it, drop older epochs (module docstring)."""
    from safetensors.torch import save_file

    ckpt_dir = Path(ckpt_dir)
    name = f"epoch-{st['epoch']:04d}"
    osd = opt.state_dict()
    otensors, oscalars = {}, {}
    for pid, ps in osd["state"].items():
        for k, v in ps.items():
            if torch.is_tensor(v):
                otensors[f"{pid}.{k}"] = v.detach().contiguous().clone()
            else:
                oscalars[f"{pid}.{k}"] = v
    rngs = {"torch": torch.get_rng_state()}
    if gen is not None:
        rngs["sampler"] = gen.get_state()
    meta = {"format": CKPT_FORMAT, "version": CKPT_VERSION, **st, "numpy_rng": rng.bit_generator.state,
            "optim_param_groups": osd["param_groups"], "optim_scalars": oscalars}
    with atomic_dir(ckpt_dir / name) as tmp:
        save_file(_no_title(model.state_dict()), str(tmp / "model.safetensors"))
        save_file(_no_title(best_state if best_state is not None else model.state_dict()),
                  str(tmp / "best.safetensors"))
        save_file(otensors, str(tmp / "optim.safetensors"))
        save_file(rngs, str(tmp / "rng.safetensors"))
        (tmp / "state.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
    atomic_write_text(ckpt_dir / LATEST, name + "\n")
    for old in ckpt_dir.glob("epoch-*"):
        if old.name != name and old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
    return ckpt_dir / name


def load_checkpoint(ckpt_dir: Path, key: str, model, opt, rng, gen) -> tuple[dict, dict]:
    """Restore model / optimizer / RNGs from ``ckpt_dir``; return (progress state, best model state)."""
    from safetensors.torch import load_file

    ckpt_dir = Path(ckpt_dir)
    where = ckpt_dir / (ckpt_dir / LATEST).read_text(encoding="utf-8").strip()
    try:
        meta = read_json(where / "state.json", ValueError)
    except ValueError as e:
        raise ConfigError(f"unreadable checkpoint: {e}; delete {ckpt_dir} to start over") from None
    if meta.get("format") != CKPT_FORMAT or meta.get("version") != CKPT_VERSION:
        raise ConfigError(f"{where}: not an llm-emb checkpoint of version {CKPT_VERSION}; delete it to start over")
    if meta.get("key") != key:
        raise ConfigError(f"{ckpt_dir}: checkpoint was made for another config, dataset or title encoder "
                          f"(key {meta.get('key')} vs {key}); delete it or pass another --checkpoint-dir")
    title = model.title
    model.load_state_dict({**load_file(str(where / "model.safetensors")), "title": title})
    best = load_file(str(where / "best.safetensors"))
    state: dict = {}
    for k, v in load_file(str(where / "optim.safetensors")).items():
        pid, name = k.split(".", 1)
        state.setdefault(int(pid), {})[name] = v
    for k, v in meta["optim_scalars"].items():
        pid, name = k.split(".", 1)
        state.setdefault(int(pid), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": meta["optim_param_groups"]})
    rngs = load_file(str(where / "rng.safetensors"))
    torch.set_rng_state(rngs["torch"])
    if gen is not None:
        gen.set_state(rngs["sampler"])
    rng.bit_generator.state = meta["numpy_rng"]
    keep = ("epoch", "best", "best_ep", "bad", "hist", "done", "seconds", "key")
    return {k: meta[k] for k in keep}, best


# ---------------------------------------------------------------------------------------------------- training
def train_model(title_emb: np.ndarray, train, valid, n_items: int, max_len: int, cfg: LLMEmbConfig,
                rows: np.ndarray | None = None, log: Callable[[str], None] | None = None,
                ckpt_dir=None, resume: bool = False, key: str = "", desc: str = "llm-emb",
                on_epoch: Callable[[int], None] | None = None) -> tuple[LLMEmbSeqModel, dict]:
    """Train one model on ``train`` (optionally only ``rows``), early-stopped on valid NDCG@20; return best model.

    ``ckpt_dir``: write a checkpoint after every epoch; with ``resume`` continue from the one found there.
    ``on_epoch(epoch)`` is called after each epoch's checkpoint (tests interrupt a fit with it).
    """
    log = log or (lambda m: None)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    model = LLMEmbSeqModel(title_emb, max_len, cfg.dim, cfg.n_layers, cfg.n_heads, cfg.dropout, cfg.id_emb,
                           cfg.item_bias, cfg.adapter)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
                            weight_decay=cfg.weight_decay)
    seq_all = torch.from_numpy(train.seq)
    len_all = torch.from_numpy(train.len)
    tgt_all = torch.from_numpy(train.target)
    pool = np.arange(len(train)) if rows is None else np.asarray(rows)
    es_mask = cfg.mask_history != "off"
    mode, why = cfg.resolve_item_loss(n_items)
    gen = label_p = None
    if mode == "sampled":
        gen = torch.Generator().manual_seed(cfg.seed + 7919)
        label_p = label_shares(train, pool, n_items, cfg.all_positions)
    log(f"softmax over items: {mode} ({why}{f', {cfg.negatives} negatives per step' if mode == 'sampled' else ''})")
    st = {"key": key, "epoch": 0, "best": -1.0, "best_ep": 0, "bad": 0, "hist": [], "done": False, "seconds": 0.0}
    best_state = None
    resumed_from = None
    if ckpt_dir is not None and resume and has_checkpoint(ckpt_dir):
        st, best_state = load_checkpoint(ckpt_dir, key, model, opt, rng, gen)
        resumed_from = st["epoch"]
        log(f"resumed from {ckpt_dir} after epoch {st['epoch']} (best {st['best']:.4f} at epoch {st['best_ep']}"
            f"{', finished' if st['done'] else ''})")
    t0 = time.time() - st["seconds"]
    n_batches = -(-len(pool) // cfg.batch_size)
    ep_bar = progress(total=cfg.epochs, initial=st["epoch"], desc=f"{desc} epochs", unit="epoch", leave=True)
    for ep in range(st["epoch"] + 1, cfg.epochs + 1):
        if st["done"]:
            break
        model.train()
        perm = torch.from_numpy(rng.permutation(pool))
        tot, nb = 0.0, 0
        bar = progress(range(0, len(perm), cfg.batch_size), total=n_batches, desc=f"epoch {ep}", unit="batch")
        for s in bar:
            b = perm[s:s + cfg.batch_size]
            seq, lens, tgt = seq_all[b], len_all[b], tgt_all[b]
            if mode == "sampled":
                loss = sampled_loss(model, seq, lens, tgt, cfg, n_items, gen, label_p)
            else:
                loss = full_loss(model, seq, lens, tgt, cfg, n_items)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            tot += loss.item()
            nb += 1
            if nb % 10 == 0:
                bar.set_postfix(loss=f"{tot / nb:.4f}", refresh=False)
        bar.close()
        vm = metrics_from_ranks(_eval_ranks(model, valid, es_mask, cfg.eval_batch), ks=(20,))
        nd = vm["full/NDCG@20"]
        st["hist"].append({"epoch": ep, "loss": round(tot / max(nb, 1), 4), "valid_ndcg20": round(nd, 5),
                           "valid_hr20": round(vm["full/HR@20"], 5), "seconds": round(time.time() - t0, 1)})
        log(f"epoch {ep}: loss {tot / max(nb, 1):.4f} valid NDCG@20 {nd:.4f} ({time.time() - t0:.0f}s)")
        if nd > st["best"]:
            st.update(best=nd, best_ep=ep, bad=0)
            best_state = _no_title(model.state_dict())  # the frozen title table is never copied
        else:
            st["bad"] += 1
            if st["bad"] >= cfg.patience:
                st["done"] = True
        st["epoch"] = ep
        st["done"] = st["done"] or ep == cfg.epochs
        st["seconds"] = round(time.time() - t0, 3)
        ep_bar.update(1)
        ep_bar.set_postfix(loss=f"{tot / max(nb, 1):.4f}", valid_ndcg20=f"{nd:.4f}", best=f"{st['best']:.4f}")
        if ckpt_dir is not None:
            save_checkpoint(Path(ckpt_dir), model, best_state, opt, st, rng, gen)
        if on_epoch is not None:
            on_epoch(ep)
    ep_bar.close()
    model.load_state_dict({**best_state, "title": model.title})
    model.eval()
    info = {"best_epoch": st["best_ep"], "best_valid_ndcg20": round(st["best"], 5), "epochs_run": len(st["hist"]),
            "train_seconds": round(time.time() - t0, 1), "history": st["hist"], "item_loss": mode,
            "item_loss_reason": why}
    if mode == "sampled":
        info["negatives"] = cfg.negatives
    if resumed_from is not None:
        info["resumed_after_epoch"] = resumed_from
    return model, info
