"""Beyond-the-paper distillation variants (issue 14): hand-checked values on tiny batches.

listwise KL with temperature, score-based confidence weights (replace / product / row mass), per-row gates
(target hit, logistic fit). Every expected number below is computed by hand in the comment next to it.
"""
import math

import numpy as np
import pytest
import torch

from dllm2rec.data.synthetic import make_synthetic
from dllm2rec.distill import gating, listwise, score_confidence
from dllm2rec.distill.base import StepContext
from dllm2rec.errors import ConfigError
from dllm2rec.registry import available, get_strategy
from dllm2rec.teachers.artifacts import TeacherArtifacts


def _kl(q, p):
    return sum(a * math.log(a / b) for a, b in zip(q, p))


def _softmax(xs):
    m = max(xs)
    e = [math.exp(x - m) for x in xs]
    return [v / sum(e) for v in e]


def test_variants_are_registered():
    assert {"listwise", "dllm2rec-score", "dllm2rec-gated"} <= set(available("strategy"))


# ------------------------------------------------------------------------------------------------ listwise
def test_listwise_kl_hand_checked_b2_k2():
    # row 0: teacher d = [0, ln 3] -> logits [0, -ln 3]; τ = 1: q = [3/4, 1/4]; student logits [0, 0]: p = [1/2, 1/2]
    #        KL = 3/4 ln(3/2) + 1/4 ln(1/2) = 0.130812
    # row 1: teacher d = [1, 1]: q = [1/2, 1/2]; student [ln 3, 0]: p = [3/4, 1/4]
    #        KL = 1/2 ln(2/3) + 1/2 ln(2) = 0.143841
    d = torch.tensor([[0.0, math.log(3)], [1.0, 1.0]])
    s = torch.tensor([[0.0, 0.0], [math.log(3), 0.0]])
    got = listwise.listwise_kl(s, listwise.teacher_logits(d), tau=1.0)
    want = (0.75 * math.log(1.5) + 0.25 * math.log(0.5) + 0.5 * math.log(2 / 3) + 0.5 * math.log(2)) / 2
    assert float(got) == pytest.approx(want, abs=1e-6)
    assert float(got) == pytest.approx((0.130812 + 0.143841) / 2, abs=1e-5)


def test_listwise_kl_temperature_and_tau_squared():
    # τ = 2, one row: teacher logits [-0, -ln 9]/2 = [0, -ln 3] -> q = [3/4, 1/4]; student [ln 9, 0]/2 -> p = [3/4, 1/4]
    # -> KL = 0 exactly; a second row: teacher [0, 0] q = [1/2, 1/2], student [2 ln 3, 0]/2 -> p = [3/4, 1/4]
    # KL_2 = 1/2 ln(2/3) + 1/2 ln 2 = 0.143841; loss = τ²·(0 + KL_2)/2 = 4·0.143841/2 = 0.287682
    d = torch.tensor([[0.0, math.log(9)], [0.0, 0.0]])
    s = torch.tensor([[math.log(9), 0.0], [2 * math.log(3), 0.0]])
    got = listwise.listwise_kl(s, listwise.teacher_logits(d), tau=2.0)
    assert float(got) == pytest.approx(4 * (0.5 * math.log(2 / 3) + 0.5 * math.log(2)) / 2, abs=1e-6)


def test_listwise_kl_with_negatives_covered_and_row_weight():
    # K = 2 teacher candidates + 1 negative column (q = 0 there). Row 0: teacher [0, 0] -> q = [1/2, 1/2];
    # student [0, 0, ln 2] -> softmax over 3 = [1/4, 1/4, 1/2] -> KL = 1/2 ln 2 + 1/2 ln 2 = ln 2 (= 0.693147)
    # row 1 is uncovered: adds 0 (whatever its values). Row weight g_0 = 0.5: loss = 0.5·ln 2 / B(=2) = 0.173287
    d = torch.tensor([[0.0, 0.0], [5.0, 0.0]])
    s = torch.tensor([[0.0, 0.0, math.log(2)], [9.0, -9.0, 0.0]])
    cov = torch.tensor([True, False])
    got = listwise.listwise_kl(s, listwise.teacher_logits(d), 1.0, cov, torch.tensor([0.5, 7.0]))
    assert float(got) == pytest.approx(0.5 * math.log(2) / 2, abs=1e-6)


