"""Beam search over an HF causal LM with (a) the prompt encoded once and its KV cache copied to the beams and
(b) optional catalogue constraints from a token prefix trie.

The search itself mirrors transformers' ``_beam_search`` (default flags: ``length_penalty=1.0``,
``early_stopping=False``, 2·K candidates per step, a finished hypothesis scores ``sum_logprob / gen_len``), so with
``reuse_prompt_cache=False`` and no trie it returns what ``model.generate(num_beams=K)`` returns. The only change is
*where* the prompt is computed: stock generate runs every prompt K times (one copy per beam); here it runs once and
``DynamicCache.batch_repeat_interleave`` copies the cache — the same numbers, K× less prompt compute. With
``share_prefix`` the template prefix common to a batch's prompts is encoded once for the whole batch as well, and
rows whose K finished beams can no longer change leave the batch (HF keeps computing them).

Constrained mode: every step masks the vocabulary to the children of each beam's node in the trie of tokenised
``"title"`` + EOS sequences, so each finished beam is a catalogue item and the K finished beams form an n-best list
of items with log-probabilities.
"""
from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass, field
from typing import Sequence

import torch

from dllm2rec.teachers.bigrec.prompts import format_response

NEG = -1.0e9  # HF's "impossible" offset; -inf is reserved for tokens a trie forbids


@dataclass
class TitleTrie:
    """Prefix trie over token sequences; a sequence ends with EOS, whose node lists the item ids it spells."""

    eos_id: int
    root: dict = field(default_factory=dict)
    max_depth: int = 0
    n_items: int = 0

    def add(self, token_ids: Sequence[int], item: int) -> None:
        node = self.root
        for t in token_ids:
            node = node.setdefault(int(t), {})
        node = node.setdefault(self.eos_id, {})
        node.setdefault("items", []).append(int(item))
        self.max_depth = max(self.max_depth, len(token_ids) + 1)
        self.n_items += 1

    def node(self, prefix: Sequence[int]) -> dict | None:
        node = self.root
        for t in prefix:
            node = node.get(int(t))
            if node is None:
                return None
        return node

    def allowed(self, prefix: Sequence[int]) -> list[int]:
        node = self.node(prefix)
        return [] if node is None else [k for k in node if k != "items"]

    def items(self, tokens: Sequence[int]) -> list[int]:
        """Item ids spelled by a complete sequence (tokens ending with EOS); [] if it is not in the trie."""
        node = self.node(tokens)
        return [] if node is None else list(node.get("items", []))


def build_title_trie(tokenizer, titles: Sequence[str]) -> TitleTrie:
    """Trie over each item's response tokens: ``tok('"title"', no special tokens) + [EOS]`` (as in fine-tuning)."""

    trie = TitleTrie(int(tokenizer.eos_token_id))
    enc = tokenizer([format_response(t) for t in titles], add_special_tokens=False)["input_ids"]
    for i, ids in enumerate(enc):
        trie.add(ids, i)
    return trie


@dataclass
class BeamResult:
    """Per prompt: up to K finished beams, best first."""

    tokens: list[list[list[int]]]   # generated ids per beam (EOS stripped)
    scores: list[list[float]]       # HF beam score: sum logprob / generated length (incl. EOS)
    logprobs: list[list[float]]     # sum of token log-probabilities (incl. EOS)
    items: list[list[list[int]]] | None = None  # constrained: item ids each beam spells


def _positions(mask: torch.Tensor) -> torch.Tensor:
    pos = mask.long().cumsum(-1) - 1
    return pos.masked_fill(mask == 0, 1)


@functools.lru_cache(maxsize=16)
def _forward_params(cls: type) -> frozenset:
    return frozenset(inspect.signature(cls.forward).parameters)


def _forward(model, ids, mask, pos, cache):
    params = _forward_params(type(model))
    dev = model.device  # search bookkeeping stays on the CPU; only the model's inputs/outputs move
    kw = {"input_ids": ids.to(dev), "attention_mask": mask.to(dev), "position_ids": pos.to(dev), "use_cache": True}
    # transformers >= 5 renamed past_key_values -> cache; older versions only know the former
    kw["cache" if "cache" in params else "past_key_values"] = cache
    if "logits_to_keep" in params:  # only the last position's logits are needed (saves the LM head on the prompt)
        kw["logits_to_keep"] = 1
    out = model(**kw)
    new_cache = getattr(out, "past_key_values", None)
    if new_cache is None:
        new_cache = getattr(out, "cache", None)
    return out.logits[:, -1, :].float().cpu(), new_cache


