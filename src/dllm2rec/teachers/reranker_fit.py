"""The LoRA training loop of the LLM reranker (``reranker.py``): cross-entropy over the M label logits.

As LlamaRec: the training rows are a seeded sample (``budget_rows``) of the training rows whose target is among the
retriever's top M (a row without it has no correct label), the candidates keep the retriever's order, and the loss is
``CE(label_logits[B, M], position of the target)``. LoRA on the attention projections (q/k/v/o; of the last
``lora_layers`` decoder layers when set), AdamW, linear
warmup then linear decay over ``steps`` optimizer steps of ``batch_size`` rows, gradient clipping at 1.

Output directory::

    adapter/        the LoRA adapter after the last step (written atomically) + reranker.json (config, losses)
    last/           resumable state every ``save_every`` steps: adapter + state.pt (optimizer, scheduler, step, rng)
    log.jsonl       one line per optimizer step (loss, seconds)

``state.pt`` is read back through ``utils.untrusted.torch_load`` (tensors and plain containers only).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from dllm2rec.errors import Dllm2recError
from dllm2rec.teachers.models import load_causal_lm
from dllm2rec.teachers.reranker_prompts import label_logits
from dllm2rec.utils import untrusted
from dllm2rec.utils.io import atomic_dir
from dllm2rec.utils.progress import progress

STATE = "state.pt"


def lora_model(ref, cfg):
    """The base model with LoRA on ``cfg.target_modules``; ``cfg.lora_layers`` = N > 0 puts it on the last N decoder
    layers only, so backward stops there (the frozen layers below build no graph): on CPU a 30-layer 135M model
    with N = 8 trains at about half the cost per row of LoRA everywhere."""
    from peft import LoraConfig, get_peft_model

    model = load_causal_lm(ref, cfg.dtype, device=cfg.device)
    n_layers = int(getattr(model.config, "num_hidden_layers", 0) or 0)
    layers = None
    if cfg.lora_layers and n_layers:
        layers = list(range(max(0, n_layers - cfg.lora_layers), n_layers))
    lcfg = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=list(cfg.target_modules), layers_to_transform=layers, bias="none",
                      task_type="CAUSAL_LM")
    try:
        return get_peft_model(model, lcfg)
    except ValueError as e:
        raise Dllm2recError(f"reranker config field 'target_modules': {cfg.target_modules} do not fit this model "
                            f"({e})") from None


def train_reranker(model, tok, prompts: list[str], targets: np.ndarray, label_ids: list[int], cfg,
                   out: str | Path | None = None, resume: bool = False, stop_after: int | None = None,
                   meta: dict | None = None) -> dict:
    """Train ``model`` (a peft model) in place; returns losses and timing. ``stop_after``: return after that many
    steps of this call (tests: an interrupted fit)."""
    import torch

    out = Path(out) if out is not None else None
    last = out / "last" if out is not None else None
    if out is not None and not resume and (last / STATE).is_file():
        raise Dllm2recError(f"{out}: holds a reranker checkpoint; pass --resume to continue or use a new --out")
    torch.manual_seed(cfg.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    total = int(cfg.steps)

    def lr_lambda(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / max(1, cfg.warmup_steps)
        return max(0.0, (total - step) / max(1, total - cfg.warmup_steps))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda)
    state = {"step": 0, "losses": [], "train_seconds": 0.0}
    if resume and last is not None and (last / STATE).is_file():
        from peft import set_peft_model_state_dict
        from peft.utils import load_peft_weights

        ck = untrusted.torch_load(last / STATE)  # never runs code
        set_peft_model_state_dict(model, load_peft_weights(str(last)))
        opt.load_state_dict(ck["opt"])
        sched.load_state_dict(ck["sched"])
        state = ck["state"]
        torch.set_rng_state(ck["rng"])

    def save(where: Path, with_state: bool) -> None:
        with atomic_dir(where) as tmp:
            model.save_pretrained(str(tmp))
            if with_state:
                torch.save({"opt": opt.state_dict(), "sched": sched.state_dict(), "state": state,
                            "rng": torch.get_rng_state()}, tmp / STATE)
            else:
                info = {**(meta or {}), "config": cfg.model_dump(mode="json"), "state": state}
                (tmp / "reranker.json").write_text(json.dumps(info, indent=1), encoding="utf-8")

    n = len(prompts)
    tgt = torch.as_tensor(np.asarray(targets), dtype=torch.long)
    model.train()
    bar = progress(total=total, initial=state["step"], desc="fit reranker", unit="step")
    done_now = 0
    while state["step"] < total:
        if stop_after is not None and done_now >= stop_after:
            break
        step = state["step"]
        per_epoch = max(1, n // cfg.batch_size)
        epoch, within = divmod(step, per_epoch)
        order = np.random.default_rng(cfg.seed * 1000 + epoch).permutation(n)  # resumable order
        idx = order[within * cfg.batch_size:(within + 1) * cfg.batch_size]
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        logits = label_logits(model, tok, [prompts[i] for i in idx], label_ids)
        loss = torch.nn.functional.cross_entropy(logits, tgt[idx].to(logits.device))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        dt = time.perf_counter() - t0
        state["step"] += 1
        state["train_seconds"] += dt
        state["losses"].append(round(float(loss.detach()), 5))
        done_now += 1
        bar.update(1)
        bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            with open(out / "log.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps({"step": state["step"], "loss": state["losses"][-1], "seconds": round(dt, 4)})
                        + "\n")
            if state["step"] % cfg.save_every == 0 or state["step"] == total:
                save(last, True)
    bar.close()
    model.eval()
    finished = state["step"] >= total
    if out is not None and finished:
        save(out / "adapter", False)
    steps = max(state["step"], 1)
    return {"steps": state["step"], "finished": finished, "losses": state["losses"], "train_rows": n,
            "train_seconds": round(state["train_seconds"], 3),
            "seconds_per_step": round(state["train_seconds"] / steps, 4),
            "trainable_params": sum(p.numel() for p in params)}
