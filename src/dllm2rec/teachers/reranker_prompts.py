"""Prompts and the verbalizer of the LLM reranker teacher (``reranker.py``; LlamaRec-style, docs/reranker.md).

One prompt per request lists the user's history titles (BIGRec's wording, ``bigrec/prompts.py``) and the M candidate
items of the retriever, each behind a single-token label::

    ... ### Instruction:
    Given the movies the user has watched before and a list of candidate movies, choose the candidate the user
    will watch next. Answer with the candidate's letter only.

    ### Input:
    The user has watched the following movies before:"Toy Story (1995)", "Heat (1995)"
    Candidates:
    A. "Star Wars (1977)"
    B. "Fargo (1996)"

    ### Response:
    <answer position: the next token is read here>

The score of candidate j is the LM-head logit of label token j at the answer position (the last prompt token):
ONE forward pass scores all M candidates (no generation, no title matching). Prompts are left-padded and the
position ids come from the attention mask, so a row's scores do not depend on the other rows of its batch.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from dllm2rec.errors import ConfigError
from dllm2rec.teachers.bigrec.prompts import TEMPLATE, clean_title, format_input, history_titles, resolve_domain

DEFAULT_LABELS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"

# (what the items are, what the user does with them) per BIGRec prompt domain
_NOUNS = {"games": ("video games", "play"), "movies": ("movies", "watch"), "music": ("artists", "listen to"),
          "generic": ("items", "interact with")}


def rerank_instruction(domain: str) -> str:
    noun, verb = _NOUNS[resolve_domain(domain)]
    # the history half of BIGRec's instruction, then the multiple-choice task
    return (f"Given the {noun} the user has {_past(verb)} before and a list of candidate {noun}, choose the "
            f"candidate the user will {verb} next. Answer with the candidate's letter only.")


def _past(verb: str) -> str:
    return {"play": "played", "watch": "watched", "listen to": "listened to",
            "interact with": "interacted with"}[verb]


def short_title(title: str, max_chars: int) -> str:
    """BIGRec's cleaned title, cut to ``max_chars`` (bounds the prompt length: every token costs a forward)."""
    t = clean_title(title)
    return t if max_chars <= 0 or len(t) <= max_chars else t[:max_chars - 1].rstrip() + "…"


def build_rerank_prompt(domain: str, history: Sequence[str], candidates: Sequence[str], labels: str,
                        max_chars: int = 80) -> str:
    """The full prompt up to and including ``### Response:\\n`` (the answer position follows)."""
    if len(candidates) > len(labels):
        raise ConfigError(f"{len(candidates)} candidates but only {len(labels)} labels")
    hist = format_input(domain, [short_title(t, max_chars) for t in history]).rstrip()
    cands = "\n".join(f'{labels[j]}. "{short_title(t, max_chars)}"' for j, t in enumerate(candidates))
    return TEMPLATE.format(instruction=rerank_instruction(domain), input=f"{hist}\nCandidates:\n{cands}")


def row_rerank_prompts(dataset, split: str, positions, candidates: np.ndarray, domain: str, labels: str,
                       max_history: int = 10, max_chars: int = 80) -> list[str]:
    """One prompt per row position; ``candidates`` [B, M] item ids in the order they are labelled."""
    titles = dataset.titles
    return [build_rerank_prompt(domain, history_titles(dataset, split, int(p), max_history),
                                [titles[int(i)] for i in cands], labels, max_chars)
            for p, cands in zip(positions, candidates)]


def label_token_ids(tok, labels: str) -> list[int]:
    """The token id of each label; ConfigError unless every label is exactly one token and all differ."""
    ids = []
    for lab in labels:
        t = tok(lab, add_special_tokens=False)["input_ids"]
        if len(t) != 1:
            raise ConfigError(f"reranker config field 'labels': label {lab!r} is {len(t)} tokens for this "
                              "tokenizer; the verbalizer needs single-token labels")
        ids.append(int(t[0]))
    if len(set(ids)) != len(ids):
        raise ConfigError("reranker config field 'labels': two labels map to the same token")
    return ids


def label_logits(model, tok, prompts: list[str], label_ids: list[int]):
    """[B, M] logits of the label tokens at each prompt's answer position (its last token), one forward pass.

    Left padding puts every answer position at index -1; position ids are counted over real tokens only, so a
    padded row sees the same positions as when it is scored alone. ``logits_to_keep=1``: the LM head runs on the
    answer position only (it is ~10 % of a 135M model's FLOPs when applied to every position)."""
    import torch

    tok.padding_side = "left"
    enc = tok(prompts, return_tensors="pt", padding=True)
    dev = model.device
    ids, mask = enc["input_ids"].to(dev), enc["attention_mask"].to(dev)
    pos = (mask.long().cumsum(1) - 1).clamp(min=0)
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=1)
    return out.logits[:, -1, :].index_select(1, torch.as_tensor(label_ids, device=dev)).float()
