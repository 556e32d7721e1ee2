"""A tiny offline LLaMA + locally trained BPE tokenizer and a tiny synthetic dataset.

Used by the tests and as the benchmark's fallback model: everything is built in seconds with no network.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from dllm2rec.data.schema import SeqDataset, make_split
from dllm2rec.teachers.bigrec.prompts import DOMAINS, TEMPLATE

WORDS = ["Alpha", "Bravo", "Comet", "Delta", "Echo", "Falcon", "Galaxy", "Harbor", "Island", "Jungle", "Kingdom",
         "Legend", "Meadow", "Nebula", "Ocean", "Phoenix", "Quest", "River", "Shadow", "Thunder"]


def tiny_titles(n: int = 24) -> list[str]:
    return [f"{WORDS[i % len(WORDS)]} {WORDS[(3 * i + 1) % len(WORDS)]} ({1960 + i})" for i in range(n)]


def tiny_dataset(n_items: int = 24, n_train: int = 48, n_eval: int = 12, max_len: int = 10, seed: int = 0,
                 domain: str = "movies"):
    """Sequences that mostly walk i -> i+1 (learnable), with random lengths; PAD = n_items."""

    rng = np.random.default_rng(seed)

    def rows(n):
        hs, ts = [], []
        for _ in range(n):
            L = int(rng.integers(2, max_len + 1))
            start = int(rng.integers(0, n_items))
            seq = [(start + k) % n_items for k in range(L + 1)]
            hs.append(seq[:-1])
            ts.append(seq[-1])
        return hs, ts

    splits = {}
    for name, n in (("train", n_train), ("valid", n_eval), ("test", n_eval)):
        h, t = rows(n)
        splits[name] = make_split(h, t, n_items, max_len)
    return SeqDataset("tiny", n_items, max_len, tiny_titles(n_items), splits, {"domain": domain}).validate()


def make_tiny_llama(path: str | Path, extra_texts: list[str] | None = None, hidden: int = 32, layers: int = 2,
                    vocab_size: int = 300, seed: int = 0) -> Path:
    """Train a byte-level BPE tokenizer on the BIGRec template + titles, build a random tiny LLaMA, save both."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    corpus = [TEMPLATE] + [d.instruction + " " + d.input_prefix for d in DOMAINS.values()]
    corpus += [f'"{t}"' for t in tiny_titles(40)] + list(extra_texts or [])
    tk = Tokenizer(models.BPE(unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tk.train_from_iterator(corpus * 3, trainer)
    tk.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                      special_tokens=[("<s>", tk.token_to_id("<s>"))])
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                  pad_token="<pad>", padding_side="left")
    tok.save_pretrained(str(path))
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden,
                      num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=2,
                      max_position_embeddings=1024, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id, tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(str(path))
    return path