def test_listwise_kl_k3_matches_formula_and_gradient_is_p_minus_q():
    # B = 2, K = 3, τ = 1.5; expected from the definition with plain-python softmaxes
    d = [[0.2, 1.0, 2.5], [0.0, 0.3, 0.4]]
    s = [[1.0, 0.5, -1.0], [0.1, 0.9, 0.2]]
    tau = 1.5
    want = tau ** 2 * sum(_kl(_softmax([-x / tau for x in dr]), _softmax([x / tau for x in sr]))
                          for dr, sr in zip(d, s)) / 2
    st = torch.tensor(s, requires_grad=True)
    got = listwise.listwise_kl(st, listwise.teacher_logits(torch.tensor(d)), tau)
    assert float(got.detach()) == pytest.approx(want, abs=1e-6)
    got.backward()
    # d/ds of τ²·KL/B = τ·(p − q)/B
    q = torch.softmax(-torch.tensor(d) / tau, 1)
    p = torch.softmax(torch.tensor(s) / tau, 1)
    assert torch.allclose(st.grad, tau * (p - q) / 2, atol=1e-6)


def test_listwise_refuses_bad_input():
    with pytest.raises(ValueError, match="tau"):
        listwise.listwise_kl(torch.zeros(1, 2), torch.zeros(1, 2), tau=0)
    with pytest.raises(ValueError, match="dist_norm"):
        listwise.teacher_logits(torch.zeros(1, 2), "log")


# ------------------------------------------------------------------------------------------------ score confidence
def test_score_confidence_replace_and_product_hand_checked():
    # d = [0, ln 2, ln 4] -> s = softmax(-d) = [4/7, 2/7, 1/7]; position w^p (β = 1) = e^-r/Σ: [.665241, .244728, .090031]
    d = torch.tensor([[0.0, math.log(2), math.log(4)]])
    s = score_confidence.score_confidence(d, 1.0)
    assert torch.allclose(s, torch.tensor([[4 / 7, 2 / 7, 1 / 7]]), atol=1e-6)
    wp = torch.tensor([0.665241, 0.244728, 0.090031])
    # replace, γ = (.3, .5, 0): (.3·wp + .5·s) / .8
    rep = score_confidence.score_importance(wp, s, None, 0.3, 0.5, 0.0, "replace")
    want = [(0.3 * a + 0.5 * b) / 0.8 for a, b in zip(wp.tolist(), [4 / 7, 2 / 7, 1 / 7])]
    assert torch.allclose(rep, torch.tensor([want]), atol=1e-6)
    # product: u ∝ wp·s = [.380138, .069922, .012862] / .462922 = [.821172, .151045, .027784]
    prod = score_confidence.score_importance(wp, s, None, 0.3, 0.5, 0.0, "product")
    assert torch.allclose(prod, torch.tensor([[0.821172, 0.151045, 0.027784]]), atol=1e-5)
    # with consistency w^o = [1, 0, 1] (+1e-8), γo = .1: (.8·u + .1·wo) / (.8 + .2)
    wo = torch.tensor([[1.0, 1e-8, 1.0]])
    prod_o = score_confidence.score_importance(wp, s, wo, 0.3, 0.5, 0.1, "product")
    assert torch.allclose(prod_o, torch.tensor([[(0.8 * 0.821172 + 0.1) / 1.0, 0.8 * 0.151045 / 1.0,
                                                 (0.8 * 0.027784 + 0.1) / 1.0]]), atol=1e-5)


def test_row_mass_scale_hand_checked():
    # rows: m = Σ e^-d: row 0 [ln 2, ln 2] -> 1; row 1 [ln 4, ln 4] -> .5; row 2 uncovered; row 3 [0, 0] -> 2
    # mean over covered = 3.5/3 = 1.166667 -> scales [.857143, .428571, 1 (uncovered), 1.714286]; mass_max 1.5 clips
    d = torch.tensor([[math.log(2)] * 2, [math.log(4)] * 2, [0.0, 0.0], [0.0, 0.0]])
    cov = torch.tensor([True, True, False, True])
    got = score_confidence.row_mass_scale(d, cov, mass_max=1.5)
    assert torch.allclose(got, torch.tensor([1 / (3.5 / 3), 0.5 / (3.5 / 3), 1.0, 1.5]), atol=1e-6)


# ------------------------------------------------------------------------------------------------ gating
@pytest.fixture(scope="module")
def tiny():
    ds = make_synthetic(n_items=30, n_users=12, seq_len=8, seed=5)
    tr = ds["train"]
    R, n = len(tr), 3
    rng = np.random.default_rng(0)
    ids = np.stack([rng.permutation(30)[:n] for _ in range(R)])
    tgt = np.empty(R, dtype=np.int64)
    tgt[tr.row_id] = tr.target
    # rows 0..3 by row id: target at rank 1, rank 3, absent, absent
    for r, rank in ((0, 0), (1, 2)):
        ids[r] = [x for x in rng.permutation(30) if x != tgt[r]][:n]
        ids[r, rank] = tgt[r]
    for r in (2, 3):
        ids[r] = [x for x in rng.permutation(30) if x != tgt[r]][:n]
    dist = np.sort(rng.uniform(0.5, 3.0, size=(R, n)), axis=1)
    cov = np.ones(R, dtype=bool)
    cov[3] = False
    t = TeacherArtifacts.from_rankings(rng.normal(size=(30, 8)), ids, dist, cov)
    return ds, t


