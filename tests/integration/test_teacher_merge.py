"""`dllm2rec teacher merge`: base + LoRA adapter -> one standalone HF directory with the same outputs."""
import json

import pytest
from typer.testing import CliRunner

from dllm2rec.cli import app
from dllm2rec.teachers.bigrec.tiny import make_tiny_llama

pytest.importorskip("peft")


def _lora_adapter(base, out):
    """A LoRA adapter with non-zero B (a fresh LoRA is a no-op, which would make the test unable to fail)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(str(base)),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    model.save_pretrained(str(out))
    return out


def test_merge_matches_adapter(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from dllm2rec.teachers.models import load_causal_lm, load_tokenizer, resolve_model

    base = make_tiny_llama(tmp_path / "base")
    adapter = _lora_adapter(base, tmp_path / "adapter")
    res = CliRunner().invoke(app, ["teacher", "merge", "--model", str(base), "--adapter", str(adapter),
                                   "--out", str(tmp_path / "merged")], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    out = json.loads(res.output[res.output.index("{"):])
    merged = resolve_model(out["merged_model"])
    assert (merged.path / "model.safetensors").is_file() and not (merged.path / "adapter_config.json").exists()

    tok = load_tokenizer(merged)
    enc = tok(['"Alpha Beta (1961)"', "Given ten movies"], return_tensors="pt", padding=True)
    with torch.no_grad():
        m = AutoModelForCausalLM.from_pretrained(str(merged.path))(**enc).logits
        a = load_causal_lm(resolve_model(str(base)), adapter=adapter, merge=False)(**enc).logits
        b = AutoModelForCausalLM.from_pretrained(str(base))(**enc).logits
    torch.testing.assert_close(m, a, atol=1e-5, rtol=1e-5)
    assert (m - b).abs().max() > 1e-2  # the adapter changed the model, and the merge kept the change

    again = CliRunner().invoke(app, ["teacher", "merge", "--model", str(base), "--adapter", str(adapter),
                                     "--out", str(tmp_path / "merged")])
    assert again.exit_code != 0 and "already exists" in str(again.exception)
