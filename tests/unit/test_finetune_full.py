"""`teacher finetune --full`: all weights train (not only LoRA targets), the best model is a loadable HF directory."""
import json

import pytest
from typer.testing import CliRunner

from dllm2rec.errors import Dllm2recError
from dllm2rec.teachers.bigrec.finetune import FinetuneConfig, build_examples, encode_example, finetune
from dllm2rec.teachers.bigrec.tiny import make_tiny_llama, tiny_dataset

pytest.importorskip("peft")


@pytest.fixture()
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("DLLM2REC_CACHE", str(tmp_path / "cache"))
    from dllm2rec.teachers.models import resolve_model

    ds = tiny_dataset(n_train=16, n_eval=4)
    return tmp_path, ds, resolve_model(str(make_tiny_llama(tmp_path / "base")))


def _cfg(**kw):
    base = dict(sample=8, valid_sample=4, batch_size=4, warmup_steps=1, lr=5e-2, max_steps=2, domain="movies")
    base.update(kw)
    return FinetuneConfig(**base)


def _weights(path):
    from transformers import AutoModelForCausalLM

    return {k: v.detach().clone() for k, v in AutoModelForCausalLM.from_pretrained(str(path)).state_dict().items()}


def test_full_changes_base_weights_and_saves_a_loadable_model(env):
    import torch

    from dllm2rec.teachers.models import load_causal_lm, load_tokenizer, resolve_model

    tmp, ds, ref = env
    res = finetune(ds, ref, tmp / "ft", _cfg(full=True))
    assert res["mode"] == "full" and res["steps"] == 2 and res["stopped_by"] == "steps"
    model_dir = tmp / "ft" / "model"
    assert res["model"] == str(model_dir) and not (tmp / "ft" / "adapter").exists()
    assert (model_dir / "config.json").is_file() and (model_dir / "model.safetensors").is_file()
    assert not (model_dir / "adapter_config.json").exists()  # a plain model, no peft wrapper
    assert json.loads((model_dir / "finetune.json").read_text())["mode"] == "full"

    before, after = _weights(ref.path), _weights(model_dir)
    assert before.keys() == after.keys()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    # weights LoRA (q_proj, v_proj) never touches moved too: embeddings, MLP, norms, the LM head
    for part in ("embed_tokens", "mlp.down_proj", "k_proj", "lm_head", "input_layernorm"):
        assert any(part in k for k in changed), (part, sorted(changed))
    assert res["trainable_params"] == sum(v.numel() for v in before.values())

    merged = resolve_model(str(model_dir))  # what `generate --model OUT/model` does (tokenizer included)
    tok, model = load_tokenizer(merged), load_causal_lm(merged)
    enc = tok(['"Alpha Bravo (1960)"'], return_tensors="pt")
    with torch.no_grad():
        assert torch.isfinite(model(**enc).logits).all()


def test_lora_default_keeps_base_frozen(env):
    tmp, ds, ref = env
    res = finetune(ds, ref, tmp / "lora", _cfg())
    assert res["mode"] == "lora" and (tmp / "lora" / "adapter" / "adapter_config.json").is_file()
    assert not (tmp / "lora" / "model").exists() and res["trainable_params"] < 10_000


def test_full_resume_time_budget_and_mode_mismatch(env):
    tmp, ds, ref = env
    # bf16 autocast over float32 weights (the GPU recipe; runs on CPU too)
    res = finetune(ds, ref, tmp / "ft", _cfg(full=True, max_steps=50, max_seconds=1e-6, autocast="bfloat16"))
    assert res["steps"] == 1 and res["stopped_by"] == "time"  # evaluated and saved at the stop
    assert res["best_valid_loss"] < float("inf")
    assert (tmp / "ft" / "model" / "model.safetensors").is_file()
    res = finetune(ds, ref, tmp / "ft", _cfg(full=True, max_steps=3), resume=True)
    assert res["steps"] == 3
    with pytest.raises(Dllm2recError, match="full fine-tune"):
        finetune(ds, ref, tmp / "ft", _cfg(max_steps=4), resume=True)


def test_batched_examples_equal_one_at_a_time(env):
    from dllm2rec.teachers.bigrec.prompts import build_prompt, format_response, history_titles
    from dllm2rec.teachers.models import load_tokenizer

    _, ds, ref = env
    tok = load_tokenizer(ref)
    cfg = _cfg(cutoff_len=120)
    got = build_examples(ds, "train", range(10), tok, cfg, chunk=3)
    want = [encode_example(tok, build_prompt("movies", history_titles(ds, "train", p, cfg.max_history)),
                           format_response(ds.titles[int(ds["train"].target[p])]), 120, False) for p in range(10)]
    assert got == want


def test_cli_full_and_bad_autocast(env):
    from dllm2rec.cli import app

    tmp, ds, ref = env
    ds.save(tmp / "ds")
    args = ["teacher", "finetune", "--dataset", str(tmp / "ds"), "--model", str(ref.path), "--sample", "8",
            "--valid-sample", "4", "--batch-size", "4", "--warmup-steps", "1", "--max-steps", "1"]
    r = CliRunner().invoke(app, args + ["--out", str(tmp / "c"), "--full"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert json.loads(r.output[r.output.index("{"):])["model"] == str(tmp / "c" / "model")
    r = CliRunner().invoke(app, args + ["--out", str(tmp / "d"), "--autocast", "int8"])
    assert r.exit_code != 0 and isinstance(r.exception, Dllm2recError)
