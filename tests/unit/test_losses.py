import math

import torch

from dllm2rec.losses import bce_loss, dros_propensity, dros_term, sample_negatives


def test_negatives_exclude_history_and_target():
    g = torch.Generator().manual_seed(0)
    n = 8
    seq = torch.tensor([[0, 1, 2, 3, 8], [4, 5, 8, 8, 8]])
    tgt = torch.tensor([4, 6])
    for _ in range(200):
        neg = sample_negatives(seq, tgt, n, 3, g)
        assert neg.shape == (2, 3)
        assert not (neg[0][:, None] == torch.tensor([0, 1, 2, 3, 4])).any()
        assert not (neg[1][:, None] == torch.tensor([4, 5, 6])).any()
        assert (neg < n).all() and (neg >= 0).all()


def test_bce_matches_hand_value():
    pos, neg = torch.tensor([2.0]), torch.tensor([[-1.0]])
    # mean of -log σ(2) and -log(1 - σ(-1)) = -log σ(1)
    expect = 0.5 * (math.log1p(math.exp(-2.0)) + math.log1p(math.exp(-1.0)))
    assert abs(bce_loss(pos, neg).item() - expect) < 1e-6


def test_dros_matches_formula():
    scores = torch.tensor([[0.5, -1.0, 2.0]], dtype=torch.float64)
    ps = dros_propensity(torch.tensor([3, 0, 1]), power=0.05)
    c = torch.tensor([4.0, 1.0, 2.0], dtype=torch.float64)
    assert torch.allclose(ps, (c / 7.0) ** 0.05)
    t = 2
    terms = [math.exp(float(ps[j]) * float(scores[0, j]) ** 2) for j in range(3)]
    expect = math.log(sum(terms) - terms[t] + math.exp(float(ps[t]) * (2.0 - 1.0) ** 2))
    got = dros_term(scores, torch.tensor([t]), ps, beta=1.0)
    assert abs(got.item() - expect) < 1e-9


def test_dros_autograd_function_matches_plain_autograd():
    from dllm2rec.losses import dros_term_reference

    g = torch.Generator().manual_seed(0)
    scores = (torch.randn(6, 40, generator=g, dtype=torch.float64) * 3).requires_grad_()
    target = torch.randint(0, 40, (6,), generator=g)
    ps = dros_propensity(torch.randint(0, 50, (40,), generator=g), 0.05)
    w = torch.rand(6, generator=g, dtype=torch.float64)
    for beta in (1.0, 0.5):
        a = dros_term(scores, target, ps, beta)
        b = dros_term_reference(scores, target, ps, beta)
        assert torch.allclose(a, b, atol=1e-12)
        ga, = torch.autograd.grad((a * w).sum(), scores)
        gb, = torch.autograd.grad((b * w).sum(), scores)
        assert torch.allclose(ga, gb, atol=1e-12)
    assert torch.autograd.gradcheck(lambda s: dros_term(s, target, ps, 0.7), (scores,))
    # both outputs, used together (as the student loss and the distillation's candidate terms share them)
    from dllm2rec.losses import dros_lse

    assert torch.autograd.gradcheck(lambda s: dros_lse(s, target, ps, 0.7), (scores,))
    sw, un = dros_lse(scores, target, ps, 0.7)
    ref_un = torch.logsumexp(ps[None, :] * scores.pow(2) / 0.7, dim=1)
    assert torch.allclose(un, ref_un, atol=1e-12)
    assert torch.allclose(sw, dros_term_reference(scores, target, ps, 0.7), atol=1e-12)


def test_dros_stays_finite_when_one_term_dominates():
    from dllm2rec.losses import dros_term_reference

    scores = torch.zeros(2, 5, dtype=torch.float64)
    scores[0, 2] = 60.0  # the target's term dominates by e^{~3600}: no cancellation, no overflow
    scores[1, 0] = -45.0  # a non-target dominates
    target = torch.tensor([2, 3])
    ps = torch.ones(5, dtype=torch.float64)
    s = scores.clone().requires_grad_()
    got = dros_term(s, target, ps)
    ref = dros_term_reference(scores, target, ps)
    assert torch.isfinite(got).all() and torch.allclose(got, ref)
    got.sum().backward()
    assert torch.isfinite(s.grad).all()
