import math

import torch

from dllm2rec.training.losses import bce_loss, dros_propensity, dros_term, sample_negatives


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