def test_target_gates_hand_checked(tiny):
    ds, t = tiny
    g = gating.target_gates(t, ds, k=3, floor=0.25)
    assert g[:4].tolist() == [1.0, 1.0, 0.25, 1.0]  # hit, hit (rank 3), miss, uncovered -> 1
    g2 = gating.target_gates(t, ds, k=2, floor=0.0)
    assert g2[:4].tolist() == [1.0, 0.0, 0.0, 1.0]  # rank 3 is outside the top-2


def test_fit_logistic_hand_checked_and_optimal():
    # one binary feature x ∈ {0, 1}, ridge 0: the MLE is the log-odds per group.
    # x=0: 1 hit of 4 -> intercept = ln(1/3) = -1.098612; x=1: 3 of 4 -> ln 3 = 1.098612 = b0 + b1 -> b1 = 2.197225
    x = np.array([[0.0]] * 4 + [[1.0]] * 4)
    y = np.array([1, 0, 0, 0, 1, 1, 1, 0], dtype=float)
    beta = gating.fit_logistic(x, y, ridge=0.0)
    assert beta == pytest.approx([-math.log(3), 2 * math.log(3)], abs=1e-6)
    # with a ridge the stationarity condition Xᵀ(σ(Xβ) − y)/n + ridge·β (no intercept) = 0 holds
    rng = np.random.default_rng(1)
    xr = rng.normal(size=(200, 3))
    yr = (rng.uniform(size=200) < 1 / (1 + np.exp(-(xr @ [1.0, -2.0, 0.0])))).astype(float)
    b = gating.fit_logistic(xr, yr, ridge=0.1)
    X = np.concatenate([np.ones((200, 1)), xr], 1)
    p = 1 / (1 + np.exp(-X @ b))
    g = X.T @ (p - yr) / 200 + 0.1 * np.r_[0.0, b[1:]]
    assert np.abs(g).max() < 1e-8


def test_logistic_gates_have_mean_one_on_covered_rows(tiny):
    ds, t = tiny
    g, info = gating.logistic_gates(t, ds, k=3, ridge=1e-3, gmax=100.0)
    rid, _ = gating.teacher_hits(t, ds, 3)
    assert info["fitted"] and g[rid].mean() == pytest.approx(1.0, abs=1e-5)
    assert g[3] == 1.0  # uncovered


def test_gated_strategy_scales_each_rows_weights(tiny):
    ds, t = tiny
    base = get_strategy("dllm2rec")({"K": 3, "use_embedding": False, "use_consistency": False}, ds, t)
    gated = get_strategy("dllm2rec-gated")({"K": 3, "use_embedding": False, "use_consistency": False,
                                           "gate_k": 3, "gate_floor": 0.25}, ds, t)
    rid = torch.tensor([0, 2])
    cand, dist, _ = gated.rows.rows(rid)
    ctx = StepContext(None, torch.zeros(2, 4), None, None, None, rid, None)
    w0, w1 = base.importance_weights(ctx, cand, dist), gated.importance_weights(ctx, cand, dist)
    assert torch.allclose(w1[0], w0[0]) and torch.allclose(w1[1], 0.25 * w0[1])


def test_score_replace_equals_dllm2rec_softmax_confidence(tiny):
    ds, t = tiny
    common = {"K": 3, "use_embedding": False, "use_consistency": False}
    a = get_strategy("dllm2rec")({**common, "confidence_norm": "softmax", "confidence_temperature": 2.0}, ds, t)
    b = get_strategy("dllm2rec-score")({**common, "score_combine": "replace", "row_mass": False,
                                        "score_temperature": 2.0}, ds, t)
    rid = torch.tensor([0, 1, 2])
    cand, dist, _ = b.rows.rows(rid)
    ctx = StepContext(None, torch.zeros(3, 4), None, None, None, rid, None)
    assert torch.allclose(a.importance_weights(ctx, cand, dist), b.importance_weights(ctx, cand, dist), atol=1e-7)


def test_bad_variant_params_are_refused(tiny):
    ds, t = tiny
    with pytest.raises(ConfigError, match="gate must be one of"):
        get_strategy("dllm2rec-gated")({"K": 3, "gate": "oracle"}, ds, t)
    with pytest.raises(ConfigError, match="needs the dataset"):
        get_strategy("listwise")({"K": 3, "gate": "target"}, None, t)
    with pytest.raises(ConfigError, match="tau: Input should be greater than 0"):
        get_strategy("listwise")({"K": 3, "tau": 0}, ds, t)
    with pytest.raises(ConfigError, match="score_combine"):
        get_strategy("dllm2rec-score")({"K": 3, "score_combine": "sum"}, ds, t)
    with pytest.raises(ConfigError, match="unknown parameter"):
        get_strategy("listwise")({"K": 3, "temperature": 2}, ds, t)
