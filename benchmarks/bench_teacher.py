"""Teacher generation throughput: a naive one-prompt-at-a-time ``model.generate`` loop vs our optimised paths.

Same model, same prompts; rows/s for each configuration and the speed-up over the naive loop. "same outputs" compares
the beams of each configuration with the naive loop's (exact token match of all beams, and of the top beam).

    python benchmarks/bench_teacher.py                       # SmolLM2-135M if installed, else a tiny LLaMA; 16 rows
    python benchmarks/bench_teacher.py --dataset prepared/ml-100k --rows 32 --domain movies --threads 1

Configurations:
  naive            stock HF beam search, one prompt per call (the prompt runs once per beam)
  batched          our beam search, batch of B prompts (sorted by length), left padding, prompt recomputed per beam;
                   rows whose beams are final leave the batch
  kv-reuse         batched + each prompt encoded once and its KV cache copied to the beams
  default          kv-reuse + the template prefix shared by the batch encoded once (`teacher generate` default)
  greedy           default with num_beams = 1 (different outputs: the cheapest decoder)
  constrained      default + catalogue trie (different outputs: every beam is a catalogue title)
  default-bf16     default in bfloat16 (optional, --bf16; CPU bf16 is often slower)
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m", help="model spec; falls back to a tiny LLaMA if unavailable")
    ap.add_argument("--dataset", default=None, help="prepared dataset dir (default: tiny synthetic)")
    ap.add_argument("--split", default="test")
    ap.add_argument("--domain", default=None)
    ap.add_argument("--rows", type=int, default=16)
    ap.add_argument("--beams", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--bf16", action="store_true")
    ap.add_argument("--skip", default="", help="comma-separated configurations to skip")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    os.environ["HF_HUB_OFFLINE"] = "1"

    from dllm2rec.errors import Dllm2recError
    from dllm2rec.teachers.bigrec.beam import beam_search, build_title_trie
    from dllm2rec.teachers.bigrec.prompts import dataset_domain, row_prompts
    from dllm2rec.teachers.bigrec.tiny import make_tiny_llama, tiny_dataset
    from dllm2rec.teachers.models import load_causal_lm, load_tokenizer, resolve_model

    if a.dataset:
        from dllm2rec.data.schema import SeqDataset

        ds = SeqDataset.load(a.dataset)
    else:
        ds = tiny_dataset(n_items=200, n_train=64, n_eval=max(a.rows, 16))
    try:
        ref = resolve_model(a.model)
    except Dllm2recError as e:
        print(f"[{e}] -> using a tiny LLaMA")
        ref = resolve_model(str(make_tiny_llama(tempfile.mkdtemp() + "/tiny", extra_texts=ds.titles)))
    tok = load_tokenizer(ref)
    model = load_causal_lm(ref)
    domain = dataset_domain(ds, a.domain)
    prompts = row_prompts(ds, a.split, range(min(a.rows, len(ds[a.split]))), domain)
    n = len(prompts)
    eos, pad = int(tok.eos_token_id), int(tok.pad_token_id)
    print(f"model={ref.model_id} dataset={ds.name} split={a.split} rows={n} beams={a.beams} batch={a.batch_size} "
          f"max_new_tokens={a.max_new_tokens} threads={a.threads} "
          f"prompt_tokens~{sum(len(tok(p)['input_ids']) for p in prompts) / n:.0f}")

    def naive():
        outs = []
        for p in prompts:
            e = tok(p, return_tensors="pt")
            g = model.generate(**e, num_beams=a.beams, num_return_sequences=a.beams, max_new_tokens=a.max_new_tokens,
                               do_sample=False, pad_token_id=pad)
            rows = []
            for r in g[:, e["input_ids"].shape[1]:].tolist():
                rows.append(r[:r.index(eos)] if eos in r else r)
            outs.append(rows)
        return outs

    def ours(m, beams, reuse, trie=None, lp=1.0, share=True):
        def run():
            # as `teacher generate` does: batch prompts of similar length (less left padding), restore row order
            order = sorted(range(n), key=lambda j: len(prompts[j]))
            outs = {}
            for s in range(0, n, a.batch_size):
                idx = order[s:s + a.batch_size]
                e = tok([prompts[j] for j in idx], return_tensors="pt", padding=True)
                res = beam_search(m, e["input_ids"], e["attention_mask"], beams, a.max_new_tokens, eos, pad,
                                  trie=trie, length_penalty=lp, reuse_prompt_cache=reuse,
                                  share_prefix=share)
                outs.update(zip(idx, res.tokens))
            return [outs[j] for j in range(n)]
        return run

    configs = [("naive", naive), ("batched", ours(model, a.beams, False)),
               ("kv-reuse", ours(model, a.beams, True, share=False)), ("default", ours(model, a.beams, True)),
               ("greedy", ours(model, 1, True)),
               ("constrained", ours(model, a.beams, True, build_title_trie(tok, ds.titles), 0.0))]
    if a.bf16:
        configs.append(("default-bf16", ours(load_causal_lm(ref, "bfloat16"), a.beams, True)))
    skip = set(a.skip.split(","))
    base = None
    ref_out = None
    print(f"{'config':<14}{'seconds':>9}{'rows/s':>9}{'speed-up':>10}  same outputs as naive (all beams / top beam)")
    for name, fn in configs:
        if name in skip:
            continue
        t0 = time.perf_counter()
        out = fn()
        dt = time.perf_counter() - t0
        rps = n / dt
        if name == "naive":
            base, ref_out = rps, out
        same = ""
        if ref_out is not None:
            all_eq = sum(o == r for o, r in zip(out, ref_out)) / n
            top_eq = sum(bool(o) and bool(r) and o[0] == r[0] for o, r in zip(out, ref_out)) / n
            same = f"{all_eq:.0%} / {top_eq:.0%}"
        sp = f"{rps / base:.2f}x" if base else "-"
        print(f"{name:<14}{dt:>9.2f}{rps:>9.3f}{sp:>10}  {same}", flush=True)


if __name__ == "__main__":
    main()