def shared_prefix_len(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> int:
    """Length of the token prefix all (left-padded) prompts share, leaving every row at least one own token."""
    rows = [ids[m.bool()] for ids, m in zip(input_ids, attention_mask)]
    n = min(len(r) for r in rows) - 1
    if n <= 0:
        return 0
    eq = torch.stack([r[:n] == rows[0][:n] for r in rows]).all(0)
    return n if bool(eq.all()) else int(eq.long().argmin())


def _prefill(model, input_ids, attention_mask, pad_id: int, share_prefix: bool, min_prefix: int = 16):
    """Run the prompts; returns last-position logits [B, V], the cache and the attention mask that goes with it.

    With ``share_prefix`` the token prefix common to all prompts of the batch (BIGRec's template: instruction +
    input prefix) is encoded once, its cache copied to the B rows, and only each row's own suffix is run, left-padded
    *after* the prefix: mask = [1]*P + suffix mask, positions from the mask's cumsum, so every row sees exactly the
    positions and tokens of its unpadded prompt.
    """
    B = input_ids.shape[0]
    P = shared_prefix_len(input_ids, attention_mask) if share_prefix and B > 1 else 0
    if P < min_prefix:
        logits, cache = _forward(model, input_ids, attention_mask, _positions(attention_mask), None)
        return logits, cache, attention_mask
    rows = [ids[m.bool()] for ids, m in zip(input_ids, attention_mask)]
    pm = torch.ones(1, P, dtype=attention_mask.dtype)
    _, cache = _forward(model, rows[0][:P].view(1, -1), pm, _positions(pm), None)
    cache.batch_repeat_interleave(B)
    L = max(len(r) - P for r in rows)
    sids = torch.full((B, L), pad_id, dtype=input_ids.dtype)
    smask = torch.zeros((B, L), dtype=attention_mask.dtype)
    for b, r in enumerate(rows):
        n = len(r) - P
        sids[b, L - n:] = r[P:]
        smask[b, L - n:] = 1
    mask = torch.cat([torch.ones(B, P, dtype=attention_mask.dtype), smask], 1)
    logits, cache = _forward(model, sids, mask, _positions(mask)[:, P:], cache)
    return logits, cache, mask


def _trie_mask(trie: TitleTrie, seqs: torch.Tensor, step: int, vocab: int) -> torch.Tensor:
    """[R, V] additive mask: 0 for tokens the trie allows after each row's prefix seqs[:, :step], -inf elsewhere."""
    m = torch.full((seqs.shape[0], vocab), float("-inf"))
    cache: dict[tuple, list[int]] = {}
    for r, row in enumerate(seqs[:, :step].tolist()):
        key = tuple(row)
        allowed = cache.get(key)
        if allowed is None:
            allowed = cache[key] = trie.allowed(row)
        if allowed:
            m[r, allowed] = 0.0
    return m


@torch.inference_mode()
def greedy_search(model, input_ids, attention_mask, max_new_tokens: int, eos_id: int, pad_id: int,
                  trie: TitleTrie | None = None, share_prefix: bool = False) -> BeamResult:
    """num_beams = 1: argmax each step until EOS (HF greedy semantics)."""
    B = input_ids.shape[0]
    logits, cache, mask = _prefill(model, input_ids, attention_mask, pad_id, share_prefix)
    if trie is not None:
        max_new_tokens = min(max_new_tokens, trie.max_depth)
    seqs = torch.full((B, max_new_tokens), pad_id, dtype=torch.long)
    done = torch.zeros(B, dtype=torch.bool)
    lp = torch.zeros(B)
    lens = torch.zeros(B, dtype=torch.long)
    for t in range(max_new_tokens):
        logp = torch.log_softmax(logits, -1)
        if trie is not None:
            logp = logp + _trie_mask(trie, seqs, t, logp.shape[-1])
        tok = logp.argmax(-1)
        tok = torch.where(done, torch.full_like(tok, pad_id), tok)
        lp += torch.where(done, torch.zeros(B), logp.gather(1, tok.view(-1, 1)).squeeze(1))
        lens += (~done).long()
        seqs[:, t] = tok
        done |= tok == eos_id
        if bool(done.all()) or t == max_new_tokens - 1:
            break
        mask = torch.cat([mask, torch.ones(B, 1, dtype=mask.dtype)], 1)
        pos = _positions(mask)[:, -1:]
        logits, cache = _forward(model, tok.view(-1, 1), mask, pos, cache)
    toks, scores, lps, items = [], [], [], []
    for b in range(B):
        row = seqs[b, : int(lens[b])].tolist()
        full = list(row)
        if row and row[-1] == eos_id:
            row = row[:-1]
        toks.append([row])
        lps.append([float(lp[b])])
        scores.append([float(lp[b]) / max(int(lens[b]), 1)])
        if trie is not None:
            items.append([trie.items(full)])
    return BeamResult(toks, scores, lps, items if trie is not None else None)


@torch.inference_mode()
def beam_search(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, num_beams: int, max_new_tokens: int,
                eos_id: int, pad_id: int, trie: TitleTrie | None = None, length_penalty: float = 1.0,
                reuse_prompt_cache: bool = True, share_prefix: bool = False) -> BeamResult:
    """Batched beam search for left-padded prompts [B, P]; returns the K finished beams of each prompt.

    ``share_prefix`` (only with ``reuse_prompt_cache``): encode the prompts' common token prefix once per batch.
    """
    K = int(num_beams)
    if K == 1:
        return greedy_search(model, input_ids, attention_mask, max_new_tokens, eos_id, pad_id, trie, share_prefix)
    B = input_ids.shape[0]
    if trie is not None:  # every catalogue sequence ends within the trie's depth
        max_new_tokens = min(max_new_tokens, trie.max_depth)
    T = max_new_tokens
    if reuse_prompt_cache:
        logits, cache, mask = _prefill(model, input_ids, attention_mask, pad_id, share_prefix)
        cache.batch_repeat_interleave(K)  # copy the prompt's KV to the K beams instead of recomputing it
        logits = logits.repeat_interleave(K, 0)
    else:  # stock behaviour: the prompt runs once per beam
        ids = input_ids.repeat_interleave(K, 0)
        logits, cache = _forward(model, ids, attention_mask.repeat_interleave(K, 0),
                                 _positions(attention_mask.repeat_interleave(K, 0)), None)
        mask = attention_mask
    mask = mask.repeat_interleave(K, 0)
    V = logits.shape[-1]
    running = torch.full((B, K, T), pad_id, dtype=torch.long)
    running_scores = torch.full((B, K), NEG)
    running_scores[:, 0] = 0.0  # only the first beam is live at the start (they are all the same prompt)
    fin_seqs = torch.full((B, K, T), pad_id, dtype=torch.long)
    fin_scores = torch.full((B, K), NEG)
    fin_lens = torch.zeros((B, K), dtype=torch.long)
    is_fin = torch.zeros((B, K), dtype=torch.bool)
    unsat = torch.ones((B, 1), dtype=torch.bool)
    top_k_mask = torch.cat([torch.ones(K, dtype=torch.bool), torch.zeros(K, dtype=torch.bool)])
    B0, orig = B, torch.arange(B)  # rows still in the batch -> their index in the input
    out_seqs, out_scores = fin_seqs.clone(), fin_scores.clone()
    out_lens, out_fin = fin_lens.clone(), is_fin.clone()
    for t in range(T):
        logp = torch.log_softmax(logits, -1)
        if trie is not None:
            logp = logp + _trie_mask(trie, running.view(B * K, T), t, V)
        acc = (logp.view(B, K, V) + running_scores[:, :, None]).view(B, K * V)
        cand_lp, cand_idx = torch.topk(acc, 2 * K)
        parent = cand_idx // V
        tok = cand_idx % V
        cand_seq = running.gather(1, parent[:, :, None].expand(B, 2 * K, T)).clone()
        cand_seq[:, :, t] = tok
        hits = tok == eos_id
        if t == T - 1:  # max length reached: every candidate stops (HF's MaxLengthCriteria)
            hits = torch.ones_like(hits)
        # running beams for the next step: the best K candidates that did not stop
        run_lp = cand_lp + hits.float() * NEG
        sel = torch.topk(run_lp, K).indices
        running = cand_seq.gather(1, sel[:, :, None].expand(B, K, T))
        running_scores = run_lp.gather(1, sel)
        run_parent = parent.gather(1, sel)
        # finished hypotheses: candidates among the top K that stopped, scored with the length penalty
        just_fin = hits & top_k_mask[None, :]
        fscore = cand_lp / ((t + 1) ** length_penalty)
        fscore = fscore + (~unsat).float() * NEG + (~just_fin).float() * NEG
        m_seq = torch.cat([fin_seqs, cand_seq], 1)
        m_score = torch.cat([fin_scores, fscore], 1)
        m_len = torch.cat([fin_lens, torch.full((B, 2 * K), t + 1, dtype=torch.long)], 1)
        m_fin = torch.cat([is_fin, just_fin], 1)
        keep = torch.topk(m_score, K).indices
        fin_seqs = m_seq.gather(1, keep[:, :, None].expand(B, K, T))
        fin_scores = m_score.gather(1, keep)
        fin_lens = m_len.gather(1, keep)
        is_fin = m_fin.gather(1, keep)
        # early-stop heuristic (early_stopping=False): can the best running beam still beat the worst finished one?
        best_running = running_scores[:, :1] / ((t + 1) ** length_penalty)
        worst_fin = torch.where(is_fin, fin_scores.min(1, keepdim=True).values, torch.full_like(fin_scores, NEG))
        unsat = unsat & (best_running > worst_fin).any(-1, keepdim=True)
        if not bool(unsat.any()) or bool(hits.all()) or t == T - 1:
            break
        # rows whose finished set can no longer change are final: store them and drop them from the batch
        # (HF keeps computing them; their results are identical either way)
        live = unsat.view(-1)
        rows = torch.arange(B)
        if not bool(live.all()):
            done = rows[~live]
            out_seqs[orig[done]], out_scores[orig[done]] = fin_seqs[done], fin_scores[done]
            out_lens[orig[done]], out_fin[orig[done]] = fin_lens[done], is_fin[done]
            rows = rows[live]
            running, running_scores, run_parent = running[rows], running_scores[rows], run_parent[rows]
            fin_seqs, fin_scores, fin_lens, is_fin = fin_seqs[rows], fin_scores[rows], fin_lens[rows], is_fin[rows]
            unsat, orig = unsat[rows], orig[rows]
            mask = mask.view(B, K, -1)[rows].reshape(len(rows) * K, -1)
        flat_parent = (run_parent + rows[:, None] * K).view(-1)  # also selects the surviving rows' beams
        B = len(rows)
        cache.reorder_cache(flat_parent)
        mask = torch.cat([mask, torch.ones(B * K, 1, dtype=mask.dtype)], 1)
        logits, cache = _forward(model, running[:, :, t].reshape(-1, 1), mask, _positions(mask)[:, -1:], cache)
    out_seqs[orig], out_scores[orig], out_lens[orig], out_fin[orig] = fin_seqs, fin_scores, fin_lens, is_fin
    fin_seqs, fin_scores, fin_lens, is_fin = out_seqs, out_scores, out_lens, out_fin
    B = B0
    toks, scores, lps, items = [], [], [], []
    for b in range(B):
        rt, rs, rl, ri = [], [], [], []
        for k in range(K):
            s = float(fin_scores[b, k])
            if not is_fin[b, k] or s != s or s <= NEG / 2:  # empty slot or a trie dead end (-inf)
                continue
            n = int(fin_lens[b, k])
            full = fin_seqs[b, k, :n].tolist()
            row = full[:-1] if full and full[-1] == eos_id else full
            rt.append(row)
            rs.append(s)
            rl.append(s * (n ** length_penalty))
            if trie is not None:
                ri.append(trie.items(full))
        toks.append(rt)
        scores.append(rs)
        lps.append(rl)
        items.append(ri)
    return BeamResult(toks, scores, lps, items if trie is not None else None)
