"""LoRA SFT of a causal LM on BIGRec prompts (paper-spec §2.2), a small explicit loop that is robust on CPU.

Defaults follow BIGRec: LoRA r 8, α 16, dropout 0.05 on q/v projections, a seeded sample of 1,024 training rows,
AdamW, linear warmup (20 steps) then linear decay, early stopping on validation LM loss (patience 5 evaluations).
Deviation (documented, option ``train_on_inputs=True`` restores BIGRec): the loss is on the response only by default.
Prompt and response are tokenised separately and concatenated, so the response tokens seen in training are exactly
the tokens the constrained decoder's title trie uses.

Output directory::

    adapter/         best adapter so far (peft format, written atomically) + finetune.json (settings, losses)
    last/            resumable checkpoint: adapter + state.pt (optimizer, scheduler, step, best loss, patience)
    log.jsonl        one JSON line per evaluation
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from dllm2rec.errors import Dllm2recError
from dllm2rec.utils.io import atomic_dir
from dllm2rec.utils.progress import progress


@dataclass
class FinetuneConfig:
    sample: int = 1024                # training rows (seeded sample; <= 0 means all)
    valid_sample: int = 128           # validation rows for the early-stopping loss
    seed: int = 0
    epochs: int = 3
    max_steps: int | None = None      # optimizer steps; stops early (tests, budgets)
    lr: float = 3e-4                  # BIGRec code default (README scripts: 1e-4)
    batch_size: int = 4
    grad_accum: int = 1
    warmup_steps: int = 20
    weight_decay: float = 0.0
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    train_on_inputs: bool = False
    cutoff_len: int = 512
    eval_every: int = 0               # optimizer steps between evaluations; 0 = once per epoch
    patience: int = 5
    domain: str = "generic"
    max_history: int = 10
    dtype: str = "float32"
    device: str = "cpu"               # cpu | cuda | auto


def encode_example(tok, prompt: str, response: str, cutoff_len: int, train_on_inputs: bool) -> tuple[list, list]:
    p = tok(prompt)["input_ids"]
    r = tok(response, add_special_tokens=False)["input_ids"] + [int(tok.eos_token_id)]
    ids = (p + r)[:cutoff_len]
    labels = (list(p) if train_on_inputs else [-100] * len(p)) + r
    return ids, labels[:cutoff_len]


def build_examples(dataset, split: str, positions, tok, cfg: FinetuneConfig) -> list[tuple[list, list]]:
    from dllm2rec.teachers.bigrec.prompts import build_prompt, format_response, history_titles

    s = dataset[split]
    out = []
    for p in positions:
        prompt = build_prompt(cfg.domain, history_titles(dataset, split, int(p), cfg.max_history))
        out.append(encode_example(tok, prompt, format_response(dataset.titles[int(s.target[p])]), cfg.cutoff_len,
                                  cfg.train_on_inputs))
    return out


def collate(batch: list[tuple[list, list]], pad_id: int):
    import torch

    n = max(len(ids) for ids, _ in batch)
    ids = torch.full((len(batch), n), pad_id, dtype=torch.long)
    lab = torch.full((len(batch), n), -100, dtype=torch.long)
    mask = torch.zeros((len(batch), n), dtype=torch.long)
    for i, (x, y) in enumerate(batch):  # right padding for training
        ids[i, : len(x)] = torch.tensor(x)
        lab[i, : len(y)] = torch.tensor(y)
        mask[i, : len(x)] = 1
    return ids, mask, lab


def sample_positions(n: int, k: int, seed: int) -> np.ndarray:
    if k <= 0 or k >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=k, replace=False))


def eval_loss(model, examples, pad_id: int, batch_size: int) -> float:
    import torch

    model.eval()
    tot, ntok = 0.0, 0
    with torch.inference_mode():
        for s in range(0, len(examples), batch_size):
            ids, mask, lab = collate(examples[s:s + batch_size], pad_id)
            out = model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device),
                        labels=lab.to(model.device))
            k = int((lab[:, 1:] != -100).sum())
            tot += float(out.loss) * k
            ntok += k
    model.train()
    return tot / max(ntok, 1)


def finetune(dataset, model_ref, out: str | Path, cfg: FinetuneConfig, resume: bool = False) -> dict:
    """Train a LoRA adapter; returns a summary (best validation loss, steps, seconds/sample)."""
    import torch
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
    from peft.utils import load_peft_weights

    from dllm2rec.teachers.models import load_causal_lm, load_tokenizer

    out = Path(out)
    last = out / "last"
    if not resume and (last / "state.pt").is_file():
        raise Dllm2recError(f"{out}: holds a fine-tuning checkpoint; pass --resume to continue or use a new --out")
    torch.manual_seed(cfg.seed)
    tok = load_tokenizer(model_ref)
    model = load_causal_lm(model_ref, cfg.dtype, device=cfg.device)
    lcfg = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=list(cfg.target_modules), bias="none", task_type="CAUSAL_LM")
    try:
        model = get_peft_model(model, lcfg)
    except ValueError as e:
        raise Dllm2recError(f"LoRA target modules {cfg.target_modules} do not fit this model ({e})") from None
    model.train()
    pad = int(tok.pad_token_id)

    train_pos = sample_positions(len(dataset["train"]), cfg.sample, cfg.seed)
    valid_split = "valid" if "valid" in dataset.splits else "train"
    valid_pos = sample_positions(len(dataset[valid_split]), cfg.valid_sample, cfg.seed + 1)
    train_ex = build_examples(dataset, "train", train_pos, tok, cfg)
    valid_ex = build_examples(dataset, valid_split, valid_pos, tok, cfg)

    steps_per_epoch = max(1, math.ceil(len(train_ex) / (cfg.batch_size * cfg.grad_accum)))
    total = steps_per_epoch * cfg.epochs
    if cfg.max_steps is not None:
        total = min(total, cfg.max_steps)
    eval_every = cfg.eval_every or steps_per_epoch
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)

    def lr_lambda(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / max(1, cfg.warmup_steps)
        return max(0.0, (total - step) / max(1, total - cfg.warmup_steps))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda)
    state = {"step": 0, "best": float("inf"), "bad": 0, "history": [], "train_seconds": 0.0, "samples_seen": 0}
    if resume and (last / "state.pt").is_file():
        ck = torch.load(last / "state.pt", weights_only=False, map_location="cpu")
        set_peft_model_state_dict(model, load_peft_weights(str(last)))
        opt.load_state_dict(ck["opt"])
        sched.load_state_dict(ck["sched"])
        state = ck["state"]
        torch.set_rng_state(ck["rng"])

    def save_last() -> None:
        with atomic_dir(last) as tmp:
            model.save_pretrained(str(tmp))
            torch.save({"opt": opt.state_dict(), "sched": sched.state_dict(), "state": state,
                        "rng": torch.get_rng_state(), "config": asdict(cfg)}, tmp / "state.pt")

    def save_best() -> None:
        with atomic_dir(out / "adapter") as tmp:
            model.save_pretrained(str(tmp))
            meta = {"base_model": model_ref.model_id, "base_path": str(model_ref.path), "config": asdict(cfg),
                    "dataset": dataset.name, "dataset_fingerprint": dataset.fingerprint(), "state": state}
            (tmp / "finetune.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")

    def evaluate_and_checkpoint() -> bool:
        vl = eval_loss(model, valid_ex, pad, cfg.batch_size)
        improved = vl < state["best"] - 1e-6
        state["history"].append({"step": state["step"], "valid_loss": round(vl, 5)})
        if improved:
            state["best"], state["bad"] = vl, 0
            save_best()
        else:
            state["bad"] += 1
        with open(out / "log.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps({"step": state["step"], "valid_loss": vl, "best": state["best"],
                                "time": time.time()}) + "\n")
        save_last()
        return state["bad"] >= cfg.patience

    out.mkdir(parents=True, exist_ok=True)
    bar = progress(total=total, initial=state["step"], desc="finetune", unit="step")
    stop = False
    model.train()
    while state["step"] < total and not stop:
        step = state["step"]
        epoch, within = divmod(step, steps_per_epoch)
        order = np.random.default_rng(cfg.seed * 1000 + epoch).permutation(len(train_ex))  # resumable order
        per_step = cfg.batch_size * cfg.grad_accum
        idx = order[within * per_step:(within + 1) * per_step]
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        chunks = [idx[s:s + cfg.batch_size] for s in range(0, len(idx), cfg.batch_size)]
        ntok_all = sum(sum(1 for y in train_ex[i][1][1:] if y != -100) for i in idx)
        loss_sum = 0.0
        for ch in chunks:
            ids, mask, lab = collate([train_ex[i] for i in ch], pad)
            dev = model.device
            loss = model(input_ids=ids.to(dev), attention_mask=mask.to(dev), labels=lab.to(dev)).loss
            k = int((lab[:, 1:] != -100).sum())
            (loss * k / max(ntok_all, 1)).backward()  # token-weighted over the accumulated micro-batches
            loss_sum += float(loss.detach()) * k
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        state["step"] += 1
        state["train_seconds"] += time.perf_counter() - t0
        state["samples_seen"] += len(idx)
        bar.update(1)
        bar.set_postfix(loss=f"{loss_sum / max(ntok_all, 1):.3f}")
        if state["step"] % eval_every == 0 or state["step"] == total:
            stop = evaluate_and_checkpoint()
    bar.close()
    if not (out / "adapter").is_dir():  # resumed after the last evaluation or never evaluated
        evaluate_and_checkpoint()
    return {"out": str(out), "adapter": str(out / "adapter"), "steps": state["step"], "best_valid_loss": state["best"],
            "train_rows": len(train_ex), "early_stopped": stop,
            "seconds_per_sample": round(state["train_seconds"] / max(state["samples_seen"], 1), 4)}
