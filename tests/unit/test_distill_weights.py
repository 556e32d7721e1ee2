"""Importance weights of DLLM2Rec's ranking distillation, against hand-computed values (spec §1.1, §1.2.5)."""
import math

import pytest
import torch

from dllm2rec.distill import weights as W


def close(a, b, tol=1e-6):
    assert torch.allclose(torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64),
                          atol=tol, rtol=0), (a, b)


def test_position_weights_beta1():
    # exp(-1), exp(-2), exp(-3) = .367879, .135335, .049787; sum .553001
    close(W.position_weights(3, 1.0), [0.665241, 0.244728, 0.090031])
    # K = 2: exp(-1)/(exp(-1)+exp(-2)) = sigmoid(1)
    close(W.position_weights(2), [0.731059, 0.268941])


def test_position_weights_temperature_and_official_values():
    # beta = 2: exp(-.5), exp(-1) = .606531, .367879 -> .622459, .377541
    close(W.position_weights(2, 2.0), [0.622459, 0.377541])
    w = W.position_weights(10)
    close(w[:3], [0.632149, 0.232555, 0.085552])  # e^-r / Σ_{r<=10} e^-r (Σ = .581973); spec: "≈ [0.632, 0.233, 0.086, ...]"
    assert abs(float(w.sum()) - 1) < 1e-6
    with pytest.raises(ValueError):
        W.position_weights(3, 0.0)


def test_confidence_raw_is_official_and_underflows():
    # exp(0)+1e-8, exp(-1)+1e-8 normalised
    close(W.confidence_weights(torch.tensor([[0.0, 1.0]]), "raw"), [[0.731059, 0.268941]])
    # raw L2 distances of LLM states: exp(-100) ~ 3.7e-44 << 1e-8 -> uniform (spec §1.4.4)
    close(W.confidence_weights(torch.tensor([[100.0, 101.0]]), "raw"), [[0.5, 0.5]])
    # the stable softmax keeps the information: same as raw without underflow
    close(W.confidence_weights(torch.tensor([[100.0, 101.0]]), "softmax"), [[0.731059, 0.268941]])


def test_confidence_minmax_and_zscore():
    # minmax [100,101,102] -> [0,.5,1] -> exp: 1, .606531, .367879 (+1e-8), sum 1.974410
    close(W.confidence_weights(torch.tensor([[100.0, 101.0, 102.0]]), "minmax"), [[0.506480, 0.307196, 0.186324]])
    # zscore [1,2,3]: mean 2, population std .816497 -> z = -1.224745, 0, 1.224745
    # exp(-z) = 3.403317, 1, .293832; sum 4.697149
    close(W.confidence_weights(torch.tensor([[1.0, 2.0, 3.0]]), "zscore"), [[0.724548, 0.212896, 0.062556]])
    # equal distances -> uniform under every normalisation (no 0/0)
    for n in W.CONFIDENCE_NORMS:
        close(W.confidence_weights(torch.tensor([[5.0, 5.0]]), n), [[0.5, 0.5]])
    with pytest.raises(ValueError):
        W.confidence_weights(torch.tensor([[1.0]]), "nope")


def test_target_confidence_per_row():
    # minmax over rows [1, 2, 3] -> 0, .5, 1 -> exp(-x) = 1, .606531, .367879; NaN -> mean of the known .658137
    c = W.target_confidence(torch.tensor([1.0, 2.0, 3.0, float("nan")]), "minmax")
    close(c, [1.0, 0.606531, 0.367879, (1 + 0.606531 + 0.367879) / 3])
    close(W.target_confidence(torch.tensor([0.0, 1.0]), "raw"), [1.0, math.exp(-1)])


def test_consistency_official_form():
    cand = torch.tensor([[5, 7], [1, 2]])
    top = torch.tensor([[7, 9], [3, 4]])
    close(W.consistency_weights(cand, top), [[1e-8, 1 + 1e-8], [1e-8, 1e-8]], tol=1e-7)  # float32: 1 + 1e-8 == 1
    scores = torch.tensor([[0.1, 0.9, 0.5, -1.0]])
    assert W.student_topk(scores, 2).tolist() == [[1, 2]]


def test_combine_row_normalised_like_official():
    wp = torch.tensor([0.731059, 0.268941])
    wc = torch.tensor([[0.5, 0.5]])
    wo = torch.tensor([[1e-8, 1 + 1e-8]])
    # .3*wp + .5*wc + .1*wo = [.469318, .430682]; sum .9
    close(W.combine(wp, wc, wo), [[0.521464, 0.478536]])
    # not normalised: the raw combination
    close(W.combine(wp, wc, wo, row_normalise=False), [[0.469318, 0.430682]])
    # ablations: drop the consistency term -> .3*wp + .5*wc = [.469318, .330682] / .8
    close(W.combine(wp, wc, None), [[0.586647, 0.413353]])
    # everything ablated -> uniform
    close(W.combine(None, None, None, shape=(1, 4)), [[0.25] * 4])


def test_auto_precision_is_bf16_only_where_native(monkeypatch):
    """ed_precision auto: bf16 table for D >= 1024 only with native bf16 (emulated bf16 halved the step on AVX2)."""
    from dllm2rec.distill import embedding
    from dllm2rec.utils import cpu

    monkeypatch.setattr(cpu, "cpu_flags", lambda: frozenset({"avx2", "fma"}))       # AVX2-only CPU
    assert embedding.resolve_precision("auto", 4096) == "float32"
    monkeypatch.setattr(cpu, "cpu_flags", lambda: frozenset({"avx512f", "avx512_bf16"}))
    assert embedding.resolve_precision("auto", 4096) == "bfloat16"
    assert embedding.resolve_precision("auto", 384) == "float32"                    # small D: always float32
    monkeypatch.setattr(cpu, "cpu_flags", lambda: frozenset({"avx2"}))
    assert embedding.resolve_precision("bfloat16", 4096) == "bfloat16"              # explicit choice is kept


def test_lambda_schedules():
    """constant (paper) / warmup / decay of λ by epoch; hand-checked values; a bad schedule is a one-line error."""
    import pytest

    from dllm2rec.data.synthetic import make_synthetic
    from dllm2rec.errors import ConfigError
    from dllm2rec.registry import get_strategy
    from dllm2rec.teachers.controls import make_control

    ds = make_synthetic(n_items=30, n_users=20, seq_len=8, seed=0)
    t = make_control("random:8", ds, seed=0)
    mk = lambda **kw: get_strategy("dllm2rec")({"lam": 0.8, "lam_epochs": 4, **kw}, ds, t)  # noqa: E731
    assert [mk().lam_at(e) for e in (1, 5)] == [0.8, 0.8]
    assert [round(mk(lam_schedule="warmup").lam_at(e), 6) for e in (1, 2, 4, 9)] == [0.2, 0.4, 0.8, 0.8]
    assert [round(mk(lam_schedule="decay").lam_at(e), 6) for e in (1, 2, 4, 5, 9)] == [0.8, 0.6, 0.2, 0.0, 0.0]
    with pytest.raises(ConfigError, match="lam_schedule"):
        mk(lam_schedule="cosine")
